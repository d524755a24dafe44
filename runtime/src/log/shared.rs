//! The log's open database, shared by its readers and its writer, and replaced when an I/O
//! error failed it: redb refuses every operation on a database whose write failed (a full disk,
//! say) until it is closed and opened again. The writer then reopens it, and the log recovers by
//! itself once a commit succeeds again.

use super::ReadError;
use parking_lot::{Mutex, RwLock};
use redb::Database;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) struct Shared {
    path: PathBuf,
    /// redb's page cache for the file, kept when it is reopened.
    cache_bytes: usize,
    db: RwLock<Option<Arc<Database>>>,
    /// Why appends fail, while they do (shown by `/ready`).
    trouble: Mutex<Option<String>>,
}

impl Shared {
    pub(super) fn new(path: PathBuf, db: Database, cache_bytes: usize) -> Shared {
        Shared {
            path,
            cache_bytes,
            db: RwLock::new(Some(Arc::new(db))),
            trouble: Mutex::new(None),
        }
    }

    /// The open database, unless it is being reopened or could not be.
    pub(super) fn get(&self) -> Result<Arc<Database>, ReadError> {
        self.db.read().clone().ok_or_else(|| {
            ReadError::Unavailable(
                self.trouble()
                    .unwrap_or_else(|| "the event log is being reopened".into()),
            )
        })
    }

    pub(super) fn trouble(&self) -> Option<String> {
        self.trouble.lock().clone()
    }

    pub(super) fn set_trouble(&self, trouble: Option<String>) {
        *self.trouble.lock() = trouble;
    }

    /// Whether writing works again: a 1 MiB file written and synced next to the log (a full
    /// disk refuses it), then the database reopened (redb refuses a database whose write
    /// failed until then). Clears the trouble and returns the reopened database if so.
    pub(super) fn probe(&self) -> Option<Arc<Database>> {
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let written = tempfile::NamedTempFile::new_in(dir).and_then(|mut file| {
            use std::io::Write as _;
            file.write_all(&vec![0u8; 1 << 20])?;
            file.as_file().sync_all()
        });
        if written.is_err() {
            return None;
        }
        let current = self.db.read().clone();
        let reopened = match current {
            Some(db) => Ok(db),
            None => self.reopen(),
        };
        match reopened {
            Ok(db) => {
                tracing::info!("the event log can write again");
                self.set_trouble(None);
                Some(db)
            }
            Err(e) => {
                tracing::warn!(error = %e, "reopening the event log failed; trying again in a second");
                None
            }
        }
    }

    /// Closes the database (once the reads in progress are done) and opens it again.
    pub(super) fn reopen(&self) -> Result<Arc<Database>, redb::Error> {
        let mut slot = self.db.write();
        if let Some(mut old) = slot.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(_) if Instant::now() >= deadline => {
                        return Err(redb::Error::Corrupted(
                            "the event log could not be closed to be reopened: a read held it"
                                .into(),
                        ));
                    }
                    Err(still) => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        let db = Arc::new(crate::store::open_database(&self.path, self.cache_bytes)?);
        *slot = Some(db.clone());
        Ok(db)
    }
}
