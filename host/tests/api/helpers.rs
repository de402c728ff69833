//! `spawn_app`: a real host on a loopback port 0, with a fresh database
//! (a temporary SQLite file, or a new PostgreSQL database) per test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use mercato::config::{ComponentsConfig, Config, Secret};
use mercato::storage::Db;
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The PostgreSQL server used by tests (trust auth on this machine and in CI).
pub fn postgres_admin_url() -> String {
    std::env::var("MERCATO_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// `memory:`: nothing is kept past the process (the fast tier).
    Memory,
}

impl Backend {
    /// The database URL of a test on this backend (`None`: SQLite in the
    /// test's data directory).
    pub fn url(self, pg: Option<&PgDatabase>) -> Option<String> {
        match self {
            Backend::Memory => Some("memory:".to_string()),
            _ => pg.map(|p| p.url.clone()),
        }
    }
}

/// One precompiled-artifact directory for the whole test run: the first app
/// compiles the components, the others load them.
pub fn shared_cache_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mercato-test-cache");
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
    .clone()
}

/// A fresh, empty database for `backend`; returns its URL (None: SQLite in the data dir).
pub async fn fresh_database(backend: Backend) -> Option<PgDatabase> {
    match backend {
        Backend::Sqlite | Backend::Memory => None,
        Backend::Postgres => Some(PgDatabase::create().await),
    }
}

/// A PostgreSQL database that exists for one test and is dropped after it.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        use sqlx::Connection;
        let name = format!("mercato_t_{}", hex::encode(rand::random::<[u8; 6]>()));
        let admin = postgres_admin_url();
        let mut conn =
            sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL at 127.0.0.1:5432 must be running");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin.clone());
        PgDatabase { url: format!("{base}/{name}"), name }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop on a thread of its own: this may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub runtime: mercato::runtime::Runtime,
    pub client: Client,
    pub db: Db,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
    pub pg: Option<PgDatabase>,
}

/// A test configuration: no demo, a known admin token, small pool.
pub fn test_config(dir: &std::path::Path, pg: Option<&PgDatabase>) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.to_path_buf(),
        database_url: pg.map(|p| mercato::config::DatabaseUrl(p.url.clone())),
        no_demo: true,
        admin_token: Some(Secret(ADMIN_TOKEN.to_string())),
        components: ComponentsConfig { max_instances: 64, ..ComponentsConfig::default() },
        // Every simulated shopper of a test shares 127.0.0.1: no per-address
        // write limit (its own test turns it on); failed-auth limits stay.
        rate_limit: mercato::http::ratelimit::RateLimitConfig { writes_per_second: 0, ..Default::default() },
        ..Config::default()
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = fresh_database(backend).await;
    let mut config = test_config(dir.path(), pg.as_ref());
    config.database_url = backend.url(pg.as_ref()).map(mercato::config::DatabaseUrl);
    tweak(&mut config);
    start(config, dir, pg).await
}

/// A host with its own, empty precompiled cache (so its first start
/// compiles), for restart tests.
pub async fn spawn_app_with_private_cache(backend: Backend) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("cache")).expect("private cache");
    let pg = fresh_database(backend).await;
    let mut config = test_config(dir.path(), pg.as_ref());
    config.database_url = backend.url(pg.as_ref()).map(mercato::config::DatabaseUrl);
    start(config, dir, pg).await
}

/// Start a host for `config` (its data dir is `dir`).
pub async fn start(config: Config, dir: tempfile::TempDir, pg: Option<PgDatabase>) -> TestApp {
    let shared = shared_cache_dir();
    // Share precompiled artifacts across tests: link the cache into the data dir.
    let cache = config.data_dir.join("cache");
    if !cache.exists() {
        let _ = std::os::unix::fs::symlink(&shared, &cache);
    }
    let app = mercato::App::build(config.clone()).await.expect("build app");
    let db = app.state.runtime.db().clone();
    let runtime = app.state.runtime.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = app
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await;
    });
    TestApp {
        addr,
        runtime,
        client: Client::new(),
        db,
        config,
        shutdown: Some(tx),
        server: Some(server),
        dir,
        pg,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        send(self.request(Method::GET, path)).await
    }

    /// The Prometheus text of `/metrics`, as the operator.
    pub async fn metrics(&self) -> String {
        let response =
            self.request(Method::GET, "/metrics").bearer_auth(ADMIN_TOKEN).send().await.expect("metrics");
        assert_eq!(response.status(), 200);
        response.text().await.expect("text")
    }

    /// `GET /v1/orders/{id}` as the operator (who may read every order).
    pub async fn get_order(&self, id: &str) -> (u16, Value) {
        send(self.request(Method::GET, &format!("/v1/orders/{id}")).bearer_auth(ADMIN_TOKEN)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.request(Method::POST, path).json(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.request(Method::PUT, path).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        send(self.request(Method::DELETE, path)).await
    }

    /// POST each `(path, body)` from its own task, all at once; results in order.
    pub async fn post_concurrently(&self, requests: Vec<(String, Value)>) -> Vec<(u16, Value)> {
        let handles: Vec<_> = requests
            .into_iter()
            .map(|(path, body)| {
                let req = self.request(Method::POST, &path).json(&body);
                tokio::spawn(send(req))
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("request task"));
        }
        out
    }

    /// Create a merchant through the admin API; returns (id, token).
    pub async fn merchant(&self, name: &str) -> (String, String) {
        let (status, body) = send(
            self.request(Method::POST, "/v1/admin/merchants")
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({ "name": name })),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        (s(&body["id"]), s(&body["token"]))
    }

    /// Create a product as the merchant with `token`; returns the product.
    pub async fn product(&self, token: &str, body: Value) -> Value {
        let (status, product) =
            send(self.request(Method::POST, "/v1/merchant/products").bearer_auth(token).json(&body)).await;
        assert_eq!(status, 201, "{product}");
        product
    }

    pub async fn cart(&self, currency: &str) -> String {
        let (status, cart) = self.post("/v1/carts", json!({ "currency": currency })).await;
        assert_eq!(status, 201, "{cart}");
        s(&cart["id"])
    }

    /// Stop the server and wait for it.
    pub async fn stop(mut self) -> (tempfile::TempDir, Option<PgDatabase>, Config) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        (dir, self.pg.take(), self.config.clone())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn send(req: RequestBuilder) -> (u16, Value) {
    let response: Response = req.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// A JSON string value as a `String`.
pub fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("expected a string, got {v}")).to_string()
}

/// A product body with `skus` at `cents` each in `currency`, 10 in stock.
pub fn product_body(title: &str, skus: &[&str], cents: i64, currency: &str) -> Value {
    json!({
        "title": title,
        "description": "test product",
        "variants": skus.iter().map(|sku| json!({
            "sku": sku, "title": sku, "price": {"amount": cents, "currency": currency}, "stock": 10
        })).collect::<Vec<_>>(),
    })
}

/// Assert an error response: status and stable code.
#[track_caller]
pub fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "status of {}", got.1);
    assert_eq!(got.1["error"]["code"], code, "code of {}", got.1);
    assert!(got.1["error"]["message"].is_string(), "message of {}", got.1);
}

/// Define one `$name::<test>` test per `<test>: <Backend variant>` pair,
/// each running `$body(backend)`.
#[macro_export]
macro_rules! backend_tests {
    ($name:ident, $body:ident, $($test:ident: $backend:ident),+) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$body($crate::helpers::Backend::$backend).await
                }
            )+
        }
    };
}

/// Define `$name::sqlite`, `$name::postgres` and `$name::memory` tests
/// running `$body(backend)`: for what holds on every backend.
#[macro_export]
macro_rules! each_backend {
    ($name:ident, $body:ident) => {
        $crate::backend_tests!($name, $body, sqlite: Sqlite, postgres: Postgres, memory: Memory);
    };
}

/// Define `$name::sqlite` and `$name::postgres` tests running `$body(backend)`:
/// for what needs a durable database (restarts, other processes).
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        $crate::backend_tests!($name, $body, sqlite: Sqlite, postgres: Postgres);
    };
}
