//! Portable copies of a view file, for a cluster's snapshots: a new owner of a projector
//! restores the newest copy and replays only the log after its checkpoint.
//!
//! A copy is itself a view file: [`ViewStore::copy_to`] writes every table (the view, its
//! checkpoint, its dead letters, the record of the code proven on it) from **one** read
//! transaction into a fresh redb file, which [`compress`] packs with zstd (checksummed frames)
//! for the upload. Restoring is [`decompress`] into place and [`ViewStore::open`] (which checks
//! every page): no insert runs on the failover's path.

use super::{CHECKPOINT, CODE, DEAD_LETTERS, META, PROVEN, StoreError, VIEW, ViewStore};
use redb::{Database, ReadableDatabase, ReadableTable};
use std::io::{BufReader, BufWriter};
use std::path::Path;

/// What a copy holds, as read in the transaction it was taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// The position of the last event the copied view reflects.
    pub checkpoint: u64,
    /// The record of the code proven on the view ([`ViewStore::proven_code`]).
    pub proven: Option<Vec<u8>>,
    /// How many view entries it holds.
    pub entries: u64,
}

/// Which view a snapshot copies, and what it reflects.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Label {
    /// The projector.
    pub projector: String,
    /// Its deployment's incarnation (a name deleted and deployed again starts anew).
    pub incarnation: u64,
    /// The generation whose view it copies.
    pub generation: u64,
    /// The position of the last event the copy reflects.
    pub checkpoint: u64,
    /// The deployment's count of dead-letter actions, read before the copy's transaction:
    /// a snapshot counting fewer than the deployment misses an action's change.
    pub dead_letter_actions: u64,
    /// The record of the code proven on the view (the generation record's JSON), if any.
    pub proven: Option<String>,
    /// Entries in the view.
    pub entries: u64,
}

impl Label {
    /// The object's name.
    pub fn object_name(&self) -> String {
        format!(
            "{}/{}/{}/{:020}",
            self.projector, self.incarnation, self.generation, self.checkpoint
        )
    }
}

/// zstd's level for snapshots: the fastest, since a copy is taken while the projector serves.
const LEVEL: i32 = 1;

impl ViewStore {
    /// Writes a consistent copy of this view file (view, checkpoint, dead letters and the record
    /// of proven code, all read in one transaction) as a new, durable redb file at `into`,
    /// which must not exist. The projector goes on committing meanwhile.
    pub fn copy_to(&self, into: &Path) -> Result<Copied, StoreError> {
        let source = self.db()?;
        let txn = source.begin_read()?;
        let target = Database::builder()
            .set_cache_size(super::VIEW_CACHE_BYTES)
            .create(into)
            .map_err(redb::Error::from)?;
        let write = target.begin_write()?;
        let mut copied = Copied {
            checkpoint: 0,
            proven: None,
            entries: 0,
        };
        {
            let from = txn.open_table(VIEW)?;
            let mut to = write.open_table(VIEW)?;
            for row in from.iter()? {
                let (key, value) = row?;
                to.insert(key.value(), value.value())?;
                copied.entries += 1;
            }
            let from = txn.open_table(META)?;
            let mut to = write.open_table(META)?;
            for row in from.iter()? {
                let (key, value) = row?;
                to.insert(key.value(), value.value())?;
            }
            copied.checkpoint = from.get(CHECKPOINT)?.map_or(0, |v| v.value());
            let from = txn.open_table(DEAD_LETTERS)?;
            let mut to = write.open_table(DEAD_LETTERS)?;
            for row in from.iter()? {
                let (position, letter) = row?;
                to.insert(position.value(), letter.value())?;
            }
            match txn.open_table(CODE) {
                Ok(from) => {
                    let mut to = write.open_table(CODE)?;
                    for row in from.iter()? {
                        let (key, value) = row?;
                        to.insert(key.value(), value.value())?;
                    }
                    copied.proven = from.get(PROVEN)?.map(|v| v.value().to_vec());
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        write.commit()?;
        Ok(copied)
    }
}

/// Packs the file `from` into `to` (zstd, with a checksum on every frame): its size.
pub fn compress(from: &Path, to: &Path) -> std::io::Result<u64> {
    let mut input = BufReader::new(std::fs::File::open(from)?);
    let output = BufWriter::new(std::fs::File::create(to)?);
    let mut encoder = zstd::Encoder::new(output, LEVEL)?;
    encoder.include_checksum(true)?;
    std::io::copy(&mut input, &mut encoder)?;
    let mut output = encoder.finish()?;
    std::io::Write::flush(&mut output)?;
    output
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(std::fs::metadata(to)?.len())
}

/// Unpacks `from` (written by [`compress`]) into the file `to`, durably. A damaged or cut
/// input is an error (zstd's checksums and frame ends), never a half file taken for whole.
pub fn decompress(from: &Path, to: &Path) -> std::io::Result<()> {
    let input = BufReader::new(std::fs::File::open(from)?);
    let mut decoder = zstd::Decoder::with_buffer(input)?;
    let mut output = BufWriter::new(std::fs::File::create(to)?);
    std::io::copy(&mut decoder, &mut output)?;
    output.into_inner().map_err(|e| e.into_error())?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DeadLetter, Overlay};

    fn overlay(pairs: &[(&str, Option<&str>)]) -> Overlay {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(|v| v.as_bytes().to_vec())))
            .collect()
    }

    /// A copy restored through compress / decompress holds exactly what the view held when
    /// it was taken (written here by hand), not what was committed after.
    #[test]
    fn a_restored_copy_is_the_view_at_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = ViewStore::open(&dir.path().join("gen-1.redb")).unwrap();
        store
            .commit_proving(
                &overlay(&[("a", Some("1")), ("b", Some("2"))]),
                5,
                false,
                b"code-1",
            )
            .unwrap();
        store
            .put_dead_letter(&DeadLetter {
                position: 4,
                stream: "s".into(),
                event_type: "t".into(),
                error: "boom".into(),
                module: "m".into(),
            })
            .unwrap();
        store
            .commit(&overlay(&[("b", None), ("c", Some("3"))]), 9, false, None)
            .unwrap();
        let copy = dir.path().join("copy.redb");
        let copied = store.copy_to(&copy).unwrap();
        // Committed after the copy: not in it.
        store
            .commit(&overlay(&[("d", Some("4"))]), 12, false, None)
            .unwrap();
        assert_eq!(
            copied,
            Copied {
                checkpoint: 9,
                proven: Some(b"code-1".to_vec()),
                entries: 2
            }
        );
        let packed = dir.path().join("copy.zst");
        compress(&copy, &packed).unwrap();
        let restored_path = dir.path().join("restored.redb");
        decompress(&packed, &restored_path).unwrap();
        let restored = ViewStore::open(&restored_path).unwrap();
        assert_eq!(restored.checkpoint().unwrap(), 9);
        assert_eq!(
            restored.proven_code().unwrap().as_deref(),
            Some(&b"code-1"[..])
        );
        let mut entries = Vec::new();
        restored
            .snapshot()
            .unwrap()
            .for_each(|k, v| entries.push((k.to_string(), String::from_utf8_lossy(v).to_string())))
            .unwrap();
        assert_eq!(
            entries,
            vec![("a".into(), "1".into()), ("c".into(), "3".into())]
        );
        let letters = restored.dead_letters(0, 10).unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            (letters[0].position, letters[0].error.as_str()),
            (4, "boom")
        );
    }

    /// A packed copy cut short or damaged is refused, never restored as a smaller view.
    #[test]
    fn a_damaged_copy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ViewStore::open(&dir.path().join("gen-1.redb")).unwrap();
        let many: Vec<(String, Option<Vec<u8>>)> = (0..5000)
            .map(|i| {
                (
                    format!("key-{i:05}"),
                    Some(format!("value {i}").into_bytes()),
                )
            })
            .collect();
        store
            .commit(&many.into_iter().collect(), 5000, false, None)
            .unwrap();
        let copy = dir.path().join("copy.redb");
        store.copy_to(&copy).unwrap();
        let packed = dir.path().join("copy.zst");
        let size = compress(&copy, &packed).unwrap() as usize;
        let bytes = std::fs::read(&packed).unwrap();

        let cut = dir.path().join("cut.zst");
        std::fs::write(&cut, &bytes[..size / 2]).unwrap();
        assert!(decompress(&cut, &dir.path().join("cut.redb")).is_err());

        let mut flipped = bytes.clone();
        flipped[size / 2] ^= 0x40;
        let damaged = dir.path().join("damaged.zst");
        std::fs::write(&damaged, &flipped).unwrap();
        assert!(decompress(&damaged, &dir.path().join("damaged.redb")).is_err());
    }
}
