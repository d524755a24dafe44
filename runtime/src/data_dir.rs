//! The data dir: every file Prism keeps, in one place.
//!
//! ```text
//! <root>/log.redb                          the event log
//! <root>/log-index.redb                    its streams' index, derived from it (rebuilt if lost)
//! <root>/event-log                         which log the views follow ([`DataDir::bind_log`])
//! <root>/jetstream-index.redb              on JetStream, the node's stream index (rebuilt if lost)
//! <root>/catalog.redb                      what is deployed
//! <root>/modules/<sha256>.wasm             uploaded module components, content-addressed
//! <root>/cache/<sha256>.cwasm              compiled artifacts Prism produced
//! <root>/projectors/<name>/gen-<id>.redb   each generation's view and checkpoint
//! <root>/tmp/                              scratch space (verifications), emptied at start
//! ```
//!
//! Files Prism writes whole (modules, compiled artifacts) are written atomically by
//! [`write_atomic`]: to a temporary file with a unique name in the same directory, `fsync`ed,
//! then renamed over the target, so two writers of the same file never share a temporary file
//! and a reader sees either nothing or the whole file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The layout of one data dir. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir at `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// Creates the data dir and its directories where missing, and empties its scratch space.
    pub fn create(root: impl Into<PathBuf>) -> std::io::Result<DataDir> {
        let dir = DataDir::new(root);
        for path in [dir.modules(), dir.cache(), dir.projectors()] {
            std::fs::create_dir_all(path)?;
        }
        match std::fs::remove_dir_all(dir.tmp()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(dir.tmp())?;
        Ok(dir)
    }

    /// The data dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The event log.
    pub fn log(&self) -> PathBuf {
        self.root.join("log.redb")
    }

    /// Which event log the data dir's views and checkpoints follow.
    pub fn event_log(&self) -> PathBuf {
        self.root.join("event-log")
    }

    /// The node's index of a JetStream log's streams.
    pub fn jetstream_index(&self) -> PathBuf {
        self.root.join("jetstream-index.redb")
    }

    /// Checks that the data dir's views and checkpoints follow `log` ([`EMBEDDED`], or a
    /// JetStream log's identity): positions in checkpoints mean events of one log only, so a
    /// data dir started on another log would serve views of events that are not there. A data
    /// dir that names no log yet is bound to `log`, unless it holds an embedded log and `log`
    /// is another (a data dir from before logs were named).
    pub fn bind_log(&self, log: &str) -> anyhow::Result<()> {
        let bound = self
            .followed_log()
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", self.event_log().display()))?;
        match bound {
            Some(bound) if bound == log => Ok(()),
            Some(bound) => anyhow::bail!(
                "the data dir {} follows {bound}, not {log}: its checkpoints are positions in \
                 that log. Start Prism on that log, or with another data dir (`prism log \
                 migrate` moves a data dir from its embedded log to JetStream). If that log was \
                 replaced (a stream deleted and created again), its views must be rebuilt: \
                 start on a new data dir and deploy again. If it was restored from a backup \
                 holding the same events, delete {} and start again",
                self.root.display(),
                self.event_log().display()
            ),
            None if log != EMBEDDED && self.log().exists() => anyhow::bail!(
                "the data dir {} holds an embedded event log ({}) that its views follow: copy \
                 it with `prism log migrate --from {} --to URLS` first (which also records a \
                 copy made before), or start with another data dir",
                self.root.display(),
                self.log().display(),
                self.root.display()
            ),
            None => self.rebind_log(log).map_err(Into::into),
        }
    }

    /// The log the data dir's views and checkpoints follow, if it names one.
    pub fn followed_log(&self) -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(self.event_log()) {
            Ok(log) => Ok(Some(log.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records that the data dir's views and checkpoints now follow `log` (after
    /// `prism log migrate` copied its embedded log there, at the same positions).
    pub fn rebind_log(&self, log: &str) -> std::io::Result<()> {
        write_atomic(&self.event_log(), format!("{log}\n").as_bytes())
    }

    /// The catalog of deployments.
    pub fn catalog(&self) -> PathBuf {
        self.root.join("catalog.redb")
    }

    /// Where module components are stored.
    pub fn modules(&self) -> PathBuf {
        self.root.join("modules")
    }

    /// The stored component with `hash` (a sha256 in hex; see [`valid_hash`]).
    pub fn module(&self, hash: &str) -> PathBuf {
        self.modules().join(format!("{hash}.wasm"))
    }

    /// Where compiled artifacts are cached.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// Every projector's directory.
    pub fn projectors(&self) -> PathBuf {
        self.root.join("projectors")
    }

    /// The projector `name`'s directory.
    pub fn projector(&self, name: &str) -> PathBuf {
        self.projectors().join(name)
    }

    /// Generation `id` of projector `name`: its view and checkpoint.
    pub fn view(&self, name: &str, id: u64) -> PathBuf {
        self.projector(name).join(format!("gen-{id}.redb"))
    }

    /// Scratch space.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A fresh, uniquely named scratch directory, removed when dropped.
    pub fn scratch(&self, prefix: &str) -> std::io::Result<tempfile::TempDir> {
        std::fs::create_dir_all(self.tmp())?;
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.tmp())
    }
}

/// The name of the embedded event log, as [`DataDir::bind_log`] records it.
pub const EMBEDDED: &str = "the embedded log (log.redb)";

/// Whether `hash` looks like a sha256 in hex (so it is safe in a path).
pub fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Writes `bytes` to `path` atomically and durably: a uniquely named temporary file in the same
/// directory, `fsync`ed, renamed over `path`, and the directory `fsync`ed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, bytes, |_| {})
}

/// [`write_atomic`], calling `before_persist` with the temporary file's path once it is written
/// and synced, just before the rename (a seam for tests that interleave two writers).
fn write_atomic_with(
    path: &Path,
    bytes: &[u8],
    before_persist: impl FnOnce(&Path),
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    before_persist(file.path());
    file.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    /// Two deploys of the same module store the same file at the same moment: each must write
    /// its own temporary file, so both succeed and the file is whole. (With one temporary name
    /// per hash, as before, the second writer truncated the first one's file and one rename
    /// failed.) The barrier holds both writers between writing and renaming.
    #[test]
    fn two_writers_of_one_file_do_not_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc.wasm");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let barrier = Arc::new(Barrier::new(2));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let (path, bytes, barrier) = (path.clone(), bytes.clone(), barrier.clone());
                std::thread::spawn(move || {
                    write_atomic_with(&path, &bytes, |tmp| {
                        assert!(tmp.exists());
                        barrier.wait();
                    })
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap().expect("each writer succeeds");
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("abc.wasm")]);
    }

    #[test]
    fn a_data_dir_follows_one_log() {
        let root = tempfile::tempdir().unwrap();
        let dir = DataDir::create(root.path()).unwrap();
        dir.bind_log(EMBEDDED).unwrap();
        dir.bind_log(EMBEDDED).unwrap();
        let other = dir.bind_log("stream X").unwrap_err().to_string();
        assert!(other.contains("follows the embedded log"), "{other}");
        dir.rebind_log("stream X").unwrap();
        dir.bind_log("stream X").unwrap();
        assert!(dir.bind_log(EMBEDDED).is_err());
        assert!(dir.bind_log("stream Y").is_err());

        // From before logs were named: an embedded log binds the data dir to it.
        std::fs::remove_file(dir.event_log()).unwrap();
        std::fs::write(dir.log(), b"").unwrap();
        let unnamed = dir.bind_log("stream X").unwrap_err().to_string();
        assert!(unnamed.contains("prism log migrate"), "{unnamed}");
        dir.bind_log(EMBEDDED).unwrap();
    }

    #[test]
    fn paths_stay_inside_the_data_dir() {
        let dir = DataDir::new("/data");
        assert_eq!(
            dir.view("tally", 3),
            Path::new("/data/projectors/tally/gen-3.redb")
        );
        assert!(valid_hash(&"a".repeat(64)));
        assert!(!valid_hash("../../etc/passwd"));
    }
}
