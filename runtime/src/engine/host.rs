//! The host side of the WIT imports: the `view` interface over the batch in progress, and
//! `host.log`.
//!
//! Failures follow two levels: a `wasmtime::Result` error traps the guest (a host-side storage
//! failure, or a view call outside `apply`); the WIT-level results are for errors the guest may
//! handle (none yet).

use super::bindings::{host, types, view};
use super::convert;
use super::limits::{Limit, Limiter, Sandbox, Written};
use crate::store::BatchView;

/// A projector instance's host-side state.
pub struct HostState {
    /// The deployment's name, for diagnostics.
    pub(super) projector: String,
    /// The module's hash, for diagnostics.
    pub(super) module: String,
    /// Where `host.log` lines are kept.
    pub(super) log: std::sync::Arc<super::output::ProjectorOutput>,
    /// The batch being applied, while `apply` runs.
    pub(super) batch: Option<BatchView>,
    /// Memory and table caps, over all the instance's memories and tables.
    pub(super) limiter: Limiter,
    /// The limits on view calls.
    pub(super) sandbox: Sandbox,
    /// What the batch being applied has written (reset by `apply`).
    pub(super) written: Written,
    /// The instruction budget each event gets at `begin-event` (`None`: not metered).
    pub(super) fuel_per_event: Option<u64>,
    /// How many events the batch being applied holds.
    pub(super) batch_len: u32,
    /// The index `begin-event` expects next.
    pub(super) next_event: u32,
    /// The event being applied (the last `begin-event`), to attribute a trap.
    pub(super) current_event: Option<u32>,
}

impl HostState {
    /// `begin-event`: checks the order and notes which event runs (a trap belongs to it).
    pub(super) fn begin(&mut self, index: u32) -> wasmtime::Result<()> {
        if self.batch.is_none() || index != self.next_event || index >= self.batch_len {
            wasmtime::bail!(
                "begin-event({index}) out of order: expected event {} of a batch of {}",
                self.next_event,
                self.batch_len
            );
        }
        self.next_event += 1;
        self.current_event = Some(index);
        Ok(())
    }

    fn batch(&mut self) -> wasmtime::Result<&mut BatchView> {
        self.batch
            .as_mut()
            .ok_or_else(|| wasmtime::format_err!("the view is only available during apply"))
    }

    /// Counts a write against the batch's budget, or traps with the limit it breaks.
    fn count(&mut self, key: &str, value: Option<&[u8]>) -> wasmtime::Result<()> {
        self.written
            .count(&self.sandbox, key, value)
            .map_err(wasmtime::Error::new)
    }
}

impl types::Host for HostState {}

impl view::Host for HostState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.batch()?.get(&key)?)
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        self.batch()?;
        self.count(&key, Some(&value))?;
        self.batch()?.put(key, value);
        Ok(())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.batch()?;
        self.count(&key, None)?;
        self.batch()?.delete(key);
        Ok(())
    }

    fn write_many(&mut self, writes: Vec<(String, Option<Vec<u8>>)>) -> wasmtime::Result<()> {
        self.batch()?;
        for (key, value) in writes {
            self.count(&key, value.as_deref())?;
            let batch = self.batch()?;
            match value {
                Some(value) => batch.put(key, value),
                None => batch.delete(key),
            }
        }
        Ok(())
    }

    fn scan(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        let (max_entries, max_bytes) = (self.sandbox.max_scan_entries, self.sandbox.max_scan_bytes);
        if limit > max_entries {
            return Err(wasmtime::Error::new(Limit::ScanEntries {
                asked: limit,
                max: max_entries,
            }));
        }
        let entries = self
            .batch()?
            .scan(&prefix, after.as_deref(), limit as usize, max_bytes)?;
        entries.ok_or_else(|| wasmtime::Error::new(Limit::ScanBytes { max: max_bytes }))
    }
}

impl host::Host for HostState {
    fn begin_event(&mut self, index: u32) -> wasmtime::Result<()> {
        // The linker calls `begin` over the store instead (it refills the fuel too).
        self.begin(index)
    }

    fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        let projector = self.projector.as_str();
        let level = convert::level(level);
        let Some(message) = self.log.write(level, &self.module, &message) else {
            return Ok(());
        };
        match level {
            tracing::Level::ERROR => tracing::error!(projector, "{message}"),
            tracing::Level::WARN => tracing::warn!(projector, "{message}"),
            tracing::Level::INFO => tracing::info!(projector, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(projector, "{message}"),
            _ => tracing::trace!(projector, "{message}"),
        }
        Ok(())
    }
}
