//! The outbox and leases on SQLite and PostgreSQL (the events themselves
//! are written by the transactions, see [`super::tx`]).

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::Row;

use super::Sql;
use crate::storage::Result;
use crate::storage::events::{EventRow, Events, MAX_EVENTS_READ};

impl Sql {
    /// Events selected by `sql` (its columns those of `EventRow` but
    /// `merchants`; one `?`, bound to `arg`, then the limit), with their
    /// merchants.
    async fn events_where(&self, sql: &'static str, arg: i64, limit: u32) -> Result<Vec<EventRow>> {
        let limit = i64::from(limit.min(MAX_EVENTS_READ));
        let mut events = with_query!(read, self, sql, |q, pool| q
            .bind(arg)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| EventRow {
                seq: r.get(0),
                id: r.get(1),
                kind: r.get(2),
                subject: r.get(3),
                created_at: r.get(4),
                data: r.get(5),
                merchants: Vec::new(),
                published_at: r.get(6),
            })
            .collect::<Vec<_>>());
        let (Some(first), Some(last)) = (events.first(), events.last()) else { return Ok(events) };
        let (first, last) = (first.seq, last.seq);
        let views: Vec<(i64, String)> = with_query!(
            read,
            self,
            "SELECT event_seq, merchant_id FROM event_views WHERE event_seq >= ? AND event_seq <= ? \
             ORDER BY event_seq, merchant_id",
            |q, pool| q
                .bind(first)
                .bind(last)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        );
        let mut by_seq: HashMap<i64, Vec<String>> = HashMap::new();
        for (seq, merchant) in views {
            by_seq.entry(seq).or_default().push(merchant);
        }
        for e in &mut events {
            e.merchants = by_seq.remove(&e.seq).unwrap_or_default();
        }
        Ok(events)
    }
}

#[async_trait]
impl Events for Sql {
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<EventRow>> {
        self.events_where(
            "SELECT seq, id, kind, subject, created_at, data, published_at FROM events \
             WHERE seq > ? ORDER BY seq LIMIT ?",
            after,
            limit,
        )
        .await
    }

    async fn events_unpublished(&self, limit: u32) -> Result<Vec<EventRow>> {
        // `seq > -1`: every one (the shared statement shape has one argument).
        self.events_where(
            "SELECT seq, id, kind, subject, created_at, data, published_at FROM events \
             WHERE published_at IS NULL AND seq > ? ORDER BY seq LIMIT ?",
            -1,
            limit,
        )
        .await
    }

    async fn events_unpublished_count(&self) -> Result<i64> {
        Ok(with_query!(read, self, "SELECT COUNT(*) FROM events WHERE published_at IS NULL", |q, pool| q
            .fetch_one(pool)
            .await?
            .get::<i64, _>(0)))
    }

    async fn events_mark_published(&self, seqs: &[i64], now: i64) -> Result<()> {
        for chunk in seqs.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql =
                format!("UPDATE events SET published_at = ? WHERE published_at IS NULL AND seq IN ({marks})");
            with_query!(write, self, &sql, |q, pool| {
                let mut q = q.bind(now);
                for seq in chunk {
                    q = q.bind(seq);
                }
                q.execute(pool).await?;
            });
        }
        Ok(())
    }

    async fn lease(&self, name: &str, holder: &str, now: i64, until: i64) -> Result<bool> {
        let taken = with_query!(
            write,
            self,
            "INSERT INTO leases (name, holder, until_ms) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
             WHERE leases.holder = excluded.holder OR leases.until_ms < ?",
            |q, pool| q.bind(name).bind(holder).bind(until).bind(now).execute(pool).await?.rows_affected()
        );
        Ok(taken == 1)
    }

    async fn lease_release(&self, name: &str, holder: &str) -> Result<()> {
        with_query!(write, self, "DELETE FROM leases WHERE name = ? AND holder = ?", |q, pool| q
            .bind(name)
            .bind(holder)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }
}
