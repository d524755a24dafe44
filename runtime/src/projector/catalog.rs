//! The catalog (`catalog.redb`): which projectors are deployed, with which module and config.
//! Modules themselves live content-addressed in `modules/<sha256>.wasm` (see [`DataDir`]).

use crate::data_dir::{DataDir, valid_hash, write_atomic};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");

/// The modules each projector ran, most recent first (JSON list of hashes): kept for rollback.
const HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("module_history");

/// Modules kept per projector by default (its current ones included) for rollback.
pub const KEEP_MODULES: usize = 3;

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
    /// How many dead-letter actions (retries, discards) changed the deployment's views. In a
    /// cluster a node keeps a view of this deployment from an earlier ownership only when its
    /// record counts as many: one another owner retried or discarded meanwhile is rebuilt.
    #[serde(default)]
    pub dead_letter_actions: u64,
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
    /// Modules kept per projector (see [`Catalog::collect`]).
    keep: usize,
}

impl Catalog {
    /// Opens the catalog of the data dir `dir`.
    pub fn open(dir: &DataDir, keep: usize) -> Result<Catalog, redb::Error> {
        std::fs::create_dir_all(dir.modules()).map_err(redb::Error::Io)?;
        let db = crate::store::open_database(&dir.catalog(), crate::store::CATALOG_CACHE_BYTES)?;
        let txn = db.begin_write()?;
        txn.open_table(DEPLOYMENTS)?;
        txn.open_table(HISTORY)?;
        txn.commit()?;
        Ok(Catalog {
            db,
            dir: dir.clone(),
            keep: keep.max(1),
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

    /// Records (or replaces) a deployment, durably, and its modules in the projector's history.
    pub fn put(&self, name: &str, deployment: &Deployment) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(DEPLOYMENTS)?;
            let bytes = serde_json::to_vec(deployment).expect("a deployment serializes");
            table.insert(name, bytes.as_slice())?;
            let mut history = txn.open_table(HISTORY)?;
            let mut modules: Vec<String> = match history.get(name)? {
                Some(row) => serde_json::from_slice(row.value()).unwrap_or_default(),
                None => Vec::new(),
            };
            let current = [
                Some(&deployment.serving),
                deployment.trial.as_ref(),
                deployment.pending.as_ref(),
            ];
            for record in current.into_iter().flatten() {
                modules.retain(|m| *m != record.module);
                modules.insert(0, record.module.clone());
            }
            modules.truncate(self.keep.max(current.iter().flatten().count()));
            let bytes = serde_json::to_vec(&modules).expect("a list serializes");
            history.insert(name, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes a deployment and its module history, durably.
    pub fn remove(&self, name: &str) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        txn.open_table(DEPLOYMENTS)?.remove(name)?;
        txn.open_table(HISTORY)?.remove(name)?;
        txn.commit()?;
        Ok(())
    }

    /// Deletes the stored modules and compiled artifacts no projector needs: not in use by a
    /// deployment (serving, on trial, rebuilding) and not among the last `keep` modules of a
    /// projector's history (kept for rollback). Returns the hashes deleted. Call it where no
    /// deploy can be between storing a module and recording it (under the registry's lock).
    pub fn collect(&self) -> Result<Vec<String>, redb::Error> {
        let mut wanted = std::collections::HashSet::new();
        for (_, deployment) in self.deployments()? {
            let current = [
                Some(deployment.serving),
                deployment.trial,
                deployment.pending,
            ];
            wanted.extend(current.into_iter().flatten().map(|r| r.module));
        }
        let txn = self.db.begin_read()?;
        for row in txn.open_table(HISTORY)?.iter()? {
            let (_, modules) = row?;
            let modules: Vec<String> = serde_json::from_slice(modules.value()).unwrap_or_default();
            wanted.extend(modules);
        }
        let mut deleted = Vec::new();
        for hash in self.modules().map_err(redb::Error::Io)? {
            if wanted.contains(&hash) {
                continue;
            }
            let _ = std::fs::remove_file(self.dir.module(&hash));
            let _ = std::fs::remove_file(self.dir.cache().join(format!("{hash}.cwasm")));
            deleted.push(hash);
        }
        if !deleted.is_empty() {
            tracing::info!(
                modules = deleted.len(),
                "collected modules no projector needs"
            );
        }
        Ok(deleted)
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
