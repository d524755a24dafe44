//! `prism import FILE.jsonl`: loads a history into a running Prism, in file order, in batches
//! appended atomically over several streams (`POST /events`).
//!
//! Resumable without duplicates: after each acknowledged batch, a state file records how far
//! the import got (bytes, lines, the sha256 of the file up to there). Each batch is sent under
//! an idempotency key derived from the file's content up to the batch's end, so a batch whose
//! answer was lost (a crash, a dropped connection) is recognised by Prism when it is sent
//! again, and appends nothing a second time. A rerun checks that the part already imported is
//! unchanged, then goes on after it (a file that grew is imported up to its new end).

use anyhow::{Context, Result, bail};
use prism_client::Client;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A batch is closed at this many bytes even if it holds fewer events than asked (the server
/// takes 16 MiB per append).
const MAX_BATCH_BYTES: usize = 8 << 20;

/// How long a batch is retried while Prism is unreachable or busy.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// How far an import got; kept beside the file (or where `--state` says).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct ImportState {
    /// Events per batch: batches (and so their keys) must be cut the same way to resume.
    batch: usize,
    /// Bytes of the file imported (always at a line's end).
    bytes: u64,
    /// Lines read (blank lines included).
    lines: u64,
    /// Events in the file's first `bytes` bytes (all imported).
    events: u64,
    /// sha256 of the file's first `bytes` bytes, hex.
    sha256: String,
    /// The log position of the last event imported.
    last_position: u64,
    /// The batch sent and not yet acknowledged, if any: a rerun sends exactly it again first
    /// (same content, same key), whatever the file became after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<Pending>,
}

/// Where the file stands after a batch that was sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Pending {
    bytes: u64,
    lines: u64,
    events: u64,
    sha256: String,
}

/// What `prism import` prints at the end.
#[derive(Debug, Serialize)]
struct Summary {
    /// Events appended by this run.
    events: u64,
    /// Events this run sent again that Prism had appended before (progress lost in a crash).
    already_appended: u64,
    first_position: Option<u64>,
    last_position: Option<u64>,
    resumed_at_line: Option<u64>,
    seconds: f64,
    events_per_second: f64,
    state: PathBuf,
}

/// The default state file: `FILE.import-state`.
pub fn default_state(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".import-state");
    PathBuf::from(name)
}

/// Imports `file` through `client`, `batch` events per append.
pub async fn import(
    client: &Client,
    file: &Path,
    batch: usize,
    state: Option<PathBuf>,
) -> Result<()> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let state_path = state.unwrap_or_else(|| default_state(file));
    let mut reader = BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    );
    let size = reader.get_ref().metadata()?.len();
    let mut hasher = Sha256::new();
    let mut done = match read_state(&state_path)? {
        Some(state) => {
            resume(&mut reader, &mut hasher, &state, batch, file, &state_path)?;
            state
        }
        None => ImportState {
            batch,
            bytes: 0,
            lines: 0,
            events: 0,
            sha256: hex::encode(Sha256::new().finalize()),
            last_position: 0,
            pending: None,
        },
    };
    // A batch sent before an interruption goes again first, exactly as it was.
    let pending = done.pending.take();
    let mut next = read_batch(
        &mut reader,
        &mut hasher,
        batch,
        &done,
        pending.as_ref().map(|p| p.bytes),
    )?;
    if let Some(p) = &pending
        && next.as_ref().is_none_or(|b| {
            b.after.sha256 != p.sha256 || b.after.events != p.events || b.after.lines != p.lines
        })
    {
        bail!(
            "{} changed since its batch up to byte {} was sent (the state in {} does not match): \
             nothing was appended; remove the state file to import the file as new",
            file.display(),
            p.bytes,
            state_path.display()
        );
    }
    let resumed_at_line = (done.bytes > 0).then_some(done.lines + 1);
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {per_sec} {msg} (eta {eta})",
        )
        .expect("a valid template"),
    );
    bar.set_position(done.bytes);

    let started = Instant::now();
    let (mut first_position, mut imported, mut already) = (None, 0u64, 0u64);
    while let Some(current) = next.take() {
        let sending = ImportState {
            pending: Some(Pending {
                bytes: current.after.bytes,
                lines: current.after.lines,
                events: current.after.events,
                sha256: current.after.sha256.clone(),
            }),
            ..done.clone()
        };
        write_state(&state_path, &sending)?;
        // The next batch is read and hashed while this one is in flight.
        let send = send_batch(client, &current);
        let read_next = async { read_batch(&mut reader, &mut hasher, batch, &current.after, None) };
        let (sent, read) = tokio::join!(send, read_next);
        let (appended, replayed) = sent.with_context(|| {
            format!(
                "importing lines {}..={} of {}",
                current.first_line,
                current.after.lines,
                file.display()
            )
        })?;
        let mut after = current.after.clone();
        after.last_position = appended.last_position;
        write_state(&state_path, &after)?;
        first_position.get_or_insert(appended.first_position);
        if replayed {
            already += current.event_lines.len() as u64;
        } else {
            imported += current.event_lines.len() as u64;
        }
        done = after;
        bar.set_position(done.bytes);
        bar.set_message(format!("{} events", done.events));
        next = read?;
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        events: imported,
        already_appended: already,
        first_position,
        last_position: first_position.map(|_| done.last_position),
        resumed_at_line,
        seconds,
        events_per_second: (imported + already) as f64 / seconds.max(1e-9),
        state: state_path,
    };
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

/// One batch: the JSON array to send and where the file stands after it.
struct Batch {
    body: Vec<u8>,
    /// The batch's first line.
    first_line: u64,
    /// Each event's line, to name a refused one.
    event_lines: Vec<u64>,
    key: String,
    after: ImportState,
}

/// Reads the next batch after `at` (`None` at the end of the file): up to the next multiple of
/// `batch` events from the file's start (or 8 MiB), or, given `end`, exactly up to that byte.
/// A last line without its newline counts as a line.
fn read_batch(
    reader: &mut BufReader<std::fs::File>,
    hasher: &mut Sha256,
    batch: usize,
    at: &ImportState,
    end: Option<u64>,
) -> Result<Option<Batch>> {
    let mut body = Vec::with_capacity(256 * batch.min(100_000));
    body.push(b'[');
    let (mut events, mut bytes, mut lines) = (0usize, at.bytes, at.lines);
    let mut event_lines = Vec::new();
    // Batches end at multiples of `batch` events from the file's start, whichever run reads
    // them, so a batch sent again has the same content and key.
    let room = batch - (at.events % batch as u64) as usize;
    let mut line = Vec::new();
    loop {
        let full = match end {
            Some(end) => bytes >= end,
            None => events >= room || body.len() >= MAX_BATCH_BYTES,
        };
        if full {
            break;
        }
        line.clear();
        let read = reader.read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        hasher.update(&line);
        bytes += read as u64;
        lines += 1;
        let mut text = line.trim_ascii();
        if lines == 1 {
            text = text.strip_prefix("\u{feff}".as_bytes()).unwrap_or(text);
        }
        if text.is_empty() {
            continue;
        }
        // One JSON object per line: checked here, so a line never becomes two events or
        // half of one, and a bad one is named by its line.
        match serde_json::from_slice::<&serde_json::value::RawValue>(text) {
            Ok(raw) if raw.get().starts_with('{') => {}
            Ok(_) => bail!("line {lines}: an event must be a JSON object"),
            Err(e) => bail!("line {lines}: not JSON: {e}"),
        }
        if events > 0 {
            body.push(b',');
        }
        body.extend_from_slice(text);
        events += 1;
        event_lines.push(lines);
    }
    body.push(b']');
    if events == 0 {
        return Ok(None);
    }
    let sha256 = hex::encode(hasher.clone().finalize());
    Ok(Some(Batch {
        body,
        first_line: at.lines + 1,
        event_lines,
        key: format!("import-{}", &sha256[..40]),
        after: ImportState {
            batch,
            bytes,
            lines,
            events: at.events + events as u64,
            sha256,
            last_position: at.last_position,
            pending: None,
        },
    }))
}

/// Appends a batch, retrying under the same key while Prism is unreachable or busy.
async fn send_batch(
    client: &Client,
    batch: &Batch,
) -> Result<(prism_client::wire::AppendedAll, bool)> {
    let deadline = Instant::now() + RETRY_FOR;
    let mut wait = Duration::from_millis(100);
    loop {
        match client
            .append_all_json(batch.body.clone(), Some(&batch.key), None)
            .await
        {
            Ok(answer) => return Ok(answer),
            Err(e) => {
                let retry = match &e {
                    prism_client::Error::Unreachable { .. } => true,
                    prism_client::Error::Api { status, .. } => status.as_u16() == 503,
                    _ => false,
                };
                if !retry || Instant::now() >= deadline {
                    return Err(describe(e, batch));
                }
                tracing::warn!(error = %e, "the batch was not appended; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// An error naming the line of the event Prism refused, when it names one.
fn describe(e: prism_client::Error, batch: &Batch) -> anyhow::Error {
    if let prism_client::Error::Api { message, .. } = &e
        && let Some(line) = message
            .strip_prefix("event ")
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|index| batch.event_lines.get(index))
    {
        return anyhow::anyhow!("line {line}: {e}");
    }
    anyhow::Error::new(e)
}

/// Checks that what was imported is still the file's beginning, and moves past it.
fn resume(
    reader: &mut BufReader<std::fs::File>,
    hasher: &mut Sha256,
    state: &ImportState,
    batch: usize,
    file: &Path,
    state_path: &Path,
) -> Result<()> {
    if state.batch != batch {
        bail!(
            "{} was imported in batches of {}: run again with --batch {} to go on (or remove {} to start over)",
            file.display(),
            state.batch,
            state.batch,
            state_path.display()
        );
    }
    let mut prefix = reader.by_ref().take(state.bytes);
    let copied = std::io::copy(&mut prefix, hasher)?;
    if copied != state.bytes || hex::encode(hasher.clone().finalize()) != state.sha256 {
        bail!(
            "{} changed since its first {} bytes were imported (the state in {} does not match): \
             nothing was appended; remove the state file to import the file as new",
            file.display(),
            state.bytes,
            state_path.display()
        );
    }
    reader.seek(SeekFrom::Start(state.bytes))?;
    Ok(())
}

fn read_state(path: &Path) -> Result<Option<ImportState>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is not an import state file", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the state whole (a temporary file renamed over it).
fn write_state(path: &Path, state: &ImportState) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing the import state in {}", dir.display()))?;
    serde_json::to_writer(&mut file, state)?;
    file.as_file().sync_all()?;
    file.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
