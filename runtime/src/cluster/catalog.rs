//! The catalog every node shares: deployments in the KV bucket `PRISM_CATALOG`, written with
//! compare-and-set on the entry's revision (two nodes changing one projector at once: one wins,
//! the other is told the revision it lost to), and module components in the Object Store
//! `PRISM_MODULES` under their SHA-256, checked against it on every download. Each node keeps
//! its compiled code locally.

use anyhow::{Context, Result};
use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use tokio::io::AsyncReadExt;

/// The deployments' bucket.
pub const CATALOG: &str = "PRISM_CATALOG";
/// The modules' object store.
pub const MODULES: &str = "PRISM_MODULES";

/// Why a write of the catalog was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Another node changed the deployment first: it is now at `revision` (0: gone).
    #[error("the deployment changed meanwhile (now at revision {revision})")]
    Changed { revision: u64 },
    /// A downloaded module is not the one its name says (damaged in the store).
    #[error("the stored module {hash} is damaged: its content hashes to {actual}")]
    Damaged { hash: String, actual: String },
    /// The servers failed or did not answer.
    #[error(transparent)]
    Unavailable(#[from] anyhow::Error),
}

/// The shared catalog.
#[derive(Clone)]
pub struct SharedCatalog {
    deployments: kv::Store,
    modules: object_store::ObjectStore,
}

/// A deployment as stored: its record (the catalog's JSON) and the entry's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub record: Bytes,
    pub revision: u64,
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl SharedCatalog {
    /// Opens the catalog, creating its bucket and object store (replicated `replicas` times)
    /// when missing.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<SharedCatalog> {
        let deployments = crate::log::jetstream::protocol::kv_bucket(
            js,
            kv::Config {
                bucket: CATALOG.into(),
                history: 5,
                num_replicas: replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            },
        )
        .await
        .context("opening the catalog's bucket")?;
        let modules = super::object_store(js, MODULES, replicas)
            .await
            .context("opening the modules' object store")?;
        Ok(SharedCatalog {
            deployments,
            modules,
        })
    }

    /// Stores a module component (once: the same bytes are stored under the same name) and
    /// answers its SHA-256 in hex.
    pub async fn put_module(&self, component: &[u8]) -> Result<String> {
        let hash = sha256(component);
        let name = format!("{hash}.wasm");
        if self.modules.info(&name).await.is_ok() {
            return Ok(hash);
        }
        self.modules
            .put(name.as_str(), &mut std::io::Cursor::new(component))
            .await
            .with_context(|| format!("storing the module {hash}"))?;
        Ok(hash)
    }

    /// The module stored as `hash`, checked to hash to it (`None`: none is).
    pub async fn module(&self, hash: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        let mut object = match self.modules.get(format!("{hash}.wasm")).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("fetching the module {hash}"))
                    .into());
            }
        };
        let mut component = Vec::new();
        object
            .read_to_end(&mut component)
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("reading the module {hash}")))?;
        let actual = sha256(&component);
        if actual != hash {
            return Err(CatalogError::Damaged {
                hash: hash.to_string(),
                actual,
            });
        }
        Ok(Some(component))
    }

    /// Every deployment, by projector name.
    pub async fn deployments(&self) -> Result<BTreeMap<String, Stored>> {
        let entries = super::live_entries(&self.deployments, "deployments").await?;
        Ok(entries
            .into_iter()
            .map(|(name, e)| {
                let stored = Stored {
                    record: e.value,
                    revision: e.revision,
                };
                (name, stored)
            })
            .collect())
    }

    /// The deployment of `name`, if any.
    pub async fn get(&self, name: &str) -> Result<Option<Stored>> {
        let entry = self
            .deployments
            .entry(name)
            .await
            .with_context(|| format!("reading the deployment of {name}"))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| Stored {
                record: e.value,
                revision: e.revision,
            }))
    }

    /// Writes the deployment of `name` if it is still at `revision` (`None`: if there is none);
    /// answers the new revision.
    pub async fn put(
        &self,
        name: &str,
        record: Bytes,
        revision: Option<u64>,
    ) -> Result<u64, CatalogError> {
        // `Err(None)`: refused because someone else wrote first.
        let written = match revision {
            None => self
                .deployments
                .create(name, record.clone())
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => None,
                    _ => Some(anyhow::Error::new(e)),
                }),
            Some(revision) => self
                .deployments
                .update(name, record.clone(), revision)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(anyhow::Error::new(e)),
                }),
        };
        match written {
            Ok(revision) => Ok(revision),
            // Refused, or no answer: a write that landed all the same (an answer lost, a retry)
            // holds this record at a later revision.
            Err(error) => match self.get(name).await {
                Ok(Some(now))
                    if now.record == record && revision.is_none_or(|r| now.revision > r) =>
                {
                    Ok(now.revision)
                }
                Ok(now) if error.is_none() => Err(CatalogError::Changed {
                    revision: now.map_or(0, |s| s.revision),
                }),
                Ok(_) | Err(_) => Err(error
                    .unwrap_or_else(|| anyhow::anyhow!("refused"))
                    .context(format!("writing the deployment of {name}"))
                    .into()),
            },
        }
    }

    /// Deletes the deployment of `name` if it is still at `revision`. One already gone is
    /// [`CatalogError::Changed`] at revision 0.
    pub async fn remove(&self, name: &str, revision: u64) -> Result<(), CatalogError> {
        match self
            .deployments
            .delete_expect_revision(name, Some(revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => match self.get(name).await? {
                Some(now) if now.revision != revision => Err(CatalogError::Changed {
                    revision: now.revision,
                }),
                Some(_) => Err(anyhow::Error::new(e)
                    .context(format!("deleting the deployment of {name}"))
                    .into()),
                None => Err(CatalogError::Changed { revision: 0 }),
            },
        }
    }
}
