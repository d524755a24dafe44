//! `prism log`: commands on a data dir's event log, with Prism stopped.

use crate::data_dir::DataDir;
use crate::log::EventLog;
use crate::log::jetstream::{self, JetStreamOptions, NatsSecurity};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::{Duration, Instant};

/// How often `migrate` reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// `prism log migrate`: copies the data dir's embedded log into JetStream at `urls`, and
/// records that the data dir's views now follow that log.
pub fn migrate(data_dir: &Path, urls: &str, replicas: usize, nats: NatsSecurity) -> Result<()> {
    let dir = DataDir::new(data_dir);
    let path = dir.log();
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
    let options = JetStreamOptions {
        security: nats,
        ..JetStreamOptions::new(urls, replicas)
    };
    let urls = jetstream::masked(urls);
    // A data dir that follows a JetStream log already is copied only into that one.
    let follows = dir
        .followed_log()?
        .filter(|log| log != crate::data_dir::EMBEDDED);
    let copied = jetstream::copy_log(&log, &options, follows.as_deref(), |at, of| {
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
        None if head > 0 => {
            let beyond = match copied.beyond {
                0 => String::new(),
                n => format!(" and {n} appended there since"),
            };
            println!(
                "JetStream at {urls} already holds the {head} events of {} (first and last \
                 checked){beyond}: nothing to copy",
                path.display()
            )
        }
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
    dir.rebind_log(&copied.log)
        .with_context(|| format!("recording in {} the log it now follows", data_dir.display()))?;
    println!(
        "{} now follows {}: start Prism with --event-log {urls}",
        data_dir.display(),
        copied.log
    );
    Ok(())
}
