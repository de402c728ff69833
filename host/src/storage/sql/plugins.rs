//! Pricing plugins on SQLite and PostgreSQL.

use async_trait::async_trait;
use sqlx::Row;

use super::Sql;
use crate::storage::Result;
use crate::storage::plugins::{
    CountRow, PluginErrorRow, PluginRow, Plugins, RECENT_ERRORS, Retention, RunRow, ShadowRow,
};

/// Deletes a binary that no merchant's plugin or shadow and no kept run
/// refers to.
const DROP_UNUSED_BLOB: &str = "DELETE FROM plugin_blobs WHERE digest = ? \
     AND NOT EXISTS (SELECT 1 FROM merchant_plugins WHERE digest = ?) \
     AND NOT EXISTS (SELECT 1 FROM plugin_shadows WHERE digest = ?) \
     AND NOT EXISTS (SELECT 1 FROM plugin_runs WHERE digest = ?)";
const INSERT_RUN: &str = "INSERT INTO plugin_runs (id, merchant_id, at, digest, outcome, size, record) \
     VALUES (?, ?, ?, ?, ?, ?, ?)";
/// Keeps a merchant's newest `?3` runs.
const PRUNE_BY_COUNT: &str = "DELETE FROM plugin_runs WHERE merchant_id = ? AND seq <= \
     (SELECT seq FROM plugin_runs WHERE merchant_id = ? ORDER BY seq DESC LIMIT 1 OFFSET ?) RETURNING digest";
/// Keeps a merchant's newest runs that add up to at most `?3` bytes.
const PRUNE_BY_BYTES: &str = "DELETE FROM plugin_runs WHERE merchant_id = ? AND seq <= \
     (SELECT seq FROM (SELECT seq, SUM(size) OVER (ORDER BY seq DESC) AS total \
      FROM plugin_runs WHERE merchant_id = ?) t WHERE total > ? ORDER BY seq DESC LIMIT 1) RETURNING digest";

/// Keeps a merchant's runs of its `?3` most recently run binaries.
const PRUNE_BY_BINARIES: &str = "DELETE FROM plugin_runs WHERE merchant_id = ? AND digest NOT IN \
     (SELECT digest FROM plugin_runs WHERE merchant_id = ? GROUP BY digest ORDER BY MAX(seq) DESC LIMIT ?) \
     RETURNING digest";

const ADD_COUNT: &str = "INSERT INTO plugin_counts (merchant_id, digest, metric, bucket, runs) \
     VALUES (?, ?, ?, ?, ?) ON CONFLICT (merchant_id, digest, metric, bucket) \
     DO UPDATE SET runs = plugin_counts.runs + excluded.runs";
/// Forgets a merchant's counts of binaries nothing of it refers to.
const PRUNE_COUNTS: &str = "DELETE FROM plugin_counts WHERE merchant_id = ? AND digest NOT IN \
     (SELECT digest FROM merchant_plugins WHERE merchant_id = ? \
      UNION SELECT digest FROM plugin_shadows WHERE merchant_id = ? \
      UNION SELECT digest FROM plugin_runs WHERE merchant_id = ?)";

/// [`Plugins::add_plugin_counts`] in one transaction of either backend; in
/// the rows' order (sorted), so that replicas adding to the same rows take
/// their row locks in one order.
macro_rules! add_counts {
    ($pool:expr, $sql:expr, $counts:expr) => {{
        let mut tx = $pool.begin().await?;
        let mut merchants: Vec<&str> = Vec::new();
        for c in $counts {
            sqlx::query(sqlx::AssertSqlSafe($sql(ADD_COUNT)))
                .bind(&c.merchant_id)
                .bind(&c.digest)
                .bind(&c.metric)
                .bind(&c.bucket)
                .bind(c.runs)
                .execute(&mut *tx)
                .await?;
            if !merchants.contains(&c.merchant_id.as_str()) {
                merchants.push(&c.merchant_id);
            }
        }
        for merchant in merchants {
            sqlx::query(sqlx::AssertSqlSafe($sql(PRUNE_COUNTS)))
                .bind(merchant)
                .bind(merchant)
                .bind(merchant)
                .bind(merchant)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }};
}

/// A `plugin_runs` row (`seq, id, merchant_id, at, digest, outcome, record`)
/// of either backend.
macro_rules! run_row {
    ($r:expr) => {
        RunRow {
            seq: $r.get(0),
            id: $r.get(1),
            merchant_id: $r.get(2),
            at: $r.get(3),
            digest: $r.get(4),
            outcome: $r.get(5),
            record: $r.get(6),
        }
    };
}

/// [`Plugins::record_plugin_runs`] in one transaction of either backend.
macro_rules! record_runs {
    ($pool:expr, $sql:expr, $runs:expr, $retention:expr) => {{
        let mut tx = $pool.begin().await?;
        let mut merchants: Vec<&str> = Vec::new();
        for run in $runs {
            sqlx::query(sqlx::AssertSqlSafe($sql(INSERT_RUN)))
                .bind(&run.id)
                .bind(&run.merchant_id)
                .bind(run.at)
                .bind(&run.digest)
                .bind(&run.outcome)
                .bind(run.record.len() as i64)
                .bind(&run.record)
                .execute(&mut *tx)
                .await?;
            if !merchants.contains(&run.merchant_id.as_str()) {
                merchants.push(&run.merchant_id);
            }
        }
        let mut pruned: Vec<String> = Vec::new();
        for merchant in merchants {
            for (sql, bound) in [
                (PRUNE_BY_BINARIES, $retention.binaries),
                (PRUNE_BY_COUNT, $retention.runs),
                (PRUNE_BY_BYTES, $retention.bytes),
            ] {
                let rows = sqlx::query(sqlx::AssertSqlSafe($sql(sql)))
                    .bind(merchant)
                    .bind(merchant)
                    .bind(bound)
                    .fetch_all(&mut *tx)
                    .await?;
                pruned.extend(rows.iter().map(|r| r.get::<String, _>(0)));
            }
        }
        pruned.sort();
        pruned.dedup();
        for digest in &pruned {
            sqlx::query(sqlx::AssertSqlSafe($sql(DROP_UNUSED_BLOB)))
                .bind(digest)
                .bind(digest)
                .bind(digest)
                .bind(digest)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }};
}

/// [`Plugins::promote_shadow`] in one transaction of either backend.
macro_rules! promote_shadow {
    ($pool:expr, $sql:expr, $merchant:expr, $now:expr) => {{
        let mut tx = $pool.begin().await?;
        let shadow: Option<String> =
            sqlx::query(sqlx::AssertSqlSafe($sql("SELECT digest FROM plugin_shadows WHERE merchant_id = ?")))
                .bind($merchant)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get(0));
        match shadow {
            None => None,
            Some(digest) => {
                let old: Option<String> = sqlx::query(sqlx::AssertSqlSafe(
                    $sql("SELECT digest FROM merchant_plugins WHERE merchant_id = ?"),
                ))
                .bind($merchant)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.get(0));
                sqlx::query(sqlx::AssertSqlSafe($sql(
                    "INSERT INTO merchant_plugins (merchant_id, digest, uploaded_at) VALUES (?, ?, ?) \
                     ON CONFLICT (merchant_id) DO UPDATE SET digest = excluded.digest, uploaded_at = excluded.uploaded_at",
                )))
                .bind($merchant)
                .bind(&digest)
                .bind($now)
                .execute(&mut *tx)
                .await?;
                for statement in ["DELETE FROM plugin_shadows WHERE merchant_id = ?", "DELETE FROM plugin_errors WHERE merchant_id = ?"] {
                    sqlx::query(sqlx::AssertSqlSafe($sql(statement))).bind($merchant).execute(&mut *tx).await?;
                }
                if let Some(old) = old.filter(|old| old != &digest) {
                    sqlx::query(sqlx::AssertSqlSafe($sql(DROP_UNUSED_BLOB)))
                        .bind(&old)
                        .bind(&old)
                        .bind(&old)
                        .bind(&old)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Some(digest)
            }
        }
    }};
}

#[async_trait]
impl Plugins for Sql {
    /// Store `bytes` under `digest` (once) and make it `merchant`'s plugin.
    async fn put_plugin(&self, merchant: &str, digest: &str, bytes: &[u8], now: i64) -> Result<()> {
        let size = bytes.len() as i64;
        with_query!(
            write,
            self,
            "INSERT INTO plugin_blobs (digest, bytes, size, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (digest) DO NOTHING",
            |q, pool| q.bind(digest).bind(bytes).bind(size).bind(now).execute(pool).await?.rows_affected()
        );
        let previous = self.plugin(merchant).await?.map(|p| p.digest);
        with_query!(
            write,
            self,
            "INSERT INTO merchant_plugins (merchant_id, digest, uploaded_at) VALUES (?, ?, ?) \
             ON CONFLICT (merchant_id) DO UPDATE SET digest = excluded.digest, uploaded_at = excluded.uploaded_at",
            |q, pool| q.bind(merchant).bind(digest).bind(now).execute(pool).await?.rows_affected()
        );
        // Errors of the replaced version say nothing about this one.
        self.clear_plugin_errors(merchant).await?;
        if let Some(old) = previous.filter(|old| old != digest) {
            self.drop_unused_blob(&old).await?;
        }
        Ok(())
    }

    /// Remove `merchant`'s plugin; false if there was none.
    async fn delete_plugin(&self, merchant: &str) -> Result<bool> {
        let Some(current) = self.plugin(merchant).await? else { return Ok(false) };
        let deleted =
            with_query!(write, self, "DELETE FROM merchant_plugins WHERE merchant_id = ?", |q, pool| q
                .bind(merchant)
                .execute(pool)
                .await?
                .rows_affected());
        self.clear_plugin_errors(merchant).await?;
        self.drop_unused_blob(&current.digest).await?;
        Ok(deleted > 0)
    }

    /// The active plugins of `merchants` (those that have one), with limits.
    async fn active_plugins(&self, merchants: &[String]) -> Result<Vec<PluginRow>> {
        if merchants.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; merchants.len()].join(", ");
        let sql = format!(
            "SELECT p.merchant_id, p.digest, b.size, p.uploaded_at, l.limits, c.config, s.digest \
             FROM merchant_plugins p JOIN plugin_blobs b ON b.digest = p.digest \
             LEFT JOIN plugin_limits l ON l.merchant_id = p.merchant_id \
             LEFT JOIN plugin_configs c ON c.merchant_id = p.merchant_id \
             LEFT JOIN plugin_shadows s ON s.merchant_id = p.merchant_id \
             WHERE p.merchant_id IN ({marks}) ORDER BY p.merchant_id"
        );
        let rows = with_query!(read, self, &sql, |q, pool| {
            let mut q = q;
            for m in merchants {
                q = q.bind(m);
            }
            q.fetch_all(pool)
                .await?
                .iter()
                .map(|r| PluginRow {
                    merchant_id: r.get(0),
                    digest: r.get(1),
                    size: r.get(2),
                    uploaded_at: r.get(3),
                    limits: r.get(4),
                    config: r.get(5),
                    shadow: r.get(6),
                })
                .collect::<Vec<_>>()
        });
        Ok(rows)
    }

    async fn plugin_blob(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(with_query!(read, self, "SELECT bytes FROM plugin_blobs WHERE digest = ?", |q, pool| q
            .bind(digest)
            .fetch_optional(pool)
            .await?
            .map(|r| r.get::<Vec<u8>, _>(0))))
    }

    /// The operator's limits for `merchant` (JSON), if any were set.
    async fn plugin_limits(&self, merchant: &str) -> Result<Option<String>> {
        Ok(with_query!(read, self, "SELECT limits FROM plugin_limits WHERE merchant_id = ?", |q, pool| q
            .bind(merchant)
            .fetch_optional(pool)
            .await?
            .map(|r| r.get::<String, _>(0))))
    }

    async fn set_plugin_limits(&self, merchant: &str, limits_json: &str, now: i64) -> Result<()> {
        with_query!(
            write,
            self,
            "INSERT INTO plugin_limits (merchant_id, limits, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (merchant_id) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at",
            |q, pool| q.bind(merchant).bind(limits_json).bind(now).execute(pool).await?.rows_affected()
        );
        Ok(())
    }

    /// Record a failed run and keep only the [`RECENT_ERRORS`] newest.
    async fn record_plugin_error(&self, merchant: &str, e: &PluginErrorRow) -> Result<()> {
        with_query!(
            write,
            self,
            "INSERT INTO plugin_errors (merchant_id, digest, at, kind, message, log) VALUES (?, ?, ?, ?, ?, ?)",
            |q, pool| q
                .bind(merchant)
                .bind(&e.digest)
                .bind(e.at)
                .bind(&e.kind)
                .bind(&e.message)
                .bind(&e.log)
                .execute(pool)
                .await?
                .rows_affected()
        );
        with_query!(
            write,
            self,
            "DELETE FROM plugin_errors WHERE merchant_id = ? AND id NOT IN \
             (SELECT id FROM plugin_errors WHERE merchant_id = ? ORDER BY id DESC LIMIT ?)",
            |q, pool| q
                .bind(merchant)
                .bind(merchant)
                .bind(RECENT_ERRORS)
                .execute(pool)
                .await?
                .rows_affected()
        );
        Ok(())
    }

    async fn plugin_config(&self, merchant: &str) -> Result<Option<String>> {
        Ok(with_query!(read, self, "SELECT config FROM plugin_configs WHERE merchant_id = ?", |q, pool| q
            .bind(merchant)
            .fetch_optional(pool)
            .await?
            .map(|r| r.get::<String, _>(0))))
    }

    async fn set_plugin_config(&self, merchant: &str, config: Option<&str>, now: i64) -> Result<()> {
        match config {
            Some(config) => with_query!(
                write,
                self,
                "INSERT INTO plugin_configs (merchant_id, config, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT (merchant_id) DO UPDATE SET config = excluded.config, updated_at = excluded.updated_at",
                |q, pool| q.bind(merchant).bind(config).bind(now).execute(pool).await?.rows_affected()
            ),
            None => {
                with_query!(write, self, "DELETE FROM plugin_configs WHERE merchant_id = ?", |q, pool| q
                    .bind(merchant)
                    .execute(pool)
                    .await?
                    .rows_affected())
            }
        };
        Ok(())
    }

    async fn record_plugin_runs(&self, runs: &[RunRow], retention: Retention) -> Result<()> {
        if runs.is_empty() {
            return Ok(());
        }
        match self {
            Sql::Sqlite { write, .. } => record_runs!(write, |s: &str| s.to_string(), runs, retention),
            Sql::Postgres(pool) => record_runs!(pool, super::numbered_placeholders, runs, retention),
        }
        Ok(())
    }

    async fn add_plugin_counts(&self, counts: &[CountRow]) -> Result<()> {
        if counts.is_empty() {
            return Ok(());
        }
        let mut sorted = counts.to_vec();
        sorted.sort();
        match self {
            Sql::Sqlite { write, .. } => add_counts!(write, |s: &str| s.to_string(), &sorted),
            Sql::Postgres(pool) => add_counts!(pool, super::numbered_placeholders, &sorted),
        }
        Ok(())
    }

    async fn plugin_counts(&self, merchant: &str, digest: &str) -> Result<Vec<CountRow>> {
        Ok(with_query!(
            read,
            self,
            "SELECT metric, bucket, runs FROM plugin_counts WHERE merchant_id = ? AND digest = ? \
             ORDER BY metric, bucket",
            |q, pool| q
                .bind(merchant)
                .bind(digest)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| CountRow {
                    merchant_id: merchant.to_string(),
                    digest: digest.to_string(),
                    metric: r.get(0),
                    bucket: r.get(1),
                    runs: r.get(2),
                })
                .collect::<Vec<_>>()
        ))
    }

    async fn plugin_runs(&self, merchant: &str, before: Option<i64>, limit: i64) -> Result<Vec<RunRow>> {
        Ok(with_query!(
            read,
            self,
            "SELECT seq, id, merchant_id, at, digest, outcome, record FROM plugin_runs \
             WHERE merchant_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            |q, pool| q
                .bind(merchant)
                .bind(before.unwrap_or(i64::MAX))
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| run_row!(r))
                .collect::<Vec<_>>()
        ))
    }

    async fn plugin_run(&self, merchant: &str, id: &str) -> Result<Option<RunRow>> {
        Ok(with_query!(
            read,
            self,
            "SELECT seq, id, merchant_id, at, digest, outcome, record FROM plugin_runs \
             WHERE merchant_id = ? AND id = ?",
            |q, pool| q.bind(merchant).bind(id).fetch_optional(pool).await?.map(|r| run_row!(r))
        ))
    }

    async fn put_shadow(
        &self,
        merchant: &str,
        digest: &str,
        bytes: &[u8],
        report: &str,
        now: i64,
    ) -> Result<()> {
        let size = bytes.len() as i64;
        let previous = self.shadow(merchant).await?.map(|s| s.digest);
        with_query!(
            write,
            self,
            "INSERT INTO plugin_blobs (digest, bytes, size, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (digest) DO NOTHING",
            |q, pool| q.bind(digest).bind(bytes).bind(size).bind(now).execute(pool).await?.rows_affected()
        );
        with_query!(
            write,
            self,
            "INSERT INTO plugin_shadows (merchant_id, digest, installed_at, report, version) VALUES (?, ?, ?, ?, 0) \
             ON CONFLICT (merchant_id) DO UPDATE SET digest = excluded.digest, installed_at = excluded.installed_at, \
             report = excluded.report, version = plugin_shadows.version + 1",
            |q, pool| q
                .bind(merchant)
                .bind(digest)
                .bind(now)
                .bind(report)
                .execute(pool)
                .await?
                .rows_affected()
        );
        if let Some(old) = previous.filter(|old| old != digest) {
            self.drop_unused_blob(&old).await?;
        }
        Ok(())
    }

    async fn shadow(&self, merchant: &str) -> Result<Option<ShadowRow>> {
        Ok(with_query!(
            read,
            self,
            "SELECT digest, installed_at, report, version FROM plugin_shadows WHERE merchant_id = ?",
            |q, pool| q.bind(merchant).fetch_optional(pool).await?.map(|r| ShadowRow {
                digest: r.get(0),
                installed_at: r.get(1),
                report: r.get(2),
                version: r.get(3),
            })
        ))
    }

    async fn update_shadow_report(
        &self,
        merchant: &str,
        digest: &str,
        version: i64,
        report: &str,
    ) -> Result<bool> {
        let n = with_query!(
            write,
            self,
            "UPDATE plugin_shadows SET report = ?, version = version + 1 \
             WHERE merchant_id = ? AND digest = ? AND version = ?",
            |q, pool| q
                .bind(report)
                .bind(merchant)
                .bind(digest)
                .bind(version)
                .execute(pool)
                .await?
                .rows_affected()
        );
        Ok(n == 1)
    }

    async fn delete_shadow(&self, merchant: &str) -> Result<bool> {
        let Some(current) = self.shadow(merchant).await? else { return Ok(false) };
        let n = with_query!(write, self, "DELETE FROM plugin_shadows WHERE merchant_id = ?", |q, pool| q
            .bind(merchant)
            .execute(pool)
            .await?
            .rows_affected());
        self.drop_unused_blob(&current.digest).await?;
        Ok(n > 0)
    }

    async fn promote_shadow(&self, merchant: &str, now: i64) -> Result<Option<String>> {
        Ok(match self {
            Sql::Sqlite { write, .. } => promote_shadow!(write, |s: &str| s.to_string(), merchant, now),
            Sql::Postgres(pool) => promote_shadow!(pool, super::numbered_placeholders, merchant, now),
        })
    }

    /// The newest errors first.
    async fn plugin_errors(&self, merchant: &str) -> Result<Vec<PluginErrorRow>> {
        Ok(with_query!(
            read,
            self,
            "SELECT at, digest, kind, message, log FROM plugin_errors WHERE merchant_id = ? \
             ORDER BY id DESC LIMIT ?",
            |q, pool| q
                .bind(merchant)
                .bind(RECENT_ERRORS)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| PluginErrorRow {
                    at: r.get(0),
                    digest: r.get(1),
                    kind: r.get(2),
                    message: r.get(3),
                    log: r.get(4),
                })
                .collect::<Vec<_>>()
        ))
    }
}

impl Sql {
    async fn drop_unused_blob(&self, digest: &str) -> Result<()> {
        with_query!(write, self, DROP_UNUSED_BLOB, |q, pool| q
            .bind(digest)
            .bind(digest)
            .bind(digest)
            .bind(digest)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    async fn clear_plugin_errors(&self, merchant: &str) -> Result<()> {
        with_query!(write, self, "DELETE FROM plugin_errors WHERE merchant_id = ?", |q, pool| q
            .bind(merchant)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::storage::sql::numbered_placeholders;

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(numbered_placeholders("a = ? AND b IN (?, ?)"), "a = $1 AND b IN ($2, $3)");
        assert_eq!(numbered_placeholders("SELECT 1"), "SELECT 1");
    }
}
