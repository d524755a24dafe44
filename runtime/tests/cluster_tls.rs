//! TLS between nodes: two Prism nodes (in this process) on one nats-server, each serving the
//! others on a peer listener over mutual TLS with certificates from a private CA. Requests are
//! forwarded over it and answered exactly (`Prism-Owner` names the other node); the peer
//! listener refuses plain HTTP, a client without a certificate, and one whose certificate
//! another CA issued; the API listener refuses forwarded requests. Last, the server gone, the nodes still stop.

mod common;

use common::nats::NatsServer;
use common::process::free_port;
use common::{Client, artifacts};
use prism::cluster::{ClusterOptions, PeerTls};
use prism::server::Server;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certs(dir: &Path) -> Certs {
    let (ca, cert, key) = common::certs::certificates(dir);
    Certs {
        ca: ca.into(),
        cert: cert.into(),
        key: key.into(),
    }
}

async fn node(nats: &str, id: &str, dir: &Path, certs: &Certs) -> (Server, Client, u16) {
    let peer = free_port();
    let tls = PeerTls {
        listen: ([127, 0, 0, 1], peer).into(),
        cert: certs.cert.clone(),
        key: certs.key.clone(),
        ca: certs.ca.clone(),
    };
    let (server, client) = common::start_with(dir, |config| {
        config.event_log = Some(nats.to_string());
        config.cluster = Some(ClusterOptions {
            node_id: id.to_string(),
            advertise_url: format!("https://127.0.0.1:{peer}"),
            token: "the-cluster-secret".into(),
            lease_ttl: Duration::from_secs(3),
            lease_margin: Duration::from_millis(500),
            snapshot_interval: Duration::from_secs(30),
            snapshots_kept: 3,
            snapshot_upload_rate: 0,
            replicas: 1,
            tls: Some(tls),
        });
    })
    .await;
    (server, client, peer)
}

/// What the peer listener at `port` answers a `GET /health` sent over `tls` (plain TCP when
/// `None`): the start of the answer, or the error that ended the exchange.
async fn ask_peer(port: u16, tls: Option<rustls::ClientConfig>) -> String {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n";
    let mut answer = Vec::new();
    let outcome = match tls {
        None => {
            let mut tcp = tcp;
            tcp.write_all(request).await.unwrap();
            tcp.read_to_end(&mut answer).await
        }
        Some(config) => {
            let connector = tls_listener::rustls::TlsConnector::from(Arc::new(config));
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            match connector.connect(name, tcp).await {
                Err(e) => Err(e),
                Ok(mut stream) => match stream.write_all(request).await {
                    Err(e) => Err(e),
                    Ok(()) => stream.read_to_end(&mut answer).await,
                },
            }
        }
    };
    match outcome {
        Ok(_) => String::from_utf8_lossy(&answer).chars().take(40).collect(),
        Err(e) => format!("error: {e}"),
    }
}

fn client_config(trusting: &Certs, presenting: Option<&Certs>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_file(&trusting.ca).unwrap();
    roots.add(ca).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match presenting {
        None => builder.with_no_client_auth(),
        Some(certs) => {
            let chain =
                vec![rustls::pki_types::CertificateDer::from_pem_file(&certs.cert).unwrap()];
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&certs.key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

use rustls::pki_types::pem::PemObject;

#[tokio::test(flavor = "multi_thread")]
async fn nodes_talk_to_each_other_over_mutual_tls_only() {
    let nats = NatsServer::start();
    let (pki, foreign_pki) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (certs, foreign) = (certs(pki.path()), certs(foreign_pki.path()));
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (one, client_one, peer_one) = node(&nats.url(), "n1", dirs[0].path(), &certs).await;
    let (two, client_two, _) = node(&nats.url(), "n2", dirs[1].path(), &certs).await;
    let clients = [&client_one, &client_two];

    // Four counters deployed through n1: rendezvous hashing gives each node some.
    let names = ["c0", "c1", "c2", "c3"];
    for name in names {
        client_one.deploy(name, artifacts::EVENT_COUNTER).await;
    }
    let events =
        json!([{"type": "A", "data": {}}, {"type": "B", "data": {}}, {"type": "C", "data": {}}]);
    let appended = client_two.append("s", events).await;
    let head = appended["last_position"].as_u64().unwrap();

    // Every counter through both nodes: exact, and answered by each node at least once as
    // the other's forwarder.
    let mut owners = std::collections::BTreeSet::new();
    for client in clients {
        for name in names {
            let path = format!("/projectors/{name}/view/total?min_position={head}");
            let deadline = Instant::now() + Duration::from_secs(60);
            let reply = loop {
                let reply = client.get(&path).await;
                if reply.status != 503 {
                    break reply;
                }
                assert!(Instant::now() < deadline, "{path}: {}", reply.body);
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(
                reply.status, 200,
                "{path} via {}: {}",
                client.base, reply.body
            );
            assert_eq!(reply.body, json!(3), "{path} via {}", client.base);
            let owner = reply.headers["prism-owner"].to_str().unwrap().to_string();
            owners.insert((client.base.clone(), owner));
        }
    }
    let answered: Vec<_> = owners.iter().map(|(_, owner)| owner.clone()).collect();
    assert!(
        answered.contains(&"n1".to_string()) && answered.contains(&"n2".to_string()),
        "each node should own some of {names:?}: {owners:?}"
    );
    assert!(owners.len() >= 3, "nothing was forwarded: {owners:?}");

    // The peer listener: mutual TLS with the cluster's CA, nothing else.
    let trusted = ask_peer(peer_one, Some(client_config(&certs, Some(&certs)))).await;
    assert!(trusted.starts_with("HTTP/1.1 200"), "{trusted}");
    let plain = ask_peer(peer_one, None).await;
    assert!(
        !plain.starts_with("HTTP/1.1"),
        "plain HTTP answered: {plain}"
    );
    let anonymous = ask_peer(peer_one, Some(client_config(&certs, None))).await;
    assert!(
        anonymous.starts_with("error"),
        "no client certificate: {anonymous}"
    );
    let stranger = ask_peer(peer_one, Some(client_config(&certs, Some(&foreign)))).await;
    assert!(
        stranger.starts_with("error"),
        "another CA's certificate: {stranger}"
    );

    // The API listener takes no forwarded request, token or not: nodes talk over TLS.
    let sneaked = reqwest::Client::new()
        .get(format!("{}/projectors/c0/view/total", client_one.base))
        .header("prism-forwarded-by", "n2")
        .header("prism-lease-revision", "1")
        .header("prism-cluster-token", "the-cluster-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(
        sneaked.status().as_u16(),
        401,
        "a forwarded request on the API listener"
    );
    println!(
        "peer listener: trusted {trusted:?}; plain {plain:?}; no certificate {anonymous:?}; \
         another CA {stranger:?}; answers by (node asked, owner): {owners:?}"
    );
    // A node whose servers are gone still stops (its leases expire by themselves).
    drop(nats);
    let stopped = tokio::time::timeout(Duration::from_secs(30), async {
        two.stop().await;
        one.stop().await;
    })
    .await;
    assert!(
        stopped.is_ok(),
        "nodes whose NATS servers are gone did not stop"
    );
}
