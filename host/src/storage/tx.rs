//! Transactions behind the `mercato:commerce/transactions` capability: a
//! list of writes with preconditions, committed all or none in one database
//! transaction (SQLite `BEGIN IMMEDIATE` on the single writer; PostgreSQL
//! one transaction of conditional statements).
//!
//! Each write is one statement on the common path: a conditional `INSERT` /
//! `UPDATE` / `DELETE` whose `WHERE` holds the precondition, and a counter's
//! bound is part of its `UPDATE`'s `WHERE`, so the database re-checks it
//! under the row lock (PostgreSQL re-evaluates the condition on the newest
//! row after waiting): concurrent bounded decrements of one hot counter queue
//! on the row and never fail spuriously. Only a write that did not apply is
//! followed by a read to say why, and then the transaction rolls back.
//!
//! Writes run in key order (namespace, bucket, key), whatever order they were
//! given in, so two transactions always lock rows in the same order and
//! cannot deadlock; a failure still names the caller's index.

use sqlx::Row;

use super::{Db, Result, StorageError};
use crate::storage::kv::Versioned;

/// Most writes one transaction may hold.
pub const MAX_WRITES: usize = 1_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    None,
    Absent,
    Present,
    Version(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Vec<u8>),
    Delete,
    Add { delta: i64, min: i64, max: i64 },
    Check,
}

/// One write, with the namespace the host resolved for it.
#[derive(Clone, Debug)]
pub struct Write {
    pub namespace: &'static str,
    pub bucket: String,
    pub key: String,
    pub precondition: Precondition,
    pub op: Op,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Present,
    Absent,
    VersionMismatch,
    OutOfBounds,
    NotACounter,
}

/// Why a transaction did not commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub index: usize,
    pub reason: Reason,
    pub current: Option<i64>,
}

/// The new version of each write (0 for deletes and checks), or the write
/// that failed.
pub type Outcome = std::result::Result<Vec<i64>, Failed>;

fn new_version() -> i64 {
    // Never 0: 0 means "no version" in the answer.
    rand::random::<i64>() | 1
}

/// A canonical decimal integer, as counters are stored.
fn counter_value(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let n: i64 = text.parse().ok()?;
    (n.to_string() == text).then_some(n)
}

/// Why `write` did not apply, given the row as it is now.
fn reason(write: &Write, row: Option<&Versioned>) -> (Reason, Option<i64>) {
    match (&write.precondition, row) {
        (Precondition::Absent, Some(_)) => return (Reason::Present, None),
        (Precondition::Present | Precondition::Version(_), None) => return (Reason::Absent, None),
        (Precondition::Version(v), Some(r)) if r.version != *v => return (Reason::VersionMismatch, None),
        _ => {}
    }
    if let Op::Add { .. } = write.op {
        return match row.map(|r| counter_value(&r.value)) {
            Some(None) => (Reason::NotACounter, None),
            Some(Some(n)) => (Reason::OutOfBounds, Some(n)),
            None => (Reason::OutOfBounds, Some(0)),
        };
    }
    // The row changed between the write and this read (PostgreSQL only).
    (Reason::VersionMismatch, None)
}

/// Statements of one backend. SQLite numbers its parameters `?N`,
/// PostgreSQL `$N`; the counter arithmetic differs (blob ↔ text casts).
struct Sql {
    select: &'static str,
    upsert: &'static str,
    insert_absent: &'static str,
    update_present: &'static str,
    update_version: &'static str,
    delete: &'static str,
    delete_version: &'static str,
    add: &'static str,
    add_version: &'static str,
}

const SQLITE: Sql = Sql {
    select: "SELECT value, version FROM kv WHERE namespace = ?1 AND bucket = ?2 AND key = ?3",
    upsert: "INSERT INTO kv (namespace, bucket, key, value, version) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (namespace, bucket, key) DO UPDATE SET value = excluded.value, version = excluded.version",
    insert_absent: "INSERT INTO kv (namespace, bucket, key, value, version) VALUES (?1, ?2, ?3, ?4, ?5) \
                    ON CONFLICT DO NOTHING",
    update_present: "UPDATE kv SET value = ?4, version = ?5 WHERE namespace = ?1 AND bucket = ?2 AND key = ?3",
    update_version: "UPDATE kv SET value = ?4, version = ?5 \
                     WHERE namespace = ?1 AND bucket = ?2 AND key = ?3 AND version = ?6",
    delete: "DELETE FROM kv WHERE namespace = ?1 AND bucket = ?2 AND key = ?3",
    delete_version: "DELETE FROM kv WHERE namespace = ?1 AND bucket = ?2 AND key = ?3 AND version = ?4",
    // ?4 delta, ?5 new version, ?6 min, ?7 max; the value must be a canonical integer.
    add: "UPDATE kv SET value = CAST(CAST(CAST(CAST(value AS TEXT) AS INTEGER) + ?4 AS TEXT) AS BLOB), version = ?5 \
          WHERE namespace = ?1 AND bucket = ?2 AND key = ?3 \
          AND CAST(CAST(CAST(value AS TEXT) AS INTEGER) AS TEXT) = CAST(value AS TEXT) \
          AND CAST(CAST(value AS TEXT) AS INTEGER) + ?4 BETWEEN ?6 AND ?7",
    add_version: "UPDATE kv SET value = CAST(CAST(CAST(CAST(value AS TEXT) AS INTEGER) + ?4 AS TEXT) AS BLOB), version = ?5 \
          WHERE namespace = ?1 AND bucket = ?2 AND key = ?3 AND version = ?8 \
          AND CAST(CAST(CAST(value AS TEXT) AS INTEGER) AS TEXT) = CAST(value AS TEXT) \
          AND CAST(CAST(value AS TEXT) AS INTEGER) + ?4 BETWEEN ?6 AND ?7",
};

const POSTGRES: Sql = Sql {
    select: "SELECT value, version FROM kv WHERE namespace = $1 AND bucket = $2 AND key = $3",
    upsert: "INSERT INTO kv (namespace, bucket, key, value, version) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (namespace, bucket, key) DO UPDATE SET value = excluded.value, version = excluded.version",
    insert_absent: "INSERT INTO kv (namespace, bucket, key, value, version) VALUES ($1, $2, $3, $4, $5) \
                    ON CONFLICT DO NOTHING",
    update_present: "UPDATE kv SET value = $4, version = $5 WHERE namespace = $1 AND bucket = $2 AND key = $3",
    update_version: "UPDATE kv SET value = $4, version = $5 \
                     WHERE namespace = $1 AND bucket = $2 AND key = $3 AND version = $6",
    delete: "DELETE FROM kv WHERE namespace = $1 AND bucket = $2 AND key = $3",
    delete_version: "DELETE FROM kv WHERE namespace = $1 AND bucket = $2 AND key = $3 AND version = $4",
    add: "UPDATE kv SET value = convert_to((convert_from(value, 'UTF8')::bigint + $4)::text, 'UTF8'), version = $5 \
          WHERE namespace = $1 AND bucket = $2 AND key = $3 \
          AND CASE WHEN convert_from(value, 'UTF8') ~ '^(0|-?[1-9][0-9]{0,17})$' \
              THEN convert_from(value, 'UTF8')::bigint + $4 BETWEEN $6 AND $7 ELSE false END",
    add_version: "UPDATE kv SET value = convert_to((convert_from(value, 'UTF8')::bigint + $4)::text, 'UTF8'), version = $5 \
          WHERE namespace = $1 AND bucket = $2 AND key = $3 AND version = $8 \
          AND CASE WHEN convert_from(value, 'UTF8') ~ '^(0|-?[1-9][0-9]{0,17})$' \
              THEN convert_from(value, 'UTF8')::bigint + $4 BETWEEN $6 AND $7 ELSE false END",
};

/// Run `writes` on an open transaction: `Ok(Ok(versions))` if every write
/// applied (the caller commits), `Ok(Err(failed))` if one did not (the caller
/// rolls back).
macro_rules! run_writes {
    ($conn:expr, $sql:expr, $writes:expr) => {{
        let writes: &[Write] = $writes;
        let sql: &Sql = $sql;
        let mut order: Vec<usize> = (0..writes.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&writes[a], &writes[b]);
            (x.namespace, &x.bucket, &x.key).cmp(&(y.namespace, &y.bucket, &y.key))
        });
        let mut versions = vec![0i64; writes.len()];
        let mut failed = None;
        for i in order {
            let w = &writes[i];
            let version = new_version();
            let applied: bool = match (&w.op, &w.precondition) {
                (Op::Check, _)
                | (Op::Delete, Precondition::Absent)
                | (Op::Add { .. }, Precondition::Absent) => {
                    let row = sqlx::query(sql.select)
                        .bind(w.namespace)
                        .bind(&w.bucket)
                        .bind(&w.key)
                        .fetch_optional(&mut *$conn)
                        .await?;
                    let ok = match (&w.precondition, &row) {
                        (Precondition::None, _) => true,
                        (Precondition::Absent, r) => r.is_none(),
                        (Precondition::Present, r) => r.is_some(),
                        (Precondition::Version(v), Some(r)) => r.get::<i64, _>(1) == *v,
                        (Precondition::Version(_), None) => false,
                    };
                    if ok && matches!(w.op, Op::Add { .. }) {
                        // An absent counter is 0: create it.
                        match &w.op {
                            Op::Add { delta, min, max } if (*min..=*max).contains(delta) => {
                                sqlx::query(sql.insert_absent)
                                    .bind(w.namespace)
                                    .bind(&w.bucket)
                                    .bind(&w.key)
                                    .bind(delta.to_string().into_bytes())
                                    .bind(version)
                                    .execute(&mut *$conn)
                                    .await?
                                    .rows_affected()
                                    == 1
                            }
                            _ => false,
                        }
                    } else {
                        ok
                    }
                }
                (Op::Put(value), pre) => {
                    let q = match pre {
                        Precondition::None => sqlx::query(sql.upsert),
                        Precondition::Absent => sqlx::query(sql.insert_absent),
                        Precondition::Present => sqlx::query(sql.update_present),
                        Precondition::Version(_) => sqlx::query(sql.update_version),
                    };
                    let mut q = q.bind(w.namespace).bind(&w.bucket).bind(&w.key).bind(value).bind(version);
                    if let Precondition::Version(v) = pre {
                        q = q.bind(*v);
                    }
                    let n = q.execute(&mut *$conn).await?.rows_affected();
                    n == 1 || (n > 0 && *pre == Precondition::None)
                }
                (Op::Delete, pre) => {
                    let q = match pre {
                        Precondition::Version(v) => sqlx::query(sql.delete_version)
                            .bind(w.namespace)
                            .bind(&w.bucket)
                            .bind(&w.key)
                            .bind(*v),
                        _ => sqlx::query(sql.delete).bind(w.namespace).bind(&w.bucket).bind(&w.key),
                    };
                    let n = q.execute(&mut *$conn).await?.rows_affected();
                    n == 1 || *pre == Precondition::None
                }
                (Op::Add { delta, min, max }, pre) => {
                    let q = match pre {
                        Precondition::Version(_) => sqlx::query(sql.add_version),
                        _ => sqlx::query(sql.add),
                    };
                    let mut q = q
                        .bind(w.namespace)
                        .bind(&w.bucket)
                        .bind(&w.key)
                        .bind(*delta)
                        .bind(version)
                        .bind(*min)
                        .bind(*max);
                    if let Precondition::Version(v) = pre {
                        q = q.bind(*v);
                    }
                    let n = q.execute(&mut *$conn).await?.rows_affected();
                    if n == 1 {
                        true
                    } else if *pre == Precondition::None && (*min..=*max).contains(delta) {
                        // Absent (= 0) and 0 + delta is within bounds: create it.
                        sqlx::query(sql.insert_absent)
                            .bind(w.namespace)
                            .bind(&w.bucket)
                            .bind(&w.key)
                            .bind(delta.to_string().into_bytes())
                            .bind(version)
                            .execute(&mut *$conn)
                            .await?
                            .rows_affected()
                            == 1
                    } else {
                        false
                    }
                }
            };
            if !applied {
                let row = sqlx::query(sql.select)
                    .bind(w.namespace)
                    .bind(&w.bucket)
                    .bind(&w.key)
                    .fetch_optional(&mut *$conn)
                    .await?
                    .map(|r| Versioned { value: r.get::<Vec<u8>, _>(0), version: r.get::<i64, _>(1) });
                let (reason, current) = reason(w, row.as_ref());
                failed = Some(Failed { index: i, reason, current });
                break;
            }
            if matches!(w.op, Op::Put(_) | Op::Add { .. }) {
                versions[i] = version;
            }
        }
        Ok::<Outcome, StorageError>(match failed {
            Some(f) => Err(f),
            None => Ok(versions),
        })
    }};
}

/// Whether a database error is worth running the whole transaction again
/// for: SQLite busy/locked, PostgreSQL serialization failure or deadlock.
fn transient(e: &StorageError) -> bool {
    let StorageError::Database(sqlx::Error::Database(db)) = e else { return false };
    matches!(db.code().as_deref(), Some("5" | "6" | "517" | "40001" | "40P01"))
}

/// How often a transaction that hit a transient database error is re-run.
const TRANSIENT_RETRIES: usize = 5;

impl Db {
    /// Commit `writes` all or none. `Ok(Err(failed))`: nothing was written.
    pub async fn tx_commit(&self, writes: &[Write]) -> Result<Outcome> {
        if writes.len() > MAX_WRITES {
            return Err(StorageError::Invalid(format!(
                "a transaction may hold at most {MAX_WRITES} writes (got {})",
                writes.len()
            )));
        }
        if writes.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let mut attempt = 0;
        loop {
            let result = self.tx_once(writes).await;
            match result {
                Err(e) if attempt < TRANSIENT_RETRIES && transient(&e) => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "transaction retried");
                }
                other => return other,
            }
        }
    }

    async fn tx_once(&self, writes: &[Write]) -> Result<Outcome> {
        match self {
            Db::Sqlite { write, .. } => {
                let mut tx = write.begin_with("BEGIN IMMEDIATE").await?;
                let outcome = run_writes!(tx, &SQLITE, writes)?;
                if outcome.is_ok() {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
                Ok(outcome)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let outcome = run_writes!(tx, &POSTGRES, writes)?;
                if outcome.is_ok() {
                    tx.commit().await?;
                } else {
                    tx.rollback().await?;
                }
                Ok(outcome)
            }
        }
    }

    /// Values and versions of `keys` in one bucket, in the order given.
    pub async fn tx_read(
        &self,
        namespace: &str,
        bucket: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned>>> {
        if keys.len() > super::kv::MAX_BATCH {
            return Err(StorageError::Invalid(format!(
                "a read may name at most {} keys (got {})",
                super::kv::MAX_BATCH,
                keys.len()
            )));
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Vec<u8>, i64)> = match self {
            Db::Sqlite { read, .. } => {
                sqlx::query_as(
                    "SELECT key, value, version FROM kv WHERE namespace = ? AND bucket = ? \
                     AND key IN (SELECT value FROM json_each(?))",
                )
                .bind(namespace)
                .bind(bucket)
                .bind(serde_json::to_string(keys).unwrap_or_else(|_| "[]".into()))
                .fetch_all(read)
                .await?
            }
            Db::Postgres(pool) => sqlx::query_as(
                "SELECT key, value, version FROM kv WHERE namespace = $1 AND bucket = $2 AND key = ANY($3)",
            )
            .bind(namespace)
            .bind(bucket)
            .bind(keys)
            .fetch_all(pool)
            .await?,
        };
        let found: std::collections::HashMap<String, Versioned> =
            rows.into_iter().map(|(k, value, version)| (k, Versioned { value, version })).collect();
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::counter_value;

    #[test]
    fn counters_are_canonical_decimals() {
        assert_eq!(counter_value(b"0"), Some(0));
        assert_eq!(counter_value(b"-12"), Some(-12));
        assert_eq!(counter_value(b"0012"), None);
        assert_eq!(counter_value(b"+1"), None);
        assert_eq!(counter_value(b"1.5"), None);
        assert_eq!(counter_value(b"{\"a\":1}"), None);
    }
}
