//! How Prism reaches the NATS servers of its JetStream log: addresses, replicas, timeouts and
//! the servers' security (a credentials file, TLS with a private CA, client certificates; a
//! user and password or a token go in the address, `nats://user:pass@host:port`).

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How Prism proves itself to the NATS servers, and which servers it trusts (the `[nats]`
/// table of the config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSecurity {
    /// A NATS credentials file (user JWT and NKey seed), if the servers require one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// PEM root certificates to trust (TLS is then required), if the servers' certificates
    /// come from a private CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// A PEM client certificate, if the servers require mutual TLS (with `tls_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's PEM key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

impl NatsSecurity {
    /// True when nothing is set (the table is then not printed).
    pub fn is_empty(&self) -> bool {
        *self == NatsSecurity::default()
    }

    /// Refuses a certificate without its key, or a key without its certificate.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            anyhow::bail!("[nats] tls_cert and tls_key go together: set both or neither");
        }
        Ok(())
    }
}

/// How to reach the servers and what to expect of them.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// `nats://host:port`, comma-separated (any of a cluster's servers).
    pub urls: String,
    /// How many servers keep each event (1, or 3 in a cluster; 5 at most).
    pub replicas: usize,
    /// How long idempotency keys and event ids are remembered.
    pub idempotency_window: Duration,
    /// How long a request to the server may take before its outcome is unknown.
    pub request_timeout: Duration,
    /// How long a read waits for the server's next message before it gives up (and the
    /// reader, a runner, asks again: any replica may answer a read).
    pub read_timeout: Duration,
    /// How long an append of unknown outcome keeps trying to learn it before answering
    /// [`AppendError::Unknown`](crate::log::AppendError::Unknown).
    pub resolve_within: Duration,
    /// How often the head is read from the server, in case a republished head was missed.
    pub head_poll: Duration,
    pub security: NatsSecurity,
    /// The node's stream index file ([`super::index`]); kept in memory when `None`.
    pub index: Option<PathBuf>,
    /// Whether the index follows the log (`false` only in tests of reads beyond its prefix).
    pub follow_index: bool,
}

impl JetStreamOptions {
    /// The defaults for servers at `urls`, keeping each event on `replicas` servers.
    pub fn new(urls: &str, replicas: usize) -> JetStreamOptions {
        JetStreamOptions {
            urls: urls.to_string(),
            replicas,
            idempotency_window: crate::log::IDEMPOTENCY_WINDOW,
            request_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(1),
            resolve_within: Duration::from_secs(30),
            head_poll: Duration::from_secs(1),
            security: NatsSecurity::default(),
            index: None,
            follow_index: true,
        }
    }

    /// A client connected to one of the servers (it reconnects to any of them by itself).
    pub(super) async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        self.security.check()?;
        let mut options = async_nats::ConnectOptions::new()
            .name("prism")
            .request_timeout(Some(self.request_timeout));
        if let Some(path) = &self.security.credentials {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("reading the NATS credentials {}", path.display()))?;
        }
        if let Some(ca) = &self.security.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.security.tls_cert, &self.security.tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = self
            .urls
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading the NATS addresses {:?}", masked(&self.urls)))?;
        // A user and password, or a token, in an address (async-nats does not read them there).
        if let Some(addr) = urls.iter().find(|a| a.username().is_some()) {
            let user = addr.username().unwrap_or_default().to_string();
            options = match addr.password() {
                Some(password) => options.user_and_password(user, password.to_string()),
                None => options.token(user),
            };
        }
        options
            .connect(urls)
            .await
            .with_context(|| format!("connecting to NATS at {}", masked(&self.urls)))
    }
}

/// `urls` without the passwords or tokens in them, to print.
pub fn masked(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => {
                    format!("{}***{}", &url[..scheme + 3], &url[at..])
                }
                _ => url.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_certificate_needs_its_key() {
        let half = super::NatsSecurity {
            tls_cert: Some("client.pem".into()),
            ..Default::default()
        };
        assert!(half.check().is_err());
        assert!(super::NatsSecurity::default().check().is_ok());
    }

    #[test]
    fn secrets_in_addresses_are_masked() {
        assert_eq!(
            super::masked("nats://u:secret@h1:4222, nats://h2:4222,nats://tok@h3:1"),
            "nats://***@h1:4222,nats://h2:4222,nats://***@h3:1"
        );
    }
}
