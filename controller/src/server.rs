//! Start-up: open the store, make sure the system namespaces exist, bind the
//! listener, write the kubeconfig, and serve until told to stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiConfig, ApiState};
use crate::resources;
use crate::store::{Key, Mutation, Store, StoreError};
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
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot create the system namespaces: {0}")]
    Bootstrap(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "refusing to serve plain HTTP on non-loopback address {0}: TLS with token authentication is required there and is not built yet; listen on 127.0.0.1"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot write kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub watch_history: usize,
}

/// A running API server.
pub struct Running {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub store: Arc<Store>,
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
    if !opts.listen.ip().is_loopback() {
        return Err(ServerError::NotLoopback(opts.listen));
    }
    std::fs::create_dir_all(&opts.data_dir).map_err(|source| ServerError::DataDir {
        path: opts.data_dir.clone(),
        source,
    })?;
    let store = Arc::new(Store::open(
        &opts.data_dir.join("state.redb"),
        opts.watch_history,
    )?);
    bootstrap(&store)?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: opts.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: opts.listen,
            source,
        })?;
    let kubeconfig = opts.data_dir.join("kubeconfig.yaml");
    write_kubeconfig(&kubeconfig, &format!("http://{addr}")).map_err(|source| {
        ServerError::Kubeconfig {
            path: kubeconfig.clone(),
            source,
        }
    })?;
    let (tx, rx) = watch::channel(false);
    let state = Arc::new(ApiState {
        store: store.clone(),
        config: ApiConfig::default(),
        shutdown: rx.clone(),
    });
    let app = api::router(state);
    tokio::spawn(crate::controllers::namespace::run(
        store.clone(),
        rx.clone(),
    ));
    let mut stop = rx;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await
    });
    tracing::info!(%addr, kubeconfig = %kubeconfig.display(), revision = store.revision(), "API server listening");
    Ok(Running {
        addr,
        kubeconfig,
        store,
        shutdown: tx,
        task,
    })
}

/// Creates the namespaces Kubernetes always has, if missing.
fn bootstrap(store: &Store) -> Result<(), ServerError> {
    let rt = resources::namespaces();
    for name in api::SYSTEM_NAMESPACES {
        let key = Key::new(rt.id, "", name);
        store
            .mutate::<api::ApiError, _>(&key, |cur| {
                if cur.is_some() {
                    return Ok(Mutation::Keep);
                }
                let body =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
                let mut obj = validate::admit(rt, body, &[], FieldValidation::Strict, None)?.object;
                obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
                obj["metadata"]["creationTimestamp"] = json!(api::now());
                Ok(Mutation::Put(obj))
            })
            .map_err(|e| ServerError::Bootstrap(e.to_string()))?;
    }
    Ok(())
}

/// Writes a kubeconfig for `server`, readable by its owner only.
fn write_kubeconfig(path: &Path, server: &str) -> std::io::Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: {server}\n  name: kedge\ncontexts:\n- context:\n    cluster: kedge\n    user: kedge-admin\n  name: kedge\ncurrent-context: kedge\nusers:\n- name: kedge-admin\n  user: {{}}\n"
    );
    let tmp = path.with_extension("yaml.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)
}
