//! A real nats-server with JetStream for the tests: found or installed by
//! `prism_toolchain::nats` (under `target/tmp`), started on a free loopback port, killed when
//! dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct NatsServer {
    child: Child,
    pub port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// A single nats-server with JetStream, accepting connections.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// [`start`](Self::start) with more arguments for nats-server (TLS, users...).
    pub fn start_with(args: &[&str]) -> NatsServer {
        let binary =
            prism_toolchain::nats::nats_server(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
                .expect("a nats-server for the JetStream tests");
        let store = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        NatsServer {
            child,
            port,
            _store: store,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
