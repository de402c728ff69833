//! Key-value operations on SQLite and PostgreSQL. Compare-and-swap is a
//! single conditional statement (`UPDATE … WHERE version = ?` or `INSERT …
//! ON CONFLICT DO NOTHING`), so it is atomic on both.

use async_trait::async_trait;
use sqlx::Row;

use super::Sql;
use crate::storage::kv::{KeyValue, LIST_PAGE, Scope, Versioned, check_batch, new_version};
use crate::storage::{Result, StorageError};

/// Keys per SQL statement within a batch.
const CHUNK: usize = 500;

/// Keys as a JSON array, for SQLite's `json_each`.
fn json_array(keys: &[String]) -> String {
    serde_json::to_string(keys).unwrap_or_else(|_| "[]".to_string())
}

#[async_trait]
impl KeyValue for Sql {
    async fn kv_get(&self, s: Scope<'_>, key: &str) -> Result<Option<Versioned>> {
        if let Sql::Sqlite { readers: Some(readers), .. } = self {
            return readers.with(|c| {
                use rusqlite::OptionalExtension;
                c.prepare_cached(
                    "SELECT value, version FROM kv WHERE namespace = ?1 AND bucket = ?2 AND key = ?3",
                )?
                .query_row(rusqlite::params![s.namespace, s.bucket, key], |r| {
                    Ok(Versioned { value: r.get(0)?, version: r.get(1)? })
                })
                .optional()
            });
        }
        Ok(with_query!(
            read,
            self,
            "SELECT value, version FROM kv WHERE namespace = ? AND bucket = ? AND key = ?",
            |q, pool| q
                .bind(s.namespace)
                .bind(s.bucket)
                .bind(key)
                .fetch_optional(pool)
                .await?
                .map(|r| Versioned { value: r.get::<Vec<u8>, _>(0), version: r.get::<i64, _>(1) })
        ))
    }

    async fn kv_set(&self, s: Scope<'_>, key: &str, value: &[u8]) -> Result<()> {
        with_query!(
            write,
            self,
            "INSERT INTO kv (namespace, bucket, key, value, version) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (namespace, bucket, key) DO UPDATE SET value = excluded.value, version = excluded.version",
            |q, pool| q
                .bind(s.namespace)
                .bind(s.bucket)
                .bind(key)
                .bind(value)
                .bind(new_version())
                .execute(pool)
                .await?
                .rows_affected()
        );
        Ok(())
    }

    async fn kv_delete(&self, s: Scope<'_>, key: &str) -> Result<()> {
        with_query!(
            write,
            self,
            "DELETE FROM kv WHERE namespace = ? AND bucket = ? AND key = ?",
            |q, pool| q.bind(s.namespace).bind(s.bucket).bind(key).execute(pool).await?.rows_affected()
        );
        Ok(())
    }

    /// Keys after `after` in byte order, one page, and whether more follow.
    async fn kv_list(&self, s: Scope<'_>, after: Option<&str>) -> Result<(Vec<String>, bool)> {
        let after = after.unwrap_or("");
        let limit = (LIST_PAGE + 1) as i64;
        // A range of at most LIST_PAGE + 1 keys on the primary key's index:
        // bounded like a batch read, so it runs in place too.
        if let Sql::Sqlite { readers: Some(readers), .. } = self {
            let mut keys: Vec<String> = readers.with(|c| {
                c.prepare_cached(
                    "SELECT key FROM kv WHERE namespace = ?1 AND bucket = ?2 AND key > ?3 ORDER BY key LIMIT ?4",
                )?
                .query_map(rusqlite::params![s.namespace, s.bucket, after, limit], |r| r.get(0))?
                .collect()
            })?;
            let more = keys.len() > LIST_PAGE;
            keys.truncate(LIST_PAGE);
            return Ok((keys, more));
        }
        let mut keys: Vec<String> = with_query!(
            read,
            self,
            "SELECT key FROM kv WHERE namespace = ? AND bucket = ? AND key > ? ORDER BY key LIMIT ?",
            |q, pool| q
                .bind(s.namespace)
                .bind(s.bucket)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect()
        );
        let more = keys.len() > LIST_PAGE;
        keys.truncate(LIST_PAGE);
        Ok((keys, more))
    }

    /// Write `value` only if the key's version is still `expected` (`None`:
    /// only if the key is absent). Returns whether it was written.
    async fn kv_swap(&self, s: Scope<'_>, key: &str, expected: Option<i64>, value: &[u8]) -> Result<bool> {
        let version = new_version();
        let done = match expected {
            Some(old) => with_query!(
                write,
                self,
                "UPDATE kv SET value = ?, version = ? \
                 WHERE namespace = ? AND bucket = ? AND key = ? AND version = ?",
                |q, pool| q
                    .bind(value)
                    .bind(version)
                    .bind(s.namespace)
                    .bind(s.bucket)
                    .bind(key)
                    .bind(old)
                    .execute(pool)
                    .await?
                    .rows_affected()
            ),
            None => with_query!(
                write,
                self,
                "INSERT INTO kv (namespace, bucket, key, value, version) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT DO NOTHING",
                |q, pool| q
                    .bind(s.namespace)
                    .bind(s.bucket)
                    .bind(key)
                    .bind(value)
                    .bind(version)
                    .execute(pool)
                    .await?
                    .rows_affected()
            ),
        };
        Ok(done == 1)
    }

    /// Atomically add `delta` to the decimal integer at `key` (absent = 0).
    async fn kv_increment(&self, s: Scope<'_>, key: &str, delta: i64) -> Result<i64> {
        loop {
            let current = self.kv_get(s, key).await?;
            let (old, expected) = match &current {
                None => (0, None),
                Some(v) => {
                    let n =
                        std::str::from_utf8(&v.value).ok().and_then(|t| t.parse::<i64>().ok()).ok_or_else(
                            || StorageError::Invalid(format!("value of {key:?} is not an integer")),
                        )?;
                    (n, Some(v.version))
                }
            };
            let new = old
                .checked_add(delta)
                .ok_or_else(|| StorageError::Invalid(format!("incrementing {key:?} overflows")))?;
            if self.kv_swap(s, key, expected, new.to_string().as_bytes()).await? {
                return Ok(new);
            }
        }
    }

    /// Values of `keys`, in the order given.
    async fn kv_get_many(&self, s: Scope<'_>, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        check_batch(keys.len())?;
        let mut found: std::collections::HashMap<String, Vec<u8>> = Default::default();
        for chunk in keys.chunks(CHUNK) {
            let rows: Vec<(String, Vec<u8>)> =
                match self {
                    Sql::Sqlite { readers: Some(readers), .. } => readers.with(|c| {
                        let mut q = c.prepare_cached(
                            "SELECT key, value FROM kv WHERE namespace = ?1 AND bucket = ?2 \
                             AND key IN (SELECT value FROM json_each(?3))",
                        )?;
                        let rows = q
                            .query_map(rusqlite::params![s.namespace, s.bucket, json_array(chunk)], |r| {
                                Ok((r.get(0)?, r.get(1)?))
                            })?;
                        rows.collect::<rusqlite::Result<Vec<_>>>()
                    })?,
                    Sql::Sqlite { read, .. } => {
                        // One fixed statement, prepared once per connection: the
                        // keys travel as a JSON array.
                        sqlx::query_as(
                            "SELECT key, value FROM kv WHERE namespace = ? AND bucket = ? \
                         AND key IN (SELECT value FROM json_each(?))",
                        )
                        .bind(s.namespace)
                        .bind(s.bucket)
                        .bind(json_array(chunk))
                        .fetch_all(read)
                        .await?
                    }
                    Sql::Postgres(pool) => sqlx::query_as(
                        "SELECT key, value FROM kv WHERE namespace = $1 AND bucket = $2 AND key = ANY($3)",
                    )
                    .bind(s.namespace)
                    .bind(s.bucket)
                    .bind(chunk)
                    .fetch_all(pool)
                    .await?,
                };
            found.extend(rows);
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    /// Set all pairs in one transaction.
    async fn kv_set_many(&self, s: Scope<'_>, pairs: &[(String, Vec<u8>)]) -> Result<()> {
        check_batch(pairs.len())?;
        match self {
            Sql::Sqlite { write, .. } => {
                let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
                for (key, value) in pairs {
                    sqlx::query(
                        "INSERT INTO kv (namespace, bucket, key, value, version) VALUES (?, ?, ?, ?, ?) \
                         ON CONFLICT (namespace, bucket, key) DO UPDATE SET value = excluded.value, version = excluded.version",
                    )
                    .bind(s.namespace)
                    .bind(s.bucket)
                    .bind(key)
                    .bind(value)
                    .bind(new_version())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
            Sql::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for (key, value) in pairs {
                    sqlx::query(
                        "INSERT INTO kv (namespace, bucket, key, value, version) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (namespace, bucket, key) DO UPDATE SET value = excluded.value, version = excluded.version",
                    )
                    .bind(s.namespace)
                    .bind(s.bucket)
                    .bind(key)
                    .bind(value)
                    .bind(new_version())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Delete all keys in one transaction.
    async fn kv_delete_many(&self, s: Scope<'_>, keys: &[String]) -> Result<()> {
        check_batch(keys.len())?;
        match self {
            Sql::Sqlite { write, .. } => {
                let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
                for chunk in keys.chunks(CHUNK) {
                    sqlx::query(
                        "DELETE FROM kv WHERE namespace = ? AND bucket = ? \
                         AND key IN (SELECT value FROM json_each(?))",
                    )
                    .bind(s.namespace)
                    .bind(s.bucket)
                    .bind(json_array(chunk))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
            }
            Sql::Postgres(pool) => {
                sqlx::query("DELETE FROM kv WHERE namespace = $1 AND bucket = $2 AND key = ANY($3)")
                    .bind(s.namespace)
                    .bind(s.bucket)
                    .bind(keys)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Number of keys in a namespace (for tests and diagnostics).
    async fn kv_count(&self, namespace: &str) -> Result<i64> {
        Ok(with_query!(read, self, "SELECT COUNT(*) FROM kv WHERE namespace = ?", |q, pool| q
            .bind(namespace)
            .fetch_one(pool)
            .await?
            .get::<i64, _>(0)))
    }
}
