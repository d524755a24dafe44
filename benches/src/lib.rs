//! Shared by Prism's benchmarks: the benchmark workload, and the example projectors' logic
//! compiled natively (the baseline that shows what the Wasm sandbox costs).

pub mod native;
pub mod rival;
pub mod server;

use prism::log::{EventLog, ExpectedVersion, NewEvent};

/// Distinct customers of the `order-totals` workload by default (the issue's "1M customers").
pub const CUSTOMERS: u64 = 1_000_000;

/// Distinct customers of the `order-totals` workload: [`CUSTOMERS`], or
/// `PRISM_BENCH_CUSTOMERS` (how a replay scales with the number of keys it updates).
pub fn customers() -> u64 {
    static CHOSEN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        std::env::var("PRISM_BENCH_CUSTOMERS")
            .ok()
            .map(|n| {
                n.parse()
                    .expect("PRISM_BENCH_CUSTOMERS is a number of customers")
            })
            .filter(|&n| n > 0)
            .unwrap_or(CUSTOMERS)
    })
}

/// Event `i` of the benchmark log: (stream, event), ~100-byte JSON payloads over 10 000
/// streams: half `OrderPlaced` (customers spread over [`customers()`]), a quarter account events,
/// a quarter `OrderCancelled`.
pub fn event(i: u64) -> (String, NewEvent) {
    let n = i % 10_000;
    // A cheap scramble so customers are spread, not sequential.
    let customer = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % customers();
    let (stream, event_type, data) = match i % 4 {
        0 | 1 => (
            format!("order-{n}"),
            "OrderPlaced",
            format!(
                r#"{{"order_id":"o-{i}","customer":"c-{customer}","total_cents":{},"note":"bench"}}"#,
                i % 997
            ),
        ),
        2 if i % 8 == 2 => (
            format!("account-{n}"),
            "AccountOpened",
            format!(r#"{{"account":"a-{n}","owner":"owner number {n:06}","note":"benchmark"}}"#),
        ),
        2 => (
            format!("account-{n}"),
            "Deposited",
            format!(
                r#"{{"account":"a-{n}","amount":{},"reference":"ref-{i:012}","note":"x"}}"#,
                i % 991
            ),
        ),
        _ => (
            format!("order-{n}"),
            "OrderCancelled",
            format!(
                r#"{{"order_id":"o-{}","reason":"customer changed their mind {i:08}"}}"#,
                i - 3
            ),
        ),
    };
    (
        stream,
        NewEvent {
            event_type: event_type.into(),
            data: data.into_bytes(),
            metadata: None,
            id: None,
        },
    )
}

/// Appends events `0..n` of the workload, 1000 per append (each append one stream).
pub fn fill(log: &EventLog, n: u64) {
    futures::executor::block_on(async {
        let mut i = 0;
        while i < n {
            let (stream, _) = event(i);
            let mut batch = Vec::new();
            while i < n && batch.len() < 1000 {
                batch.push(event(i).1);
                i += 1;
            }
            log.append(&stream, ExpectedVersion::Any, batch)
                .await
                .expect("appending the workload");
        }
    });
}
