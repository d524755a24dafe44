//! What the cluster tests ask of their nodes: owners, live nodes, views once settled.

use super::Client;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Each projector's owner, by name.
pub async fn owners(client: &Client) -> HashMap<String, String> {
    let reply = client.get("/cluster").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["projectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["owner"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// The base URLs of nodes listening on `ports` of the loopback.
pub fn local_bases(ports: &[u16]) -> Vec<String> {
    ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect()
}

/// Waits until every client's node sees `n` live nodes.
pub async fn wait_for_nodes(clients: &[Client], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for client in clients {
        loop {
            let reply = client.get("/cluster").await;
            if reply.status == 200 && reply.body["nodes"].as_array().map(Vec::len) == Some(n) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the nodes did not see each other"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The whole view of `name` through `client` once it has applied the log up to `head`: asked
/// again while the projector moves between nodes (503; the node that came back takes its
/// share at the end of the test).
pub async fn settled_view(client: &Client, name: &str, head: u64) -> Map<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    'again: loop {
        wait_applied(client, name, head).await;
        let mut view = Map::new();
        let mut params = prism_client::wire::ScanParams {
            limit: Some(1000),
            ..Default::default()
        };
        loop {
            match client.api.scan(name, &params).await {
                Ok(page) => {
                    for item in page.items {
                        let item = serde_json::to_value(item).unwrap();
                        let key = item["key"].as_str().unwrap().to_string();
                        view.insert(key, item["value"].clone());
                    }
                    match page.next {
                        Some(next) => params.after = Some(next),
                        None => return view,
                    }
                }
                Err(e) if e.to_string().contains("503") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'again;
                }
                Err(e) => panic!("scan {name} through {}: {e}", client.base),
            }
        }
    }
}

/// Waits until projector `name`, asked through `client`, has applied the log up to `head`
/// (503s while it moves between nodes).
pub async fn wait_applied(client: &Client, name: &str, head: u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = client.get(&format!("/projectors/{name}")).await;
        if status.status == 200 {
            assert_ne!(status.body["state"], "faulted", "{name}: {}", status.body);
            if status.body["checkpoint"].as_u64() >= Some(head) && status.body["rebuild"].is_null()
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not reach {head} through {}: {} {}",
            client.base,
            status.status,
            status.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn same_as_model(name: &str, view: &Map<String, Value>, want: &Map<String, Value>) {
    for (key, value) in want {
        assert_eq!(view.get(key), Some(value), "{name}/{key}");
    }
    assert_eq!(view.len(), want.len(), "{name} has keys the model has not");
}

/// The views the node behind `client` restored when it adopted its projectors: projector →
/// (snapshot's checkpoint, checkpoint of the view it kept).
pub async fn restores(client: &Client) -> std::collections::BTreeMap<String, (u64, u64)> {
    let reply = client.get("/cluster").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["restored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let number = |field: &str| r[field].as_u64().unwrap();
            let name = r["projector"].as_str().unwrap().to_string();
            (name, (number("checkpoint"), number("local")))
        })
        .collect()
}
