//! What the HTTP benches share: a host on a loopback port, requests, a merchant.
//! (Each bench is its own crate and uses a different part of it.)
#![allow(dead_code)]

use mercato::config::{Config, Secret};
use serde_json::{Value, json};

pub const ADMIN_TOKEN: &str = "bench";

/// A running host; stopped when dropped.
pub struct Host {
    pub base: String,
    pub runtime: mercato::runtime::Runtime,
    pub client: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

/// Start a host in a temporary data directory: no demo, admin token
/// [`ADMIN_TOKEN`], then `tweak` the configuration.
pub async fn start(tweak: impl FnOnce(&mut Config)) -> Host {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_path_buf(),
        no_demo: true,
        admin_token: Some(Secret(ADMIN_TOKEN.into())),
        // The bench's clients all come from 127.0.0.1.
        rate_limit: mercato::http::ratelimit::RateLimitConfig { writes_per_second: 0, ..Default::default() },
        ..Config::default()
    };
    tweak(&mut config);
    let app = mercato::App::build(config).await.expect("build");
    let runtime = app.state.runtime.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.serve(listener, async move {
        let _ = stopped.await;
    }));
    Host { base, runtime, client: reqwest::Client::new(), _stop: stop, _dir: dir }
}

pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

impl Host {
    /// Create a merchant; returns (id, token).
    pub async fn merchant(&self, name: &str) -> (String, String) {
        let (status, m) = send(
            self.client
                .post(format!("{}/v1/admin/merchants", self.base))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({ "name": name })),
        )
        .await;
        assert_eq!(status, 201, "{m}");
        (m["id"].as_str().expect("id").to_string(), m["token"].as_str().expect("token").to_string())
    }
}
