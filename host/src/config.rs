//! Configuration: defaults, then a TOML file (`--config`), then `MERCATO_*`
//! environment variables (nested keys with `__`, e.g.
//! `MERCATO_COMPONENTS__DEADLINE_MS`), then command-line flags.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./mercato-data";
/// Largest request body, in bytes.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// Wall-clock budget of one request across the components it calls.
pub const DEFAULT_DEADLINE_MS: u64 = 2_000;
/// Linear-memory cap of one component instance.
pub const DEFAULT_MEMORY_MIB: usize = 64;
/// How long a checkout's reserved stock is held if it never completes.
pub const DEFAULT_RESERVATION_TTL_MS: u64 = 10 * 60 * 1000;
/// How often the recovery task looks for checkouts that stopped part-way.
pub const DEFAULT_SWEEP_INTERVAL_MS: u64 = 10_000;
/// Time budget of one recovery pass (it may wait on a slow payment provider).
pub const DEFAULT_RECOVERY_DEADLINE_MS: u64 = 30_000;
/// How long a finished checkout's Idempotency-Key replays its order (Stripe
/// keeps keys 24 hours).
pub const DEFAULT_IDEMPOTENCY_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;
/// Time-out of one payment provider call.
pub const DEFAULT_PAYMENT_TIMEOUT_MS: u64 = 10_000;
/// Component instances that may exist at once.
pub const DEFAULT_MAX_INSTANCES: u32 = 1_000;
/// Pricing plugin runs that may execute at once on one replica.
pub const DEFAULT_PLUGIN_RUNS: usize = 64;
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_REQUESTS_IN_FLIGHT: usize = 2_048;

pub use crate::auth::Secret;

/// A database URL: printed (in logs, `Debug`, errors) with its password
/// replaced, whether in the user info (`postgres://user:pw@host/db`) or in
/// the query (`?password=pw`).
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct DatabaseUrl(pub String);

impl DatabaseUrl {
    /// The URL with every password replaced by `[redacted]`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let mut out = url.clone();
        if let Some(scheme_end) = url.find("://") {
            let rest = &url[scheme_end + 3..];
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            if let Some(at) = rest[..authority_end].rfind('@')
                && let Some(colon) = rest[..at].find(':')
            {
                let start = scheme_end + 3 + colon + 1;
                out = format!("{}[redacted]{}", &url[..start], &url[scheme_end + 3 + at..]);
            }
        }
        if let Some(q) = out.find('?') {
            let (head, query) = out.split_at(q + 1);
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=[redacted]"),
                    _ => pair.to_string(),
                })
                .collect();
            out = format!("{head}{}", query.join("&"));
        }
        out
    }
}

impl std::ops::Deref for DatabaseUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Sandbox settings of the service components.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ComponentsConfig {
    pub deadline_ms: u64,
    pub memory_mib: usize,
    pub max_instances: u32,
    /// Pricing plugin runs at once on this replica; a run that finds none
    /// free by its deadline is skipped as `overloaded`.
    pub plugin_runs: usize,
    /// `components.<name>`: run this file instead of the bundled component
    /// of that name (one key per row of the component table).
    #[serde(flatten)]
    pub files: ComponentFiles,
}

/// Files to run instead of bundled components, by component name. Read as
/// the leftover keys of `[components]`, so a key that is neither a setting
/// nor a component's name is refused as `deny_unknown_fields` would.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ComponentFiles(pub BTreeMap<String, PathBuf>);

impl ComponentFiles {
    /// The file configured for `kind`, if any.
    pub fn get(&self, kind: crate::runtime::ComponentKind) -> Option<&PathBuf> {
        self.0.get(kind.name())
    }
}

impl<'de> Deserialize<'de> for ComponentFiles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<String, PathBuf>::deserialize(d)?;
        if let Some(unknown) = map.keys().find(|k| crate::runtime::ComponentKind::from_name(k).is_none()) {
            let mut expected = vec!["deadline_ms", "memory_mib", "max_instances", "plugin_runs"];
            expected.extend(crate::runtime::ComponentKind::ALL.iter().map(|k| k.name()));
            return Err(serde::de::Error::custom(format!(
                "unknown field `{unknown}`, expected one of {}",
                expected.iter().map(|e| format!("`{e}`")).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(ComponentFiles(map))
    }
}

impl Default for ComponentsConfig {
    fn default() -> Self {
        ComponentsConfig {
            deadline_ms: DEFAULT_DEADLINE_MS,
            memory_mib: DEFAULT_MEMORY_MIB,
            max_instances: DEFAULT_MAX_INSTANCES,
            plugin_runs: DEFAULT_PLUGIN_RUNS,
            files: ComponentFiles::default(),
        }
    }
}

/// Checkout settings.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CheckoutConfig {
    /// How long a checkout may hold stock: an interrupted checkout older
    /// than this is compensated by recovery rather than finished.
    pub reservation_ttl_ms: u64,
    /// How often recovery runs.
    pub sweep_interval_ms: u64,
    /// Time budget of one recovery pass.
    pub recovery_deadline_ms: u64,
    /// How long a finished checkout is remembered by its Idempotency-Key.
    pub idempotency_retention_ms: u64,
}

impl Default for CheckoutConfig {
    fn default() -> Self {
        CheckoutConfig {
            reservation_ttl_ms: DEFAULT_RESERVATION_TTL_MS,
            sweep_interval_ms: DEFAULT_SWEEP_INTERVAL_MS,
            recovery_deadline_ms: DEFAULT_RECOVERY_DEADLINE_MS,
            idempotency_retention_ms: DEFAULT_IDEMPOTENCY_RETENTION_MS,
        }
    }
}

/// The payment provider. With no `provider_url` the payment component runs
/// its built-in test mode.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentConfig {
    /// Base URL of a Stripe-compatible API, e.g. `https://api.stripe.com`.
    /// Plain `http://` only for a loopback host.
    pub provider_url: Option<String>,
    pub secret_key: Option<Secret>,
    /// Time-out of one provider call.
    pub timeout_ms: u64,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        PaymentConfig { provider_url: None, secret_key: None, timeout_ms: DEFAULT_PAYMENT_TIMEOUT_MS }
    }
}

pub use crate::net::is_loopback_host;

impl PaymentConfig {
    /// The `host[:port]` the payment component may call, after checking the URL.
    pub fn provider_authority(&self) -> Result<Option<String>, String> {
        let Some(url) = &self.provider_url else { return Ok(None) };
        let uri: http::Uri = url.parse().map_err(|e| format!("payment.provider_url: {e}"))?;
        let authority = uri.authority().ok_or("payment.provider_url: no host")?.as_str().to_ascii_lowercase();
        let loopback = is_loopback_host(uri.host().unwrap_or_default());
        match uri.scheme_str() {
            Some("https") => Ok(Some(authority)),
            Some("http") if loopback => Ok(Some(authority)),
            Some("http") => {
                Err("payment.provider_url: plain http is allowed only for a loopback host".into())
            }
            _ => Err("payment.provider_url: must be an http(s) URL".into()),
        }
    }
}

/// How long in-flight requests get to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 20_000;

/// How often a watched registry tag is polled.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 10_000;
/// How often the active versions are re-read from the database (besides
/// PostgreSQL notifications).
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 5_000;

/// Deploying service components (`[deploy]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeployConfig {
    /// Base64 ed25519 public keys. When any is set, every deploy (API, OCI,
    /// watch) must carry a signature by one of them.
    pub public_keys: Vec<String>,
    /// Per component, an OCI tag to watch: `catalog = "registry/repo:tag"`;
    /// when the tag moves to a new digest the host deploys it.
    pub watch: std::collections::BTreeMap<String, String>,
    pub poll_interval_ms: u64,
    pub sync_interval_ms: u64,
    /// When a canary is rolled back by itself (`[deploy.canary]`).
    pub canary: crate::runtime::canary::CanaryPolicy,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            public_keys: Vec::new(),
            watch: Default::default(),
            poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
            sync_interval_ms: DEFAULT_SYNC_INTERVAL_MS,
            canary: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the SQLite database and precompiled components.
    pub data_dir: PathBuf,
    /// `postgres://…` for PostgreSQL; unset for SQLite under `data_dir`.
    pub database_url: Option<DatabaseUrl>,
    /// Do not seed the demo catalog on an empty database.
    pub no_demo: bool,
    /// The admin token; generated (and printed once) when unset.
    pub admin_token: Option<Secret>,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// Log as JSON lines.
    pub log_json: bool,
    /// After SIGTERM: how long in-flight requests get before the process exits.
    pub shutdown_timeout_ms: u64,
    /// Where Prometheus scrapes `/metrics` without a token (unset: only the
    /// API listener's `/metrics`, which needs the admin token).
    pub metrics_listen: Option<SocketAddr>,
    /// How long a client has to send a request's head; a connection that
    /// takes longer (slowloris) is closed.
    pub header_timeout_ms: u64,
    /// API requests served at once; more get 503 `overloaded` with
    /// `Retry-After` (health and metrics are not counted).
    pub max_requests_in_flight: usize,
    /// Rate limits per client address (`[rate_limit]`).
    pub rate_limit: crate::http::ratelimit::RateLimitConfig,
    pub components: ComponentsConfig,
    pub checkout: CheckoutConfig,
    pub payment: PaymentConfig,
    /// Default budgets of merchants' pricing plugins (`[plugins]`).
    pub plugins: crate::plugins::PluginLimits,
    /// How recorded plugin runs are kept (`[plugin_runs]`).
    pub plugin_runs: crate::plugins::runs::RecordingConfig,
    /// Deploys: signature keys, watched tags, intervals (`[deploy]`).
    pub deploy: DeployConfig,
    /// Registry credentials and plain-HTTP registries (`[registry]`).
    pub registry: crate::oci::RegistryConfig,
    /// Where the outbox's events go (`[events]`: NATS JetStream).
    pub events: crate::events::EventsConfig,
    /// Tests only, not a configuration key: make a component trap right after
    /// the Nth host call of a name it makes within one request, e.g.
    /// `"order:transactions.commit#2"` or `"order:payment.authorize#1"`
    /// (the call itself completes), to interrupt a write path at a chosen step;
    /// `"order.cancel:…"` counts only in requests that called `cancel`.
    #[serde(skip)]
    pub inject_trap: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            database_url: None,
            no_demo: false,
            admin_token: None,
            body_limit: DEFAULT_BODY_LIMIT,
            log_json: false,
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
            header_timeout_ms: DEFAULT_HEADER_TIMEOUT_MS,
            metrics_listen: None,
            max_requests_in_flight: DEFAULT_MAX_REQUESTS_IN_FLIGHT,
            rate_limit: crate::http::ratelimit::RateLimitConfig::default(),
            inject_trap: None,
            components: ComponentsConfig::default(),
            checkout: CheckoutConfig::default(),
            payment: PaymentConfig::default(),
            plugins: crate::plugins::PluginLimits::default(),
            plugin_runs: crate::plugins::runs::RecordingConfig::default(),
            deploy: DeployConfig::default(),
            registry: crate::oci::RegistryConfig::default(),
            events: crate::events::EventsConfig::default(),
        }
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_demo: Option<bool>,
}

/// The top-level keys read from `MERCATO_*`. Other `MERCATO_*` variables
/// (`MERCATO_CONFIG`, the CLI's `MERCATO_TOKEN`, test settings) are not
/// configuration keys. `MERCATO_NO_DEMO` is read by the command line, which
/// accepts `1`/`true`/`yes`.
const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "admin_token",
    "body_limit",
    "log_json",
    "shutdown_timeout_ms",
    "header_timeout_ms",
    "metrics_listen",
    "max_requests_in_flight",
    "rate_limit",
    "components",
    "checkout",
    "payment",
    "plugins",
    "plugin_runs",
    "deploy",
    "registry",
    "events",
];

/// Keys whose values are secrets: in a cluster they come from a Secret.
pub const SECRET_KEYS: &[&str] = &[
    "admin_token",
    "database_url",
    "payment.secret_key",
    "registry.username",
    "registry.password",
    "deploy.public_keys",
    "events.nats_url",
];

/// One configuration key, as `mercato config keys` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// `components.deadline_ms`
    pub key: String,
    /// `MERCATO_COMPONENTS__DEADLINE_MS`
    pub env: String,
    /// The default as the environment would spell it; empty: unset.
    pub default: String,
    pub secret: bool,
}

/// Every configuration key the binary accepts, with its environment
/// variable and default (from [`Config::default`], so it cannot drift).
/// `deploy.watch` is a map: one key per component.
pub fn keys() -> Vec<KeyInfo> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<KeyInfo>) {
        match value {
            serde_json::Value::Object(map) if prefix == "deploy.watch" || !map.is_empty() => {
                if prefix == "deploy.watch" {
                    for kind in crate::runtime::ComponentKind::ALL {
                        leaf(&format!("{prefix}.{}", kind.name()), &serde_json::Value::Null, out);
                    }
                    return;
                }
                for (k, v) in map {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
                // `components.<name>`: one key per component, unset by default.
                if prefix == "components" {
                    for kind in crate::runtime::ComponentKind::ALL {
                        leaf(&format!("{prefix}.{}", kind.name()), &serde_json::Value::Null, out);
                    }
                }
            }
            other => leaf(prefix, other, out),
        }
    }
    fn leaf(key: &str, value: &serde_json::Value, out: &mut Vec<KeyInfo>) {
        let default = match value {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push(KeyInfo {
            key: key.to_string(),
            env: format!("MERCATO_{}", key.to_ascii_uppercase().replace('.', "__")),
            default,
            secret: SECRET_KEYS.contains(&key),
        });
    }
    let mut out = Vec::new();
    if let Ok(value) = serde_json::to_value(Config::default()) {
        walk("", &value, &mut out);
    }
    out
}

impl Config {
    /// Load: defaults ← `file` ← `MERCATO_*` ← `overrides`.
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: &Overrides,
    ) -> Result<Config, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment
            .merge(Env::prefixed("MERCATO_").split("__").filter(|k| {
                let top =
                    k.as_str().split("__").next().unwrap_or_default().split('.').next().unwrap_or_default();
                ENV_KEYS.iter().any(|n| top.eq_ignore_ascii_case(n))
            }))
            .merge(Serialized::defaults(overrides));
        figment.extract().map_err(Box::new)
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail error type
mod tests {
    use super::*;

    #[test]
    fn database_urls_print_without_their_passwords() {
        for (url, shown) in [
            ("postgres://postgres:hunter2@db:5432/shop", "postgres://postgres:[redacted]@db:5432/shop"),
            (
                "postgres://u:p%40ss@db/shop?sslmode=require",
                "postgres://u:[redacted]@db/shop?sslmode=require",
            ),
            (
                "postgres://db/shop?user=u&password=hunter2&x=1",
                "postgres://db/shop?user=u&password=[redacted]&x=1",
            ),
            ("postgres://postgres@127.0.0.1:5432/test", "postgres://postgres@127.0.0.1:5432/test"),
        ] {
            let u = DatabaseUrl(url.to_string());
            assert_eq!(u.redacted(), shown);
            assert_eq!(format!("{u:?}"), format!("{shown:?}"));
            assert!(!format!("{u:?} {u}").contains("hunter2"));
        }
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./mercato-data"));
        assert!(c.database_url.is_none() && !c.no_demo);
    }

    #[test]
    fn provider_urls_are_checked() {
        let p = |url: &str| PaymentConfig { provider_url: Some(url.into()), ..PaymentConfig::default() };
        assert_eq!(p("https://api.stripe.com").provider_authority(), Ok(Some("api.stripe.com".into())));
        assert_eq!(p("http://127.0.0.1:9999").provider_authority(), Ok(Some("127.0.0.1:9999".into())));
        assert!(p("http://api.stripe.com").provider_authority().is_err(), "no secrets over plain http");
        assert!(p("ftp://x").provider_authority().is_err());
        assert_eq!(PaymentConfig::default().provider_authority(), Ok(None));
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Config { admin_token: Some(Secret("hunter2".into())), ..Config::default() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "m.toml",
                "listen = \"127.0.0.1:9000\"\nno_demo = true\n[components]\ndeadline_ms = 500\n",
            )?;
            jail.set_env("MERCATO_DATA_DIR", "/tmp/from-env");
            jail.set_env("MERCATO_COMPONENTS__MEMORY_MIB", "32");
            let flags = Overrides {
                listen: Some("127.0.0.1:9001".parse().map_err(|e| format!("{e}"))?),
                ..Default::default()
            };
            let c = Config::load(Some(std::path::Path::new("m.toml")), &flags).map_err(|e| e.to_string())?;
            assert_eq!(c.listen.to_string(), "127.0.0.1:9001");
            assert_eq!(c.data_dir, PathBuf::from("/tmp/from-env"));
            assert!(c.no_demo);
            assert_eq!((c.components.deadline_ms, c.components.memory_mib), (500, 32));
            Ok(())
        });
    }

    #[test]
    fn component_files_are_keys_of_components_and_nothing_else_is() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("m.toml", "[components]\ncart = \"/opt/cart.wasm\"\nmax_instances = 7\n")?;
            jail.set_env("MERCATO_COMPONENTS__ORDER", "/opt/order.wasm");
            let c = Config::load(Some(std::path::Path::new("m.toml")), &Overrides::default())
                .map_err(|e| e.to_string())?;
            use crate::runtime::ComponentKind;
            assert_eq!(c.components.files.get(ComponentKind::Cart), Some(&PathBuf::from("/opt/cart.wasm")));
            assert_eq!(c.components.files.get(ComponentKind::Order), Some(&PathBuf::from("/opt/order.wasm")));
            assert_eq!(c.components.files.get(ComponentKind::Catalog), None);
            assert_eq!(c.components.max_instances, 7);
            jail.set_env("MERCATO_COMPONENTS__ORDERS", "/opt/order.wasm");
            let e = Config::load(None, &Overrides::default()).expect_err("a typo is refused").to_string();
            assert!(e.contains("unknown field `orders`") && e.contains("`order`"), "{e}");
            Ok(())
        });
        let keys = keys();
        for kind in crate::runtime::ComponentKind::ALL {
            let env = format!("MERCATO_COMPONENTS__{}", kind.name().to_ascii_uppercase());
            assert!(keys.iter().any(|k| k.env == env), "{env}");
        }
    }

    #[test]
    fn unrelated_environment_variables_are_ignored() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MERCATO_TOKEN", "for the CLI");
            jail.set_env("MERCATO_SOMETHING_ELSE", "x");
            assert!(Config::load(None, &Overrides::default()).is_ok());
            Ok(())
        });
    }

    #[test]
    fn every_key_is_listed_and_loads_from_its_variable() {
        let keys = keys();
        for expected in ["listen", "components.deadline_ms", "deploy.watch.catalog", "registry.insecure"] {
            assert!(keys.iter().any(|k| k.key == expected), "{expected} missing");
        }
        assert!(keys.iter().any(|k| k.env == "MERCATO_SHUTDOWN_TIMEOUT_MS" && k.default == "20000"));
        assert!(keys.iter().filter(|k| k.secret).count() == SECRET_KEYS.len());
        figment::Jail::expect_with(|jail| {
            jail.set_env("MERCATO_DEPLOY__WATCH__CATALOG", "127.0.0.1:5000/m/catalog:live");
            jail.set_env("MERCATO_DEPLOY__PUBLIC_KEYS", "[\"a\", \"b\"]");
            jail.set_env("MERCATO_SHUTDOWN_TIMEOUT_MS", "1500");
            let c = Config::load(None, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(
                c.deploy.watch.get("catalog").map(String::as_str),
                Some("127.0.0.1:5000/m/catalog:live")
            );
            assert_eq!(c.deploy.public_keys, vec!["a".to_string(), "b".to_string()]);
            assert_eq!(c.shutdown_timeout_ms, 1500);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("m.toml", "lisen = \"127.0.0.1:9000\"\n")?;
            assert!(Config::load(Some(std::path::Path::new("m.toml")), &Overrides::default()).is_err());
            Ok(())
        });
    }
}
