//! A TCP proxy on loopback that can hold what flows through it, each way, and cut its
//! connections: how a test makes a request's answer (or the request itself) late or lost, with
//! the real server behind it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    /// While set, bytes from the client to the server wait in the proxy.
    requests: Arc<AtomicBool>,
    /// While set, bytes from the server to the client wait in the proxy.
    replies: Arc<AtomicBool>,
    /// When the client sends these bytes: hold requests (from them on), or replies.
    triggers: Arc<Triggers>,
    /// Bumped to close every open connection, dropping what waits in it.
    cuts: watch::Sender<u64>,
}

#[derive(Default)]
struct Triggers {
    requests: Mutex<Option<Vec<u8>>>,
    replies: Mutex<Option<Vec<u8>>>,
}

impl Proxy {
    /// Forwards a free loopback port to `target` (on the current tokio runtime).
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0);
        let triggers = Arc::new(Triggers::default());
        let (held_requests, held_replies, cut) =
            (requests.clone(), replies.clone(), cuts.subscribe());
        let armed = triggers.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let watch = Watch {
                    triggers: armed.clone(),
                    requests: held_requests.clone(),
                    replies: held_replies.clone(),
                };
                tokio::spawn(pipe(
                    client_read,
                    server_write,
                    held_requests.clone(),
                    cut.clone(),
                    Some(watch),
                ));
                tokio::spawn(pipe(
                    server_read,
                    client_write,
                    held_replies.clone(),
                    cut.clone(),
                    None,
                ));
            }
        });
        Proxy {
            port,
            requests,
            replies,
            triggers,
            cuts,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Holds (or lets go) what the server sends.
    pub fn hold_replies(&self, hold: bool) {
        self.replies.store(hold, Ordering::SeqCst);
    }

    /// Holds (or lets go) what the client sends.
    pub fn hold_requests(&self, hold: bool) {
        self.requests.store(hold, Ordering::SeqCst);
    }

    /// Holds what the server sends from when the client next sends `pattern` on.
    pub fn hold_replies_after(&self, pattern: &str) {
        *self.triggers.replies.lock().unwrap() = Some(pattern.as_bytes().to_vec());
    }

    /// Holds what the client sends from its next bytes holding `pattern` on (those included).
    pub fn hold_requests_from(&self, pattern: &str) {
        *self.triggers.requests.lock().unwrap() = Some(pattern.as_bytes().to_vec());
    }

    /// Closes every open connection; what was held in them is lost.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }
}

/// What the client's bytes are watched for.
struct Watch {
    triggers: Arc<Triggers>,
    requests: Arc<AtomicBool>,
    replies: Arc<AtomicBool>,
}

impl Watch {
    /// Fires the armed triggers whose pattern `seen` holds ending in its new bytes (those from
    /// `new_from` on; the few before them catch a pattern split between two reads, and a
    /// pattern wholly in them was seen before).
    fn see(&self, seen: &[u8], new_from: usize) {
        for (trigger, hold) in [
            (&self.triggers.requests, &self.requests),
            (&self.triggers.replies, &self.replies),
        ] {
            let mut trigger = trigger.lock().unwrap();
            if let Some(pattern) = trigger.as_deref()
                && seen
                    .windows(pattern.len())
                    .enumerate()
                    .any(|(i, w)| w == pattern && i + pattern.len() > new_from)
            {
                hold.store(true, Ordering::SeqCst);
                *trigger = None;
            }
        }
    }
}

/// Copies `from` to `to`, waiting while `hold` is set, until either side closes or a cut;
/// `watch`es the bytes when given.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hold: Arc<AtomicBool>,
    mut cut: watch::Receiver<u64>,
    watch: Option<Watch>,
) {
    cut.mark_unchanged();
    let mut buffer = vec![0u8; 64 * 1024];
    // The end of the bytes before: a pattern split between two reads is still seen.
    let mut seen: Vec<u8> = Vec::new();
    loop {
        let n = tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut.changed() => return,
        };
        if let Some(watch) = &watch {
            let new_from = seen.len();
            seen.extend_from_slice(&buffer[..n]);
            watch.see(&seen, new_from);
            let keep = seen.len().saturating_sub(64);
            seen.drain(..keep);
        }
        while hold.load(Ordering::SeqCst) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = cut.changed() => return,
            }
        }
        // Let go and cut at once: the cut wins (what was held is lost, as `cut` says).
        if cut.has_changed().unwrap_or(true) {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
