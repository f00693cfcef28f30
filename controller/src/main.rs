//! `kedge-controller`: the kedge control plane.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kedge_common::duration::parse_duration;
use kedge_common::topics::BrokerUrl;
use kedge_controller::controllers::nodelifecycle::NodeLifecycleConfig;
use kedge_controller::fleet::FleetOptions;
use kedge_controller::server::{self, Options};
use tracing_subscriber::EnvFilter;

/// The kedge control plane: a Kubernetes-shaped API server on redb, and the
/// fleet link to the nodes over MQTT (embedded broker by default).
#[derive(Debug, Parser)]
#[command(name = "kedge-controller", version = kedge_common::VERSION)]
struct Cli {
    /// Where the store and the generated kubeconfig live.
    #[arg(long, default_value = server::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// API address. Served over HTTPS with a generated CA and a bearer
    /// token (both in the written kubeconfig, 0600) on every address,
    /// loopback included: any local user can reach loopback.
    #[arg(long, default_value = server::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Serve plain HTTP without authentication instead — only on a loopback
    /// address, and only where every local user may administer the cluster
    /// (a throwaway development machine).
    #[arg(long)]
    insecure_http: bool,
    /// Extra DNS name or IP for the serving certificate (repeatable).
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_san: Vec<String>,
    /// The address pods reach the API at (the `kubernetes` Service's
    /// endpoint); default: the --listen address, or this host's first
    /// IPv4 address when listening on all of them.
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// How long a node may go without a heartbeat before it is NotReady
    /// (`40s`, `2m`).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// Pod network of the cluster; each node gets a range of it.
    #[arg(long, default_value = "10.42.0.0/16", value_parser = parse_cidr)]
    cluster_cidr: (Ipv4Addr, u8),
    /// The prefix length of each node's range of --cluster-cidr: 24 gives
    /// 256 nodes of /16 room for 253 pods each; 26, 1,024 nodes of 61 pods.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=30))]
    node_cidr_mask_size: u8,
    /// How long events are kept (`1h`).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    event_ttl: Duration,
    /// Range Service cluster IPs come from.
    #[arg(long, default_value = "10.43.0.0/16", value_parser = parse_cidr)]
    service_cidr: (Ipv4Addr, u8),
    /// API connections served at once (a quarter of the open-file limit,
    /// between 64 and 8,192, when not given); half of them per client
    /// address. At the limit the oldest idle connection makes room.
    #[arg(long)]
    max_connections: Option<usize>,
    /// How long a client may take to send a request's headers, and the
    /// longest an API connection may idle between requests (`30s`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    request_header_timeout: Duration,
    /// Watch events kept in memory so watches can resume; older resume
    /// points get 410 Gone and clients re-list.
    #[arg(long, default_value_t = server::DEFAULT_WATCH_HISTORY)]
    watch_history: usize,
    /// Where the embedded MQTT broker listens for plain MQTT: loopback only
    /// (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_listen: SocketAddr,
    /// Where the embedded broker listens for MQTT over TLS, for agents on
    /// other machines (`0.0.0.0:8883`); its certificate is the cluster CA's
    /// (`DATA/tls/ca.crt`), for this host's addresses and every --tls-san.
    #[arg(long)]
    mqtts_listen: Option<SocketAddr>,
    /// Use this MQTT broker (mqtt://HOST:PORT or mqtts://HOST:PORT) instead
    /// of the embedded one.
    #[arg(long)]
    broker: Option<BrokerUrl>,
    /// CA certificate (PEM) of the --broker mqtts:// broker (default: the
    /// system's roots).
    #[arg(long, requires = "broker")]
    broker_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a --broker that asks for one.
    #[arg(long, requires = "broker_key")]
    broker_cert: Option<PathBuf>,
    /// Private key (PEM) of --broker-cert.
    #[arg(long, requires = "broker_cert")]
    broker_key: Option<PathBuf>,
    /// MQTT user name for --broker.
    #[arg(long, requires = "broker")]
    broker_username: Option<String>,
    /// File holding the MQTT password of --broker-username.
    #[arg(long, requires = "broker_username")]
    broker_password_file: Option<PathBuf>,
    /// Topic prefix of the fleet.
    #[arg(long, default_value = kedge_common::topics::DEFAULT_PREFIX)]
    topic_prefix: String,
    /// Run the API server and control loops without the fleet link.
    #[arg(long)]
    no_fleet: bool,
    /// A node whose newest report is older than this counts as silent even
    /// while its presence says online (agents refresh every 10 minutes).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    node_report_timeout: Duration,
    /// Largest fleet-link payload, in bytes.
    #[arg(long, default_value_t = kedge_common::envelope::DEFAULT_MAX_PAYLOAD)]
    max_payload: usize,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Join tokens for agents.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Prints a Mosquitto ACL file confining each node to its own topics
    /// (nodes log in as their node name; see the file's header).
    BrokerAcl {
        /// The controller's user name on the broker (--broker-username).
        #[arg(long, default_value = "kedge-controller")]
        controller_user: String,
    },
    /// Joined nodes.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
enum NodeCommand {
    /// Revokes a node's key at once (through the running controller's API):
    /// nothing under its name is taken from then on, and it joins again only
    /// with a new token. `kubectl delete node NAME` revokes too.
    Revoke { name: String },
}

#[derive(Debug, clap::Subcommand)]
enum TokenCommand {
    /// Prints a new join token (it pins this controller's signing key; give
    /// it to an agent with --token, agent.yaml or the first-boot file).
    Create {
        /// How long it may be used to join (`24h`, `0`: forever).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// How many nodes may join with it (default: any number).
        #[arg(long)]
        uses: Option<u32>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rumqttd=warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Some(Command::Node { command: NodeCommand::Revoke { name } }) = &cli.command {
        kedge_controller::revoke::revoke(&cli.data_dir, name).with_context(|| format!("revoking node {name}"))?;
        println!("node {name} revoked: nothing under its name is taken; it joins again only with a new token");
        return Ok(());
    }
    if let Some(Command::BrokerAcl { controller_user }) = &cli.command {
        print!("{}", kedge_controller::broker_acl::mosquitto_acl(&cli.topic_prefix, controller_user));
        return Ok(());
    }
    if let Some(Command::Token { command: TokenCommand::Create { ttl, uses } }) = &cli.command {
        let ttl = (!ttl.is_zero()).then_some(*ttl);
        let token = kedge_controller::tokens::create(&cli.data_dir, ttl, *uses)
            .with_context(|| format!("creating a token in {}", cli.data_dir.display()))?;
        println!("{token}");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let tokens_dir = cli.data_dir.join("tokens");
    let broker_tls = match &cli.broker {
        Some(b) if b.tls => Some(
            kedge_common::broker_tls::client_config(
                cli.broker_ca.as_deref(),
                cli.broker_cert.as_deref().zip(cli.broker_key.as_deref()),
            )
            .context("TLS to the broker")?,
        ),
        Some(b) if cli.broker_ca.is_some() || cli.broker_cert.is_some() => {
            anyhow::bail!("--broker-ca and --broker-cert are for TLS: use mqtts:// (not {b})")
        }
        _ => None,
    };
    let credentials = match (&cli.broker_username, &cli.broker_password_file) {
        (Some(user), Some(file)) => {
            let password = std::fs::read_to_string(file)
                .with_context(|| format!("reading the broker password from {}", file.display()))?;
            Some((user.clone(), password.trim_end_matches(['\r', '\n']).to_owned()))
        }
        (Some(user), None) => Some((user.clone(), String::new())),
        _ => None,
    };
    if cli.node_cidr_mask_size < cli.cluster_cidr.1 {
        anyhow::bail!(
            "--node-cidr-mask-size {} is wider than --cluster-cidr's /{}: a node's range must fit in the cluster's",
            cli.node_cidr_mask_size,
            cli.cluster_cidr.1
        );
    }
    kedge_controller::serve::raise_fd_limit();
    let mut http = match cli.max_connections {
        Some(n) => kedge_controller::serve::Limits::with_max(n),
        None => kedge_controller::serve::Limits::for_this_process(),
    };
    http.header_timeout = cli.request_header_timeout;
    let running = server::start(Options {
        data_dir: cli.data_dir,
        listen: cli.listen,
        watch_history: cli.watch_history,
        tls: !cli.insecure_http,
        tls_sans: cli.tls_san,
        advertise_address: cli.advertise_address,
        nodes: NodeLifecycleConfig {
            grace: cli.node_monitor_grace_period,
            cluster_cidr: cli.cluster_cidr,
            node_cidr_mask: cli.node_cidr_mask_size,
            ..NodeLifecycleConfig::default()
        },
        service_cidr: cli.service_cidr,
        event_ttl: cli.event_ttl,
        http,
        fleet: (!cli.no_fleet).then(|| FleetOptions {
            mqtt_listen: cli.mqtt_listen,
            mqtts_listen: cli.mqtts_listen,
            broker: cli.broker,
            broker_tls,
            credentials,
            prefix: cli.topic_prefix,
            tokens_dir,
            max_payload: cli.max_payload,
            report_timeout: cli.node_report_timeout,
            ..FleetOptions::default()
        }),
    })
    .await?;
    println!("kedge-controller listening on {}://{}", if running.tls { "https" } else { "http" }, running.addr);
    println!("export KUBECONFIG={}", running.kubeconfig.display());
    // Agents on other machines use the TLS listener when there is one.
    match (&running.broker_tls, &running.broker) {
        (Some(b), _) | (None, Some(b)) => println!("fleet broker {b}"),
        (None, None) => println!("fleet link off"),
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
    }
    running.shutdown().await.context("serving")?;
    tracing::info!("stopped");
    Ok(())
}

/// An IPv4 CIDR such as `10.42.0.0/16` (prefix 8 to 24).
fn parse_cidr(s: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (ip, bits) = s.split_once('/').with_context(|| format!("{s:?} is not a CIDR like 10.42.0.0/16"))?;
    // clap shows the outermost message only: the cause goes into it.
    let ip: Ipv4Addr = ip.parse().map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
    let bits: u8 = bits.parse().map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
    anyhow::ensure!((8..=24).contains(&bits), "{s:?}: the prefix must be between /8 and /24");
    let mask = u32::MAX << (32 - u32::from(bits));
    Ok((Ipv4Addr::from(u32::from(ip) & mask), bits))
}
