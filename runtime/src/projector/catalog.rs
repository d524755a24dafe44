//! The catalog (`catalog.redb`): which projectors are deployed, with which module and config.
//! Modules themselves live content-addressed in `modules/<sha256>.wasm` (see [`DataDir`]).

use crate::data_dir::{DataDir, valid_hash, write_atomic};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");

/// One deployed projector, as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The generation whose view answers queries, with the code proven on it.
    pub serving: GenerationRecord,
    /// A continue-mode reload on trial on the serving generation's view: it becomes `serving`
    /// once it has applied a batch, and is dropped if its first batch fails. Kept here so a
    /// restart before the trial ends resumes the trial instead of trusting the new code.
    #[serde(default)]
    pub trial: Option<GenerationRecord>,
    /// A generation rebuilding its view in the background, to replace `serving` once it has
    /// caught up with the log.
    pub pending: Option<GenerationRecord>,
    /// Whether the projector is paused.
    pub paused: bool,
    /// Tells this deployment from an earlier one of the same name (deleted since): set when
    /// the name is deployed anew, kept for its life. 0 in catalogs written before it existed.
    #[serde(default)]
    pub incarnation: u64,
}

impl Deployment {
    /// The code deployed last on the serving generation: the one on trial, if any.
    pub fn latest(&self) -> &GenerationRecord {
        self.trial.as_ref().unwrap_or(&self.serving)
    }
}

/// One generation of a projector: a module and config with their own view file
/// (`projectors/<name>/gen-<id>.redb`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// Generation number, growing with each rebuild.
    pub id: u64,
    /// sha256 of the module's component.
    pub module: String,
    /// The configuration string passed to `init`.
    pub config: String,
    /// The view schema version the module declared.
    pub schema_version: u32,
    /// What to do with an event the module fails on.
    #[serde(default)]
    pub on_error: super::ErrorPolicy,
}

impl GenerationRecord {
    /// The record as JSON (how a view records the code proven on it).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a generation record serializes")
    }
}

/// The catalog of deployments, and the module files.
pub struct Catalog {
    db: Database,
    dir: DataDir,
}

impl Catalog {
    /// Opens the catalog of the data dir `dir`.
    pub fn open(dir: &DataDir) -> Result<Catalog, redb::Error> {
        std::fs::create_dir_all(dir.modules()).map_err(redb::Error::Io)?;
        let db = crate::store::open_database(&dir.catalog())?;
        let txn = db.begin_write()?;
        txn.open_table(DEPLOYMENTS)?;
        txn.commit()?;
        Ok(Catalog {
            db,
            dir: dir.clone(),
        })
    }

    /// Every deployment, by name.
    pub fn deployments(&self) -> Result<Vec<(String, Deployment)>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DEPLOYMENTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (name, value) = row?;
            match serde_json::from_slice(value.value()) {
                Ok(deployment) => out.push((name.value().to_string(), deployment)),
                Err(e) => {
                    tracing::error!(projector = name.value(), error = %e, "unreadable catalog entry")
                }
            }
        }
        Ok(out)
    }

    /// Records (or replaces) a deployment, durably.
    pub fn put(&self, name: &str, deployment: &Deployment) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(DEPLOYMENTS)?;
            let bytes = serde_json::to_vec(deployment).expect("a deployment serializes");
            table.insert(name, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes a deployment, durably.
    pub fn remove(&self, name: &str) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        txn.open_table(DEPLOYMENTS)?.remove(name)?;
        txn.commit()?;
        Ok(())
    }

    /// The hashes of every stored module.
    pub fn modules(&self) -> std::io::Result<Vec<String>> {
        let mut hashes = Vec::new();
        for entry in std::fs::read_dir(self.dir.modules())? {
            let name = entry?.file_name();
            if let Some(hash) = name.to_str().and_then(|n| n.strip_suffix(".wasm")) {
                hashes.push(hash.to_string());
            }
        }
        hashes.sort();
        Ok(hashes)
    }

    /// Whether a module is stored.
    pub fn has_module(&self, hash: &str) -> bool {
        valid_hash(hash) && self.dir.module(hash).exists()
    }

    /// Stores a module's component under its hash (atomically and durably), unless it is
    /// there already. Two deploys of one module may store it at the same moment.
    pub fn store_module(&self, hash: &str, component: &[u8]) -> std::io::Result<()> {
        let path = self.dir.module(hash);
        if path.exists() {
            return Ok(());
        }
        write_atomic(&path, component)
    }

    /// Reads a stored module.
    pub fn read_module(&self, hash: &str) -> std::io::Result<Vec<u8>> {
        if !valid_hash(hash) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a module hash",
            ));
        }
        std::fs::read(self.dir.module(hash))
    }
}
