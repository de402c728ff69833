//! SQLite reads without a thread handoff. sqlx runs each SQLite connection on
//! a worker thread, so every read pays two cross-thread wake-ups — most of
//! the ~55 µs a key read costs. A read of a few rows by primary key in WAL
//! mode takes a few microseconds and never waits for the writer, so these
//! reads run in place, on the calling task's thread, on a small pool of
//! read-only rusqlite connections to the same file (statements prepared once
//! per connection). Key listings run here too: each is one bounded range of the
//! primary key (at most `kv::LIST_PAGE` + 1 keys).

use std::path::PathBuf;
use std::sync::Mutex;

use super::{Result, StorageError};

/// Idle connections kept; more may be opened under a burst and are dropped.
const KEEP: usize = 8;

#[derive(Debug)]
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

fn sqlite(e: rusqlite::Error) -> StorageError {
    StorageError::Invalid(format!("sqlite read: {e}"))
}

impl Readers {
    pub fn new(path: PathBuf) -> Readers {
        Readers { path, idle: Mutex::new(Vec::new()) }
    }

    fn open(&self) -> Result<rusqlite::Connection> {
        use rusqlite::OpenFlags;
        let flags =
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = rusqlite::Connection::open_with_flags(&self.path, flags).map_err(sqlite)?;
        conn.busy_timeout(super::BUSY_TIMEOUT).map_err(sqlite)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    /// Run `f` on a read-only connection.
    pub fn with<T>(&self, f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>) -> Result<T> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => self.open()?,
        };
        let result = f(&conn).map_err(sqlite);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < KEEP {
            idle.push(conn);
        }
        result
    }
}
