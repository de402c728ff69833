//! Background work of the registry: following activations made by other
//! replicas, and deploying when a watched registry tag moves.

use std::time::Duration;

use super::{Artifact, Registry};
use crate::runtime::ComponentKind;
use crate::storage::components::CHANNEL;

/// Run the active versions the database names: at once on a PostgreSQL
/// notification (another replica deployed or rolled back), and every
/// `interval` in any case (a missed notification, SQLite shared by processes).
/// An ended canary stops here at once on the notification; the rest (which
/// may compile) runs on a task of its own, so that a long sync or deploy
/// does not hold back the next notification.
pub async fn follow(registry: Registry, interval: Duration) {
    let kick = std::sync::Arc::new(tokio::sync::Notify::new());
    let syncing = {
        let (registry, kick) = (registry.clone(), kick.clone());
        tokio::spawn(async move {
            loop {
                kick.notified().await;
                match registry.sync().await {
                    Ok(changed) if !changed.is_empty() => {
                        tracing::info!(components = ?changed.iter().map(|k| k.name()).collect::<Vec<_>>(), "synced")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot sync component versions"),
                }
            }
        })
    };
    let _stop_with_this = AbortOnDrop(syncing);
    let mut listener = match registry.db().postgres() {
        Some(pool) => {
            let listening = async {
                let mut l = sqlx::postgres::PgListener::connect_with(pool).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            listening
                .await
                .map_err(|e| tracing::warn!(error = %e, "cannot LISTEN for deploys; re-checking every interval only"))
                .ok()
        }
        None => None,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match listener.as_mut() {
            Some(l) => {
                tokio::select! {
                    _ = tick.tick() => {}
                    // `recv` reconnects by itself after a lost connection.
                    n = l.recv() => if let Err(e) = n {
                        tracing::warn!(error = %e, "deploy notifications interrupted");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            None => {
                tick.tick().await;
            }
        }
        if let Err(e) = registry.drop_ended_canary().await {
            tracing::warn!(error = %e, "cannot check the canary");
        }
        // One pending sync at most: a notification during a sync runs one more.
        kick.notify_one();
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Deploy `reference` (a tag) as `kind` whenever it points at a new digest.
/// A digest that fails the checks is logged once and skipped; the version
/// that was live stays live.
pub async fn watch(registry: Registry, kind: ComponentKind, reference: String, interval: Duration) {
    let name = kind.name();
    let mut seen: Option<String> = None;
    let mut last_error: Option<String> = None;
    let mut waiting: Option<String> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let digest = match registry.oci().resolve(&reference).await {
            Ok(d) => d,
            Err(e) => {
                let message = e.to_string();
                if last_error.as_ref() != Some(&message) {
                    tracing::warn!(component = name, reference, error = %message, "cannot resolve watched tag");
                    last_error = Some(message);
                }
                continue;
            }
        };
        last_error = None;
        if seen.as_ref() == Some(&digest) {
            continue;
        }
        let pinned = match crate::oci::parse(&reference) {
            Ok(r) => format!("{}/{}@{digest}", r.registry(), r.repository()),
            Err(_) => continue,
        };
        match registry.deploy(kind, Artifact::Oci { reference: pinned }).await {
            Ok(d) if d.changed => {
                tracing::info!(component = name, reference, version = d.version, digest = %d.digest, "watched tag deployed")
            }
            Ok(_) => {}
            Err(super::DeployError::Registry(e)) => {
                // The registry failed, not the artifact: try again next time.
                tracing::warn!(component = name, reference, error = %e, "cannot pull watched tag");
                continue;
            }
            Err(super::DeployError::Conflict(e)) => {
                // A canary runs: the tag deploys once it has ended.
                if waiting.as_ref() != Some(&e) {
                    tracing::warn!(component = name, reference, error = %e, "watched tag waits");
                    waiting = Some(e);
                }
                continue;
            }
            Err(e) => {
                tracing::error!(component = name, reference, manifest = %digest, error = %e, "watched tag refused; the live version stays")
            }
        }
        waiting = None;
        seen = Some(digest);
    }
}
