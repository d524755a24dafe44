//! The JetStream log's servers' security passed through to the NATS client: a server that
//! requires TLS (a private CA) and a user and password is refused without them, with a clear
//! error, and works with them; and an append larger than the server's atomic batch limit is
//! refused whole as the client's mistake.

mod common;

use common::nats::NatsServer;
use prism::log::jetstream::{JetStreamLog, JetStreamOptions, NatsSecurity};
use prism::log::{AppendError, EventLog, ExpectedVersion, NewEvent};

fn event() -> NewEvent {
    NewEvent {
        event_type: "T".into(),
        data: b"{}".to_vec(),
        metadata: None,
        id: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_a_password_are_passed_to_the_servers() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = common::certs::certificates(dir.path());
    let server = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        &cert,
        "--tlskey",
        &key,
        "--user",
        "prism",
        "--pass",
        "s3cret",
    ]);
    let with_tls = |url: String| JetStreamOptions {
        security: NatsSecurity {
            tls_ca: Some(ca.clone().into()),
            ..NatsSecurity::default()
        },
        ..JetStreamOptions::new(&url, 1)
    };
    let secure_url = format!("nats://prism:s3cret@127.0.0.1:{}", server.port);
    // Without the password: refused, and the error says where and why, without the secret.
    let refused = JetStreamLog::connect_with(with_tls(server.url()))
        .err()
        .unwrap();
    let message = format!("{refused:#}");
    assert!(
        message.contains("connecting to NATS at nats://127.0.0.1"),
        "{message}"
    );
    assert!(message.to_lowercase().contains("auth"), "{message}");
    // Without the CA: the server's certificate is not trusted.
    let refused = JetStreamLog::connect(&secure_url, 1).err().unwrap();
    let message = format!("{refused:#}");
    assert!(message.contains("nats://***@127.0.0.1"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
    // With both: the log works.
    let log = EventLog::new(JetStreamLog::connect_with(with_tls(secure_url)).unwrap());
    let appended = log
        .append("s", ExpectedVersion::Exact(0), vec![event()])
        .await
        .unwrap();
    assert_eq!((appended.first_position, appended.stream_version), (1, 1));
    assert_eq!(log.read_from(1, 10).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_append_over_the_servers_batch_limit_is_refused_whole() {
    let server = NatsServer::start();
    let log = EventLog::new(JetStreamLog::connect(&server.url(), 1).unwrap());
    let refused = log
        .append("s", ExpectedVersion::Any, vec![event(); 1001])
        .await;
    match refused {
        Err(AppendError::Invalid(message)) => {
            assert!(message.contains("1001 events"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let appended = log
        .append("s", ExpectedVersion::Exact(0), vec![event(); 1000])
        .await
        .unwrap();
    assert_eq!((appended.first_position, appended.last_position), (1, 1000));
}
