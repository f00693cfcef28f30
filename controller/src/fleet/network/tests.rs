use std::net::IpAddr;

use k8s_openapi::api::core::v1::NodeAddress;
use rumqttc::Request;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::broadcast;

use super::*;
use crate::store::Store;
use crate::write::{DEFAULT_SERVICE_CIDR, Writer};

fn typed<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn cidrs() -> Cidrs {
    Cidrs { cluster: Some("10.42.0.0/16".parse().expect("cidr")), service: Some("10.43.0.0/16".parse().expect("cidr")) }
}

/// Services of every kind, their Endpoints and nodes, as the API stores
/// them, become the table the agents need, sorted.
#[test]
fn the_table_from_typed_objects() {
    let services: Vec<Service> = vec![
        typed(json!({"metadata": {"name": "web", "namespace": "shop"}, "spec": {
            "type": "NodePort", "clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"],
            "sessionAffinity": "ClientIP",
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}})),
        typed(json!({"metadata": {"name": "db", "namespace": "default"}, "spec": {
            "clusterIP": "None", "ports": [{"port": 5432}]}})),
        typed(json!({"metadata": {"name": "api", "namespace": "default"}, "spec": {
            "clusterIP": "10.43.0.7", "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "ports": [{"port": 443, "nodePort": 31000}]}})),
        typed(json!({"metadata": {"name": "ext", "namespace": "default"}, "spec": {
            "type": "ExternalName", "externalName": "example.com"}})),
    ];
    let endpoints: Vec<Endpoints> = vec![
        typed(json!({"metadata": {"name": "web", "namespace": "shop"}, "subsets": [{
            "addresses": [{"ip": "10.42.1.5"}, {"ip": "10.42.0.9"}],
            "notReadyAddresses": [{"ip": "10.42.1.6"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]}]})),
        typed(json!({"metadata": {"name": "db", "namespace": "default"}, "subsets": [{
            "addresses": [{"ip": "10.42.0.3", "hostname": "db-0"}], "ports": [{"port": 5432}]}]})),
        // Endpoints of no Service are not in the table.
        typed(json!({"metadata": {"name": "orphan", "namespace": "default"}, "subsets": [{
            "addresses": [{"ip": "10.42.0.4"}]}]})),
    ];
    let nodes: Vec<Node> = vec![
        typed(json!({"metadata": {"name": "pi-2"}, "spec": {"podCIDR": "10.42.1.0/24"}, "status": {"addresses": [
            {"type": "Hostname", "address": "pi-2"}, {"type": "ExternalIP", "address": "203.0.113.9"},
            {"type": "InternalIP", "address": "192.168.1.12"}]}})),
        typed(json!({"metadata": {"name": "pi-1"}, "spec": {"podCIDR": "10.42.0.0/24"}, "status": {"addresses": [
            {"type": "InternalIP", "address": "192.168.1.11"}]}})),
        // Not yet given a pod CIDR: nothing to route to.
        typed(json!({"metadata": {"name": "new"}})),
    ];
    let t = build(&services, &endpoints, &nodes, cidrs());
    assert_eq!(t.generation, 0);
    assert_eq!((t.cluster_cidr, t.service_cidr), (cidrs().cluster, cidrs().service));
    assert_eq!(
        t.nodes,
        [
            NodeNet {
                name: "pi-1".into(),
                pod_cidr: "10.42.0.0/24".parse().expect("cidr"),
                addresses: vec![addr("192.168.1.11")]
            },
            NodeNet {
                name: "pi-2".into(),
                pod_cidr: "10.42.1.0/24".parse().expect("cidr"),
                addresses: vec![addr("192.168.1.12")]
            },
        ]
    );
    let names: Vec<(&str, &str)> = t.services.iter().map(|s| (s.namespace.as_str(), s.name.as_str())).collect();
    assert_eq!(names, [("default", "api"), ("default", "db"), ("default", "ext"), ("shop", "web")]);

    let api = &t.services[0];
    assert_eq!(
        (api.kind, &api.cluster_ips, api.affinity_seconds),
        (ServiceKind::ClusterIP, &vec![addr("10.43.0.7")], Some(60))
    );
    assert_eq!(api.ports[0].node_port, None, "a ClusterIP Service has no node port");
    assert!(api.subsets.is_empty(), "no Endpoints yet");

    let db = &t.services[1];
    assert!(db.headless && db.cluster_ips.is_empty());
    assert_eq!(db.subsets[0].ready, [EndpointNet { ip: addr("10.42.0.3"), hostname: Some("db-0".into()) }]);
    assert_eq!(db.subsets[0].ports, [EndpointPortNet { name: String::new(), protocol: Protocol::TCP, port: 5432 }]);

    let ext = &t.services[2];
    assert_eq!(
        (ext.kind, ext.external_name.as_deref(), ext.cluster_ips.len()),
        (ServiceKind::ExternalName, Some("example.com"), 0)
    );

    let web = &t.services[3];
    assert_eq!(web.kind, ServiceKind::NodePort);
    assert_eq!(web.cluster_ips, [addr("10.43.0.10")]);
    assert_eq!(web.affinity_seconds, Some(DEFAULT_AFFINITY_SECONDS));
    assert_eq!(
        web.ports,
        [
            ServicePortNet { name: "http".into(), protocol: Protocol::TCP, port: 80, node_port: Some(30080) },
            ServicePortNet { name: "dns".into(), protocol: Protocol::UDP, port: 53, node_port: Some(30053) },
        ]
    );
    let s = &web.subsets[0];
    let ips = |v: &[EndpointNet]| v.iter().map(|e| e.ip).collect::<Vec<_>>();
    assert_eq!(ips(&s.ready), [addr("10.42.0.9"), addr("10.42.1.5")], "sorted by address");
    assert_eq!(ips(&s.not_ready), [addr("10.42.1.6")]);
    assert_eq!(s.ports[1], EndpointPortNet { name: "dns".into(), protocol: Protocol::UDP, port: 5353 });

    // The same objects in another order make the same table.
    let mut shuffled = services.clone();
    shuffled.reverse();
    let mut nodes_r = nodes.clone();
    nodes_r.reverse();
    assert_eq!(build(&shuffled, &endpoints, &nodes_r, cidrs()), t);
}

#[test]
fn generations_move_only_with_the_content() {
    let table = |svcs: usize| ClusterNetwork {
        services: (0..svcs).map(|i| ServiceNet { name: format!("s{i}"), ..ServiceNet::default() }).collect(),
        ..ClusterNetwork::default()
    };
    let mut t = Tracker::new(None);
    let (first, new) = t.stamp(table(1), 40);
    assert_eq!((first.generation, new), (40, true), "the revision it was built from");
    t.adopt(first);
    let (same, new) = t.stamp(table(1), 55);
    assert_eq!((same.generation, new), (40, false), "unchanged content keeps its generation");
    let (next, new) = t.stamp(table(2), 55);
    assert_eq!((next.generation, new), (55, true));
    t.adopt(next);
    // A revision that is not higher still gives a higher generation.
    let (after, _) = t.stamp(table(3), 50);
    assert_eq!(after.generation, 56);
    // An empty store still starts at 1 (an agent takes only newer than 0).
    assert_eq!(Tracker::new(None).stamp(table(0), 0).0.generation, 1);
}

struct Fixture {
    client: Client,
    state: Arc<FleetState>,
    tx: flume::Sender<Request>,
    rx: flume::Receiver<Request>,
    events: broadcast::Receiver<Arc<WatchEvent>>,
    /// The controller's signing key: what it publishes must verify with it.
    key: Arc<SigningKey>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(Store::open(&dir.path().join("s.redb"), 100).expect("store"));
    let writer = Writer::new(store.clone(), DEFAULT_SERVICE_CIDR);
    writer.system_namespaces().expect("namespaces");
    let events = store.hub().subscribe(store.revision()).expect("watch").live;
    let state = FleetState::new(Duration::from_secs(60));
    state.set_connected(true);
    let (tx, rx) = flume::unbounded();
    let key = Arc::new(SigningKey::generate().expect("key").0);
    Fixture { client: Client::new(writer), state, tx, rx, events, key, _dir: dir }
}

impl Fixture {
    fn publisher(&self, max_payload: usize) -> NetworkPublisher {
        let mqtt = AsyncClient::from_senders(self.tx.clone());
        let opts = super::super::FleetOptions {
            prefix: "kedge".into(),
            max_payload,
            network_min_interval: DEFAULT_MIN_INTERVAL,
            ..Default::default()
        };
        NetworkPublisher::new(self.client.clone(), mqtt, &opts, self.state.clone(), cidrs(), self.key.clone())
            .expect("publisher")
    }

    fn service(&self, name: &str) {
        let s: Service = typed(json!({"metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}}));
        self.client.create(&s).expect("create service");
    }

    fn node(&self, name: &str) {
        let n: Node = typed(json!({"metadata": {"name": name}}));
        self.client.create(&n).expect("create node");
    }

    fn update_node(&self, name: &str, f: impl FnOnce(&mut Node)) {
        let mut n = self.client.get::<Node>("", name).expect("get").expect("node");
        f(&mut n);
        self.client.replace(&n).expect("replace node");
    }

    /// Feeds every committed change to `p`; whether any asked for the table.
    fn changes(&mut self, p: &mut NetworkPublisher) -> bool {
        let mut keys = Vec::new();
        while let Ok(ev) = self.events.try_recv() {
            p.keys_for(&ev, &mut keys);
        }
        !keys.is_empty()
    }

    /// The tables handed to the MQTT client since the last call.
    fn published(&self) -> Vec<(ClusterNetwork, Vec<u8>)> {
        self.rx
            .try_iter()
            .filter_map(|r| match r {
                Request::Publish(p) => {
                    assert_eq!(
                        (p.topic.as_str(), p.retain, p.qos),
                        ("kedge/v1/cluster/network", true, QoS::AtLeastOnce)
                    );
                    let public = self.key.public();
                    let t =
                        envelope::decode_verified(&p.payload, envelope::DEFAULT_MAX_PAYLOAD, Purpose::Network, &public)
                            .expect("a valid envelope, signed by the controller");
                    Some((t, p.payload.to_vec()))
                }
                _ => None,
            })
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_publishes_once_and_generations_survive_a_restart() {
    let mut f = fixture();
    f.service("web");
    let mut p = f.publisher(envelope::DEFAULT_MAX_PAYLOAD);
    // Start-up (no burst gathering): published at once.
    assert_eq!(p.reconcile(&NetworkPublisher::key()).expect("reconcile"), Action::Done);
    let first = f.published();
    assert_eq!(first.len(), 1);
    let g1 = first[0].0.generation;
    assert!(g1 > 0);
    assert_eq!(first[0].0.services.len(), 1);

    // A burst right after a build: nothing until the interval ran out, then
    // one table.
    for name in ["a", "b", "c"] {
        f.service(name);
    }
    assert!(f.changes(&mut p));
    let Action::RequeueAfter(wait) = p.reconcile(&NetworkPublisher::key()).expect("reconcile") else {
        panic!("a fresh change waits for the rest of its burst");
    };
    assert!(wait <= DEFAULT_MIN_INTERVAL);
    assert!(f.published().is_empty());
    tokio::time::advance(wait).await;
    assert_eq!(p.reconcile(&NetworkPublisher::key()).expect("reconcile"), Action::Done);
    let second = f.published();
    assert_eq!(second.len(), 1, "one publish for the burst");
    let g2 = second[0].0.generation;
    assert!(g2 > g1);
    assert_eq!(second[0].0.services.len(), 4);

    // Node changes that do not touch the table are not even looked at; a pod
    // CIDR and an address are.
    f.node("n1");
    f.update_node("n1", |n| n.metadata.labels = Some([("zone".to_owned(), "a".to_owned())].into()));
    assert!(!f.changes(&mut p), "a node without a pod CIDR, relabelled");
    // After a quiet spell, a change is built and sent at once.
    tokio::time::advance(DEFAULT_MIN_INTERVAL).await;
    f.update_node("n1", |n| n.spec.get_or_insert_default().pod_cidr = Some("10.42.7.0/24".into()));
    assert!(f.changes(&mut p));
    assert_eq!(p.reconcile(&NetworkPublisher::key()).expect("reconcile"), Action::Done, "no wait after a quiet spell");
    let third = f.published();
    assert_eq!(third.len(), 1);
    let n1 = third[0].0.node("n1").expect("n1 in the table");
    assert_eq!(n1.pod_cidr.to_string(), "10.42.7.0/24");
    let g3 = third[0].0.generation;
    assert!(g3 > g2);

    // Nothing changed: nothing sent. A reconnect: the same table again.
    p.reconcile(&NetworkPublisher::key()).expect("reconcile");
    assert!(f.published().is_empty());
    f.state.set_connected(true);
    p.reconcile(&NetworkPublisher::key()).expect("reconcile");
    let again = f.published();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0], third[0], "republished as it was");
    assert_eq!(f.state.network().generation, g3);

    // A restarted controller (a new publisher on the same store) sends the
    // stored table with its generation; the next change goes higher.
    let mut p2 = f.publisher(envelope::DEFAULT_MAX_PAYLOAD);
    p2.reconcile(&NetworkPublisher::key()).expect("reconcile");
    let restarted = f.published();
    assert_eq!(restarted.len(), 1);
    assert_eq!(restarted[0], third[0]);
    f.service("d");
    f.changes(&mut p2);
    tokio::time::advance(DEFAULT_MIN_INTERVAL).await;
    p2.reconcile(&NetworkPublisher::key()).expect("reconcile");
    assert!(f.published()[0].0.generation > g3);
}

#[tokio::test(start_paused = true)]
async fn an_oversize_table_is_refused_once_with_an_event() {
    let mut f = fixture();
    f.service("web");
    let mut p = f.publisher(envelope::DEFAULT_MAX_PAYLOAD);
    p.reconcile(&NetworkPublisher::key()).expect("reconcile");
    let first = f.published();
    assert_eq!(first.len(), 1);
    // Same store, a cap the next table cannot meet.
    let mut p = f.publisher(first[0].1.len() + 10);
    for i in 0..20 {
        f.service(&format!("svc-{i}"));
    }
    f.changes(&mut p);
    tokio::time::advance(DEFAULT_MIN_INTERVAL).await;
    assert_eq!(p.reconcile(&NetworkPublisher::key()).expect("refusing is no failure"), Action::Done);
    p.reconcile(&NetworkPublisher::key()).expect("reconcile");
    let out = f.published();
    assert_eq!(out.len(), 1, "the restarted publisher sends the table it has");
    assert_eq!(out[0], first[0], "the old table, not the oversize one");
    let events = f.client.list::<k8s_openapi::api::core::v1::Event>(Some("default")).expect("events");
    let refused: Vec<_> = events.iter().filter(|e| e.reason.as_deref() == Some("NetworkTableTooLarge")).collect();
    assert_eq!(refused.len(), 1, "reported once: {events:?}");
    assert!(refused[0].message.as_deref().is_some_and(|m| m.contains("payload cap")));
    assert_eq!(f.state.network().refused, 1);
}

/// The node entries kept from the watch are what a build from a fresh list
/// of the Nodes would give: seeded by the first build, then changed by
/// pod CIDRs, addresses and deletions.
#[tokio::test(start_paused = true)]
async fn node_entries_follow_the_watch() {
    let mut f = fixture();
    for (name, cidr) in [("n1", "10.42.1.0/24"), ("n2", "10.42.2.0/24")] {
        f.node(name);
        f.update_node(name, |n| n.spec.get_or_insert_default().pod_cidr = Some(cidr.into()));
    }
    let mut p = f.publisher(envelope::DEFAULT_MAX_PAYLOAD);
    f.changes(&mut p);
    p.reconcile(&NetworkPublisher::key()).expect("reconcile");
    let fresh = |f: &Fixture| build(&[], &[], &f.client.list::<Node>(None).expect("nodes"), cidrs()).nodes;
    assert_eq!(f.published()[0].0.nodes, fresh(&f));

    let steps: [&dyn Fn(&Fixture); 3] = [
        &|f| {
            let mut n = f.client.get::<Node>("", "n2").expect("get").expect("n2");
            n.status.get_or_insert_default().addresses =
                Some(vec![NodeAddress { type_: "InternalIP".into(), address: "192.168.1.2".into() }]);
            f.client.replace_status(&n).expect("n2's address");
        },
        &|f| f.client.delete::<Node>("", "n1", None).map(drop).expect("delete n1"),
        &|f| {
            f.node("n3");
            f.update_node("n3", |n| n.spec.get_or_insert_default().pod_cidr = Some("10.42.3.0/24".into()));
        },
    ];
    for step in steps {
        step(&f);
        assert!(f.changes(&mut p));
        tokio::time::advance(MAX_INTERVAL).await;
        p.reconcile(&NetworkPublisher::key()).expect("reconcile");
        let table = f.published().pop().expect("a new table").0;
        assert_eq!(table.nodes, fresh(&f));
    }
}

/// Bursts gather longer as the fan-out (a table's bytes times its nodes)
/// grows, up to a bound; a small cluster keeps the configured interval.
#[tokio::test]
async fn the_pacing_grows_with_the_fanout() {
    let f = fixture();
    let mut p = f.publisher(envelope::DEFAULT_MAX_PAYLOAD);
    assert_eq!(p.interval(), DEFAULT_MIN_INTERVAL, "nothing built yet");
    let fleet = |n: u32| -> std::collections::BTreeMap<String, NodeNet> {
        (0..n)
            .map(|i| {
                let cidr = IpNet::new(IpAddr::from([10, (i >> 8) as u8, i as u8, 0]), 24).expect("cidr");
                (format!("n{i}"), NodeNet { name: format!("n{i}"), pod_cidr: cidr, addresses: vec![] })
            })
            .collect()
    };
    p.nodes.set(fleet(3));
    p.bytes = Some(vec![0; 2_000]);
    assert_eq!(p.interval(), DEFAULT_MIN_INTERVAL);
    p.nodes.set(fleet(1_000));
    p.bytes = Some(vec![0; 60_000]);
    let at_1000 = p.interval();
    assert!(at_1000 > Duration::from_millis(400) && at_1000 < Duration::from_millis(500), "{at_1000:?}");
    p.nodes.set(fleet(5_000));
    p.bytes = Some(vec![0; 300_000]);
    let at_5000 = p.interval();
    assert!(at_5000 > Duration::from_secs(11) && at_5000 < Duration::from_secs(12), "{at_5000:?}");
    p.bytes = Some(vec![0; 1_000_000]);
    assert_eq!(p.interval(), MAX_INTERVAL);
}
