//! The log's batch reader over its chunked layout: every read is checked against a list of the
//! appended events kept by the test itself, across chunk boundaries (a chunk holds up to 1000
//! events, or about 1 MiB), with filters and each limit.

use prism::log::{BatchRead, EventLog, ExpectedVersion, FlatBatch, NewEvent};

/// (stream, type, data) of every appended event, in position order (position = index + 1).
type Expected = Vec<(String, String, Vec<u8>)>;

/// 5,688 events over 7 streams, in appends of 1 to 600 events, one of them 1.5 MiB large.
async fn fill(log: &EventLog) -> Expected {
    let mut expected = Vec::new();
    let mut n = 0u64;
    for round in 0..40 {
        let stream = format!("s-{}", round % 7);
        let size = [1, 3, 600, 17, 90][round % 5];
        let mut events = Vec::new();
        for _ in 0..size {
            n += 1;
            let event_type = if n.is_multiple_of(3) { "Even" } else { "Odd" };
            let data = if n == 1234 {
                vec![b'x'; 3 << 19]
            } else {
                format!("{{\"n\":{n}}}").into_bytes()
            };
            expected.push((stream.clone(), event_type.to_string(), data.clone()));
            events.push(NewEvent {
                event_type: event_type.into(),
                data,
                metadata: None,
                id: None,
            });
        }
        log.append(&stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    expected
}

fn positions(batch: &FlatBatch) -> Vec<u64> {
    batch.headers.iter().map(|h| h.position).collect()
}

fn check(batch: &FlatBatch, expected: &Expected) {
    for i in 0..batch.len() {
        let event = batch.event(i).unwrap();
        let (stream, event_type, data) = &expected[batch.headers[i].position as usize - 1];
        assert_eq!(
            (event.stream, event.event_type, event.data, event.metadata),
            (
                stream.as_str(),
                event_type.as_str(),
                data.as_slice(),
                &b"{}"[..]
            )
        );
    }
}

#[tokio::test]
async fn batches_read_back_what_was_appended_across_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    let expected = fill(&log).await;
    let total = expected.len() as u64;
    assert_eq!(log.head(), total);
    let mut batch = FlatBatch::default();

    // Everything, in reads of 700 from each start, crossing chunk boundaries mid-chunk.
    for start in [1, 2, 999, 1000, 1001, 1234, 5687] {
        let mut from = start;
        let mut seen = Vec::new();
        while let Some(last) = log
            .read_batch(&BatchRead::from(from, 700), |_, _| true, &mut batch)
            .unwrap()
        {
            check(&batch, &expected);
            seen.extend(positions(&batch));
            from = last + 1;
        }
        assert_eq!(seen, (start..=total).collect::<Vec<_>>());
    }

    // A filter: only `Even` events of stream s-2, looking at 500 events at most per read.
    let mut from = 1;
    let mut kept = Vec::new();
    loop {
        let read = BatchRead {
            max_scanned: 500,
            ..BatchRead::from(from, 1000)
        };
        let Some(last) = log
            .read_batch(&read, |s, t| s == "s-2" && t == "Even", &mut batch)
            .unwrap()
        else {
            break;
        };
        assert!(last - from < 500, "looked at more than 500 events");
        check(&batch, &expected);
        kept.extend(positions(&batch));
        from = last + 1;
    }
    let want: Vec<u64> = (1..=total)
        .filter(|p| {
            let (s, t, _) = &expected[*p as usize - 1];
            s == "s-2" && t == "Even"
        })
        .collect();
    assert!(!want.is_empty());
    assert_eq!(kept, want);

    // `until` ends a read at that position; `max_bytes` after the event that reaches it.
    let read = BatchRead {
        until: 1010,
        ..BatchRead::from(990, 1000)
    };
    assert_eq!(
        log.read_batch(&read, |_, _| true, &mut batch).unwrap(),
        Some(1010)
    );
    assert_eq!(positions(&batch), (990..=1010).collect::<Vec<_>>());
    let read = BatchRead {
        max_bytes: 1,
        ..BatchRead::from(1230, 1000)
    };
    assert_eq!(
        log.read_batch(&read, |_, _| true, &mut batch).unwrap(),
        Some(1230)
    );
    let read = BatchRead {
        max_bytes: 1 << 20,
        ..BatchRead::from(1230, 1000)
    };
    assert_eq!(
        log.read_batch(&read, |_, _| true, &mut batch).unwrap(),
        Some(1234)
    );
    check(&batch, &expected);

    // Past the head there is nothing; a reopened log reads the same.
    assert_eq!(
        log.read_batch(&BatchRead::from(total + 1, 10), |_, _| true, &mut batch)
            .unwrap(),
        None
    );
    assert!(batch.is_empty());
    drop(log);
    let log = EventLog::open(&dir.path().join("log.redb")).unwrap();
    assert_eq!(log.head(), total);
    log.read_batch(&BatchRead::from(1, 10_000), |_, _| true, &mut batch)
        .unwrap();
    assert_eq!(batch.len() as u64, total);
    check(&batch, &expected);

    // Stream reads go through the stream index into the chunks.
    for s in 0..7 {
        let stream = format!("s-{s}");
        let want: Vec<u64> = (1..=total)
            .filter(|p| expected[*p as usize - 1].0 == stream)
            .collect();
        let got = log.read_stream(&stream, 1, 10_000).unwrap();
        assert_eq!(got.iter().map(|e| e.position).collect::<Vec<_>>(), want);
        for (i, e) in got.iter().enumerate() {
            assert_eq!(e.stream_version, i as u64 + 1);
            assert_eq!(e.data, expected[e.position as usize - 1].2);
        }
        assert_eq!(log.stream_version(&stream).unwrap(), want.len() as u64);
    }
}
