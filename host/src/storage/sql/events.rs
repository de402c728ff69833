//! The outbox and leases on SQLite and PostgreSQL (the events themselves
//! are written by the transactions, see [`super::tx`]).

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::Row;

use super::Sql;
use crate::storage::Result;
use crate::storage::events::{
    Attempt, DeliveryRow, DeliveryStatus, EventRow, Events, MAX_EVENTS_READ, WebhookRow, Webhooks,
};

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

    async fn events_prune(&self, before: i64, limit: u32) -> Result<u64> {
        // Views and deliveries go by ON DELETE CASCADE (SQLite: foreign
        // keys are on for every connection). `events_created` finds the old
        // ones without reading the young.
        Ok(with_query!(
            write,
            self,
            "DELETE FROM events WHERE seq IN (SELECT e.seq FROM events e \
             WHERE e.created_at < ? AND e.published_at IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM webhook_deliveries d WHERE d.event_seq = e.seq AND d.status = 'pending') \
             ORDER BY e.created_at LIMIT ?)",
            |q, pool| q.bind(before).bind(i64::from(limit)).execute(pool).await?.rows_affected()
        ))
    }

    async fn lease(&self, name: &str, holder: &str, ttl_ms: i64) -> Result<bool> {
        // The database's clock, in unix ms: every replica reads the same one.
        let now = match self {
            Sql::Sqlite { .. } => "CAST(unixepoch('subsec') * 1000 AS INTEGER)",
            Sql::Postgres(_) => "CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)",
        };
        let sql = format!(
            "INSERT INTO leases (name, holder, until_ms) VALUES (?, ?, {now} + ?) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms \
             WHERE leases.holder = excluded.holder OR leases.until_ms < {now}"
        );
        let taken = with_query!(write, self, &sql, |q, pool| q
            .bind(name)
            .bind(holder)
            .bind(ttl_ms)
            .execute(pool)
            .await?
            .rows_affected());
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

const DELIVERY_COLUMNS: &str = "SELECT d.seq, d.merchant_id, d.url, d.status, d.attempts, d.next_at, d.last_status, \
     d.last_error, d.created_at, d.delivered_at, e.id, e.kind, e.subject, e.created_at, v.data \
     FROM webhook_deliveries d JOIN events e ON e.seq = d.event_seq \
     JOIN event_views v ON v.event_seq = d.event_seq AND v.merchant_id = d.merchant_id";

/// A [`DeliveryRow`] from a row of [`DELIVERY_COLUMNS`] (either backend).
macro_rules! delivery_row {
    ($r:expr) => {{
        let r = $r;
        DeliveryRow {
            seq: r.get(0),
            merchant_id: r.get(1),
            url: r.get(2),
            status: DeliveryStatus::parse(&r.get::<String, _>(3)),
            attempts: r.get(4),
            next_at: r.get(5),
            last_status: r.get(6),
            last_error: r.get(7),
            created_at: r.get(8),
            delivered_at: r.get(9),
            event_id: r.get(10),
            kind: r.get(11),
            subject: r.get(12),
            event_created_at: r.get(13),
            data: r.get(14),
        }
    }};
}
#[async_trait]
impl Webhooks for Sql {
    async fn webhook_put(&self, row: &WebhookRow) -> Result<()> {
        let events = format!(",{},", row.events.join(","));
        with_query!(
            write,
            self,
            "INSERT INTO webhooks (merchant_id, url, events, secret, created_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (merchant_id) DO UPDATE SET url = excluded.url, events = excluded.events, \
             secret = excluded.secret, created_at = excluded.created_at",
            |q, pool| q
                .bind(&row.merchant_id)
                .bind(&row.url)
                .bind(&events)
                .bind(&row.secret)
                .bind(row.created_at)
                .execute(pool)
                .await?
                .rows_affected()
        );
        Ok(())
    }

    async fn webhook(&self, merchant: &str) -> Result<Option<WebhookRow>> {
        Ok(with_query!(
            read,
            self,
            "SELECT merchant_id, url, events, secret, created_at FROM webhooks WHERE merchant_id = ?",
            |q, pool| q.bind(merchant).fetch_optional(pool).await?.map(|r| WebhookRow {
                merchant_id: r.get(0),
                url: r.get(1),
                events: r
                    .get::<String, _>(2)
                    .split(',')
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect(),
                secret: r.get(3),
                created_at: r.get(4),
            })
        ))
    }

    async fn webhook_delete(&self, merchant: &str, now: i64) -> Result<bool> {
        let removed = with_query!(write, self, "DELETE FROM webhooks WHERE merchant_id = ?", |q, pool| q
            .bind(merchant)
            .execute(pool)
            .await?
            .rows_affected());
        // Its pending deliveries now have no endpoint.
        self.deliveries_orphaned(merchant, now).await?;
        Ok(removed == 1)
    }

    async fn deliveries_orphaned(&self, merchant: &str, now: i64) -> Result<u64> {
        Ok(with_query!(
            write,
            self,
            "UPDATE webhook_deliveries SET status = 'failed', last_error = 'the webhook was removed', next_at = ? \
             WHERE merchant_id = ? AND status = 'pending' \
             AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.merchant_id = ?)",
            |q, pool| q.bind(now).bind(merchant).bind(merchant).execute(pool).await?.rows_affected()
        ))
    }

    async fn deliveries_fan_out(&self, seqs: &[i64], now: i64) -> Result<()> {
        for chunk in seqs.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "INSERT INTO webhook_deliveries (event_seq, merchant_id, url, status, attempts, next_at, created_at) \
                 SELECT v.event_seq, v.merchant_id, w.url, 'pending', 0, ?, ? FROM event_views v \
                 JOIN events e ON e.seq = v.event_seq JOIN webhooks w ON w.merchant_id = v.merchant_id \
                 WHERE v.event_seq IN ({marks}) AND w.events LIKE '%,' || e.kind || ',%' \
                 ORDER BY v.event_seq, v.merchant_id \
                 ON CONFLICT (event_seq, merchant_id) DO NOTHING"
            );
            with_query!(write, self, &sql, |q, pool| {
                let mut q = q.bind(now).bind(now);
                for seq in chunk {
                    q = q.bind(seq);
                }
                q.execute(pool).await?.rows_affected()
            });
        }
        Ok(())
    }

    async fn deliveries_due(&self, now: i64, limit: u32) -> Result<Vec<String>> {
        Ok(with_query!(
            read,
            self,
            "SELECT DISTINCT merchant_id FROM webhook_deliveries WHERE status = 'pending' AND next_at <= ? \
             ORDER BY merchant_id LIMIT ?",
            |q, pool| q
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect()
        ))
    }

    async fn deliveries_pending(&self, merchant: &str, now: i64, limit: u32) -> Result<Vec<DeliveryRow>> {
        let sql = format!(
            "{DELIVERY_COLUMNS} WHERE d.merchant_id = ? AND d.status = 'pending' AND d.next_at <= ? \
             AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p JOIN events pe ON pe.seq = p.event_seq \
             WHERE p.merchant_id = d.merchant_id AND p.status = 'pending' AND p.seq < d.seq \
             AND pe.subject = e.subject) \
             ORDER BY d.seq LIMIT ?"
        );
        Ok(with_query!(read, self, &sql, |q, pool| q
            .bind(merchant)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| delivery_row!(r))
            .collect()))
    }

    async fn deliveries_attempted(&self, attempts: &[(i64, Attempt)]) -> Result<()> {
        // One statement per 50: UPDATE … FROM (VALUES …), whose columns
        // both dialects name column1, column2, ….
        for chunk in attempts.chunks(50) {
            let rows = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!(
                "UPDATE webhook_deliveries SET status = v.column2, attempts = attempts + 1, next_at = v.column3, \
                 last_status = v.column4, last_error = v.column5, \
                 delivered_at = COALESCE(v.column6, delivered_at), url = v.column7 \
                 FROM (VALUES {rows}) AS v \
                 WHERE webhook_deliveries.seq = v.column1 AND webhook_deliveries.status = 'pending'"
            );
            with_query!(write, self, &sql, |q, pool| {
                let mut q = q;
                for (seq, a) in chunk {
                    let delivered = (a.status == DeliveryStatus::Delivered).then_some(a.at);
                    q = q
                        .bind(*seq)
                        .bind(a.status.as_str())
                        .bind(a.at)
                        .bind(a.http_status)
                        .bind(a.error.clone())
                        .bind(delivered)
                        .bind(a.url.clone());
                }
                q.execute(pool).await?;
            });
        }
        Ok(())
    }

    async fn deliveries(&self, merchant: &str, before: Option<i64>, limit: u32) -> Result<Vec<DeliveryRow>> {
        let sql =
            format!("{DELIVERY_COLUMNS} WHERE d.merchant_id = ? AND d.seq < ? ORDER BY d.seq DESC LIMIT ?");
        Ok(with_query!(read, self, &sql, |q, pool| q
            .bind(merchant)
            .bind(before.unwrap_or(i64::MAX))
            .bind(i64::from(limit.min(MAX_EVENTS_READ)))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| delivery_row!(r))
            .collect()))
    }
}
