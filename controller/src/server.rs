//! Start-up: open the store, make sure the system namespaces exist, bind the
//! listener, write the kubeconfig, and serve until told to stop. Shutdown
//! stops the listener, the control loops and the fleet link, and waits for
//! all of them, so the store is closed when [`Running::shutdown`] returns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::api::{self, ApiConfig, ApiState};
use crate::client::Client;
use crate::controllers::ControllerError;
use crate::controllers::daemonset::DaemonSetController;
use crate::controllers::endpoints::EndpointsController;
use crate::controllers::nodelifecycle::{Liveness, NodeLifecycle, NodeLifecycleConfig};
use crate::store::{Store, StoreError};
use crate::tls;
use crate::write::{self, WriteError, Writer};

/// Default API address (the port K3s uses).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6443";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/kedge/controller";
/// Default number of watch events kept for resuming watches.
pub const DEFAULT_WATCH_HISTORY: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot create the system namespaces: {0}")]
    Bootstrap(#[from] WriteError),
    #[error("cannot start the control loops: {0}")]
    Controllers(#[from] ControllerError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot write kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: crate::tls::TlsError },
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error(transparent)]
    TokenKey(#[from] crate::auth::token::KeyError),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub watch_history: usize,
    /// Serve HTTPS with token authentication (the binary's default, on
    /// every address). Off, plain HTTP is served on loopback only (in-process
    /// tests, `--insecure-http`); any other address gets HTTPS regardless.
    pub tls: bool,
    /// Extra names (DNS or IP) for the serving certificate.
    pub tls_sans: Vec<String>,
    /// Where pods reach the API (`--advertise-address`).
    pub advertise_address: Option<std::net::IpAddr>,
    /// Node heartbeat grace period and the pod CIDR nodes get theirs from.
    pub nodes: NodeLifecycleConfig,
    /// Service cluster-IP range.
    pub service_cidr: (std::net::Ipv4Addr, u8),
    /// How long events are kept.
    pub event_ttl: std::time::Duration,
    /// The fleet link over MQTT; `None` runs the API and control loops only.
    pub fleet: Option<crate::fleet::FleetOptions>,
    /// Connection limits and timeouts of the API's listener.
    pub http: crate::serve::Limits,
}

impl Options {
    /// Loopback-only plain HTTP on `listen`, with defaults for the rest.
    pub fn local(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Options {
            data_dir,
            listen,
            watch_history: DEFAULT_WATCH_HISTORY,
            tls: false,
            tls_sans: Vec::new(),
            advertise_address: None,
            nodes: NodeLifecycleConfig::default(),
            service_cidr: write::DEFAULT_SERVICE_CIDR,
            event_ttl: crate::controllers::eventttl::DEFAULT_TTL,
            fleet: None,
            http: crate::serve::Limits::for_this_process(),
        }
    }
}

/// A running API server.
pub struct Running {
    pub addr: SocketAddr,
    pub tls: bool,
    pub kubeconfig: PathBuf,
    pub store: Arc<Store>,
    /// The broker the fleet link uses, when it runs.
    pub broker: Option<kedge_common::topics::BrokerUrl>,
    /// The embedded broker's TLS listener, when it has one.
    pub broker_tls: Option<kedge_common::topics::BrokerUrl>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    /// The control loops and the fleet link's tasks.
    loops: JoinSet<()>,
}

impl Running {
    /// Stops accepting, ends open watches, waits for in-flight requests,
    /// then for every control loop and fleet task to return.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        let served = match self.task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        };
        while let Some(done) = self.loops.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a control loop or fleet task failed");
            }
        }
        tracing::debug!("control loops and fleet link stopped");
        served
    }
}

pub async fn start(opts: Options) -> Result<Running, ServerError> {
    let use_tls = opts.tls || !opts.listen.ip().is_loopback();
    if !use_tls {
        tracing::warn!(listen = %opts.listen, "serving plain HTTP without authentication: every local user can administer this cluster");
    }
    std::fs::create_dir_all(&opts.data_dir)
        .and_then(|()| {
            // The store holds Secrets and the token: owner only.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|source| ServerError::DataDir { path: opts.data_dir.clone(), source })?;
    let store = Arc::new(Store::open(&opts.data_dir.join("state.redb"), opts.watch_history)?);
    // The custom kinds are served from the first request on.
    crate::crd::load(&store)?;
    let writer = Writer::new(store.clone(), opts.service_cidr);
    let writer = if use_tls { writer.mounting_tokens() } else { writer };
    writer.system_namespaces()?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServerError::Listen { addr: opts.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Listen { addr: opts.listen, source })?;
    let kubeconfig = opts.data_dir.join("kubeconfig.yaml");
    // Clients on this machine reach a wildcard listener through loopback.
    let advertise = if addr.ip().is_unspecified() { SocketAddr::new([127, 0, 0, 1].into(), addr.port()) } else { addr };
    let tls = if use_tls {
        // Pods reach the API as the `kubernetes` Service, by its names and
        // address, and at the advertised address behind it.
        let mut sans = opts.tls_sans.clone();
        sans.extend(crate::controllers::master::DNS_NAMES.iter().map(|n| (*n).to_owned()));
        sans.push(crate::controllers::master::service_ip(opts.service_cidr).to_string());
        sans.extend(opts.advertise_address.map(|a| a.to_string()));
        let names = tls::serving_names(addr.ip(), &sans);
        Some(tls::load_or_create(&opts.data_dir, &names)?)
    } else {
        None
    };
    let text = match &tls {
        Some(m) => kubeconfig_yaml(&format!("https://{advertise}"), Some(&m.ca_pem), Some(&m.token)),
        None => kubeconfig_yaml(&format!("http://{advertise}"), None, None),
    };
    tls::write_private(&kubeconfig, text.as_bytes())
        .map_err(|source| ServerError::Kubeconfig { path: kubeconfig.clone(), source })?;
    let (tx, rx) = watch::channel(false);
    let client = Client::new(writer.clone());
    let fleet_state = crate::fleet::FleetState::new(
        opts.fleet.as_ref().map_or(std::time::Duration::from_secs(1800), |f| f.report_timeout),
    );
    let mut loops = JoinSet::new();
    let issuer = Arc::new(crate::auth::token::Issuer::load_or_create(&opts.data_dir)?);
    let broker = match &opts.fleet {
        Some(f) => {
            let key = Arc::new(tls::signing_key(&opts.data_dir)?);
            // The broker's TLS listener shows a certificate of the cluster CA
            // for its own address (all of this host's with a wildcard).
            let serving = match (f.broker.is_none(), f.mqtts_listen) {
                (true, Some(a)) => {
                    Some(tls::serving_config(&opts.data_dir, &tls::serving_names(a.ip(), &opts.tls_sans), &[])?.0)
                }
                _ => None,
            };
            let fleet = crate::fleet::start(
                client.clone(),
                f.clone(),
                serving,
                key,
                issuer.clone(),
                cidrs(&opts),
                fleet_state.clone(),
                &mut loops,
                rx.clone(),
            )
            .await?;
            Some((fleet.broker, fleet.broker_tls, fleet.relay))
        }
        None => None,
    };
    let (broker, broker_tls, relay) = broker.map_or((None, None, None), |(b, t, r)| (Some(b), t, Some(r)));
    let config = ApiConfig { token: tls.as_ref().map(|m| m.token.clone()), ..ApiConfig::default() };
    let telemetry =
        Arc::new(crate::telemetry::Telemetry::new(store.clone(), relay.clone().map(|r| (fleet_state.clone(), r))));
    let liveness = opts.fleet.as_ref().map(|_| fleet_state.clone() as Arc<dyn Liveness>);
    crate::auth::bootstrap::ensure(&client)?;
    let api_ip = crate::controllers::master::advertise(opts.advertise_address, addr.ip());
    crate::controllers::master::ensure(&client, opts.service_cidr, api_ip, addr.port())?;
    let state = Arc::new(ApiState {
        store: store.clone(),
        writer,
        config,
        shutdown: rx.clone(),
        relay,
        telemetry,
        liveness: liveness.clone(),
        issuer,
    });
    let app = api::router(state);
    // With the fleet link, the node lifecycle also looks at every node when
    // presence changes somewhere.
    let presence = opts.fleet.as_ref().map(|_| fleet_state.presence_changes());
    let ca = tls.as_ref().map(|m| m.ca_pem.clone());
    start_controllers(&mut loops, client, &opts, liveness, presence, ca, rx.clone())?;
    let task = tokio::spawn(crate::serve::serve(listener, app, tls.map(|m| m.server_config), opts.http, rx));
    tracing::info!(%addr, tls = use_tls, kubeconfig = %kubeconfig.display(), revision = store.revision(), "API server listening");
    Ok(Running { addr, tls: use_tls, kubeconfig, store, broker, broker_tls, shutdown: tx, task, loops })
}

/// The cluster and service CIDRs as the network table carries them.
fn cidrs(opts: &Options) -> crate::fleet::network::Cidrs {
    let net = |(ip, bits): (std::net::Ipv4Addr, u8)| ipnet::Ipv4Net::new(ip, bits).ok().map(ipnet::IpNet::V4);
    crate::fleet::network::Cidrs { cluster: net(opts.nodes.cluster_cidr), service: net(opts.service_cidr) }
}

/// Starts the control loops as tasks of `loops`; each runs until `stop` flips.
fn start_controllers(
    loops: &mut JoinSet<()>,
    client: Client,
    opts: &Options,
    liveness: Option<Arc<dyn Liveness>>,
    presence: Option<watch::Receiver<u64>>,
    ca: Option<String>,
    stop: watch::Receiver<bool>,
) -> Result<(), ControllerError> {
    use crate::controllers::{
        deployment::DeploymentController, eventttl::EventTtl, gc::GarbageCollector, namespace::NamespaceController,
        replicaset::ReplicaSetController, runner,
    };
    let store = client.store().clone();
    loops.spawn(runner::run(NamespaceController::new(client.clone()), store.clone(), stop.clone()));
    loops.spawn(runner::run(ReplicaSetController::new(client.clone())?, store.clone(), stop.clone()));
    loops.spawn(runner::run(DeploymentController::new(client.clone())?, store.clone(), stop.clone()));
    loops.spawn(runner::run(crate::scheduler::Scheduler::new(client.clone())?, store.clone(), stop.clone()));
    let lifecycle = NodeLifecycle::new(client.clone(), opts.nodes.clone(), liveness)?;
    match presence {
        Some(p) => loops.spawn(runner::run_with_resync(lifecycle, store.clone(), stop.clone(), p)),
        None => loops.spawn(runner::run(lifecycle, store.clone(), stop.clone())),
    };
    loops.spawn(runner::run(DaemonSetController::new(client.clone())?, store.clone(), stop.clone()));
    loops.spawn(runner::run(EndpointsController::new(client.clone())?, store.clone(), stop.clone()));
    loops.spawn(runner::run(crate::controllers::job::JobController::new(client.clone())?, store.clone(), stop.clone()));
    loops.spawn(runner::run(
        crate::controllers::cronjob::CronJobController::new(client.clone())?,
        store.clone(),
        stop.clone(),
    ));
    loops.spawn(runner::run(
        crate::controllers::disruption::DisruptionController::new(client.clone())?,
        store.clone(),
        stop.clone(),
    ));
    loops.spawn(runner::run(
        crate::controllers::statefulset::StatefulSetController::new(client.clone())?,
        store.clone(),
        stop.clone(),
    ));
    loops.spawn(runner::run(
        crate::controllers::volume::VolumeController::new(client.clone())?,
        store.clone(),
        stop.clone(),
    ));
    loops.spawn(runner::run(
        crate::controllers::serviceaccount::ServiceAccountController::new(client.clone(), ca)?,
        store.clone(),
        stop.clone(),
    ));
    loops.spawn(runner::run(
        crate::controllers::serviceaccount::AggregationController::new(client.clone())?,
        store.clone(),
        stop.clone(),
    ));
    loops.spawn(runner::run(crate::controllers::crd::CrdController::new(client.clone()), store.clone(), stop.clone()));
    loops.spawn(runner::run(EventTtl::new(client.clone(), opts.event_ttl)?, store.clone(), stop.clone()));
    loops.spawn(runner::run(GarbageCollector::new(client), store, stop));
    Ok(())
}

/// A kubeconfig for `server`, with the cluster CA and token when TLS is on.
fn kubeconfig_yaml(server: &str, ca_pem: Option<&str>, token: Option<&str>) -> String {
    use base64::Engine;
    let ca = ca_pem
        .map(|p| format!("    certificate-authority-data: {}\n", base64::engine::general_purpose::STANDARD.encode(p)))
        .unwrap_or_default();
    let user = token.map(|t| format!("\n    token: {t}\n")).unwrap_or_else(|| " {}\n".to_owned());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n{ca}    server: {server}\n  name: kedge\ncontexts:\n- context:\n    cluster: kedge\n    user: kedge-admin\n  name: kedge\ncurrent-context: kedge\nusers:\n- name: kedge-admin\n  user:{user}"
    )
}
