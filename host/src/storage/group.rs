//! Group commit for SQLite's single writer. SQLite commits one transaction
//! at a time, and with `synchronous=FULL` each commit waits for an fsync:
//! transactions issued one by one would each pay a `BEGIN`, a `COMMIT` and
//! an fsync on the one writer connection. Instead, transactions submitted
//! while the writer is busy queue up, and the writer commits everything
//! queued as one SQLite transaction, each caller's writes inside its own
//! `SAVEPOINT` — so one caller's failed precondition (or database error)
//! rolls back only its writes, and all the others share one fsync. A caller
//! hears its outcome only after that `COMMIT` is durable.

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::tx::{Outcome, Write, run_sqlite};
use super::{Result, StorageError};

/// Most transactions one group commit takes.
const MAX_GROUP: usize = 128;
/// Queued transactions before submitters wait.
const QUEUE: usize = 1_024;

struct Job {
    writes: Vec<Write>,
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

    /// Commit `writes` all or none, in the next group.
    pub async fn commit(&self, writes: Vec<Write>) -> Result<Outcome> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { writes, reply })
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
    if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        return failed(group, &e);
    }
    let mut outcomes = Vec::with_capacity(group.len());
    for job in &group {
        // A job that did not apply (or failed) is undone to its savepoint;
        // if the savepoints themselves fail, the whole group is rolled back.
        let savepoints = async {
            sqlx::query("SAVEPOINT job").execute(&mut *conn).await?;
            let outcome = run_sqlite(&mut conn, &job.writes).await;
            if !matches!(outcome, Ok(Ok(_))) {
                sqlx::query("ROLLBACK TO job").execute(&mut *conn).await?;
            }
            sqlx::query("RELEASE job").execute(&mut *conn).await?;
            Ok::<_, sqlx::Error>(outcome)
        }
        .await;
        match savepoints {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return failed(group, &e);
            }
        }
    }
    match sqlx::query("COMMIT").execute(&mut *conn).await {
        Ok(_) => {
            for (job, outcome) in group.into_iter().zip(outcomes) {
                let _ = job.reply.send(outcome);
            }
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            failed(group, &e);
        }
    }
}
