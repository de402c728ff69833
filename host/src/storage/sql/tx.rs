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

use async_trait::async_trait;

use super::Sql;
use crate::storage::kv::Versioned;
use crate::storage::tx::{
    Event, Failed, Op, Outcome, Precondition, Reason, Transactions, Write, key_order, new_version, reason,
};
use crate::storage::{Result, StorageError};

/// The statements of SQLite's transactions (PostgreSQL runs them in one
/// function call instead, see [`postgres_tx`]).
struct Statements {
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

const SQLITE: Statements = Statements {
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
    // ?4 delta, ?5 new version, ?6 min, ?7 max; the value must be a canonical integer
    // and the sum one too (SQLite turns an integer overflow into a REAL).
    add: "UPDATE kv SET value = CAST(CAST(CAST(CAST(value AS TEXT) AS INTEGER) + ?4 AS TEXT) AS BLOB), version = ?5 \
          WHERE namespace = ?1 AND bucket = ?2 AND key = ?3 \
          AND CAST(CAST(CAST(value AS TEXT) AS INTEGER) AS TEXT) = CAST(value AS TEXT) \
          AND CAST(CAST(value AS TEXT) AS INTEGER) + ?4 BETWEEN ?6 AND ?7 \
          AND typeof(CAST(CAST(value AS TEXT) AS INTEGER) + ?4) = 'integer'",
    add_version: "UPDATE kv SET value = CAST(CAST(CAST(CAST(value AS TEXT) AS INTEGER) + ?4 AS TEXT) AS BLOB), version = ?5 \
          WHERE namespace = ?1 AND bucket = ?2 AND key = ?3 AND version = ?8 \
          AND CAST(CAST(CAST(value AS TEXT) AS INTEGER) AS TEXT) = CAST(value AS TEXT) \
          AND CAST(CAST(value AS TEXT) AS INTEGER) + ?4 BETWEEN ?6 AND ?7 \
          AND typeof(CAST(CAST(value AS TEXT) AS INTEGER) + ?4) = 'integer'",
};

/// PostgreSQL: the whole transaction in one statement, `mercato_tx` (see
/// `migrations/postgres/0004_transactions.sql`), so hot rows stay locked for
/// the function's run, not for one network round trip per write.
/// With events, `mercato_tx_events` (`0009_events.sql`): the same, then the
/// events in the same statement.
async fn postgres_tx(pool: &sqlx::PgPool, writes: &[Write], events: &[Event]) -> Result<Outcome> {
    let order = key_order(writes);
    let n = writes.len();
    let (mut ns, mut buckets, mut keys) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut pre, mut pre_version, mut op) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut values, mut deltas) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut mins, mut maxs, mut versions) = (Vec::with_capacity(n), Vec::with_capacity(n), vec![0i64; n]);
    let mut fresh = Vec::with_capacity(n);
    // Where each write of the caller's order went in key order.
    let mut placed = vec![0usize; n];
    for (p, &i) in order.iter().enumerate() {
        placed[i] = p;
    }
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
    let query = if events.is_empty() {
        sqlx::query_as(
            "SELECT failed_index, failed_reason, failed_current, 0 \
             FROM mercato_tx($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
    } else {
        sqlx::query_as(
            "SELECT failed_index, failed_reason, failed_current, events_written \
             FROM mercato_tx_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
                                    $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)",
        )
    };
    let query = query
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
        .bind(&fresh);
    let query = if events.is_empty() {
        query
    } else {
        // Each view with the 1-based index of its event.
        let (mut view_event, mut view_merchant, mut view_data) = (Vec::new(), Vec::new(), Vec::new());
        for (i, e) in events.iter().enumerate() {
            for (merchant, data) in &e.views {
                view_event.push(i as i32 + 1);
                view_merchant.push(merchant.as_str());
                view_data.push(data.as_slice());
            }
        }
        query
            .bind(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.kind).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.subject.as_str()).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.created_at).collect::<Vec<_>>())
            .bind(events.iter().map(|e| e.data.as_slice()).collect::<Vec<_>>())
            .bind(view_event)
            .bind(view_merchant)
            .bind(view_data)
            // Each crossing's write as its 1-based position in key order (0: none).
            .bind(
                events
                    .iter()
                    .map(|e| e.when.as_ref().map_or(0, |c| placed[c.write] as i32 + 1))
                    .collect::<Vec<_>>(),
            )
            .bind(
                events
                    .iter()
                    .map(|e| e.when.as_ref().map_or("", |c| c.threshold_key.as_str()))
                    .collect::<Vec<_>>(),
            )
            .bind(events.iter().map(|e| e.when.as_ref().map_or("", |c| c.value_field)).collect::<Vec<_>>())
            .bind(
                events.iter().map(|e| e.when.as_ref().map_or("", |c| c.threshold_field)).collect::<Vec<_>>(),
            )
    };
    let (index, reason, current, written): (i32, Option<i16>, Option<i64>, i32) =
        query.fetch_one(pool).await?;
    if written > 0 {
        crate::storage::events::note_outbox_write();
    }
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
/// if one did not apply, and then the caller rolls the savepoint back. Once
/// every write applied, `events` go to the outbox in the same savepoint.
pub(crate) fn run_sqlite(
    db: &rusqlite::Connection,
    writes: &[Write],
    events: &[Event],
) -> rusqlite::Result<Outcome> {
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
    for event in events {
        // A crossing is decided on the counter's value now: this transaction
        // holds the only writer, so no one else has moved it since.
        let counter = |namespace: &str, bucket: &str, key: &str| -> rusqlite::Result<Option<i64>> {
            let value: Option<Vec<u8>> = db
                .prepare_cached(sql.select)?
                .query_row(params![namespace, bucket, key], |r| r.get(0))
                .optional()?;
            Ok(value.and_then(|v| crate::storage::tx::counter_value(&v)))
        };
        let Some(event) = event.resolved(writes, counter)? else { continue };
        let inserted = db
            .prepare_cached(
                "INSERT INTO events (id, kind, subject, created_at, data) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![event.id, event.kind, event.subject, event.created_at, event.data])?;
        if inserted == 1 {
            crate::storage::events::note_outbox_write();
            let seq = db.last_insert_rowid();
            for (merchant, data) in &event.views {
                db.prepare_cached(
                    "INSERT INTO event_views (event_seq, merchant_id, data) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![seq, merchant, data])?;
            }
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

impl Sql {
    async fn tx_once(&self, writes: &[Write], events: &[Event]) -> Result<Outcome> {
        match self {
            // Group commit: queued with whatever else is waiting for the writer.
            Sql::Sqlite { group, .. } => group.commit(writes.to_vec(), events.to_vec()).await,
            Sql::Postgres(pool) => postgres_tx(pool, writes, events).await,
        }
    }
}

#[async_trait]
impl Transactions for Sql {
    /// Commit `writes` and `events` all or none. `Ok(Err(failed))`: nothing
    /// was written.
    async fn tx_commit_with(&self, writes: &[Write], events: &[Event]) -> Result<Outcome> {
        crate::storage::tx::check_commit(writes, events)?;
        if writes.is_empty() && events.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let mut attempt = 0;
        loop {
            let result = self.tx_once(writes, events).await;
            match result {
                Err(e) if attempt < TRANSIENT_RETRIES && transient(&e) => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "transaction retried");
                }
                other => return other,
            }
        }
    }

    /// Values and versions of `keys` in one bucket, in the order given.
    async fn tx_read(
        &self,
        namespace: &str,
        bucket: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Versioned>>> {
        crate::storage::tx::check_read(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Vec<u8>, i64)> = match self {
            Sql::Sqlite { readers: Some(readers), .. } => readers.with(|c| {
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
            Sql::Sqlite { read, .. } => {
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
            Sql::Postgres(pool) => sqlx::query_as(
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
