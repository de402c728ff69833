//! The `mercato` binary: `mercato serve`; `mercato plugin …`, a client of the
//! merchant API; `mercato deploy|rollback|components`, clients of the admin
//! API; `mercato push` and `mercato keygen` for OCI artifacts and signatures.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use mercato::config::{Config, Overrides};

#[derive(Parser)]
#[command(name = "mercato", version, about = "Marketplace commerce backend on WebAssembly components")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the shop: HTTP API, bundled components, SQLite by default.
    Serve(ServeArgs),
    /// Manage your pricing plugin (as a merchant) through the API.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Push a component to an OCI registry (CNCF Wasm artifact layout).
    Push(PushArgs),
    /// Deploy a component (a .wasm file or oci://REF) through the admin API.
    Deploy {
        /// catalog, cart, inventory, payment or order
        name: String,
        /// A .wasm file, or oci://registry/repo:tag (or @sha256:…)
        artifact: String,
        /// Sign an uploaded file with this private key file (when the host
        /// requires signatures; for oci:// the signature comes from the registry)
        #[arg(long)]
        sign: Option<PathBuf>,
        /// Deploy as a canary serving this percent (1–99) of new requests,
        /// until `mercato promote NAME` or a rollback (the operator's, or
        /// the host's own when the canary fails more than the stable version)
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
        canary: Option<u8>,
        /// End a running canary of this component first (else the deploy is refused)
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Make the running canary of a component its active version.
    Promote {
        /// catalog, cart, inventory, payment or order
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// End the component's running canary; without one, re-activate the
    /// version that was active before the current one.
    Rollback {
        /// catalog, cart, inventory, payment or order
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show each component's active version, canary (share, counts) and history.
    Components {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The outbox's events: `mercato events tail` prints them as they are
    /// written, one JSON line each.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Run the database migrations and exit (a Kubernetes Job before a release).
    Migrate(ServeArgs),
    /// Exit 0 when the host at --server answers /healthz (the image's HEALTHCHECK).
    Healthcheck {
        /// Base URL of the host
        #[arg(long, env = "MERCATO_URL", default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Configuration: `mercato config keys` lists every key, its environment
    /// variable and default.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Make an ed25519 key pair for signing components: FILE (private) and FILE.pub.
    Keygen {
        /// Where to write the private key (FILE.pub gets the public key)
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// One line per key: ENVIRONMENT_VARIABLE <tab> default (empty: unset) <tab> secret|plain
    Keys,
}

#[derive(clap::Args)]
struct PushArgs {
    /// The component (.wasm)
    file: PathBuf,
    /// REGISTRY/REPO:TAG, e.g. 127.0.0.1:5000/mercato/catalog:1.2.0
    reference: String,
    /// Also push a signature made with this private key file (see `mercato keygen`)
    #[arg(long)]
    sign: Option<PathBuf>,
    /// Registry user (basic auth)
    #[arg(long, env = "MERCATO_REGISTRY__USERNAME")]
    username: Option<String>,
    /// Registry password (basic auth)
    #[arg(long, env = "MERCATO_REGISTRY__PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Allow plain HTTP to this registry (loopback registries always are)
    #[arg(long)]
    insecure: bool,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Upload a plugin component (.wasm); it is in force at once.
    Upload {
        /// The component file
        file: PathBuf,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show the plugin's digest, status, limits, recent errors and last run.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove the plugin.
    Remove {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show the plugin's configuration, or set it from FILE (JSON; `-` reads stdin).
    Config {
        /// A JSON file to set as the configuration (at most 64 KiB)
        file: Option<PathBuf>,
        /// Remove the configuration
        #[arg(long, conflicts_with = "file")]
        remove: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the plugin's recorded runs, newest first; with RUN, print that
    /// run as JSON (what `replay --offline` takes).
    Runs {
        /// One run's id
        run: Option<String>,
        /// Runs per page (1 to 100)
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// The `next` cursor a previous page printed
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Run a candidate in the shadow of the active plugin (with FILE), show
    /// the shadow's report (without), promote it or remove it.
    Shadow {
        /// The candidate plugin (.wasm) to install in the shadow
        file: Option<PathBuf>,
        /// Make the candidate the active plugin
        #[arg(long, conflicts_with_all = ["file", "remove"])]
        promote: bool,
        /// End the shadow
        #[arg(long, conflicts_with = "file")]
        remove: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Run a recorded run again and compare its output with the recorded one:
    /// on the server (the recorded plugin, or FILE given with --wasm), or with
    /// --offline on this machine from a downloaded run.
    Replay {
        /// The run's id, or with --offline the run's JSON file
        run: String,
        /// With --offline: the plugin to run (the recorded one replays exactly)
        file: Option<PathBuf>,
        /// A candidate plugin to run instead of the recorded one
        #[arg(long, conflicts_with = "offline")]
        wasm: Option<PathBuf>,
        /// No server: RUN is a file (`mercato plugin runs RUN > run.json`)
        #[arg(long, requires = "file")]
        offline: bool,
        /// Print the whole answer as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: OptionalApiArgs,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print events as they are written (`{"seq", "id", "type", "subject",
    /// "created_at", "merchants", "published_at", "data"}` per line), from
    /// now on, until interrupted.
    Tail {
        /// Start from the first event in the outbox instead of from now
        #[arg(long, conflicts_with = "after")]
        all: bool,
        /// Start after this `seq`
        #[arg(long)]
        after: Option<i64>,
        /// Print what is there and exit instead of following
        #[arg(long)]
        once: bool,
        /// How often to ask for new events, in milliseconds
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60_000))]
        interval_ms: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// [`ApiArgs`] for a command that may not need the server.
#[derive(clap::Args)]
struct OptionalApiArgs {
    /// Base URL of the mercato API
    #[arg(
        long = "server",
        visible_alias = "url",
        env = "MERCATO_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Your merchant token (not needed with --offline)
    #[arg(long, env = "MERCATO_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(clap::Args)]
struct ApiArgs {
    /// Base URL of the mercato API
    #[arg(
        long = "server",
        visible_alias = "url",
        env = "MERCATO_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// Your token: a merchant token (mt.…) for `plugin`, the admin token for
    /// `deploy`, `rollback` and `components`
    #[arg(long, env = "MERCATO_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "MERCATO_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the SQLite database and precompiled components [default: ./mercato-data]
    #[arg(long, env = "MERCATO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// postgres://… to use PostgreSQL instead of SQLite
    #[arg(long, env = "MERCATO_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A TOML configuration file
    #[arg(long, env = "MERCATO_CONFIG")]
    config: Option<PathBuf>,
    /// Do not seed the demo catalog on an empty database
    #[arg(long, env = "MERCATO_NO_DEMO", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    no_demo: Option<bool>,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mercato: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = || tokio::runtime::Builder::new_multi_thread().enable_all().build();
    match cli.command {
        Command::Serve(args) => {
            let config = load_config(args)?;
            // Telemetry first, outside the async runtime (its exporter runs
            // on its own thread), and flushed after the runtime is gone.
            let telemetry = mercato::telemetry::init(config.log_json);
            let served = runtime()?.block_on(serve(config));
            telemetry.shutdown();
            served
        }
        Command::Migrate(args) => {
            let config = load_config(args)?;
            runtime()?.block_on(async {
                let db =
                    mercato::storage::Db::connect(config.database_url.as_deref(), &config.data_dir).await?;
                println!("migrations applied ({})", db.backend());
                db.close().await;
                anyhow::Ok(())
            })
        }
        Command::Healthcheck { server } => runtime()?.block_on(async {
            let url = format!("{}/healthz", server.trim_end_matches('/'));
            let response = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(3))
                .build()?
                .get(&url)
                .send()
                .await?;
            anyhow::ensure!(response.status().is_success(), "{url}: {}", response.status());
            Ok(())
        }),
        Command::Config(ConfigCommand::Keys) => {
            for k in mercato::config::keys() {
                println!("{}\t{}\t{}", k.env, k.default, if k.secret { "secret" } else { "plain" });
            }
            Ok(())
        }
        other => runtime()?.block_on(client(other)),
    }
}

async fn client(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) | Command::Migrate(_) | Command::Healthcheck { .. } | Command::Config(_) => {
            anyhow::bail!("not a client command")
        }
        Command::Plugin(command) => plugin(command).await,
        Command::Push(args) => push(args).await,
        Command::Deploy { name, artifact, sign, canary, replace, api } => {
            deploy(name, artifact, sign, canary, replace, api).await
        }
        Command::Promote { name, api } => {
            let url = format!("{}/v1/admin/components/{name}/promote", api.url.trim_end_matches('/'));
            eprintln!("promoting the canary of {name}…");
            answer(reqwest::Client::new().post(url).bearer_auth(&api.token), &api.url).await
        }
        Command::Rollback { name, api } => {
            let url = format!("{}/v1/admin/components/{name}/rollback", api.url.trim_end_matches('/'));
            eprintln!("rolling back {name}…");
            answer(reqwest::Client::new().post(url).bearer_auth(&api.token), &api.url).await
        }
        Command::Components { api } => {
            let url = format!("{}/v1/admin/components", api.url.trim_end_matches('/'));
            answer(reqwest::Client::new().get(url).bearer_auth(&api.token), &api.url).await
        }
        Command::Events(EventsCommand::Tail { all, after, once, interval_ms, api }) => {
            events_tail(all, after, once, interval_ms, api).await
        }
        Command::Keygen { file } => keygen(&file),
    }
}

/// `mercato events tail`: page through `GET /v1/admin/events`, printing
/// each event once as a JSON line, from the first gap in what was seen
/// ([`mercato::events::tail`]).
async fn events_tail(
    all: bool,
    after: Option<i64>,
    once: bool,
    interval_ms: u64,
    api: ApiArgs,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let client = reqwest::Client::new();
    let base = format!("{}/v1/admin/events", api.url.trim_end_matches('/'));
    let page = |after: i64| {
        let client = client.clone();
        let (base, token) = (base.clone(), api.token.clone());
        async move {
            let response = client
                .get(&base)
                .query(&[("after", after.to_string()), ("limit", "1000".to_string())])
                .bearer_auth(&token)
                .send()
                .await
                .with_context(|| format!("reach {base}"))?;
            let status = response.status();
            let text = response.text().await?;
            if !status.is_success() {
                return report(status, &text).map(|()| (Vec::new(), after));
            }
            let page: serde_json::Value = serde_json::from_str(&text).context("the server's answer")?;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            Ok::<_, anyhow::Error>((items, page["next_after"].as_i64().unwrap_or(after)))
        }
    };
    let seq_of = |item: &serde_json::Value| item["seq"].as_i64().unwrap_or_default();
    // Read from the first gap each time: on PostgreSQL a lower seq can
    // commit after a higher one was read (events::tail).
    let mut follower = match (all, after) {
        (_, Some(a)) => mercato::events::tail::Follower::after(a),
        // From the oldest event kept (what retention deleted leaves no gap
        // to wait for).
        (true, None) => {
            let first = page(0).await?.0.first().map_or(0, |e| seq_of(e) - 1);
            mercato::events::tail::Follower::after(first)
        }
        // From now on: skip what is there (pages of 1000), but follow from
        // the last page's first event, that page counted as shown, so a
        // lower seq in flight now is printed when it commits.
        (false, None) => {
            let (mut at, mut last) = (0, Vec::new());
            loop {
                let (items, next) = page(at).await?;
                if items.is_empty() {
                    break;
                }
                at = next;
                last = items;
            }
            let mut follower =
                mercato::events::tail::Follower::after(last.first().map_or(at, |e| seq_of(e) - 1));
            for item in &last {
                follower.show(seq_of(item));
            }
            follower
        }
    };
    loop {
        let mut at = follower.cursor();
        let mut new = 0;
        loop {
            let (items, next) = page(at).await?;
            {
                let mut out = std::io::stdout().lock();
                for item in items.iter().filter(|item| follower.show(seq_of(item))) {
                    writeln!(out, "{item}")?;
                    new += 1;
                }
                out.flush()?;
            }
            if items.len() < 1000 || next <= at {
                break;
            }
            at = next;
        }
        follower.settle(std::time::Instant::now());
        if once {
            return Ok(());
        }
        if new == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(interval_ms)).await;
        }
    }
}

fn read_key(path: &std::path::Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("read key {}", path.display()))?;
    mercato::signature::signing_key(&text).map_err(anyhow::Error::msg)
}

fn keygen(file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let (private, public) = mercato::signature::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(file).map_err(|e| anyhow::anyhow!("create {}: {e}", file.display()))?;
    writeln!(f, "{private}")?;
    let public_path = format!("{}.pub", file.display());
    std::fs::write(&public_path, format!("{public}\n"))?;
    println!("private key: {} (keep it secret)", file.display());
    println!("public key:  {public_path}");
    println!("configure the host with: [deploy] public_keys = [\"{public}\"]");
    Ok(())
}

async fn push(args: PushArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let bytes = std::fs::read(&args.file).with_context(|| format!("read {}", args.file.display()))?;
    let shape = mercato::runtime::shape::parse_component(&bytes).map_err(anyhow::Error::msg)?;
    let key = args.sign.as_deref().map(read_key).transpose()?;
    let mut registry = mercato::oci::RegistryConfig {
        username: args.username,
        password: args.password.map(mercato::config::Secret),
        ..Default::default()
    };
    // The command's credentials are for the registry it pushes to.
    let target = mercato::oci::parse(&args.reference)?.registry().to_string();
    registry.auth_registry = Some(target.clone());
    if args.insecure {
        registry.insecure.push(target);
    }
    let oci = mercato::oci::Oci::new(registry);
    eprintln!(
        "pushing {} ({} KiB; exports {}) to {}…",
        args.file.display(),
        bytes.len().div_ceil(1024),
        shape.exports.join(", "),
        args.reference
    );
    let pushed = oci.push(&args.reference, bytes, shape.imports, shape.exports, key.as_ref()).await?;
    println!("pushed {}", args.reference);
    println!("component digest: {}", pushed.digest);
    println!("manifest digest:  {}", pushed.manifest_digest);
    if let Some(tag) = pushed.signature_tag {
        println!("signature:        {tag}");
    }
    Ok(())
}

async fn deploy(
    name: String,
    artifact: String,
    sign: Option<PathBuf>,
    canary: Option<u8>,
    replace: bool,
    api: ApiArgs,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut url = format!("{}/v1/admin/components/{name}/deploy", api.url.trim_end_matches('/'));
    let query: Vec<String> = canary
        .map(|n| format!("canary={n}"))
        .into_iter()
        .chain(replace.then(|| "replace=true".to_string()))
        .collect();
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    // Follow the deploy stage by stage (pull, checks, precompilation, swap).
    let mut request =
        reqwest::Client::new().post(url).bearer_auth(&api.token).header("accept", "application/x-ndjson");
    if artifact.starts_with("oci://") {
        eprintln!("deploying {name} from {artifact}");
        request = request.json(&serde_json::json!({ "oci": artifact.trim_start_matches("oci://") }));
    } else {
        let bytes = std::fs::read(&artifact).with_context(|| format!("read {artifact}"))?;
        let digest = mercato::runtime::digest_of(&bytes);
        eprintln!("deploying {name} from {artifact} ({}, {digest}): uploading…", kib(bytes.len()));
        if let Some(path) = sign {
            let key = read_key(&path)?;
            let doc = mercato::signature::sign(&key, &digest);
            request = request.header("x-mercato-signature", doc.signature);
        }
        request = request.header("content-type", "application/wasm").body(bytes);
    }
    let started = std::time::Instant::now();
    let mut response = request.send().await.with_context(|| format!("reach {}", api.url))?;
    let status = response.status();
    let streamed = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    if !status.is_success() || !streamed {
        let text = response.text().await?;
        return report(status, &text);
    }
    let mut pending = String::new();
    let mut outcome = None;
    while let Some(chunk) = response.chunk().await? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line.trim()) else { continue };
            match event["stage"].as_str().unwrap_or_default() {
                "received" => eprintln!(
                    "  received by the host ({})",
                    kib(event["bytes"].as_u64().unwrap_or(0) as usize)
                ),
                "pulling" => eprintln!("  pulling {}…", event["reference"].as_str().unwrap_or_default()),
                "pulled" => eprintln!(
                    "  pulled {} in {} ms: {}",
                    kib(event["bytes"].as_u64().unwrap_or(0) as usize),
                    event["ms"],
                    event["pinned"].as_str().unwrap_or_default()
                ),
                "checking" => eprintln!(
                    "  checking {}{} against the {name} world…",
                    event["digest"].as_str().unwrap_or_default(),
                    if event["signature_required"] == true { " (signature required)" } else { "" }
                ),
                "compiling" => eprintln!("  precompiling…"),
                "precompiled" => eprintln!(
                    "  precompiled ({}) in {} ms",
                    event["origin"].as_str().unwrap_or_default(),
                    event["ms"]
                ),
                "swapped" => eprintln!("  swapped in as version {}", event["version"]),
                "canary" => eprintln!(
                    "  version {} now serves {} % of new requests as a canary (mercato promote {name} to make it \
                     active)",
                    event["version"], event["share"]
                ),
                "done" | "failed" => outcome = Some(event),
                _ => {}
            }
        }
    }
    match outcome {
        Some(e) if e["stage"] == "done" => {
            println!("{}", e["result"]);
            eprintln!("done in {} ms", started.elapsed().as_millis());
            Ok(())
        }
        Some(e) => anyhow::bail!(
            "{}: {} ({})",
            e["status"],
            e["error"]["message"].as_str().unwrap_or_default(),
            e["error"]["code"].as_str().unwrap_or_default()
        ),
        None => anyhow::bail!("the connection closed before the deploy finished; see `mercato components`"),
    }
}

fn kib(bytes: usize) -> String {
    format!("{} KiB", bytes.div_ceil(1024))
}

fn report(status: reqwest::StatusCode, text: &str) -> anyhow::Result<()> {
    let message = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| Some(format!("{} ({})", v["error"]["message"].as_str()?, v["error"]["code"].as_str()?)))
        .unwrap_or_else(|| text.to_string());
    anyhow::bail!("{status}: {message}")
}

/// Send `request`; print the body on success, the API's error otherwise.
async fn answer(request: reqwest::RequestBuilder, server: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let started = std::time::Instant::now();
    let response = request.send().await.with_context(|| format!("reach {server}"))?;
    let status = response.status();
    let text = response.text().await?;
    if status.is_success() {
        println!("{text}");
        eprintln!("done in {} ms", started.elapsed().as_millis());
        return Ok(());
    }
    report(status, &text)
}

async fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    let (api, method, body) = match command {
        PluginCommand::Config { file, remove, api } => return plugin_config(file, remove, api).await,
        PluginCommand::Shadow { file, promote, remove, api } => {
            return plugin_shadow(file, promote, remove, api).await;
        }
        PluginCommand::Runs { run, limit, cursor, api } => return plugin_runs(run, limit, cursor, api).await,
        PluginCommand::Replay { run, file, wasm, offline, json, api } => {
            return plugin_replay(run, file, wasm, offline, json, api).await;
        }
        PluginCommand::Upload { file, api } => {
            let bytes = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
            eprintln!("uploading {} ({} bytes)…", file.display(), bytes.len());
            (api, reqwest::Method::PUT, Some(bytes))
        }
        PluginCommand::Status { api } => (api, reqwest::Method::GET, None),
        PluginCommand::Remove { api } => (api, reqwest::Method::DELETE, None),
    };
    let url = format!("{}/v1/merchant/pricing-plugin", api.url.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, url).bearer_auth(&api.token);
    if let Some(bytes) = body {
        request = request.header("content-type", "application/wasm").body(bytes);
    }
    let response = request.send().await.with_context(|| format!("reach {}", api.url))?;
    let status = response.status();
    let text = response.text().await?;
    if status.is_success() {
        println!("{}", if text.is_empty() { "removed".to_string() } else { text });
        return Ok(());
    }
    report(status, &text)
}

/// Send `request` and give the body as JSON, or the API's error.
async fn api_json(request: reqwest::RequestBuilder, server: &str) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    let response = request.send().await.with_context(|| format!("reach {server}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        report(status, &text)?;
    }
    if text.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_str(&text)?)
}

async fn plugin_config(file: Option<PathBuf>, remove: bool, api: ApiArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let url = format!("{}/v1/merchant/pricing-plugin/config", api.url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let request = if remove {
        client.delete(url)
    } else if let Some(file) = file {
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("read stdin")?
        } else {
            std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?
        };
        client.put(url).header("content-type", "application/json").body(text)
    } else {
        client.get(url)
    };
    let answer = api_json(request.bearer_auth(&api.token), &api.url).await?;
    match answer {
        serde_json::Value::Null => println!("removed"),
        answer => println!("{}", serde_json::to_string_pretty(&answer["config"])?),
    }
    Ok(())
}

async fn plugin_shadow(
    file: Option<PathBuf>,
    promote: bool,
    remove: bool,
    api: ApiArgs,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let base = format!("{}/v1/merchant/pricing-plugin/shadow", api.url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let request = if promote {
        client.post(format!("{base}/promote"))
    } else if remove {
        client.delete(base)
    } else if let Some(file) = file {
        let bytes = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
        eprintln!("installing {} ({} bytes) in the shadow…", file.display(), bytes.len());
        client.put(base).header("content-type", "application/wasm").body(bytes)
    } else {
        client.get(base)
    };
    let answer = api_json(request.bearer_auth(&api.token), &api.url).await?;
    if promote {
        println!("promoted {}: it is the active plugin", answer["digest"].as_str().unwrap_or("?"));
        return Ok(());
    }
    if answer.is_null() {
        println!("removed");
        return Ok(());
    }
    let r = &answer["report"];
    println!(
        "candidate {} in the shadow of {}",
        answer["digest"].as_str().unwrap_or("?"),
        answer["active"].as_str().unwrap_or("?")
    );
    println!(
        "runs {}  identical {}  differing {}  dropped {}  discount delta {}",
        r["runs"], r["identical"], r["differing"], r["dropped"], r["discount_delta"]
    );
    if let Some(errors) = r["errors"].as_object().filter(|e| !e.is_empty()) {
        let list: Vec<String> = errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("errors: {}", list.join(", "));
    }
    for e in r["examples"].as_array().into_iter().flatten() {
        println!(
            "example: {} lines, active {} -> candidate {}, delta {}",
            e["input"]["lines"].as_array().map_or(0, Vec::len),
            e["active_outcome"].as_str().unwrap_or("?"),
            e["shadow_outcome"].as_str().unwrap_or("?"),
            e["diff"]["discount_delta"]
        );
    }
    Ok(())
}

async fn plugin_runs(
    run: Option<String>,
    limit: u32,
    cursor: Option<String>,
    api: ApiArgs,
) -> anyhow::Result<()> {
    let base = format!("{}/v1/merchant/pricing-plugin/runs", api.url.trim_end_matches('/'));
    let client = reqwest::Client::new();
    if let Some(run) = run {
        let one = api_json(client.get(format!("{base}/{run}")).bearer_auth(&api.token), &api.url).await?;
        println!("{}", serde_json::to_string_pretty(&one)?);
        return Ok(());
    }
    let mut query = vec![("limit", limit.to_string())];
    if let Some(c) = cursor {
        query.push(("cursor", c));
    }
    let page = api_json(client.get(base).query(&query).bearer_auth(&api.token), &api.url).await?;
    let items = page["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no recorded runs");
    }
    for run in &items {
        let discount: i64 = run["output"]["discounts"]
            .as_array()
            .map(|d| d.iter().filter_map(|d| d["amount"]["amount"].as_i64()).sum())
            .unwrap_or(0);
        println!(
            "{}  {}  {:<16} {:>3} lines  {:>9} instr  discount {:>7}  {}",
            run["id"].as_str().unwrap_or("?"),
            run["at"],
            run["outcome"].as_str().unwrap_or("?"),
            run["input"]["lines"].as_array().map_or(0, Vec::len),
            run["usage"]["instructions"],
            discount,
            run["digest"].as_str().map(|d| &d[..d.len().min(19)]).unwrap_or("?"),
        );
    }
    if let Some(next) = page["next_cursor"].as_str() {
        println!("next: --cursor {next}");
    }
    Ok(())
}

async fn plugin_replay(
    run: String,
    file: Option<PathBuf>,
    wasm: Option<PathBuf>,
    offline: bool,
    json: bool,
    api: OptionalApiArgs,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let answer = if offline {
        let file = file.context("--offline needs the plugin FILE")?;
        let text = std::fs::read_to_string(&run).with_context(|| format!("read {run}"))?;
        let recorded: mercato::plugins::runs::Recorded =
            serde_json::from_str(&text).with_context(|| format!("{run} is not a recorded run"))?;
        let bytes = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
        serde_json::to_value(mercato::plugins::replay_offline(&recorded, bytes).await?)?
    } else {
        let token = api.token.context("a merchant token: --token or MERCATO_TOKEN (or --offline)")?;
        let url = format!("{}/v1/merchant/pricing-plugin/runs/{run}/replay", api.url.trim_end_matches('/'));
        let mut request = reqwest::Client::new().post(url).bearer_auth(token);
        if let Some(wasm) = &wasm {
            let bytes = std::fs::read(wasm).with_context(|| format!("read {}", wasm.display()))?;
            request = request.header("content-type", "application/wasm").body(bytes);
        }
        api_json(request, &api.url).await?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print_replay(&answer);
    }
    let exact_expected = answer["digest"] == answer["recorded_digest"] && answer["reproducible"] != false;
    if answer["identical"] == true || !exact_expected {
        Ok(())
    } else {
        anyhow::bail!("the replay of the recorded plugin did not reproduce the recorded run")
    }
}

fn print_replay(r: &serde_json::Value) {
    let same = r["digest"] == r["recorded_digest"];
    println!(
        "replayed {} with {} ({}): {}",
        r["run"].as_str().unwrap_or("?"),
        if same { "the recorded plugin" } else { "a candidate" },
        r["digest"].as_str().unwrap_or("?"),
        if r["identical"] == true {
            "identical to the recorded run"
        } else {
            "DIFFERENT from the recorded run"
        }
    );
    let diff = &r["diff"];
    println!(
        "outcome: {} -> {}",
        diff["outcome_before"].as_str().unwrap_or("?"),
        diff["outcome_after"].as_str().unwrap_or("?")
    );
    for (sign, key) in [("-", "removed"), ("+", "added")] {
        for d in diff[key].as_array().into_iter().flatten() {
            println!(
                "{sign} {} {:>7} {}{}",
                d["sku"].as_str().unwrap_or("?"),
                d["amount"]["amount"],
                d["label"].as_str().unwrap_or(""),
                d["code"].as_str().map(|c| format!(" (code {c})")).unwrap_or_default()
            );
        }
    }
    for (sign, key) in [("-", "codes_no_longer_refused"), ("+", "codes_newly_refused")] {
        for c in diff[key].as_array().into_iter().flatten() {
            println!(
                "{sign} refused {}: {}",
                c["code"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("")
            );
        }
    }
    println!("discount delta: {}", diff["discount_delta"]);
    if let Some(e) = r["error"].as_object() {
        println!("error: {} {}", e["kind"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or(""));
    }
    if let Some(log) = r["log"].as_str().filter(|l| !l.is_empty()) {
        println!("log:\n{log}");
    }
}

fn load_config(args: ServeArgs) -> anyhow::Result<Config> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        database_url: args.database_url,
        no_demo: args.no_demo,
    };
    Ok(Config::load(args.config.as_deref(), &overrides)?)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    tracing::info!(?config, "starting");
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    // Listening before the components are compiled: /healthz answers and
    // /readyz says 503 until the host is built.
    println!("mercato listening on http://{}", listener.local_addr()?);
    mercato::app::run(config, listener, shutdown_signal(), |app| {
        for notice in &app.notices {
            println!("{notice}");
        }
        println!("mercato ready");
    })
    .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
