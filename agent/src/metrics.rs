//! Prometheus metrics of the agent, served with `--metrics-listen ADDR` at
//! `/metrics` to a scraper holding the bearer token of
//! `--metrics-token-file` (made on first start, owner-only).
//!
//! One agent runs per machine ([`crate::instance`]), so its counters are
//! process-wide, as the kubelet's are: the places that count — the link,
//! its outbox, the pod workers, image pulls, the Service rules — bump
//! [`counters`]. What is a state (pods and containers now) is read from the
//! runtime's records when scraped. Names follow the kubelet's where one
//! exists (`kubelet_running_pods` is `kedge_agent_running_pods`).

use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::runtime::Runtime;
use crate::runtime::records::{ContainerState, SandboxState};

/// What the agent counts.
#[derive(Debug)]
pub struct Counters {
    /// Image pulls by result (`ok`, `error`).
    pub image_pulls: Family<[(&'static str, &'static str); 1], Counter>,
    /// Containers started again after they exited (restart policy).
    pub restarts: Counter,
    /// 1 while the MQTT connection to the broker is up.
    pub link_up: Gauge,
    /// Connections to the broker made (the first and every reconnect).
    pub link_connects: Counter,
    /// Events the outbox had to drop (full while the link was down).
    pub outbox_dropped: Counter,
    /// How long loading the Service rules into nftables took.
    pub rule_sync: Histogram,
}

static COUNTERS: LazyLock<Counters> = LazyLock::new(|| Counters {
    image_pulls: Family::default(),
    restarts: Counter::default(),
    link_up: Gauge::default(),
    link_connects: Counter::default(),
    outbox_dropped: Counter::default(),
    rule_sync: Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
});

/// The process's counters.
pub fn counters() -> &'static Counters {
    &COUNTERS
}

/// Counts an image pull.
pub fn image_pulled(ok: bool) {
    counters().image_pulls.get_or_create(&[("result", if ok { "ok" } else { "error" })]).inc();
}

/// The exposition for a request with these `Accept` headers
/// ([`kedge_common::exposition::render`]).
pub fn render<'a>(
    rt: &Runtime,
    accept: impl Iterator<Item = &'a str>,
) -> Result<(&'static str, String), std::fmt::Error> {
    let c = counters();
    let mut r = Registry::with_prefix("kedge_agent");
    r.register("image_pulls", "Image pulls by result", c.image_pulls.clone());
    r.register("container_restarts", "Containers started again after they exited", c.restarts.clone());
    r.register("link_up", "1 while the connection to the fleet broker is up", c.link_up.clone());
    r.register(
        "link_connects",
        "Connections made to the fleet broker (the first and each reconnect)",
        c.link_connects.clone(),
    );
    r.register(
        "outbox_dropped_events",
        "Events dropped from the outbox while the link was down",
        c.outbox_dropped.clone(),
    );
    r.register_with_unit(
        "rule_sync_duration",
        "Time to load the Service rules into nftables",
        Unit::Seconds,
        c.rule_sync.clone(),
    );
    r.register_collector(Box::new(Now(rt.clone())));
    kedge_common::exposition::render(&r, accept)
}

/// Pods and containers as the runtime's records have them now.
struct Now(Runtime);

impl std::fmt::Debug for Now {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Now")
    }
}

impl Collector for Now {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let sandboxes = self.0.sandbox_records();
        let ready = sandboxes.iter().filter(|s| s.state == SandboxState::Ready).count();
        let g = ConstGauge::new(count(ready));
        g.encode(enc.encode_descriptor("running_pods", "Pods with a ready sandbox", None, MetricType::Gauge)?)?;
        let mut f = enc.encode_descriptor("pod_sandboxes", "Pod sandboxes by state", None, MetricType::Gauge)?;
        for (state, n) in [("ready", ready), ("notready", sandboxes.len() - ready)] {
            ConstGauge::new(count(n)).encode(f.encode_family(&[("state", state)])?)?;
        }
        let containers = self.0.container_records();
        let mut f = enc.encode_descriptor("containers", "Containers by state", None, MetricType::Gauge)?;
        for (name, state) in [
            ("created", ContainerState::Created),
            ("running", ContainerState::Running),
            ("exited", ContainerState::Exited),
        ] {
            let n = containers.iter().filter(|c| c.state == state).count();
            ConstGauge::new(count(n)).encode(f.encode_family(&[("state", name)])?)?;
        }
        Ok(())
    }
}

/// The scraper's token: the file's first line, made (random, owner-only)
/// when there is no file.
pub fn token(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let t = t.lines().next().unwrap_or_default().trim().to_owned();
            if t.len() < 16 {
                return Err(std::io::Error::other(format!(
                    "{}: the metrics token must be at least 16 characters",
                    path.display()
                )));
            }
            Ok(t)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = kedge_common::sign::random_text(24)
                .map_err(|_| std::io::Error::other("no randomness for the metrics token"))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            crate::fsutil::write_private(path, format!("{t}\n").as_bytes())?;
            tracing::info!(path = %path.display(), "made the metrics scrape token");
            Ok(t)
        }
        Err(e) => Err(e),
    }
}

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 4;

/// Serves `/metrics` on `listen` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, token: String, rt: Runtime) {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    let token: Arc<str> = token.into();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (token, rt) = (token.clone(), rt.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let resp = answer(&req, &token, &rt);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let conn = http1::Builder::new().keep_alive(false).serve_connection(TokioIo::new(tcp), svc);
            // A client that says nothing does not hold a slot.
            match tokio::time::timeout(Duration::from_secs(10), conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics: connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics: connection timed out"),
            }
        });
    }
}

fn answer<B>(req: &hyper::Request<B>, token: &str, rt: &Runtime) -> hyper::Response<String> {
    use hyper::header;
    let reply = |code: u16, ctype: &'static str, body: String| {
        let mut r = hyper::Response::new(body);
        *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ctype));
        r
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !kedge_common::sign::same_secret(presented.as_bytes(), token.as_bytes()) {
        let mut r =
            reply(401, "text/plain", "Unauthorized: a bearer token (--metrics-token-file) is required\n".into());
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return r;
    }
    if req.uri().path() != "/metrics" {
        return reply(404, "text/plain", format!("{}: not found; the metrics are at /metrics\n", req.uri().path()));
    }
    if req.method() != hyper::Method::GET {
        return reply(405, "text/plain", "only GET\n".into());
    }
    let accept = req.headers().get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok());
    match render(rt, accept) {
        Ok((ctype, body)) => reply(200, ctype, body),
        Err(e) => reply(500, "text/plain", format!("encoding the metrics: {e}\n")),
    }
}
