//! The `mercato` binary: `mercato serve`, and `mercato plugin …`, a client
//! of the merchant API.

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
}

#[derive(clap::Args)]
struct ApiArgs {
    /// Base URL of the mercato API
    #[arg(long, env = "MERCATO_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Your merchant token (mt.…)
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
    #[arg(long, env = "MERCATO_DATABASE_URL")]
    database_url: Option<String>,
    /// A TOML configuration file
    #[arg(long, env = "MERCATO_CONFIG")]
    config: Option<PathBuf>,
    /// Do not seed the demo catalog on an empty database
    #[arg(long, env = "MERCATO_NO_DEMO", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    no_demo: Option<bool>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mercato: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Plugin(command) => plugin(command).await,
    }
}

async fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    let (api, method, body) = match command {
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
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| Some(format!("{} ({})", v["error"]["message"].as_str()?, v["error"]["code"].as_str()?)))
        .unwrap_or(text);
    anyhow::bail!("{status}: {message}")
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        database_url: args.database_url,
        no_demo: args.no_demo,
    };
    let config = Config::load(args.config.as_deref(), &overrides)?;
    mercato::telemetry::init_logging(config.log_json);
    tracing::info!(?config, "starting");
    let listen = config.listen;
    let app = mercato::App::build(config).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    for notice in &app.notices {
        println!("{notice}");
    }
    println!("mercato listening on http://{}", listener.local_addr()?);
    app.serve(listener, shutdown_signal()).await
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
