//! The host's storage, behind traits: the components' key-value data and
//! transactions ([`kv`], [`tx`]) and the host's own tables as small
//! repositories ([`accounts`], [`components`], [`plugins`], [`events`]: the
//! outbox). Three backends
//! implement them all — SQLite (embedded default), PostgreSQL (several
//! replicas) in [`sql`], and an in-memory one ([`memory`], `memory:`: nothing
//! survives the process; for tests and throwaway shops) — and the shared
//! storage suite (`host/tests/api/storage.rs`) holds them to the same answers.
//! The rest of the host sees only [`Db`], a handle on one of them.

pub mod accounts;
pub mod components;
pub mod events;
pub mod kv;
pub mod memory;
pub mod plugins;
pub mod sql;
pub mod tx;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;

pub use accounts::Accounts;
pub use components::Components;
pub use events::{Events, Webhooks};
pub use kv::KeyValue;
pub use plugins::Plugins;
pub use tx::Transactions;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything a storage backend provides.
#[async_trait]
pub trait Backend:
    KeyValue + Transactions + Accounts + Components + Plugins + Events + Webhooks + std::fmt::Debug
{
    /// `sqlite`, `postgres` or `memory`.
    fn name(&self) -> &'static str;

    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<()>;

    async fn close(&self);

    /// The PostgreSQL pool, where replicas listen for each other's deploys.
    fn postgres(&self) -> Option<&sqlx::PgPool> {
        None
    }
}

/// A connected, migrated database: a cheap handle on one backend. Its
/// methods are the [`Backend`] traits' (callable without importing them).
#[derive(Clone, Debug)]
pub struct Db(Arc<dyn Backend>);

impl Db {
    /// Open `database_url` — `postgres://…`, `sqlite:…` or `memory:` — or,
    /// without one, `mercato.db` under `data_dir`.
    pub async fn connect(database_url: Option<&str>, data_dir: &Path) -> Result<Db> {
        match database_url {
            Some("memory:") => Ok(Db::memory()),
            _ => Ok(Db(Arc::new(sql::Sql::connect(database_url, data_dir).await?))),
        }
    }

    /// A fresh, empty in-memory database.
    pub fn memory() -> Db {
        Db(Arc::new(memory::Memory::default()))
    }

    pub fn backend(&self) -> &'static str {
        self.0.name()
    }
}

impl std::ops::Deref for Db {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
