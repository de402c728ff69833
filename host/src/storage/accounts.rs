//! The host's own records: merchants (with token hashes) and settings.

use sqlx::Row;

use super::{Db, Result};

#[derive(Clone, Debug)]
pub struct MerchantRow {
    pub id: String,
    pub name: String,
    pub token_hash: String,
}

impl Db {
    pub async fn insert_merchant(&self, m: &MerchantRow, created_at: i64) -> Result<()> {
        match self {
            Db::Sqlite { write, .. } => {
                sqlx::query("INSERT INTO merchants (id, name, token_hash, created_at) VALUES (?, ?, ?, ?)")
                    .bind(&m.id)
                    .bind(&m.name)
                    .bind(&m.token_hash)
                    .bind(created_at)
                    .execute(write)
                    .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO merchants (id, name, token_hash, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(&m.id)
                .bind(&m.name)
                .bind(&m.token_hash)
                .bind(created_at)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    pub async fn merchant(&self, id: &str) -> Result<Option<MerchantRow>> {
        let row = match self {
            Db::Sqlite { read, .. } => sqlx::query("SELECT id, name, token_hash FROM merchants WHERE id = ?")
                .bind(id)
                .fetch_optional(read)
                .await?
                .map(|r| (r.get(0), r.get(1), r.get(2))),
            Db::Postgres(pool) => sqlx::query("SELECT id, name, token_hash FROM merchants WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|r| (r.get(0), r.get(1), r.get(2))),
        };
        Ok(row.map(|(id, name, token_hash)| MerchantRow { id, name, token_hash }))
    }

    pub async fn merchant_count(&self) -> Result<i64> {
        Ok(match self {
            Db::Sqlite { read, .. } => {
                sqlx::query_scalar("SELECT COUNT(*) FROM merchants").fetch_one(read).await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM merchants").fetch_one(pool).await?
            }
        })
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(match self {
            Db::Sqlite { read, .. } => {
                sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                    .bind(key)
                    .fetch_optional(read)
                    .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                    .bind(key)
                    .fetch_optional(pool)
                    .await?
            }
        })
    }

    /// Store `value` under `key` unless a value is there already; returns the
    /// value now stored (so two replicas starting at once agree on one).
    pub async fn setting_insert_or_get(&self, key: &str, value: &str) -> Result<String> {
        match self {
            Db::Sqlite { write, .. } => {
                sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING")
                    .bind(key)
                    .bind(value)
                    .execute(write)
                    .await?;
            }
            Db::Postgres(pool) => {
                sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(key)
                    .bind(value)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(self.setting(key).await?.unwrap_or_else(|| value.to_string()))
    }
}
