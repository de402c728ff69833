//! Assembling the host: database, runtime, admin token, demo data, router.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::AppState;
use crate::registry::{Registry, StartupComponent};
use crate::runtime::{ComponentKind, Grants, Limits, Runtime, Scope, bundled};
use crate::storage::Db;

/// A built host, ready to serve.
pub struct App {
    pub state: AppState,
    pub config: Config,
    /// Things to show the operator once (a generated admin token, demo
    /// merchant tokens); `mercato serve` prints them.
    pub notices: Vec<String>,
}

fn startup_components(config: &Config) -> anyhow::Result<Vec<StartupComponent>> {
    ComponentKind::ALL
        .iter()
        .map(|&kind| {
            let (bytes, source) = match config.components.files.get(kind) {
                Some(p) => (
                    std::fs::read(p).with_context(|| format!("read component {}", p.display()))?,
                    format!("file:{}", p.display()),
                ),
                None => (bundled::bytes(kind).to_vec(), "bundled".to_string()),
            };
            Ok(StartupComponent { kind, bytes, source })
        })
        .collect()
}

/// What the payment component is granted: outbound HTTP to the provider's
/// host only, and the provider settings as `wasi:config` values.
fn payment_grants(config: &Config) -> anyhow::Result<Grants> {
    let p = &config.payment;
    let Some(authority) = p.provider_authority().map_err(anyhow::Error::msg)? else {
        return Ok(Grants::payment(Vec::new(), Vec::new()));
    };
    let url = p.provider_url.clone().unwrap_or_default();
    let mut values =
        vec![("provider_url".to_string(), url), ("timeout_ms".to_string(), p.timeout_ms.to_string())];
    if let Some(key) = &p.secret_key {
        values.push(("secret_key".to_string(), key.0.clone()));
    }
    Ok(Grants::payment(vec![authority], values))
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<App> {
        Self::build_with(config, tokio_util::task::TaskTracker::new()).await
    }

    /// [`App::build`] with the tracker of the request work that shutdown waits for.
    pub async fn build_with(config: Config, work: tokio_util::task::TaskTracker) -> anyhow::Result<App> {
        crate::telemetry::metrics();
        let db = Db::connect(config.database_url.as_deref(), &config.data_dir)
            .await
            .context("open the database")?;
        let limits = Limits {
            deadline: Duration::from_millis(config.components.deadline_ms),
            memory_bytes: config.components.memory_mib.saturating_mul(1024 * 1024),
            max_instances: config.components.max_instances,
            inject_trap: config.inject_trap.as_deref().and_then(|t| {
                let (call, nth) = t.split_once('#')?;
                Some((call.to_string(), nth.parse().ok()?))
            }),
            canary: config.deploy.canary,
        };
        config.plugins.check().map_err(|e| anyhow::anyhow!("plugins.{e}"))?;
        config.deploy.canary.check().map_err(anyhow::Error::msg)?;
        config.events.check().map_err(anyhow::Error::msg)?;
        crate::oci::Oci::check(&config.registry).map_err(anyhow::Error::msg)?;
        let policy = crate::signature::Policy::new(&config.deploy.public_keys)
            .map_err(|e| anyhow::anyhow!("deploy.public_keys: {e}"))?;
        let oci = crate::oci::Oci::new(config.registry.clone());
        for (name, reference) in &config.deploy.watch {
            if !ComponentKind::ALL.iter().any(|k| k.name() == name) {
                anyhow::bail!(
                    "deploy.watch: {name:?} is not a component (catalog, cart, inventory, payment, order)"
                );
            }
            // A tag that does not parse, or sits outside registry.allowed,
            // would only ever log warnings: refuse it at start-up.
            oci.reference(reference).map_err(|e| anyhow::anyhow!("deploy.watch.{name}: {e}"))?;
        }
        let sources = crate::registry::bootstrap(&db, startup_components(&config)?)
            .await
            .context("component registry")?;
        let cache_dir = config.data_dir.join("cache");
        let plugins = crate::plugins::Plugins::new(
            db.clone(),
            config.plugins,
            config.components.plugin_runs.max(1),
            config.plugin_runs,
            &cache_dir,
        )?;
        let (rt_db, rt_plugins) = (db.clone(), plugins.clone());
        // Compiling is CPU-bound: keep it off the async workers.
        let grants = payment_grants(&config)?;
        let runtime = tokio::task::spawn_blocking(move || {
            Runtime::new(rt_db, rt_plugins, limits, grants, &cache_dir, &sources)
        })
        .await
        .context("component compilation panicked")??;

        let mut notices = Vec::new();
        let admin_token_hash = match &config.admin_token {
            Some(token) if !token.0.is_empty() => crate::auth::hash(&token.0),
            _ => {
                let token = format!("at.{}", crate::auth::new_secret());
                let mine = crate::auth::hash(&token);
                let stored = db.setting_insert_or_get(crate::auth::ADMIN_HASH_KEY, &mine).await?;
                if stored == mine {
                    notices.push(format!("admin token (shown once, keep it): {token}"));
                }
                stored
            }
        };
        // One key for every replica: the first to start stores it.
        let order_access_key =
            db.setting_insert_or_get(crate::auth::ORDER_ACCESS_KEY, &crate::auth::new_secret()).await?;
        if !config.no_demo {
            for (name, token) in crate::demo::seed_if_empty(&runtime, &db).await? {
                notices.push(format!("demo merchant {name:?} token: {token}"));
            }
        }
        let registry = Registry::new(runtime.clone(), crate::oci::Oci::new(config.registry.clone()), policy);
        let state = AppState::new(crate::http::Shared {
            registry,
            runtime,
            db,
            plugins,
            admin_token_hash: Arc::from(admin_token_hash),
            order_access_key: Arc::from(order_access_key),
            body_limit: config.body_limit,
            rate_limits: Arc::new(crate::http::ratelimit::RateLimits::new(&config.rate_limit)),
            admission: Arc::new(tokio::sync::Semaphore::new(config.max_requests_in_flight.max(1))),
            reservation_ttl_ms: config.checkout.reservation_ttl_ms,
            webhooks: Arc::new(config.events.webhooks.clone()),
            work,
        });
        Ok(App { state, config, notices })
    }

    pub fn router(&self) -> axum::Router {
        crate::http::app(self.state.clone())
    }

    /// Start the background work: checkout recovery, following
    /// deploys made elsewhere, watched registry tags; and the events relay,
    /// which stops (giving its lease up) when `stop` is cancelled.
    fn start_background(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> (Vec<tokio::task::JoinHandle<()>>, tokio::task::JoinHandle<()>) {
        let relay = crate::events::relay::start(self.state.db.clone(), self.config.events.clone(), stop);
        let mut tasks = vec![tokio::spawn(recover_checkouts(
            self.state.runtime.clone(),
            Duration::from_millis(self.config.checkout.sweep_interval_ms.max(10)),
            Duration::from_millis(self.config.checkout.recovery_deadline_ms.max(100)),
            self.config.checkout.idempotency_retention_ms,
        ))];
        tasks.push(tokio::spawn(crate::registry::sync::follow(
            self.state.registry.clone(),
            Duration::from_millis(self.config.deploy.sync_interval_ms.max(50)),
        )));
        for (name, reference) in &self.config.deploy.watch {
            if let Some(kind) = ComponentKind::ALL.into_iter().find(|k| k.name() == name) {
                tasks.push(tokio::spawn(crate::registry::sync::watch(
                    self.state.registry.clone(),
                    kind,
                    reference.clone(),
                    Duration::from_millis(self.config.deploy.poll_interval_ms.max(50)),
                )));
            }
        }
        (tasks, relay)
    }

    /// Serve on `listener` until `shutdown` resolves, then finish in-flight
    /// requests (within `shutdown_timeout_ms`) and close the database.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let bound = Duration::from_millis(self.config.shutdown_timeout_ms);
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks = self.start_background(stop.clone());
        let header_timeout = Duration::from_millis(self.config.header_timeout_ms);
        let _metrics = spawn_metrics_listener(&self.config).await?;
        let served =
            serve_until(listener, self.router(), shutdown, bound, header_timeout, self.state.work.clone())
                .await;
        self.finish(tasks, stop).await;
        served
    }

    async fn finish(
        self,
        (tasks, relay): (Vec<tokio::task::JoinHandle<()>>, tokio::task::JoinHandle<()>),
        stop: tokio_util::sync::CancellationToken,
    ) {
        for task in tasks {
            task.abort();
        }
        // The relay ends its round and gives its lease up, so another
        // replica takes over at once.
        stop.cancel();
        let abort = relay.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), relay).await.is_err() {
            abort.abort();
        }
        self.state.db.close().await;
        tracing::info!("stopped");
    }
}

/// Serve `router` until `shutdown` resolves; then stop accepting (the
/// listener closes: new connections are refused) and let the requests in
/// flight finish — also the `work` of requests whose clients are gone — for
/// at most `bound`.
///
/// Connections are served by hyper directly (not `axum::serve`, which sets no
/// time-outs): a client gets `header_timeout` to send a request's head, so
/// half-open connections (slowloris) are closed instead of held; each
/// request carries its peer address (`ConnectInfo`).
async fn serve_until(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Duration,
    header_timeout: Duration,
    work: tokio_util::task::TaskTracker,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        bound_ms = bound.as_millis() as u64,
        "shutting down: no new connections, finishing requests in flight"
    );
    let drained = async move {
        graceful.shutdown().await;
        work.close();
        work.wait().await;
    };
    if tokio::time::timeout(bound, drained).await.is_err() {
        tracing::warn!(
            bound_ms = bound.as_millis() as u64,
            "requests still in flight after the shutdown bound; closing them"
        );
    }
    Ok(())
}

/// `metrics_listen`: a listener of its own serving `/metrics` without a token,
/// for Prometheus inside the cluster (not behind the Service or the gateway).
async fn spawn_metrics_listener(config: &Config) -> anyhow::Result<Option<AbortOnDrop>> {
    let Some(addr) = config.metrics_listen else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.with_context(|| format!("bind metrics_listen {addr}"))?;
    println!("mercato metrics on http://{}/metrics", listener.local_addr()?);
    let router = axum::Router::new().route("/metrics", axum::routing::get(crate::http::routes::ops::metrics));
    let header_timeout = Duration::from_millis(config.header_timeout_ms);
    Ok(Some(AbortOnDrop(tokio::spawn(async move {
        let never = std::future::pending::<()>();
        if let Err(e) = serve_until(
            listener,
            router,
            never,
            Duration::ZERO,
            header_timeout,
            tokio_util::task::TaskTracker::new(),
        )
        .await
        {
            tracing::warn!(error = %e, "the metrics listener stopped");
        }
    }))))
}

/// A task stopped when its owner goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `mercato serve`: listen at once — `/healthz` answers, `/readyz` says 503
/// until the database is migrated and every component compiled — then
/// build the host and serve the API. `on_ready` sees the built host (to print
/// its notices). SIGTERM (`shutdown`) during the build stops it too.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&App),
) -> anyhow::Result<()> {
    let bound = Duration::from_millis(config.shutdown_timeout_ms);
    let slot: Arc<std::sync::OnceLock<axum::Router>> = Arc::new(std::sync::OnceLock::new());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let work = tokio_util::task::TaskTracker::new();
    let _metrics = spawn_metrics_listener(&config).await?;
    let server = tokio::spawn(serve_until(
        listener,
        starting_router(slot.clone()),
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        },
        bound,
        Duration::from_millis(config.header_timeout_ms),
        work.clone(),
    ));
    let app = tokio::select! {
        built = App::build_with(config, work) => built,
        _ = stop_rx.wait_for(|s| *s) => {
            tracing::info!("stopped while starting");
            return server.await.context("server task")?;
        }
    };
    let app = match app {
        Ok(app) => app,
        Err(e) => {
            server.abort();
            return Err(e);
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let tasks = app.start_background(stop.clone());
    let _ = slot.set(app.router());
    tracing::info!("ready");
    on_ready(&app);
    let served = server.await.context("server task")?;
    app.finish(tasks, stop).await;
    served
}

/// The router while the host starts: the whole API once `slot` holds it;
/// before that `/healthz` is up, `/readyz` and everything else answer 503.
fn starting_router(slot: Arc<std::sync::OnceLock<axum::Router>>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use tower::ServiceExt;
    axum::Router::new().fallback(move |req: axum::extract::Request| {
        let slot = slot.clone();
        async move {
            if let Some(router) = slot.get() {
                return match router.clone().oneshot(req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
            }
            let body = match req.uri().path() {
                "/healthz" => return axum::Json(serde_json::json!({ "status": "ok", "phase": "starting" })).into_response(),
                "/readyz" => serde_json::json!({
                    "status": "starting",
                    "reason": "migrating the database and compiling the components"
                }),
                _ => serde_json::json!({ "error": { "code": "starting", "message": "the host is starting; retry shortly" } }),
            };
            (StatusCode::SERVICE_UNAVAILABLE, [(axum::http::header::RETRY_AFTER, "1")], axum::Json(body)).into_response()
        }
    })
}

/// Every `interval`, drive checkouts that stopped part-way to `paid` or to
/// full compensation (the order component decides; any replica may run it,
/// the database decides who owns each stuck checkout). A pass runs on its
/// own task; shutdown does not wait for it (a pass cut off by the process
/// exit is what the next pass, here or on another replica, resumes).
async fn recover_checkouts(
    runtime: crate::runtime::Runtime,
    interval: Duration,
    deadline: Duration,
    retain_ms: u64,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let rt = runtime.clone();
        let pass = tokio::spawn(async move {
            let now = u64::try_from(crate::now_ms()).unwrap_or(0);
            let lease_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
            // A pass is a request of its own, with the recovery budget as its deadline.
            let scope = Scope { deadline: std::time::Instant::now() + deadline, ..rt.new_scope() };
            Runtime::scoped(scope, async {
                let mut order = rt.instance::<crate::bindings::order::Service>().await?;
                order
                    .call("recover", |c, s| {
                        c.mercato_commerce_orders().call_recover(s, now, lease_ms, retain_ms)
                    })
                    .await
            })
            .await
        });
        match pass.await {
            Ok(Ok(Ok(report))) => {
                crate::telemetry::recovery(&report);
                if report.finished + report.compensated + report.deferred > 0 {
                    tracing::info!(
                        finished = report.finished,
                        compensated = report.compensated,
                        deferred = report.deferred,
                        pruned = report.pruned,
                        "recovery of checkouts and cancels"
                    );
                }
            }
            Ok(Ok(Err(e))) => tracing::warn!(error = ?e, "checkout recovery failed"),
            Ok(Err(fault)) => crate::telemetry::fault_seen(&fault),
            Err(e) => tracing::error!(error = %e, "checkout recovery task failed"),
        }
    }
}
