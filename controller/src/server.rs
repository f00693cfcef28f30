//! Start-up: open the store, make sure the system namespaces exist, bind the
//! listener, write the kubeconfig, and serve until told to stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiConfig, ApiState};
use crate::client::Client;
use crate::controllers::daemonset::DaemonSetController;
use crate::controllers::endpoints::EndpointsController;
use crate::controllers::nodelifecycle::{NodeLifecycle, NodeLifecycleConfig};
use crate::resources;
use crate::store::{Key, Mutation, Store, StoreError};
use crate::tls;
use crate::validate::{self, FieldValidation};

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
    #[error("cannot create the system namespaces or start the control loops: {0}")]
    Bootstrap(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot write kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Fleet(#[from] crate::fleet::broker::BrokerError),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub watch_history: usize,
    /// Serve HTTPS with token authentication even on loopback. Always on for
    /// any other address: plain HTTP is only ever served on loopback.
    pub tls: bool,
    /// Extra names (DNS or IP) for the serving certificate.
    pub tls_sans: Vec<String>,
    /// Node heartbeat grace period and the pod CIDR nodes get theirs from.
    pub nodes: NodeLifecycleConfig,
    /// Service cluster-IP range.
    pub service_cidr: (std::net::Ipv4Addr, u8),
    /// How long events are kept.
    pub event_ttl: std::time::Duration,
    /// The fleet link over MQTT; `None` runs the API and control loops only.
    pub fleet: Option<crate::fleet::FleetOptions>,
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
            nodes: NodeLifecycleConfig::default(),
            service_cidr: ApiConfig::default().service_cidr,
            event_ttl: crate::controllers::eventttl::DEFAULT_TTL,
            fleet: None,
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
    shutdown: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, ends open watches, waits for in-flight requests.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

pub async fn start(opts: Options) -> Result<Running, ServerError> {
    let use_tls = opts.tls || !opts.listen.ip().is_loopback();
    std::fs::create_dir_all(&opts.data_dir)
        .and_then(|()| {
            // The store holds Secrets and the token: owner only.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&opts.data_dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|source| ServerError::DataDir { path: opts.data_dir.clone(), source })?;
    let store = Arc::new(Store::open(&opts.data_dir.join("state.redb"), opts.watch_history)?);
    bootstrap(&store)?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServerError::Listen { addr: opts.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Listen { addr: opts.listen, source })?;
    let kubeconfig = opts.data_dir.join("kubeconfig.yaml");
    // Clients on this machine reach a wildcard listener through loopback.
    let advertise = if addr.ip().is_unspecified() { SocketAddr::new([127, 0, 0, 1].into(), addr.port()) } else { addr };
    let tls = if use_tls {
        let names = tls::serving_names(addr.ip(), &opts.tls_sans);
        Some(tls::load_or_create(&opts.data_dir, &names)?)
    } else {
        None
    };
    let text = match &tls {
        Some(m) => kubeconfig_yaml(&format!("https://{advertise}"), Some(&m.ca_pem), Some(&m.token)),
        None => kubeconfig_yaml(&format!("http://{advertise}"), None, None),
    };
    tls::write_private(&kubeconfig, text.as_bytes()).map_err(|e| ServerError::Kubeconfig {
        path: kubeconfig.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let (tx, rx) = watch::channel(false);
    let config = ApiConfig {
        token: tls.as_ref().map(|m| m.token.clone()),
        service_cidr: opts.service_cidr,
        ..ApiConfig::default()
    };
    let state = Arc::new(ApiState { store: store.clone(), config, shutdown: rx.clone() });
    let app = api::router(state.clone());
    let client = Client::new(state);
    let fleet_state = crate::fleet::FleetState::new(
        opts.fleet.as_ref().map_or(std::time::Duration::from_secs(1800), |f| f.report_timeout),
    );
    let broker = match &opts.fleet {
        Some(f) => Some(crate::fleet::start(client.clone(), f.clone(), fleet_state.clone(), rx.clone()).await?.broker),
        None => None,
    };
    start_controllers(client, &opts, opts.fleet.as_ref().map(|_| fleet_state), rx.clone())?;
    let mut stop = rx;
    let task = match tls {
        Some(m) => tokio::spawn(serve_tls(listener, app, m.server_config, stop)),
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|v| *v).await;
                })
                .await
        }),
    };
    tracing::info!(%addr, tls = use_tls, kubeconfig = %kubeconfig.display(), revision = store.revision(), "API server listening");
    Ok(Running { addr, tls: use_tls, kubeconfig, store, broker, shutdown: tx, task })
}

/// Starts the control loops; each runs until `stop` flips.
fn start_controllers(
    client: Client,
    opts: &Options,
    fleet: Option<Arc<crate::fleet::FleetState>>,
    stop: watch::Receiver<bool>,
) -> Result<(), ServerError> {
    use crate::controllers::{
        deployment::DeploymentController, gc::GarbageCollector, namespace, replicaset::ReplicaSetController, runner,
    };
    let store = client.store().clone();
    let boot = |e: crate::api::ApiError| ServerError::Bootstrap(e.to_string());
    tokio::spawn(runner::run(namespace::NamespaceController::new(store.clone()), store.clone(), stop.clone()));
    tokio::spawn(runner::run(ReplicaSetController::new(client.clone()).map_err(boot)?, store.clone(), stop.clone()));
    tokio::spawn(runner::run(DeploymentController::new(client.clone()).map_err(boot)?, store.clone(), stop.clone()));
    tokio::spawn(runner::run(
        crate::scheduler::Scheduler::new(client.clone()).map_err(boot)?,
        store.clone(),
        stop.clone(),
    ));
    let presence = fleet.as_ref().map_or_else(|| watch::channel(0).1, |f| f.presence_changes());
    tokio::spawn(runner::run_with_resync(
        NodeLifecycle::new(client.clone(), opts.nodes, fleet).map_err(boot)?,
        store.clone(),
        stop.clone(),
        presence,
    ));
    tokio::spawn(runner::run(DaemonSetController::new(client.clone()).map_err(boot)?, store.clone(), stop.clone()));
    tokio::spawn(runner::run(EndpointsController::new(client.clone()).map_err(boot)?, store.clone(), stop.clone()));
    let ttl = crate::controllers::eventttl::EventTtl::new(client.clone(), opts.event_ttl).map_err(boot)?;
    tokio::spawn(runner::run(ttl, store.clone(), stop.clone()));
    tokio::spawn(runner::run(GarbageCollector::new(client), store, stop));
    Ok(())
}

/// Creates the namespaces Kubernetes always has, if missing.
pub fn bootstrap(store: &Store) -> Result<(), ServerError> {
    let rt = resources::namespaces();
    for name in api::SYSTEM_NAMESPACES {
        let key = Key::new(rt.id, "", name);
        store
            .mutate::<api::ApiError, _>(&key, |cur| {
                if cur.is_some() {
                    return Ok(Mutation::Keep);
                }
                let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
                let mut obj = validate::admit(rt, body, &[], FieldValidation::Strict, None)?.object;
                obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
                obj["metadata"]["creationTimestamp"] = json!(api::now());
                Ok(Mutation::Put(obj))
            })
            .map_err(|e| ServerError::Bootstrap(e.to_string()))?;
    }
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

/// Serves HTTPS: each connection's handshake and requests run in their own
/// task, so a slow client cannot hold up the others.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    cfg: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|v| *v) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
