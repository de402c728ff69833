//! The `mercato` binary: `mercato serve`.

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
    }
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
