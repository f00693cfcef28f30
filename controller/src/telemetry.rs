//! Prometheus metrics, served at `/metrics` behind the API's bearer token
//! (as the Kubernetes API server serves its own).
//!
//! Counters and histograms live where things happen — the API's dispatch
//! ([`ApiMetrics`]), the store's commits, the fleet link's intake and
//! snapshots ([`FleetMetrics`]), the relay's sessions — and are registered
//! here once. What is a state rather than an event (nodes joined, online and
//! Ready; the store's size; sessions open) is read when scraped.
//! Names follow the API server's where one exists (`apiserver_request_total`
//! becomes `kedge_api_requests_total`, with the same labels).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::fleet::FleetState;
use crate::fleet::relay::Relay;
use crate::store::Store;

/// Latency buckets (seconds) of the API and the store: 1 ms to a minute.
const LATENCY_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A histogram with [`LATENCY_BUCKETS`].
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// One API request, labelled as the API server labels `apiserver_request_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// GET, LIST, WATCH, POST, PUT, PATCH, APPLY, DELETE, DELETECOLLECTION
    /// or CONNECT (exec, attach, port-forward).
    pub verb: &'static str,
    pub group: String,
    pub version: String,
    /// Empty for paths that name no resource (discovery, OpenAPI, health).
    pub resource: String,
    pub subresource: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    verb: &'static str,
    group: String,
    version: String,
    resource: String,
    subresource: String,
}

/// The API's own counters.
#[derive(Debug)]
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    watches: Gauge,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            watches: Gauge::default(),
        }
    }
}

impl ApiMetrics {
    /// Counts a finished request; `elapsed` is until its answer's head (a
    /// watch or a stream runs on, so those are not timed, as in Kubernetes).
    pub fn request(&self, labels: RequestLabels, elapsed: Duration) {
        if !matches!(labels.verb, "WATCH" | "CONNECT") {
            let l = LatencyLabels {
                verb: labels.verb,
                group: labels.group.clone(),
                version: labels.version.clone(),
                resource: labels.resource.clone(),
                subresource: labels.subresource.clone(),
            };
            self.latency.get_or_create(&l).observe(elapsed.as_secs_f64());
        }
        self.requests.get_or_create(&labels).inc();
    }

    /// Counts an open watch until the guard is dropped.
    pub fn watch_opened(&self) -> Open {
        self.watches.inc();
        Open(self.watches.clone())
    }
}

/// Holds one count of a gauge (an open watch) until dropped.
pub struct Open(Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Labels of a dropped fleet message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// report, presence, status, session, join…
    pub topic: &'static str,
    /// forged, replay, malformed, not joined, rate limited…
    pub reason: &'static str,
}

/// Labels of a relay session.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    /// log, exec, portforward, usage.
    pub kind: &'static str,
    /// started, offline, refused (by the node), no answer, error.
    pub result: &'static str,
}

/// The fleet link's counters, kept in [`FleetState`].
#[derive(Debug)]
pub struct FleetMetrics {
    pub rejected: Family<RejectLabels, Counter>,
    /// From a snapshot's publication to the first report that has seen it.
    pub snapshot_observed: Histogram,
    pub sessions: Family<SessionLabels, Counter>,
    pub snapshots: Counter,
}

impl Default for FleetMetrics {
    fn default() -> Self {
        FleetMetrics {
            rejected: Family::default(),
            // A node on a good link sees a snapshot in milliseconds; one that
            // was offline sees it when it is back (minutes to hours).
            snapshot_observed: Histogram::new([
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
            ]),
            sessions: Family::default(),
            snapshots: Counter::default(),
        }
    }
}

/// Everything `/metrics` shows, for one controller.
pub struct Telemetry {
    pub api: Arc<ApiMetrics>,
    registry: Registry,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    pub fn new(store: Arc<Store>, fleet: Option<(Arc<FleetState>, Arc<Relay>)>) -> Telemetry {
        let api = Arc::new(ApiMetrics::default());
        let mut r = Registry::with_prefix("kedge");
        r.register("api_requests", "API requests by verb, resource and HTTP code", api.requests.clone());
        r.register_with_unit(
            "api_request_duration",
            "API request latency until the answer's head, by verb and resource (watches and streams not timed)",
            Unit::Seconds,
            api.latency.clone(),
        );
        r.register("api_watches_open", "Watches open on the API", api.watches.clone());
        r.register_with_unit(
            "store_commit_duration",
            "Latency of the store's write transactions (redb commit, fsync included)",
            Unit::Seconds,
            store.commit_latency().clone(),
        );
        if let Some((state, _)) = &fleet {
            let m = state.metrics();
            r.register("fleet_rejected_messages", "Fleet messages dropped, by topic and reason", m.rejected.clone());
            r.register_with_unit(
                "fleet_snapshot_observed",
                "From a node's desired snapshot's publication to its first report that has seen it",
                Unit::Seconds,
                m.snapshot_observed.clone(),
            );
            r.register("fleet_snapshots_published", "Desired snapshots published to nodes", m.snapshots.clone());
            r.register(
                "relay_sessions",
                "Sessions opened to nodes (logs, exec, port-forward, top), by result",
                m.sessions.clone(),
            );
        }
        r.register_collector(Box::new(Now { store, fleet }));
        Telemetry { api, registry: r }
    }

    /// The exposition for a request with these `Accept` headers
    /// ([`kedge_common::exposition::render`]).
    pub fn render<'a>(&self, accept: impl Iterator<Item = &'a str>) -> Result<(&'static str, String), std::fmt::Error> {
        kedge_common::exposition::render(&self.registry, accept)
    }
}

/// The gauges read at scrape time.
struct Now {
    store: Arc<Store>,
    fleet: Option<(Arc<FleetState>, Arc<Relay>)>,
}

impl std::fmt::Debug for Now {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Now")
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, unit, g.metric_type())?)
}

impl Collector for Now {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let size = self.store.size().map_or(0, |s| i64::try_from(s).unwrap_or(i64::MAX));
        gauge(&mut enc, "store_size", "Size of the store's database file", Some(&Unit::Bytes), size)?;
        let revision = i64::try_from(self.store.revision()).unwrap_or(i64::MAX);
        gauge(
            &mut enc,
            "store_revision",
            "The store's revision (resourceVersion of its newest write)",
            None,
            revision,
        )?;
        // Nodes in the store (joined), and of them those whose Ready condition is True.
        let (nodes, _) = self.store.list("core/nodes", None, None).unwrap_or_default();
        let ready = nodes.iter().filter(|n| node_ready(n)).count();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let online = self.fleet.as_ref().map(|(s, _)| s.nodes().iter().filter(|(_, n)| n.online == Some(true)).count());
        let mut family = enc.encode_descriptor(
            "nodes",
            "Nodes joined, online (presence on the broker) and Ready",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, n) in [("joined", Some(nodes.len())), ("online", online), ("ready", Some(ready))] {
            let Some(n) = n else { continue };
            let g = ConstGauge::new(count(n));
            g.encode(family.encode_family(&[("state", state)])?)?;
        }
        if let Some((state, relay)) = &self.fleet {
            gauge(
                &mut enc,
                "fleet_connected",
                "1 while the controller's link to the broker is up",
                None,
                i64::from(state.connected()),
            )?;
            gauge(&mut enc, "relay_sessions_open", "Sessions to nodes open now", None, count(relay.open_sessions()))?;
        }
        Ok(())
    }
}

fn node_ready(n: &serde_json::Value) -> bool {
    n.pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}
