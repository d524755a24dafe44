//! The nats-server the JetStream tests use is found (or installed under `target/`), is recent
//! enough, and runs JetStream: started here on a free port, its greeting read from the socket.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_recent_nats_server_is_found_or_installed_and_runs_jetstream() {
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let binary = prism_toolchain::nats::nats_server(target).unwrap();
    let store = tempfile::tempdir().unwrap();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut server = Command::new(&binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("nats-server did not listen on {port}: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut greeting = String::new();
    BufReader::new(stream).read_line(&mut greeting).unwrap();
    let _ = server.kill();
    let _ = server.wait();
    // `INFO {...}`: the server's version and whether JetStream is on.
    let info: serde_json::Value =
        serde_json::from_str(greeting.strip_prefix("INFO ").expect(&greeting).trim()).unwrap();
    assert_eq!(info["jetstream"], true, "{info}");
    let version = info["version"].as_str().unwrap();
    assert!(prism_toolchain::nats::supported(version), "{version}");
}

/// A three-server cluster comes up with a JetStream meta leader, survives a SIGKILL of one
/// server and takes it back on the same port; `sync_interval: always` shows in its config.
#[test]
fn a_cluster_starts_loses_a_server_and_takes_it_back() {
    let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let binary = prism_toolchain::nats::nats_server(target).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut servers = prism_toolchain::nats::Servers::start(&binary, dir.path(), 3, true).unwrap();
    assert_eq!(servers.urls().split(',').count(), 3);
    let config = std::fs::read_to_string(dir.path().join("n0.conf")).unwrap();
    assert!(config.contains("sync_interval: always"), "{config}");
    // No stream yet: nobody leads one.
    assert_eq!(servers.stream_leader("PRISM_EVENTS"), None);
    servers.kill(1);
    assert!(TcpStream::connect(("127.0.0.1", servers.port(1))).is_err());
    servers.restart(1).unwrap();
    assert!(TcpStream::connect(("127.0.0.1", servers.port(1))).is_ok());
}
