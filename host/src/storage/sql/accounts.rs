//! Merchants and settings on SQLite and PostgreSQL.

use async_trait::async_trait;
use sqlx::Row;

use super::Sql;
use crate::storage::Result;
use crate::storage::accounts::{Accounts, MerchantRow};

#[async_trait]
impl Accounts for Sql {
    async fn insert_merchant(&self, m: &MerchantRow, created_at: i64) -> Result<()> {
        match self {
            Sql::Sqlite { write, .. } => {
                sqlx::query("INSERT INTO merchants (id, name, token_hash, created_at) VALUES (?, ?, ?, ?)")
                    .bind(&m.id)
                    .bind(&m.name)
                    .bind(&m.token_hash)
                    .bind(created_at)
                    .execute(write)
                    .await?;
            }
            Sql::Postgres(pool) => {
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

    async fn merchant(&self, id: &str) -> Result<Option<MerchantRow>> {
        let row = match self {
            Sql::Sqlite { read, .. } => {
                sqlx::query("SELECT id, name, token_hash FROM merchants WHERE id = ?")
                    .bind(id)
                    .fetch_optional(read)
                    .await?
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
            }
            Sql::Postgres(pool) => sqlx::query("SELECT id, name, token_hash FROM merchants WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|r| (r.get(0), r.get(1), r.get(2))),
        };
        Ok(row.map(|(id, name, token_hash)| MerchantRow { id, name, token_hash }))
    }

    async fn merchant_count(&self) -> Result<i64> {
        Ok(match self {
            Sql::Sqlite { read, .. } => {
                sqlx::query_scalar("SELECT COUNT(*) FROM merchants").fetch_one(read).await?
            }
            Sql::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM merchants").fetch_one(pool).await?
            }
        })
    }

    async fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(match self {
            Sql::Sqlite { read, .. } => {
                sqlx::query_scalar("SELECT value FROM settings WHERE key = ?")
                    .bind(key)
                    .fetch_optional(read)
                    .await?
            }
            Sql::Postgres(pool) => {
                sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                    .bind(key)
                    .fetch_optional(pool)
                    .await?
            }
        })
    }

    /// Store `value` under `key` unless a value is there already; returns the
    /// value now stored (so two replicas starting at once agree on one).
    async fn setting_insert_or_get(&self, key: &str, value: &str) -> Result<String> {
        match self {
            Sql::Sqlite { write, .. } => {
                sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT DO NOTHING")
                    .bind(key)
                    .bind(value)
                    .execute(write)
                    .await?;
            }
            Sql::Postgres(pool) => {
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
