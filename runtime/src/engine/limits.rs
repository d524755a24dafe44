//! What a projector instance may use: the [`Sandbox`] settings, the memory limiter that counts
//! every memory of an instance together, the per-batch write budget, and the [`Limit`] error a
//! host call traps with when a limit is hit.

/// The sandbox every projector instance runs in. All limits trap the call that exceeds them;
/// the runner then drops the instance, discards the batch's writes, and applies its error policy
/// to the event that was running (a batch over its write budget is first split, so the verdict
/// falls on the one event that is over it alone: see [`Limit::splits`]).
///
/// In the config file's `[sandbox]` table (and `--print-config`); `meter_fuel`, `fuel_to_start`
/// and `max_table_elements` are for benchmarks and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sandbox {
    /// Whether instructions are metered at all. Without metering there is no instruction budget
    /// and a runaway loop never stops: for benchmarks that measure what metering costs, never
    /// for serving.
    #[serde(skip)]
    pub meter_fuel: bool,
    /// Instructions (wasmtime fuel) one event may use. Fuel is deterministic: an event that is
    /// too expensive is so on every machine and every replay, however events were batched.
    pub fuel_per_event: u64,
    /// Instructions for starting an instance (instantiation, `describe`, `init`).
    #[serde(skip)]
    pub fuel_to_start: u64,
    /// Most bytes of linear memory an instance may have, all its memories together.
    pub max_memory_bytes: usize,
    /// Most table elements an instance may have, all its tables together.
    #[serde(skip)]
    pub max_table_elements: usize,
    /// Largest Wasm stack, in bytes (deep recursion traps instead of crashing Prism).
    pub max_wasm_stack: usize,
    /// Largest value a projector may write to its view, in bytes.
    pub max_value_bytes: usize,
    /// Most bytes (keys and values) one batch may write to the view, counting every write,
    /// overwritten or not: bounds the host memory a batch's pending writes take.
    pub max_batch_write_bytes: usize,
    /// Most writes (puts and deletes) one batch may make.
    pub max_batch_writes: usize,
    /// Most entries one `scan` call may ask for (page with `after` for more).
    pub max_scan_entries: u32,
    /// Most bytes (keys and values) one `scan` call may return.
    pub max_scan_bytes: usize,
    /// Compiles of uploaded modules running at once; more wait their turn.
    pub max_concurrent_compiles: usize,
    /// How long compiling one module may take, in milliseconds, before it is abandoned.
    pub compile_timeout_ms: u64,
    /// Most memory (address space) a compile may use, in bytes; 0 leaves it unbounded.
    pub max_compile_memory_bytes: u64,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            meter_fuel: true,
            fuel_per_event: 100_000_000,
            fuel_to_start: 1_000_000_000,
            max_memory_bytes: 64 << 20,
            max_table_elements: 100_000,
            max_wasm_stack: 512 << 10,
            max_value_bytes: 1 << 20,
            max_batch_write_bytes: 64 << 20,
            max_batch_writes: 100_000,
            max_scan_entries: 10_000,
            max_scan_bytes: 16 << 20,
            max_concurrent_compiles: 2,
            compile_timeout_ms: 60_000,
            max_compile_memory_bytes: 4 << 30,
        }
    }
}

/// A limit a host call or a memory growth hit; the call traps with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Limit {
    #[error("view key of {len} bytes is longer than the limit of {max}")]
    Key { len: usize, max: usize },
    #[error("a value of {len} bytes is larger than the limit of {max} (max_value_bytes)")]
    Value { len: usize, max: usize },
    #[error("wrote more than {max} bytes to the view in one batch (max_batch_write_bytes)")]
    BatchBytes { max: usize },
    #[error("made more than {max} view writes in one batch (max_batch_writes)")]
    BatchWrites { max: usize },
    #[error(
        "scan asked for {asked} entries, more than the limit of {max} per call (max_scan_entries): page with `after`"
    )]
    ScanEntries { asked: u32, max: u32 },
    #[error(
        "scan result passed {max} bytes (max_scan_bytes): ask for fewer entries and page with `after`"
    )]
    ScanBytes { max: usize },
    #[error("exceeded the memory limit of {max} bytes (all its memories together)")]
    Memory { max: usize },
    #[error("exceeded the table limit of {max} elements (all its tables together)")]
    Table { max: usize },
}

impl Limit {
    /// Whether this is a limit on the writes of a batch. The SDK sends a batch's writes when
    /// `apply` ends, so the event that was running when one of these trapped need not be the
    /// event that wrote too much: the runner splits the batch until the event that is over the
    /// limit on its own is alone — so the verdict never depends on how events were batched.
    pub fn splits(&self) -> bool {
        matches!(
            self,
            Limit::Key { .. }
                | Limit::Value { .. }
                | Limit::BatchBytes { .. }
                | Limit::BatchWrites { .. }
        )
    }
}

/// What the batch being applied has written so far.
#[derive(Debug, Default)]
pub(super) struct Written {
    bytes: usize,
    writes: usize,
}

impl Written {
    /// Counts one write of `key` (and `value`, for a put), or refuses it.
    pub(super) fn count(
        &mut self,
        limits: &Sandbox,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), Limit> {
        if key.len() > crate::store::MAX_KEY_LEN {
            return Err(Limit::Key {
                len: key.len(),
                max: crate::store::MAX_KEY_LEN,
            });
        }
        let value_len = value.map_or(0, <[u8]>::len);
        if value_len > limits.max_value_bytes {
            return Err(Limit::Value {
                len: value_len,
                max: limits.max_value_bytes,
            });
        }
        self.writes += 1;
        self.bytes = self.bytes.saturating_add(key.len() + value_len);
        if self.writes > limits.max_batch_writes {
            return Err(Limit::BatchWrites {
                max: limits.max_batch_writes,
            });
        }
        if self.bytes > limits.max_batch_write_bytes {
            return Err(Limit::BatchBytes {
                max: limits.max_batch_write_bytes,
            });
        }
        Ok(())
    }
}

/// Memory and table limits over all of an instance's memories and tables together (wasmtime's
/// `StoreLimits` bounds each one alone: a module with 16 memories would get 16 times the cap).
#[derive(Debug)]
pub(super) struct Limiter {
    max_memory: usize,
    max_table: usize,
    memory: usize,
    table: usize,
}

impl Limiter {
    pub(super) fn new(limits: &Sandbox) -> Self {
        Limiter {
            max_memory: limits.max_memory_bytes,
            max_table: limits.max_table_elements,
            memory: 0,
            table: 0,
        }
    }
}

/// Grows `total` by `desired - current` within `max`; a growth past a declared `maximum` is
/// refused (the module's own bound), one past `max` traps with `limit`.
fn grow(
    total: &mut usize,
    max: usize,
    current: usize,
    desired: usize,
    maximum: Option<usize>,
    limit: Limit,
) -> wasmtime::Result<bool> {
    if maximum.is_some_and(|m| desired > m) {
        return Ok(false);
    }
    let after = total.saturating_add(desired.saturating_sub(current));
    if after > max {
        return Err(wasmtime::Error::new(limit));
    }
    *total = after;
    Ok(true)
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let limit = Limit::Memory {
            max: self.max_memory,
        };
        grow(
            &mut self.memory,
            self.max_memory,
            current,
            desired,
            maximum,
            limit,
        )
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let limit = Limit::Table {
            max: self.max_table,
        };
        grow(
            &mut self.table,
            self.max_table,
            current,
            desired,
            maximum,
            limit,
        )
    }
}

/// A short trap message: which sandbox limit was hit when one was, the trap itself, and the
/// innermost few Wasm frames (a deep recursion's backtrace would otherwise run to thousands of
/// lines).
pub(super) fn describe_trap(error: &wasmtime::Error, limits: &Sandbox) -> String {
    let limit = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => Some(format!(
            "exceeded its instruction budget ({} per event)",
            limits.fuel_per_event
        )),
        Some(wasmtime::Trap::StackOverflow) => Some(format!(
            "exceeded the Wasm stack limit ({} bytes)",
            limits.max_wasm_stack
        )),
        _ => None,
    };
    let cause = match error.downcast_ref::<Limit>() {
        Some(hit) => hit.to_string(),
        None => error.root_cause().to_string(),
    };
    let frames = error
        .downcast_ref::<wasmtime::WasmBacktrace>()
        .map(|trace| {
            trace
                .frames()
                .iter()
                .take(3)
                .map(|f| f.func_name().unwrap_or("?").to_string())
                .collect::<Vec<_>>()
                .join(" < ")
        })
        .filter(|frames| !frames.is_empty());
    let mut message = match limit {
        Some(limit) => format!("{limit}: {cause}"),
        None => cause,
    };
    if let Some(frames) = frames {
        message.push_str(&format!(" (in {frames})"));
    }
    crate::engine::output::cut(&message).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_memory_counts_against_one_cap() {
        let limits = Sandbox {
            max_memory_bytes: 4 << 16,
            ..Sandbox::default()
        };
        let mut limiter = Limiter::new(&limits);
        use wasmtime::ResourceLimiter as _;
        // Two memories of two pages each fill the cap; a third page anywhere traps.
        assert!(limiter.memory_growing(0, 2 << 16, None).unwrap());
        assert!(limiter.memory_growing(0, 2 << 16, None).unwrap());
        let error = limiter.memory_growing(2 << 16, 3 << 16, None).unwrap_err();
        assert!(error.downcast_ref::<Limit>().is_some(), "{error}");
        // A growth past the module's own maximum is refused, not counted.
        assert!(!limiter.memory_growing(0, 1 << 16, Some(0)).unwrap());
    }

    #[test]
    fn a_batch_write_budget_counts_every_write() {
        let limits = Sandbox {
            max_batch_write_bytes: 10,
            max_batch_writes: 3,
            max_value_bytes: 4,
            ..Sandbox::default()
        };
        let mut written = Written::default();
        written.count(&limits, "k", Some(b"1234")).unwrap();
        assert!(matches!(
            written.count(&limits, "k", Some(b"12345")),
            Err(Limit::Value { len: 5, max: 4 })
        ));
        written.count(&limits, "k", Some(b"1234")).unwrap();
        // 10 bytes so far; one more byte is over.
        assert!(matches!(
            written.count(&limits, "k", None),
            Err(Limit::BatchBytes { max: 10 })
        ));
        let mut written = Written::default();
        for _ in 0..3 {
            written.count(&limits, "", None).unwrap();
        }
        assert!(matches!(
            written.count(&limits, "", None),
            Err(Limit::BatchWrites { max: 3 })
        ));
        let long = "k".repeat(crate::store::MAX_KEY_LEN + 1);
        assert!(matches!(
            Written::default().count(&limits, &long, None),
            Err(Limit::Key { .. })
        ));
    }
}
