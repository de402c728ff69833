//! The component registry on SQLite and PostgreSQL (NOTIFY announces a
//! change to the other replicas).

use async_trait::async_trait;
use sqlx::Row;

use super::Sql;
use crate::storage::components::{ActivationRow, ActiveRow, CHANNEL, CanaryRow, Components, VersionRow};
use crate::storage::{Result, StorageError};

/// Ok(true): the statement ran; Ok(false): it lost a unique-key race with
/// another writer (another replica deploying at the same moment) — retry.
fn ran(result: std::result::Result<(), sqlx::Error>) -> Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

const RETRIES: usize = 5;

/// [`Components::promote_canary`] in one transaction of either backend:
/// `Ok(false)` when the canary had ended.
macro_rules! promote_canary {
    ($pool:expr, $sql:expr, $component:expr, $seq:expr, $now:expr) => {{
        async {
            let mut tx = $pool.begin().await?;
            let ended = sqlx::query(sqlx::AssertSqlSafe($sql(
                "UPDATE component_canaries SET ended_at = ?, outcome = 'promoted', \
                 reason = 'promoted by the operator' \
                 WHERE component = ? AND seq = ? AND ended_at IS NULL RETURNING version",
            )))
            .bind($now)
            .bind($component)
            .bind($seq)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = ended else { return Ok::<bool, sqlx::Error>(false) };
            let version: i64 = row.get(0);
            sqlx::query(sqlx::AssertSqlSafe($sql(
                "INSERT INTO component_activations (component, seq, version, activated_at) \
                 SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ? FROM component_activations WHERE component = ?",
            )))
            .bind($component)
            .bind(version)
            .bind($now)
            .bind($component)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        }
        .await
    }};
}

const CANARY_COLUMNS: &str = "seq, component, version, share, started_at, ended_at, outcome, reason";

macro_rules! canary_row {
    ($r:expr) => {
        CanaryRow {
            seq: $r.get(0),
            component: $r.get(1),
            version: $r.get(2),
            share: $r.get(3),
            started_at: $r.get(4),
            ended_at: $r.get(5),
            outcome: $r.get(6),
            reason: $r.get(7),
        }
    };
}

#[async_trait]
impl Components for Sql {
    /// Record `bytes` as a version of `component` (once per digest) and give
    /// its version number.
    async fn put_component_version(
        &self,
        component: &str,
        digest: &str,
        bytes: &[u8],
        source: &str,
        now: i64,
    ) -> Result<i64> {
        let size = bytes.len() as i64;
        for _ in 0..RETRIES {
            if let Some(v) = self.component_version_by_digest(component, digest).await? {
                return Ok(v.version);
            }
            let inserted = with_query!(
                write,
                self,
                "INSERT INTO component_versions (component, version, digest, bytes, size, source, created_at) \
                 SELECT ?, COALESCE(MAX(version), 0) + 1, ?, ?, ?, ?, ? FROM component_versions \
                 WHERE component = ? ON CONFLICT (component, digest) DO NOTHING",
                |q, pool| q
                    .bind(component)
                    .bind(digest)
                    .bind(bytes)
                    .bind(size)
                    .bind(source)
                    .bind(now)
                    .bind(component)
                    .execute(pool)
                    .await
                    .map(drop)
            );
            // Inserted or lost a race: either way the next round finds it.
            ran(inserted)?;
        }
        self.component_version_by_digest(component, digest)
            .await?
            .map(|v| v.version)
            .ok_or_else(|| StorageError::Invalid(format!("{component}: could not record version {digest}")))
    }

    async fn component_version_by_digest(&self, component: &str, digest: &str) -> Result<Option<VersionRow>> {
        Ok(with_query!(
            read,
            self,
            "SELECT version, digest, size, source, created_at FROM component_versions \
             WHERE component = ? AND digest = ?",
            |q, pool| q.bind(component).bind(digest).fetch_optional(pool).await?.map(|r| version_row(&r, 0))
        ))
    }

    /// Every version of `component`, oldest first.
    async fn component_versions(&self, component: &str) -> Result<Vec<VersionRow>> {
        Ok(with_query!(
            read,
            self,
            "SELECT version, digest, size, source, created_at FROM component_versions \
             WHERE component = ? ORDER BY version",
            |q, pool| q.bind(component).fetch_all(pool).await?.iter().map(|r| version_row(r, 0)).collect()
        ))
    }

    async fn component_bytes(&self, component: &str, version: i64) -> Result<Option<Vec<u8>>> {
        Ok(with_query!(
            read,
            self,
            "SELECT bytes FROM component_versions WHERE component = ? AND version = ?",
            |q, pool| q
                .bind(component)
                .bind(version)
                .fetch_optional(pool)
                .await?
                .map(|r| r.get::<Vec<u8>, _>(0))
        ))
    }

    /// The active version of `component`, if it has one.
    async fn active_component(&self, component: &str) -> Result<Option<ActiveRow>> {
        Ok(with_query!(
            read,
            self,
            "SELECT v.version, v.digest, v.size, v.source, v.created_at, a.seq, a.activated_at \
             FROM component_activations a JOIN component_versions v \
               ON v.component = a.component AND v.version = a.version \
             WHERE a.component = ? AND a.rolled_back_at IS NULL ORDER BY a.seq DESC LIMIT 1",
            |q, pool| q.bind(component).fetch_optional(pool).await?.map(|r| ActiveRow {
                version: version_row(&r, 0),
                seq: r.get(5),
                activated_at: r.get(6),
            })
        ))
    }

    /// Activations of `component`, newest first (at most `limit`); with
    /// `live_only`, those not rolled back.
    async fn component_activations(
        &self,
        component: &str,
        live_only: bool,
        limit: i64,
    ) -> Result<Vec<ActivationRow>> {
        Ok(with_query!(
            read,
            self,
            "SELECT seq, version, activated_at, rolled_back_at FROM component_activations \
             WHERE component = ? AND (rolled_back_at IS NULL OR ?) ORDER BY seq DESC LIMIT ?",
            |q, pool| q
                .bind(component)
                .bind(!live_only)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| ActivationRow {
                    seq: r.get(0),
                    version: r.get(1),
                    activated_at: r.get(2),
                    rolled_back_at: r.get(3),
                })
                .collect()
        ))
    }

    /// Make `version` the active version of `component` (a new activation on
    /// top), unless it already is. Announces the change to other replicas.
    async fn activate_component(&self, component: &str, version: i64, now: i64) -> Result<()> {
        for _ in 0..RETRIES {
            if self.active_component(component).await?.is_some_and(|a| a.version.version == version) {
                return Ok(());
            }
            let inserted = with_query!(
                write,
                self,
                "INSERT INTO component_activations (component, seq, version, activated_at) \
                 SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ? FROM component_activations WHERE component = ?",
                |q, pool| q
                    .bind(component)
                    .bind(version)
                    .bind(now)
                    .bind(component)
                    .execute(pool)
                    .await
                    .map(drop)
            );
            if ran(inserted)? {
                self.announce_committed(component).await;
                return Ok(());
            }
        }
        Err(StorageError::Invalid(format!("{component}: too many concurrent activations, try again")))
    }

    /// Roll back the newest activation of `component` whose sequence number
    /// is `seq` (so two racing rollbacks roll back one activation, not two).
    /// False when `seq` is no longer the newest live activation.
    async fn roll_back_component(&self, component: &str, seq: i64, now: i64) -> Result<bool> {
        let changed = with_query!(
            write,
            self,
            "UPDATE component_activations SET rolled_back_at = ? \
             WHERE component = ? AND seq = ? AND rolled_back_at IS NULL",
            |q, pool| q.bind(now).bind(component).bind(seq).execute(pool).await?.rows_affected()
        );
        if changed == 1 {
            self.announce_committed(component).await;
        }
        Ok(changed == 1)
    }

    async fn start_canary(
        &self,
        component: &str,
        version: i64,
        share: i64,
        now: i64,
    ) -> Result<Option<CanaryRow>> {
        let inserted = with_query!(
            write,
            self,
            "INSERT INTO component_canaries (component, version, share, started_at) VALUES (?, ?, ?, ?) \
             RETURNING seq",
            |q, pool| q
                .bind(component)
                .bind(version)
                .bind(share)
                .bind(now)
                .fetch_one(pool)
                .await
                .map(|r| r.get::<i64, _>(0))
        );
        match inserted {
            Ok(seq) => {
                self.announce_committed(component).await;
                Ok(Some(CanaryRow {
                    seq,
                    component: component.to_string(),
                    version,
                    share,
                    started_at: now,
                    ended_at: None,
                    outcome: None,
                    reason: None,
                }))
            }
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn promote_canary(&self, component: &str, seq: i64, now: i64) -> Result<bool> {
        for _ in 0..RETRIES {
            let done = match self {
                Sql::Sqlite { write, .. } => {
                    promote_canary!(write, |s: &str| s.to_string(), component, seq, now)
                }
                Sql::Postgres(pool) => {
                    promote_canary!(pool, super::numbered_placeholders, component, seq, now)
                }
            };
            match done {
                Ok(promoted) => {
                    if promoted {
                        self.announce_committed(component).await;
                    }
                    return Ok(promoted);
                }
                // Another activation took the sequence number: again.
                Err(sqlx::Error::Database(d)) if d.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StorageError::Invalid(format!("{component}: too many concurrent activations, try again")))
    }

    async fn live_canaries(&self) -> Result<Vec<CanaryRow>> {
        let sql =
            format!("SELECT {CANARY_COLUMNS} FROM component_canaries WHERE ended_at IS NULL ORDER BY seq");
        Ok(with_query!(read, self, sql.as_str(), |q, pool| q
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| canary_row!(r))
            .collect::<Vec<_>>()))
    }

    async fn component_canaries(&self, component: &str, limit: i64) -> Result<Vec<CanaryRow>> {
        let sql = format!(
            "SELECT {CANARY_COLUMNS} FROM component_canaries WHERE component = ? ORDER BY seq DESC LIMIT ?"
        );
        Ok(with_query!(read, self, sql.as_str(), |q, pool| q
            .bind(component)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| canary_row!(r))
            .collect::<Vec<_>>()))
    }

    async fn end_canary(
        &self,
        component: &str,
        seq: i64,
        outcome: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool> {
        let changed = with_query!(
            write,
            self,
            "UPDATE component_canaries SET ended_at = ?, outcome = ?, reason = ? \
             WHERE component = ? AND seq = ? AND ended_at IS NULL",
            |q, pool| q
                .bind(now)
                .bind(outcome)
                .bind(reason)
                .bind(component)
                .bind(seq)
                .execute(pool)
                .await?
                .rows_affected()
        );
        if changed == 1 {
            self.announce_committed(component).await;
        }
        Ok(changed == 1)
    }
}

impl Sql {
    /// [`Sql::announce`] after a commit: a failure is logged, not returned
    /// (the change is made; the replicas' periodic re-check finds it).
    async fn announce_committed(&self, component: &str) {
        if let Err(e) = self.announce(component).await {
            tracing::warn!(component, error = %e, "could not announce a committed change; replicas re-check");
        }
    }

    /// Tell the other replicas (PostgreSQL `NOTIFY`) that `component` changed.
    async fn announce(&self, component: &str) -> Result<()> {
        if let Sql::Postgres(pool) = self {
            sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(component).execute(pool).await?;
        }
        Ok(())
    }
}

fn version_row<R: Row>(r: &R, at: usize) -> VersionRow
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    VersionRow {
        version: r.get(at),
        digest: r.get(at + 1),
        size: r.get(at + 2),
        source: r.get(at + 3),
        created_at: r.get(at + 4),
    }
}
