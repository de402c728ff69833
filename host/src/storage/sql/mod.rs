//! The SQL backends: SQLite (embedded default) and PostgreSQL (several
//! replicas), sharing their statements where the dialects agree
//! ([`with_query!`]).
//!
//! SQLite runs in WAL mode with one writer connection and a pool of readers:
//! writes are serialized in-process (no `SQLITE_BUSY` storms), multi-statement
//! writes use `BEGIN IMMEDIATE`, and `busy_timeout` covers other processes.
//! `synchronous = NORMAL` in WAL mode survives a killed process (every commit
//! is in the WAL before it is acknowledged); only an OS crash could lose the
//! last commits.

/// Run `$body` with `$q = sqlx::query($sql)` and `$pool` on the right pool
/// for `read` or `write`; PostgreSQL gets `$1, $2, …` for each `?`. The body
/// is compiled once per backend, so it must not return backend types.
macro_rules! with_query {
    // A literal: no allocation per call. SQLite takes it as is; PostgreSQL's
    // numbered copy is made once per call site and kept.
    ($mode:ident, $db:expr, $sql:literal, |$q:ident, $pool:ident| $body:expr) => {
        match $db {
            $crate::storage::sql::Sql::Sqlite { read: _read, write: _write, .. } => {
                let $pool = with_query!(@pick $mode, _read, _write);
                let $q = sqlx::query($sql);
                $body
            }
            $crate::storage::sql::Sql::Postgres(pool) => {
                static NUMBERED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                let $pool = pool;
                let $q = sqlx::query(
                    NUMBERED.get_or_init(|| $crate::storage::sql::numbered_placeholders($sql)).as_str(),
                );
                $body
            }
        }
    };
    ($mode:ident, $db:expr, $sql:expr, |$q:ident, $pool:ident| $body:expr) => {
        match $db {
            $crate::storage::sql::Sql::Sqlite { read: _read, write: _write, .. } => {
                let $pool = with_query!(@pick $mode, _read, _write);
                let $q = sqlx::query(sqlx::AssertSqlSafe($sql.to_string()));
                $body
            }
            $crate::storage::sql::Sql::Postgres(pool) => {
                let $pool = pool;
                let numbered = $crate::storage::sql::numbered_placeholders($sql);
                let $q = sqlx::query(sqlx::AssertSqlSafe(numbered));
                $body
            }
        }
    };
    (@pick read, $read:ident, $write:ident) => { $read };
    (@pick write, $read:ident, $write:ident) => { $write };
}

/// `?` → `$1`, `$2`, … (the statements here have no `?` inside literals).
pub(crate) fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

mod accounts;
mod components;
mod events;
pub mod group;
mod kv;
mod plugins;
pub mod readers;
mod tx;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

/// How long a connection waits for a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const SQLITE_READERS: u32 = 8;
const POSTGRES_CONNECTIONS: u32 = 16;

use super::{Result, StorageError};

/// A connected, migrated SQL database.
#[derive(Clone, Debug)]
pub enum Sql {
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
        group: group::GroupWriter,
        readers: Option<std::sync::Arc<readers::Readers>>,
    },
    Postgres(PgPool),
}

impl Sql {
    /// Open `database_url` (`postgres://…` or `sqlite:…`) or, without one,
    /// `mercato.db` under `data_dir`; then run the migrations.
    pub async fn connect(database_url: Option<&str>, data_dir: &Path) -> Result<Sql> {
        let db = match database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let options = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .test_before_acquire(false)
                    .max_connections(POSTGRES_CONNECTIONS)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?;
                Sql::Postgres(pool)
            }
            Some(url) if url.starts_with("sqlite:") => {
                Self::sqlite(SqliteConnectOptions::from_str(url)?).await?
            }
            Some(other) => {
                return Err(StorageError::Invalid(format!(
                    "database URL must start with postgres://, sqlite: or memory: (got {:?})",
                    other.split(':').next().unwrap_or_default()
                )));
            }
            None => {
                std::fs::create_dir_all(data_dir)
                    .map_err(|e| StorageError::Invalid(format!("create {}: {e}", data_dir.display())))?;
                Self::sqlite(SqliteConnectOptions::new().filename(data_dir.join("mercato.db"))).await?
            }
        };
        db.migrate().await?;
        Ok(db)
    }

    async fn sqlite(options: SqliteConnectOptions) -> Result<Sql> {
        let path = options.get_filename().to_path_buf();
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // No ping before each acquire: it doubles the round trips of a read.
        let write = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        let read = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(SQLITE_READERS)
            .connect_with(options.read_only(true))
            .await?;
        let group = group::GroupWriter::start(write.clone());
        // A file database gets in-place readers; an in-memory one cannot share them.
        let on_disk = !path.as_os_str().is_empty() && path != std::path::Path::new(":memory:");
        let readers = on_disk.then(|| std::sync::Arc::new(readers::Readers::new(path)));
        Ok(Sql::Sqlite { read, write, group, readers })
    }

    async fn migrate(&self) -> Result<()> {
        match self {
            Sql::Sqlite { write, .. } => sqlx::migrate!("./migrations/sqlite").run(write).await?,
            Sql::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl super::Backend for Sql {
    fn name(&self) -> &'static str {
        match self {
            Sql::Sqlite { .. } => "sqlite",
            Sql::Postgres(_) => "postgres",
        }
    }

    async fn ping(&self) -> Result<()> {
        match self {
            Sql::Sqlite { read, .. } => sqlx::query("SELECT 1").execute(read).await.map(drop)?,
            Sql::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
        }
        Ok(())
    }

    async fn close(&self) {
        match self {
            Sql::Sqlite { read, write, .. } => {
                read.close().await;
                write.close().await;
            }
            Sql::Postgres(pool) => pool.close().await,
        }
    }

    fn postgres(&self) -> Option<&PgPool> {
        match self {
            Sql::Postgres(pool) => Some(pool),
            Sql::Sqlite { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    /// A database remembers each applied migration's checksum and refuses to
    /// start when the file changed since (`migration N was previously applied
    /// but has been modified`): every replica of a deployed shop would stop.
    /// `migrations/released.sha384` (`sha384sum` format) records each file as
    /// it landed; a change to a released one is a new migration instead.
    #[test]
    fn released_migrations_are_never_edited() {
        let recorded: std::collections::BTreeMap<(String, i64), String> =
            include_str!("../../../migrations/released.sha384")
                .lines()
                .filter(|line| !line.trim().is_empty())
                .map(|line| {
                    let (sum, path) = line.split_once("  ").expect("`<sha384>  <dir>/<file>` lines");
                    let (dir, file) = path.split_once('/').expect("a backend directory");
                    let version = file.split('_').next().unwrap().parse().expect("a numbered file");
                    ((dir.to_owned(), version), sum.to_owned())
                })
                .collect();
        let migrators = [
            ("postgres", sqlx::migrate!("./migrations/postgres")),
            ("sqlite", sqlx::migrate!("./migrations/sqlite")),
        ];
        let mut seen = 0;
        for (dir, migrator) in &migrators {
            for migration in migrator.iter() {
                let key = (dir.to_string(), migration.version);
                let sum = hex::encode(&migration.checksum);
                match recorded.get(&key) {
                    Some(released) => assert_eq!(
                        released, &sum,
                        "{dir} migration {} changed after it was released: restore it and \
                         add a new migration instead",
                        migration.version
                    ),
                    None => panic!(
                        "{dir} migration {} is not in migrations/released.sha384: add its \
                         `sha384sum` line (from then on it must not change)",
                        migration.version
                    ),
                }
                seen += 1;
            }
        }
        assert_eq!(seen, recorded.len(), "released.sha384 names a migration that is gone");
    }
}
