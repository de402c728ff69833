//! Group commit for SQLite's single writer. SQLite commits one transaction
//! at a time, and with `synchronous=FULL` each commit waits for an fsync:
//! transactions issued one by one would each pay a `BEGIN`, a `COMMIT` and
//! an fsync on the one writer connection. Instead, transactions submitted
//! while the writer is busy queue up, and the writer commits everything
//! queued as one SQLite transaction, each caller's writes inside its own
//! `SAVEPOINT` — so one caller's failed precondition (or database error)
//! rolls back only its writes, and all the others share one fsync. A caller
//! hears its outcome only after that `COMMIT` is durable. The group runs on
//! the writer connection's own SQLite handle (sqlx's `lock_handle`, driven
//! with rusqlite), so its statements cost no worker-thread handoff each.

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::tx::run_sqlite;
use super::{Result, StorageError};
use crate::storage::tx::{Event, Outcome, Write};

/// Most transactions one group commit takes.
const MAX_GROUP: usize = 128;
/// Queued transactions before submitters wait.
const QUEUE: usize = 1_024;

struct Job {
    writes: Vec<Write>,
    events: Vec<Event>,
    reply: oneshot::Sender<Result<Outcome>>,
}

/// The queue in front of the writer task.
#[derive(Clone, Debug)]
pub struct GroupWriter {
    jobs: mpsc::Sender<Job>,
}

impl GroupWriter {
    /// Start the writer task on `pool` (the one-connection writer pool).
    pub fn start(pool: SqlitePool) -> GroupWriter {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(pool, queue));
        GroupWriter { jobs }
    }

    /// Commit `writes` (and `events`, to the outbox) all or none, in the
    /// next group.
    pub async fn commit(&self, writes: Vec<Write>, events: Vec<Event>) -> Result<Outcome> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { writes, events, reply })
            .await
            .map_err(|_| StorageError::Invalid("the database writer has stopped".into()))?;
        answer.await.map_err(|_| StorageError::Invalid("the database writer has stopped".into()))?
    }
}

async fn write_loop(pool: SqlitePool, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("mercato_sqlite_group_commit_size").record(group.len() as f64);
        commit_group(&pool, group).await;
    }
}

/// One SQLite transaction for the whole group, a savepoint per job.
async fn commit_group(pool: &SqlitePool, group: Vec<Job>) {
    let failed = |group: Vec<Job>, e: &dyn std::fmt::Display| {
        for job in group {
            let _ = job.reply.send(Err(StorageError::Invalid(format!("group commit: {e}"))));
        }
    };
    let mut conn = match pool.acquire().await {
        Ok(c) => c,
        Err(e) => return failed(group, &e),
    };
    let mut handle = match conn.lock_handle().await {
        Ok(h) => h,
        Err(e) => return failed(group, &e),
    };
    let raw = handle.as_raw_handle().as_ptr();
    // The crate's one `unsafe`: borrowing the raw handle sqlx lent us.
    #[allow(unsafe_code)]
    let run = || {
        // SAFETY: while `handle` is held the connection's sqlx worker is
        // parked, so this thread is the raw connection's only user; the
        // wrapper does not own the handle (dropping it finalizes only the
        // statements it prepared) and is dropped before `handle`.
        let db = unsafe { rusqlite::Connection::from_handle(raw) }?;
        run_group(&db, &group)
    };
    // The whole group runs here without yielding: tell the runtime.
    let outcomes = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
        _ => run(),
    };
    drop(handle);
    match outcomes {
        Ok(outcomes) => {
            for (job, outcome) in group.into_iter().zip(outcomes) {
                let _ = job.reply.send(outcome);
            }
        }
        Err(e) => failed(group, &e),
    }
}

/// `BEGIN IMMEDIATE`, each job in its savepoint, `COMMIT`. An error outside
/// a job's own writes (the savepoints, the commit) rolls the group back.
fn run_group(db: &rusqlite::Connection, group: &[Job]) -> rusqlite::Result<Vec<Result<Outcome>>> {
    db.execute_batch("BEGIN IMMEDIATE")?;
    let all = (|| {
        let mut outcomes = Vec::with_capacity(group.len());
        for job in group {
            db.execute_batch("SAVEPOINT job")?;
            let outcome = run_sqlite(db, &job.writes, &job.events);
            if !matches!(outcome, Ok(Ok(_))) {
                db.execute_batch("ROLLBACK TO job")?;
            }
            db.execute_batch("RELEASE job")?;
            outcomes.push(outcome.map_err(|e| StorageError::Invalid(format!("transaction: {e}"))));
        }
        db.execute_batch("COMMIT")?;
        Ok(outcomes)
    })();
    if all.is_err() {
        let _ = db.execute_batch("ROLLBACK");
    }
    all
}
