//! `kedge-controller`: the kedge control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kedge_controller::server::{self, Options};
use tracing_subscriber::EnvFilter;

/// The kedge control plane: a Kubernetes-shaped API server on redb.
#[derive(Debug, Parser)]
#[command(name = "kedge-controller", version = kedge_common::VERSION)]
struct Cli {
    /// Where the store and the generated kubeconfig live.
    #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// API address. Plain HTTP is only served on loopback addresses; any
    /// other address gets HTTPS with a generated CA and bearer token (both in
    /// the written kubeconfig).
    #[arg(long, default_value = server::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Serve HTTPS with token authentication on loopback too.
    #[arg(long)]
    tls: bool,
    /// Extra DNS name or IP for the serving certificate (repeatable).
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_san: Vec<String>,
    /// Watch events kept in memory so watches can resume; older resume
    /// points get 410 Gone and clients re-list.
    #[arg(long, default_value_t = server::DEFAULT_WATCH_HISTORY)]
    watch_history: usize,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let running = server::start(Options {
        data_dir: cli.data_dir,
        listen: cli.listen,
        watch_history: cli.watch_history,
        tls: cli.tls,
        tls_sans: cli.tls_san,
    })
    .await?;
    println!("kedge-controller listening on {}://{}", if running.tls { "https" } else { "http" }, running.addr);
    println!("export KUBECONFIG={}", running.kubeconfig.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    running.shutdown().await.context("serving")?;
    tracing::info!("stopped");
    Ok(())
}
