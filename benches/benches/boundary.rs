//! The host → guest batch call: `apply` on a no-op projector for batch sizes 1..4096, with
//! empty payloads and with 100-byte payloads. What remains is the boundary crossing (lowering
//! the flat batch into guest memory), the SDK's per-event decoding and its `begin-event` call.
//!
//! `cargo bench -p prism-benches --bench boundary`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prism::engine::{Engine, EventBatch, Sandbox};
use prism::log::StoredEvent;
use prism::store::{BatchView, ViewStore};

fn boundary(c: &mut Criterion) {
    let engine = Engine::new(None, Sandbox::default()).unwrap();
    let module = engine
        .compile(&prism_test_artifacts::read(prism_test_artifacts::NOOP))
        .unwrap()
        .module;
    let mut instance = engine.instantiate(&module, "noop", "").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ViewStore::open(&dir.path().join("view.redb")).unwrap();
    let payload = [b'x'; 100];

    let mut group = c.benchmark_group("boundary");
    for (label, data) in [("empty", &b""[..]), ("100-byte", &payload[..])] {
        for size in [1usize, 16, 256, 1024, 4096] {
            let mut batch = EventBatch::default();
            for i in 0..size as u64 {
                batch.push(
                    i + 1,
                    &StoredEvent {
                        stream: "stream-1",
                        stream_version: i + 1,
                        event_type: "Happened",
                        timestamp_ms: 0,
                        data,
                        metadata: b"{}",
                    },
                );
            }
            group.throughput(Throughput::Elements(size as u64));
            group.bench_with_input(BenchmarkId::new(label, size), &batch, |b, batch| {
                b.iter(|| {
                    let view = BatchView::new(store.snapshot().unwrap());
                    let (_, outcome) = instance.apply(batch, view);
                    outcome.unwrap();
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, boundary);
criterion_main!(benches);
