//! `kedge-agent` command line: `run` the agent, or inspect this node's pods
//! (`ps`, `logs`) and images (`image …`) from the data dir — those work
//! whether or not the agent is running.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kedge_agent::link::LinkConfig;
use kedge_agent::net::manager::{NetworkConfig, NetworkManager};
use kedge_agent::node::{self, NodeConfig};
use kedge_agent::pods::backoff::BackoffPolicy;
use kedge_agent::pods::status;
use kedge_agent::runtime::{self, Options, Runtime, Snapshotter};
use kedge_common::duration::parse_duration;
use kedge_common::topics::BrokerUrl;

#[derive(Parser)]
#[command(name = "kedge-agent", version = kedge_common::VERSION, about = "kedge node agent", args_override_self = true)]
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
    /// Run the agent: static pods, and with --broker the controller's pods.
    Run(Box<RunArgs>),
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
    /// The pod network on this node.
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
    /// Rotate this node's key over the signed link: makes a new key pair,
    /// which the running agent (or its next start) asks the controller to
    /// take, signed with the current key. Waits for the answer.
    RotateKey {
        /// How long to wait for the controller's answer (`0`: do not wait);
        /// the rotation stays under way after it.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        wait: Duration,
    },
    /// Print the version.
    Version,
    /// Internal: the single-threaded helper the agent runs for libcontainer
    /// calls that clone (see agent/src/runtime/container.rs).
    #[command(name = "__libcontainer", hide = true)]
    Libcontainer {
        #[command(subcommand)]
        call: LcCall,
    },
}

#[derive(Subcommand)]
enum LcCall {
    /// Create a container; prints its init's pid.
    Create {
        #[arg(long)]
        id: String,
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        bundle: PathBuf,
    },
    /// Run a process in a container; prints its exit code, or `timeout`.
    Exec {
        #[arg(long)]
        id: String,
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        err: PathBuf,
        /// 0: no limit.
        #[arg(long)]
        timeout_ms: u64,
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// Run a process in a container on the helper's stdin, stdout and
    /// stderr (or a terminal sent to `--console-socket`); writes `exit N` or
    /// `error MESSAGE` to `--status`.
    ExecStream {
        #[arg(long)]
        id: String,
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        status: PathBuf,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum NetworkCommand {
    /// Remove everything kedge made on this node's network — the bridge,
    /// pod veths, routes to other nodes' pods, the VXLAN device and the
    /// kedge nftables table — and nothing else. Pods lose their network.
    Cleanup {
        /// The pod bridge (`run --pod-bridge`).
        #[arg(long, default_value = "kedge0")]
        pod_bridge: String,
    },
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
    /// Remove every image no container uses, imported (pinned) ones too.
    Prune,
}

#[derive(clap::Args)]
#[command(args_override_self = true)]
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
    /// MQTT broker of the fleet (mqtt://HOST:PORT, or mqtts://HOST:PORT
    /// for TLS). Without it the agent runs static pods only.
    #[arg(long)]
    broker: Option<BrokerUrl>,
    /// CA certificate (PEM) the mqtts:// broker's certificate is checked
    /// against: the controller's `DATA/tls/ca.crt` for its embedded broker.
    /// Without it, the system's root certificates.
    #[arg(long)]
    broker_ca: Option<PathBuf>,
    /// Client certificate (PEM) to show an mqtts:// broker that asks for one.
    #[arg(long, requires = "broker_key")]
    broker_cert: Option<PathBuf>,
    /// Private key (PEM) of --broker-cert.
    #[arg(long, requires = "broker_cert")]
    broker_key: Option<PathBuf>,
    /// Topic prefix of the fleet.
    #[arg(long, default_value = kedge_common::topics::DEFAULT_PREFIX)]
    topic_prefix: String,
    /// This node's address as other nodes see it (default: the address the
    /// route to the broker leaves from).
    #[arg(long)]
    node_ip: Option<String>,
    /// The bridge pods hang on; its address is the first of the pod CIDR.
    #[arg(long, default_value = "kedge0")]
    pod_bridge: String,
    /// Pod CIDR of a node without a controller (as the kubelet's standalone
    /// --pod-cidr); a node in a cluster gets its own from the controller.
    /// Without either, pods have only `lo`.
    #[arg(long)]
    pod_cidr: Option<ipnet::IpNet>,
    /// Leave the host's network alone: no bridge, routes or Service rules;
    /// pods get only `lo` (hostNetwork pods are unaffected).
    #[arg(long)]
    no_pod_network: bool,
    /// How pods reach other nodes' pods: `auto` (direct routes to nodes on a
    /// shared network, VXLAN to the rest), `host-gw` or `vxlan`.
    #[arg(long, default_value = "auto")]
    overlay: kedge_agent::net::routes::Overlay,
    /// MQTT keepalive: the broker publishes our Last Will after 1.5× this
    /// without a packet.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    keepalive: Duration,
    /// The node report is republished this often even when nothing changed.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    report_refresh: Duration,
    /// Largest fleet-link payload accepted, in bytes.
    #[arg(long, default_value_t = kedge_common::envelope::DEFAULT_MAX_PAYLOAD)]
    max_payload: usize,
    /// MQTT user name for the broker.
    #[arg(long)]
    broker_username: Option<String>,
    /// MQTT password for the broker (better kept in --config than on the command line).
    #[arg(long, requires = "broker_username")]
    broker_password: Option<String>,
    /// Join token from `kedge-controller token create`: pins the
    /// controller's key (kept in the data dir after the first use). Without
    /// one ever given, nothing from the controller is taken.
    #[arg(long)]
    token: Option<kedge_common::sign::Token>,
    /// Nameserver of the pods' resolv.conf (`dnsPolicy: ClusterFirst`), as
    /// the kubelet's flag. Without it such pods get the node's resolv.conf.
    #[arg(long)]
    cluster_dns: Option<std::net::IpAddr>,
    /// The cluster's DNS domain: Services are `NAME.NAMESPACE.svc.DOMAIN`.
    #[arg(long, default_value = kedge_agent::net::resolv::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// Where node-local persistent volumes (StorageClass `local-path`) keep
    /// their data, one directory per volume [default: DATA_DIR/storage].
    #[arg(long)]
    storage_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:10249)
    /// to scrapers that present --metrics-token-file's token.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// The scrape token (bearer): the file's first line; made, random and
    /// owner-only, when missing. Default: DATA_DIR/metrics.token.
    #[arg(long)]
    metrics_token_file: Option<PathBuf>,
    /// Config file: `run` flags by name (`broker: mqtt://…`, `node-name: …`).
    /// Command-line flags win. A missing file is no config.
    #[arg(long, default_value = "/etc/kedge/agent.yaml")]
    config: PathBuf,
    /// First-boot config on the boot partition (comma-separated, first found
    /// wins): moved to --config at start, then removed.
    #[arg(long, value_delimiter = ',', default_value = "/boot/firmware/kedge-agent.yaml,/boot/kedge-agent.yaml")]
    boot_config: Vec<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SnapshotterArg {
    Overlay,
    Copy,
}

/// glibc gives each thread that allocates an arena of its own (up to 8 per
/// core), and each keeps what it touched: the blocking threads that load
/// nftables and netlink left ~150 KiB apiece resident. The agent does its
/// work on one thread; one arena serves it (BENCHMARKS.md, idle RSS).
#[allow(unsafe_code)]
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable; called first thing in main,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    one_malloc_arena();
    kedge_agent::relocs::release();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let mut cli = Cli::parse_from(&argv);
    if let Command::Run(run) = &cli.command {
        init_tracing();
        match with_config(&argv, run) {
            Ok(Some(c)) => cli = c,
            Ok(None) => {}
            Err(e) => {
                eprintln!("kedge-agent: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
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
        Command::Libcontainer { call: LcCall::ExecStream { id, root, status, console_socket, args } } => {
            // Its stdout and stderr are the user's: no logging there (the
            // status file tells what went wrong).
            kedge_agent::runtime::container::helper_exec_stream(&id, &root, &status, console_socket.as_deref(), args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Libcontainer { call } => {
            use kedge_agent::runtime::container;
            // A container init's failure is only told through tracing: to
            // stderr, which the agent puts into the error it reports.
            let filter: tracing_subscriber::filter::Targets =
                "warn,libcontainer::seccomp=error,libcgroups=error".parse().unwrap_or_default();
            use tracing_subscriber::prelude::*;
            let fmt = tracing_subscriber::fmt::layer().without_time().with_ansi(false).with_writer(std::io::stderr);
            tracing_subscriber::registry().with(fmt).with(filter).init();
            match call {
                LcCall::Create { id, root, bundle } => println!("{}", container::helper_create(&id, &bundle, &root)?),
                LcCall::Exec { id, root, out, err, timeout_ms, args } => {
                    let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
                    match container::helper_exec(&id, &root, &out, &err, args, timeout)? {
                        Some(code) => println!("{code}"),
                        None => println!("timeout"),
                    }
                }
                LcCall::ExecStream { .. } => unreachable!("taken above"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(run(cli.data_dir, cli.cri_socket, *args))?;
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
        Command::RotateKey { wait } => rotate_key(&cli.data_dir, wait),
        Command::Network { command: NetworkCommand::Cleanup { pod_bridge } } => {
            kedge_agent::net::cleanup(&pod_bridge)?;
            println!("removed kedge's pod network ({pod_bridge}, pod veths, routes, VXLAN device, nftables table)");
            Ok(ExitCode::SUCCESS)
        }
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
            for id in store.prune(&in_use(paths), false)? {
                println!("removed {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kedge-agent rotate-key`: the next key pair, then the wait for the
/// running agent to have it taken (its files put in place) or refused.
fn rotate_key(data_dir: &std::path::Path, wait: Duration) -> Result<ExitCode> {
    use kedge_agent::identity;
    let new =
        identity::prepare_rotation(data_dir).with_context(|| format!("rotating the key in {}", data_dir.display()))?;
    println!("new key {new}: asking the controller to take it");
    let current = || -> Option<String> {
        let der = std::fs::read(data_dir.join("node.key")).ok()?;
        Some(kedge_common::sign::SigningKey::from_pkcs8(&der).ok()?.public().to_string())
    };
    let deadline = std::time::Instant::now() + wait;
    loop {
        if current().as_deref() == Some(new.to_string().as_str()) {
            println!("rotated: the controller took key {new}");
            return Ok(ExitCode::SUCCESS);
        }
        if let Ok(reason) = std::fs::read_to_string(identity::refused_path(data_dir)) {
            bail!("the controller refused the new key: {reason}");
        }
        if std::time::Instant::now() >= deadline {
            println!(
                "not answered yet: the running agent asks the controller until it answers (or the next start does); run rotate-key again to wait more"
            );
            return Ok(ExitCode::from(2));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Images some container record (running or not) still names.
fn in_use(paths: &runtime::Paths) -> std::collections::BTreeSet<String> {
    runtime::records::load_all::<runtime::ContainerRecord>(&paths.containers())
        .into_iter()
        .map(|c| c.image_id)
        .collect()
}

/// The first-boot import, then the command line again with the config
/// file's flags put in front of the given ones (which therefore win).
/// `None` when there is no config file.
fn with_config(argv: &[OsString], run: &RunArgs) -> Result<Option<Cli>> {
    use clap::CommandFactory;
    // The common case, no file at all, costs two stat calls and nothing else.
    if !run.config.exists() && !run.boot_config.iter().any(|p| p.is_file()) {
        return Ok(None);
    }
    let cmd = Cli::command();
    let run_cmd = cmd.find_subcommand("run").context("no run subcommand")?;
    let known: Vec<String> = cmd
        .get_arguments()
        .chain(run_cmd.get_arguments())
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|l| l != "help" && l != "version")
        .collect();
    match kedge_agent::config::import_boot_config(&run.boot_config, &run.config, &known)? {
        kedge_agent::config::Imported::Nothing => {}
        kedge_agent::config::Imported::Moved { from } => {
            tracing::info!(from = %from.display(), to = %run.config.display(), "first-boot config imported");
        }
        kedge_agent::config::Imported::Copied { from, reason } => {
            tracing::warn!(from = %from.display(), to = %run.config.display(), %reason,
                "first-boot config imported; it stays on the read-only boot partition (remove it by hand: it may hold the broker password)");
        }
        kedge_agent::config::Imported::AlreadyImported { from } => {
            tracing::debug!(from = %from.display(), "first-boot config already imported");
        }
        kedge_agent::config::Imported::Rejected { from, renamed, reason } => {
            let renamed = renamed.map(|r| r.display().to_string()).unwrap_or_else(|| "(read-only, left)".into());
            tracing::error!(from = %from.display(), %renamed, %reason,
                "first-boot config rejected; keeping the stored config");
        }
    }
    if !run.config.exists() {
        return Ok(None);
    }
    let text = kedge_agent::config::read_bounded(&run.config)?;
    let extra = kedge_agent::config::args_from_yaml(&text, &run.config, &known)?;
    let at = argv.iter().skip(1).position(|a| a == "run").map(|i| i + 2).context("no `run` in the arguments")?;
    let mut full: Vec<OsString> = argv[..at].to_vec();
    full.extend(extra);
    full.extend_from_slice(&argv[at..]);
    let cli = Cli::try_parse_from(full)
        .map_err(|e| anyhow::anyhow!("{} (flags from the config file): {e}", run.config.display()))?;
    tracing::info!(config = %run.config.display(), "config file read");
    Ok(Some(cli))
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
    tracing::info!(node = %node, data_dir = %data_dir.display(), manifests = %args.manifests.display(), "kedge-agent starting");
    #[cfg(feature = "cri-grpc")]
    if !args.no_cri_socket {
        kedge_agent::grpc::serve(rt.clone(), &cri_socket)
            .with_context(|| format!("serving the CRI on {}", cri_socket.display()))?;
        tracing::info!(socket = %cri_socket.display(), "CRI served");
    }
    #[cfg(not(feature = "cri-grpc"))]
    let _ = (&cri_socket, args.no_cri_socket);
    let controller_key = match &args.broker {
        Some(_) => kedge_agent::pin::controller_key(&data_dir, args.token.as_ref())?,
        None => None,
    };
    if args.broker.is_some() && controller_key.is_none() {
        tracing::error!(
            "no join token: this node takes nothing from the controller until it gets one (--token, agent.yaml `token:` or the first-boot file)"
        );
    }
    let identity = match &args.broker {
        Some(_) => kedge_agent::identity::load(&data_dir, args.token.as_ref())?,
        None => None,
    };
    let tls = match &args.broker {
        Some(b) if b.tls => Some(
            kedge_common::broker_tls::client_config(
                args.broker_ca.as_deref(),
                args.broker_cert.as_deref().zip(args.broker_key.as_deref()),
            )
            .context("TLS to the broker")?,
        ),
        Some(b) if args.broker_ca.is_some() || args.broker_cert.is_some() => {
            bail!("--broker-ca and --broker-cert are for TLS: use mqtts:// (not {b})")
        }
        _ => None,
    };
    let link = args.broker.clone().map(|broker| LinkConfig {
        tls,
        controller_key,
        identity,
        broker,
        node: node.clone(),
        prefix: args.topic_prefix.clone(),
        keepalive: args.keepalive,
        report_refresh: args.report_refresh,
        max_payload: args.max_payload,
        boot_id: kedge_agent::runtime::records::boot_id(),
        credentials: args.broker_username.clone().map(|u| (u, args.broker_password.clone().unwrap_or_default())),
        // Set by the node, which holds the runtime's paths and the cache.
        sessions: None,
    });
    let cfg = NodeConfig {
        node,
        data_dir: data_dir.clone(),
        manifests: args.manifests.clone(),
        backoff: BackoffPolicy { base: args.backoff_base, cap: args.backoff_max, ..Default::default() },
        image_gc_high_threshold: args.image_gc_high_threshold,
        link,
        node_ip: args.node_ip.clone(),
        tick: Duration::from_secs(1),
        cluster_dns: args.cluster_dns,
        cluster_domain: args.cluster_domain.clone(),
        storage_dir: args.storage_dir.clone().unwrap_or_else(|| data_dir.join("storage")),
        observer: None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let network = if args.no_pod_network {
        tracing::info!("--no-pod-network: pods get no network beyond lo");
        None
    } else if cfg.link.is_some() || args.pod_cidr.is_some() {
        let path = data_dir.join("agent.redb");
        let cache = tokio::task::spawn_blocking(move || kedge_agent::cache::Cache::open(&path)).await??;
        let pod_net = std::sync::Arc::new(kedge_agent::net::pod::PodNet::new(std::sync::Arc::new(cache)));
        rt.set_network(pod_net.clone()).await?;
        let node_ip = cfg.node_ip.as_deref().and_then(|ip| ip.parse().ok()).or_else(|| {
            let broker = cfg.link.as_ref()?;
            kedge_agent::report::route_source_ip(&broker.broker.host, broker.broker.port)?.parse().ok()
        });
        let net_cfg = NetworkConfig {
            node: cfg.node.clone(),
            bridge: args.pod_bridge.clone(),
            pod_cidr: args.pod_cidr,
            node_ip,
            overlay: args.overlay,
            cluster_domain: args.cluster_domain.clone(),
        };
        Some(NetworkManager::new(net_cfg, pod_net))
    } else {
        tracing::info!("no broker and no --pod-cidr: pods get no network beyond lo");
        None
    };
    // Runs until the runtime stops at the end of `run`.
    if let Some(addr) = args.metrics_listen {
        let file = args.metrics_token_file.clone().unwrap_or_else(|| data_dir.join("metrics.token"));
        let token =
            kedge_agent::metrics::token(&file).with_context(|| format!("the metrics token {}", file.display()))?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--metrics-listen {addr}"))?;
        tracing::info!(%addr, token = %file.display(), "serving metrics");
        tokio::spawn(kedge_agent::metrics::serve(listener, token, rt.clone()));
    }
    let paths = rt.paths().clone();
    node::run(cfg, rt, paths, network, stop).await?;
    // Pods are not stopped: a restarted agent adopts them.
    tracing::info!("kedge-agent stopped; containers keep running");
    Ok(())
}
