//! `kedge-agent` command line: `run` the agent, or inspect this node's pods
//! (`ps`, `logs`) and images (`image …`) from the data dir — those work
//! whether or not the agent is running.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kedge_agent::cache::Cache;
use kedge_agent::pods::backoff::BackoffPolicy;
use kedge_agent::pods::manifests::{SOURCE_PREFIX, StaticSource};
use kedge_agent::pods::{DesiredPod, PodManager, WorkerContext, status};
use kedge_agent::runtime::{self, Options, Runtime, Snapshotter};

#[derive(Parser)]
#[command(name = "kedge-agent", version = kedge_common::VERSION, about = "kedge node agent")]
struct Cli {
    /// Agent state: images, containers, pod records, logs.
    #[arg(long, global = true, default_value = "/var/lib/kedge/agent")]
    data_dir: PathBuf,
    /// Unix socket the CRI is served on.
    #[arg(long, global = true, default_value = "/run/kedge/cri.sock")]
    cri_socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (standalone: static pods only).
    Run(RunArgs),
    /// Pods and containers on this node, from the agent's state.
    Ps {
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<Output>,
    },
    /// A container's log (CRI log files on this node).
    Logs {
        pod: String,
        container: Option<String>,
        #[arg(short, long)]
        follow: bool,
        /// The previous attempt's log (after a restart).
        #[arg(short, long)]
        previous: bool,
    },
    /// Manage images.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Json,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image-layout archive or a `docker save` tarball.
    Import { file: PathBuf },
    /// Pull from a registry.
    Pull {
        name: String,
        /// User for basic or token auth; the password comes from $KEDGE_REGISTRY_PASSWORD.
        #[arg(long)]
        username: Option<String>,
    },
    /// List images.
    Ls,
    /// Remove an image by reference or ID.
    Rm { name: String },
    /// Remove every image no container uses.
    Prune,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Folder of static Pod manifests.
    #[arg(long, default_value = "/etc/kedge/manifests")]
    manifests: PathBuf,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// First CrashLoopBackOff delay (doubles per restart).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    backoff_base: Duration,
    /// Longest CrashLoopBackOff delay.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    backoff_max: Duration,
    /// Root file systems: overlay (default where available) or copy.
    #[arg(long, value_enum)]
    snapshotter: Option<SnapshotterArg>,
    /// Do not serve the CRI on --cri-socket.
    #[arg(long)]
    no_cri_socket: bool,
    /// Registry host:port to reach over plain HTTP (loopback ones always are).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Log file size that triggers rotation, in bytes.
    #[arg(long, default_value_t = 5 << 20)]
    log_max_size: u64,
    /// pids.max of every container (0: unlimited).
    #[arg(long, default_value_t = 4096)]
    pids_limit: i64,
    /// Disk usage (percent of the data dir's file system) above which unused images are removed.
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(1..=100))]
    image_gc_high_threshold: u8,
}

#[derive(Clone, Copy, ValueEnum)]
enum SnapshotterArg {
    Overlay,
    Copy,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?} (use e.g. 500ms, 10s, 5m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in {s:?} (ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kedge-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let paths = runtime::Paths { root: cli.data_dir.clone() };
    match cli.command {
        Command::Version => {
            println!("kedge-agent {}", kedge_common::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            init_tracing();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(run(cli.data_dir, cli.cri_socket, args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ps { output } => {
            if !status::is_agent_dir(&paths.root) {
                bail!("{} holds no agent state (is --data-dir right?)", paths.root.display());
            }
            let pods = status::read_pods(&paths);
            match output {
                Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&pods)?),
                None => print!("{}", status::render_table(&pods, jiff::Timestamp::now().as_second())),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { pod, container, follow, previous } => {
            kedge_agent::logs_cli::print_logs(&paths, &pod, container.as_deref(), follow, previous)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Image { command } => image(&paths, command),
    }
}

fn image(paths: &runtime::Paths, command: ImageCommand) -> Result<ExitCode> {
    let store = kedge_agent::images::ImageStore::open(paths.images())?;
    match command {
        ImageCommand::Import { file } => {
            for name in store.import(&file).with_context(|| format!("importing {}", file.display()))? {
                println!("imported {name}");
            }
        }
        ImageCommand::Pull { name, username } => {
            let password = std::env::var("KEDGE_REGISTRY_PASSWORD").unwrap_or_default();
            let creds = username.map(|u| kedge_agent::images::registry::Credentials { username: u, password });
            let id = kedge_agent::images::registry::Puller::new(&store, Vec::new(), creds).pull(&name)?;
            println!("pulled {} ({id})", kedge_agent::images::normalize(&name));
        }
        ImageCommand::Ls => {
            println!("{:<50} {:<20} {:>10}", "IMAGE", "ID", "SIZE");
            for img in store.list()? {
                let id: String = img.id.trim_start_matches("sha256:").chars().take(12).collect();
                for r in &img.refs {
                    println!("{r:<50} {id:<20} {:>10}", format!("{:.1}MB", img.size as f64 / 1e6));
                }
            }
        }
        ImageCommand::Rm { name } => {
            store.remove(&name, &in_use(paths))?;
            println!("removed {name}");
        }
        ImageCommand::Prune => {
            for id in store.prune(&in_use(paths))? {
                println!("removed {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Images some container record (running or not) still names.
fn in_use(paths: &runtime::Paths) -> std::collections::BTreeSet<String> {
    runtime::records::load_all::<runtime::ContainerRecord>(&paths.containers())
        .into_iter()
        .map(|c| c.image_id)
        .collect()
}

fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    // `Targets` rather than `EnvFilter`: no regex engine in the agent binary.
    // libcontainer warns about every seccomp syscall name this kernel lacks and
    // libcgroups about every v1 controller it lacks, per container.
    let default = "info,libcontainer=warn,libcontainer::seccomp=error,libcgroups=error";
    let spec = std::env::var("KEDGE_LOG").unwrap_or_else(|_| default.to_string());
    let filter: tracing_subscriber::filter::Targets = spec.parse().unwrap_or_else(|e| {
        eprintln!("kedge-agent: KEDGE_LOG={spec:?} is not a filter ({e}); using {default:?}");
        default.parse().unwrap_or_default()
    });
    let fmt = tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr);
    tracing_subscriber::registry().with(fmt).with(filter).init();
}

async fn run(data_dir: PathBuf, cri_socket: PathBuf, args: RunArgs) -> Result<()> {
    let mut opts = Options::new(&data_dir);
    opts.snapshotter = args.snapshotter.map(|s| match s {
        SnapshotterArg::Overlay => Snapshotter::Overlay,
        SnapshotterArg::Copy => Snapshotter::Copy,
    });
    opts.insecure_registries = args.insecure_registries.clone();
    opts.log_rotation.max_bytes = args.log_max_size;
    opts.pids_limit = (args.pids_limit > 0).then_some(args.pids_limit);
    kedge_agent::instance::claim(&data_dir)?;
    let rt = Runtime::open(opts).with_context(|| format!("opening the runtime in {}", data_dir.display()))?;
    let node = args.node_name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname().map(|h| h.to_string_lossy().to_lowercase()).unwrap_or_else(|_| "node".into())
    });
    tracing::info!(node = %node, data_dir = %data_dir.display(), manifests = %args.manifests.display(), "kedge-agent starting (standalone: static pods)");
    #[cfg(feature = "cri-grpc")]
    if !args.no_cri_socket {
        kedge_agent::grpc::serve(rt.clone(), &cri_socket)
            .with_context(|| format!("serving the CRI on {}", cri_socket.display()))?;
        tracing::info!(socket = %cri_socket.display(), "CRI served");
    }
    #[cfg(not(feature = "cri-grpc"))]
    let _ = (&cri_socket, args.no_cri_socket);
    let policy = BackoffPolicy { base: args.backoff_base, cap: args.backoff_max, ..Default::default() };
    let mut manager = PodManager::new(WorkerContext { runtime: rt.clone(), backoff: policy });
    let cache = Cache::open(&data_dir.join("agent.redb"))?;
    let mut source = StaticSource::new(&args.manifests, node).with_cached(cache.desired()?.into_values());
    let accept = |pods: Vec<DesiredPod>, manager: &mut PodManager| -> Result<()> {
        // Stored before acted on: a restart runs what was last accepted.
        let by_source = pods.iter().map(|d| (d.source.clone(), d.clone())).collect();
        cache.replace(SOURCE_PREFIX, &by_source)?;
        manager.set_desired(pods);
        Ok(())
    };
    accept(source.scan().unwrap_or_default(), &mut manager)?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut gc = tokio::time::interval(Duration::from_secs(60));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Some(pods) = source.scan() {
                    if let Err(e) = accept(pods, &mut manager) {
                        tracing::error!(error = %e, "cannot store the desired pods; not acting on them");
                    }
                }
            }
            _ = gc.tick() => {
                if let Err(e) = rt.collect_images_if_full(args.image_gc_high_threshold).await {
                    tracing::warn!(error = %e, "image garbage collection failed");
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Pods are not stopped: a restarted agent adopts them.
    tracing::info!("kedge-agent stopping; containers keep running");
    Ok(())
}
