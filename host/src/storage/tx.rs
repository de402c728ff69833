//! Transactions behind the `mercato:commerce/transactions` capability: a
//! list of writes with preconditions, committed all or none in one database
//! transaction.
//!
//! SQLite (`BEGIN IMMEDIATE` on the single writer): each write is one
//! statement on the common path, a conditional `INSERT` / `UPDATE` /
//! `DELETE` whose `WHERE` holds the precondition, a counter's bound in its
//! `UPDATE`'s `WHERE`; only a write that did not apply is followed by a read
//! to say why, and then the transaction rolls back. PostgreSQL: the whole
//! list goes to the `mercato_tx` function in one statement (one round trip,
//! one implicit transaction), which reads each row `FOR UPDATE` and checks
//! preconditions and bounds on its newest value under the lock. Either way
//! concurrent bounded decrements of one hot counter queue on the row and
//! never fail spuriously.
//!
//! Writes run in key order (namespace, bucket, key), whatever order they were
//! given in, so two transactions always lock rows in the same order and
//! cannot deadlock; a failure still names the caller's index.

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
    // Not reached for writes that can fail only by their precondition or bound;
    // kept as the answer for a row that changed under a conditional update.
    (Reason::VersionMismatch, None)
}

/// The statements of SQLite's transactions (PostgreSQL runs them in one
/// function call instead, see [`postgres_tx`]).
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

/// The writes' execution order: by (namespace, bucket, key), stable.
fn key_order(writes: &[Write]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&writes[a], &writes[b]);
        (x.namespace, &x.bucket, &x.key).cmp(&(y.namespace, &y.bucket, &y.key))
    });
    order
}

/// PostgreSQL: the whole transaction in one statement, `mercato_tx` (see
/// `migrations/postgres/0004_transactions.sql`), so hot rows stay locked for
/// the function's run, not for one network round trip per write.
async fn postgres_tx(pool: &sqlx::PgPool, writes: &[Write]) -> Result<Outcome> {
    let order = key_order(writes);
    let n = writes.len();
    let (mut ns, mut buckets, mut keys) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut pre, mut pre_version, mut op) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut values, mut deltas) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut mins, mut maxs, mut versions) = (Vec::with_capacity(n), Vec::with_capacity(n), vec![0i64; n]);
    let mut fresh = Vec::with_capacity(n);
    for &i in &order {
        let w = &writes[i];
        ns.push(w.namespace);
        buckets.push(w.bucket.as_str());
        keys.push(w.key.as_str());
        let (p, v) = match w.precondition {
            Precondition::None => (0i16, 0i64),
            Precondition::Absent => (1, 0),
            Precondition::Present => (2, 0),
            Precondition::Version(v) => (3, v),
        };
        pre.push(p);
        pre_version.push(v);
        let (o, value, delta, min, max): (i16, &[u8], i64, i64, i64) = match &w.op {
            Op::Put(value) => (0, value, 0, 0, 0),
            Op::Delete => (1, &[], 0, 0, 0),
            Op::Add { delta, min, max } => (2, &[], *delta, *min, *max),
            Op::Check => (3, &[], 0, 0, 0),
        };
        op.push(o);
        values.push(value);
        deltas.push(delta);
        mins.push(min);
        maxs.push(max);
        let version = new_version();
        fresh.push(version);
        if matches!(w.op, Op::Put(_) | Op::Add { .. }) {
            versions[i] = version;
        }
    }
    let (index, reason, current): (i32, Option<i16>, Option<i64>) = sqlx::query_as(
        "SELECT failed_index, failed_reason, failed_current \
         FROM mercato_tx($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&ns)
    .bind(&buckets)
    .bind(&keys)
    .bind(&pre)
    .bind(&pre_version)
    .bind(&op)
    .bind(&values)
    .bind(&deltas)
    .bind(&mins)
    .bind(&maxs)
    .bind(&fresh)
    .fetch_one(pool)
    .await?;
    let Ok(position) = usize::try_from(index) else { return Ok(Ok(versions)) };
    let index = order
        .get(position)
        .copied()
        .ok_or_else(|| StorageError::Invalid(format!("mercato_tx named write {position} of {n}")))?;
    let reason = match reason {
        Some(0) => Reason::Present,
        Some(1) => Reason::Absent,
        Some(2) => Reason::VersionMismatch,
        Some(3) => Reason::OutOfBounds,
        _ => Reason::NotACounter,
    };
    Ok(Err(Failed { index, reason, current }))
}

/// Run `writes` on SQLite inside an open transaction (a savepoint of a group
/// commit, see [`super::group`]), on the writer's raw connection: every
/// statement runs on this thread, prepared once per group. `Ok(Err(failed))`
/// if one did not apply, and then the caller rolls the savepoint back.
pub(crate) fn run_sqlite(db: &rusqlite::Connection, writes: &[Write]) -> rusqlite::Result<Outcome> {
    use rusqlite::{OptionalExtension, params};
    let sql = &SQLITE;
    let select = |w: &Write| -> rusqlite::Result<Option<Versioned>> {
        db.prepare_cached(sql.select)?
            .query_row(params![w.namespace, w.bucket, w.key], |r| {
                Ok(Versioned { value: r.get(0)?, version: r.get(1)? })
            })
            .optional()
    };
    let insert = |w: &Write, value: &[u8], version: i64| -> rusqlite::Result<bool> {
        Ok(db.prepare_cached(sql.insert_absent)?.execute(params![
            w.namespace,
            w.bucket,
            w.key,
            value,
            version
        ])? == 1)
    };
    let mut versions = vec![0i64; writes.len()];
    for i in key_order(writes) {
        let w = &writes[i];
        let version = new_version();
        let applied =
            match (&w.op, &w.precondition) {
                (Op::Check, _)
                | (Op::Delete, Precondition::Absent)
                | (Op::Add { .. }, Precondition::Absent) => {
                    let row = select(w)?;
                    let ok = match (&w.precondition, &row) {
                        (Precondition::None, _) => true,
                        (Precondition::Absent, r) => r.is_none(),
                        (Precondition::Present, r) => r.is_some(),
                        (Precondition::Version(v), Some(r)) => r.version == *v,
                        (Precondition::Version(_), None) => false,
                    };
                    match &w.op {
                        // An absent counter is 0: create it.
                        Op::Add { delta, min, max } if ok => {
                            (*min..=*max).contains(delta) && insert(w, delta.to_string().as_bytes(), version)?
                        }
                        _ => ok,
                    }
                }
                (Op::Put(value), pre) => {
                    let n =
                        match pre {
                            Precondition::None => db.prepare_cached(sql.upsert)?.execute(params![
                                w.namespace,
                                w.bucket,
                                w.key,
                                value,
                                version
                            ])?,
                            Precondition::Absent => usize::from(insert(w, value, version)?),
                            Precondition::Present => db
                                .prepare_cached(sql.update_present)?
                                .execute(params![w.namespace, w.bucket, w.key, value, version])?,
                            Precondition::Version(v) => db
                                .prepare_cached(sql.update_version)?
                                .execute(params![w.namespace, w.bucket, w.key, value, version, v])?,
                        };
                    n == 1 || (n > 0 && *pre == Precondition::None)
                }
                (Op::Delete, pre) => {
                    let n = match pre {
                        Precondition::Version(v) => db
                            .prepare_cached(sql.delete_version)?
                            .execute(params![w.namespace, w.bucket, w.key, v])?,
                        _ => db.prepare_cached(sql.delete)?.execute(params![w.namespace, w.bucket, w.key])?,
                    };
                    n == 1 || *pre == Precondition::None
                }
                (Op::Add { delta, min, max }, pre) => {
                    let n = match pre {
                        Precondition::Version(v) => db.prepare_cached(sql.add_version)?.execute(params![
                            w.namespace,
                            w.bucket,
                            w.key,
                            delta,
                            version,
                            min,
                            max,
                            v
                        ])?,
                        _ => db.prepare_cached(sql.add)?.execute(params![
                            w.namespace,
                            w.bucket,
                            w.key,
                            delta,
                            version,
                            min,
                            max
                        ])?,
                    };
                    if n == 1 {
                        true
                    } else if *pre == Precondition::None && (*min..=*max).contains(delta) {
                        // Absent (= 0) and 0 + delta is within bounds: create it.
                        insert(w, delta.to_string().as_bytes(), version)?
                    } else {
                        false
                    }
                }
            };
        if !applied {
            let (reason, current) = reason(w, select(w)?.as_ref());
            return Ok(Err(Failed { index: i, reason, current }));
        }
        if matches!(w.op, Op::Put(_) | Op::Add { .. }) {
            versions[i] = version;
        }
    }
    Ok(Ok(versions))
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
            // Group commit: queued with whatever else is waiting for the writer.
            Db::Sqlite { group, .. } => group.commit(writes.to_vec()).await,
            Db::Postgres(pool) => postgres_tx(pool, writes).await,
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
            Db::Sqlite { readers: Some(readers), .. } => readers.with(|c| {
                let mut q = c.prepare_cached(
                    "SELECT key, value, version FROM kv WHERE namespace = ?1 AND bucket = ?2 \
                     AND key IN (SELECT value FROM json_each(?3))",
                )?;
                let json = serde_json::to_string(keys).unwrap_or_else(|_| "[]".into());
                let rows = q.query_map(rusqlite::params![namespace, bucket, json], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })?,
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
