//! TLS between nodes (an option): each node serves the requests other nodes forward to it on a
//! peer listener of its own, over TLS, and accepts a connection only from a peer presenting a
//! certificate issued by the cluster's CA (mutual TLS); it forwards only over TLS, checking
//! the owner's certificate against the same CA. The cluster token is still sent and checked.
//! Clients keep talking to the node's API listener as before.

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;

/// The files a node's TLS with its peers is made of (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTls {
    /// Where this node serves the requests other nodes forward to it.
    pub listen: std::net::SocketAddr,
    /// This node's certificate chain: the peer listener presents it, and so does the node
    /// when it forwards (client authentication).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that issued every node's certificate: the only one trusted between nodes.
    pub ca: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerTls {
    fn chain(&self) -> Result<Vec<CertificateDer<'static>>> {
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading the certificate {}", self.cert.display()))?;
        anyhow::ensure!(
            !chain.is_empty(),
            "{} holds no certificate",
            self.cert.display()
        );
        Ok(chain)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("reading the private key {}", self.key.display()))
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>> {
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&self.ca)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading the CA {}", self.ca.display()))?;
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("a certificate of {}", self.ca.display()))?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "{} holds no certificate",
            self.ca.display()
        );
        Ok(Arc::new(roots))
    }

    /// What the peer listener accepts: TLS 1.2 or 1.3, a client certificate issued by the CA.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
                .build()
                .context("the CA of the cluster's TLS")?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain()?, self.key()?)
            .context("the certificate and key of the cluster's TLS")?;
        Ok(Arc::new(config))
    }

    /// What a forwarding node trusts and presents: the CA, its own certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain()?, self.key()?)
            .context("the certificate and key of the cluster's TLS")
    }
}
