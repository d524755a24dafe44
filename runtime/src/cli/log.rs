//! `prism log`: commands on a data dir's event log, with Prism stopped.

use crate::data_dir::DataDir;
use crate::log::EventLog;
use crate::log::jetstream::{self, JetStreamOptions};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::{Duration, Instant};

/// How often `migrate` reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// `prism log migrate`: copies the data dir's embedded log into JetStream at `urls`.
pub fn migrate(data_dir: &Path, urls: &str, replicas: usize) -> Result<()> {
    let path = DataDir::new(data_dir).log();
    if !path.exists() {
        bail!(
            "{} holds no event log ({} is missing)",
            data_dir.display(),
            path.display()
        );
    }
    let log = EventLog::open(&path).with_context(|| {
        format!(
            "opening the event log {} (stop Prism first: the log is opened exclusively)",
            path.display()
        )
    })?;
    let head = log.head();
    let started = Instant::now();
    let mut reported = started;
    let copied = jetstream::copy_log(&log, &JetStreamOptions::new(urls, replicas), |at, of| {
        if reported.elapsed() >= PROGRESS_EVERY {
            reported = Instant::now();
            eprintln!(
                "copied up to position {at} of {of} ({:.0}%)",
                at as f64 * 100.0 / of as f64
            );
        }
    })?;
    let took = started.elapsed();
    match copied.positions() {
        None if head > 0 => println!(
            "JetStream at {urls} already holds the {head} events of {} (first and last checked): \
             nothing to copy",
            path.display()
        ),
        None => println!("the event log {} is empty: nothing to copy", path.display()),
        Some((first, last)) => {
            let rate = copied.copied as f64 / took.as_secs_f64().max(1e-6);
            let resumed = match copied.already {
                0 => String::new(),
                n => format!(" after the {n} it already held (first and last checked)"),
            };
            println!(
                "copied {} events (positions {first}..{last}) of {} to JetStream at {urls}{resumed} \
                 in {:.2} s ({rate:.0} events/s)",
                copied.copied,
                path.display(),
                took.as_secs_f64(),
            );
        }
    }
    Ok(())
}
