use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use kedge_common::network::{
    ClusterNetwork, EndpointNet, EndpointPortNet, Protocol, ServiceKind, ServiceNet, ServicePortNet, SubsetNet,
};

use super::{Answer, Lookup, Zone, sorted};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn ep(addr: &str, hostname: Option<&str>) -> EndpointNet {
    EndpointNet { ip: ip(addr), hostname: hostname.map(str::to_string) }
}

fn port(name: &str, protocol: Protocol, port: u16) -> ServicePortNet {
    ServicePortNet { name: name.into(), protocol, port, node_port: None }
}

fn eport(name: &str, protocol: Protocol, port: u16) -> EndpointPortNet {
    EndpointPortNet { name: name.into(), protocol, port }
}

fn svc(namespace: &str, name: &str) -> ServiceNet {
    ServiceNet { namespace: namespace.into(), name: name.into(), ..ServiceNet::default() }
}

/// A table with one of each kind of Service (sorted, as published).
pub(in crate::net::dns) fn fixture() -> ClusterNetwork {
    let web = ServiceNet {
        cluster_ips: vec![ip("10.43.0.10")],
        ports: vec![port("http", Protocol::TCP, 80), port("metrics", Protocol::TCP, 9100)],
        subsets: vec![SubsetNet {
            ready: vec![ep("10.42.0.5", None), ep("10.42.1.7", None)],
            not_ready: vec![ep("10.42.0.9", None)],
            ports: vec![eport("http", Protocol::TCP, 8080), eport("metrics", Protocol::TCP, 9100)],
        }],
        ..svc("default", "web")
    };
    let db = ServiceNet {
        headless: true,
        ports: vec![port("pg", Protocol::TCP, 5432)],
        subsets: vec![SubsetNet {
            ready: vec![ep("10.42.0.20", Some("db-0")), ep("10.42.1.21", Some("db-1"))],
            not_ready: vec![ep("10.42.0.22", Some("db-2"))],
            ports: vec![eport("pg", Protocol::TCP, 5432)],
        }],
        ..svc("default", "db")
    };
    let peers = ServiceNet {
        headless: true,
        ports: vec![port("gossip", Protocol::UDP, 7946)],
        subsets: vec![
            SubsetNet {
                ready: vec![ep("10.42.0.30", None)],
                not_ready: vec![],
                ports: vec![eport("gossip", Protocol::UDP, 7946)],
            },
            // A named targetPort resolving to another number in this pod.
            SubsetNet {
                ready: vec![ep("10.42.1.31", None)],
                not_ready: vec![],
                ports: vec![eport("gossip", Protocol::UDP, 7947)],
            },
        ],
        ..svc("default", "peers")
    };
    let empty = ServiceNet { headless: true, ports: vec![port("x", Protocol::TCP, 1)], ..svc("default", "empty") };
    let ext = ServiceNet {
        kind: ServiceKind::ExternalName,
        external_name: Some("example.com".into()),
        ..svc("default", "ext")
    };
    let alias = ServiceNet {
        kind: ServiceKind::ExternalName,
        external_name: Some("web.default.svc.cluster.local".into()),
        ..svc("default", "alias")
    };
    let api6 = ServiceNet {
        cluster_ips: vec![ip("fd00:43::10")],
        ports: vec![port("http", Protocol::TCP, 80)],
        ..svc("shop", "api6")
    };
    let dual = ServiceNet {
        cluster_ips: vec![ip("10.43.0.11"), ip("fd00:43::11")],
        ports: vec![port("", Protocol::UDP, 53)],
        ..svc("shop", "dual")
    };
    let mut services = vec![web, db, peers, empty, ext, alias, api6, dual];
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    ClusterNetwork { generation: 42, services, ..ClusterNetwork::default() }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("name")
}

fn zone() -> Zone {
    Zone::new("cluster.local").expect("zone")
}

fn answer(qname: &str, qtype: RecordType) -> Answer {
    match zone().lookup(&fixture(), &name(qname), qtype) {
        Lookup::Answer(a) => a,
        other => panic!("{qname} {qtype}: expected an answer, got {other:?}"),
    }
}

fn addresses(a: &Answer) -> Vec<IpAddr> {
    a.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(v4) => Some(IpAddr::V4(v4.0)),
            RData::AAAA(v6) => Some(IpAddr::V6(v6.0)),
            _ => None,
        })
        .collect()
}

fn srv(a: &Answer) -> Vec<(u16, u16, String)> {
    a.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.weight, s.port, s.target.to_ascii())),
            _ => None,
        })
        .collect()
}

fn nodata(a: &Answer) -> bool {
    a.rcode == ResponseCode::NoError && a.answers.is_empty() && a.soa.is_some()
}

fn nxdomain(a: &Answer) -> bool {
    a.rcode == ResponseCode::NXDomain && a.answers.is_empty() && a.soa.is_some()
}

#[test]
fn a_cluster_ip_service_answers_its_address_and_nodata_for_other_types() {
    let a = answer("web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(addresses(&a), [ip("10.43.0.10")]);
    assert_eq!(a.answers[0].ttl, super::TTL);
    assert!(nodata(&answer("web.default.svc.cluster.local.", RecordType::AAAA)));
    assert!(nodata(&answer("web.default.svc.cluster.local.", RecordType::TXT)));
    // Names are case-insensitive; the answer keeps the asker's spelling.
    let a = answer("WEB.Default.SVC.Cluster.LOCAL.", RecordType::A);
    assert_eq!(addresses(&a), [ip("10.43.0.10")]);
    assert_eq!(a.answers[0].name.to_ascii(), "WEB.Default.SVC.Cluster.LOCAL.");
    // IPv6 and dual-stack ClusterIPs.
    assert_eq!(addresses(&answer("api6.shop.svc.cluster.local.", RecordType::AAAA)), [ip("fd00:43::10")]);
    assert!(nodata(&answer("api6.shop.svc.cluster.local.", RecordType::A)));
    assert_eq!(addresses(&answer("dual.shop.svc.cluster.local.", RecordType::A)), [ip("10.43.0.11")]);
    assert_eq!(addresses(&answer("dual.shop.svc.cluster.local.", RecordType::AAAA)), [ip("fd00:43::11")]);
}

#[test]
fn a_headless_service_answers_its_ready_endpoints_and_their_names() {
    let a = answer("db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(addresses(&a), [ip("10.42.0.20"), ip("10.42.1.21")], "not the not-ready db-2");
    assert_eq!(addresses(&answer("db-1.db.default.svc.cluster.local.", RecordType::A)), [ip("10.42.1.21")]);
    assert!(nxdomain(&answer("db-2.db.default.svc.cluster.local.", RecordType::A)), "not ready");
    assert!(nxdomain(&answer("db-9.db.default.svc.cluster.local.", RecordType::A)));
    // Endpoints without a hostname are named by their dashed address.
    assert_eq!(addresses(&answer("10-42-1-31.peers.default.svc.cluster.local.", RecordType::A)), [ip("10.42.1.31")]);
    // Endpoint names exist only under headless Services.
    assert!(nxdomain(&answer("10-42-0-5.web.default.svc.cluster.local.", RecordType::A)));
    // No ready endpoint: the name exists, with no address.
    assert!(nodata(&answer("empty.default.svc.cluster.local.", RecordType::A)));
}

#[test]
fn srv_records_point_at_the_service_or_at_each_endpoint() {
    let a = answer("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(srv(&a), [(100, 80, "web.default.svc.cluster.local.".to_string())]);
    assert_eq!(a.additionals.len(), 1);
    assert_eq!(a.additionals[0].data, RData::A(ip_v4("10.43.0.10")));

    let a = answer("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        srv(&a),
        [
            (50, 5432, "db-0.db.default.svc.cluster.local.".to_string()),
            (50, 5432, "db-1.db.default.svc.cluster.local.".to_string())
        ]
    );
    assert_eq!(a.additionals.len(), 2);
    // Each endpoint with its own resolved port.
    let a = answer("_gossip._udp.peers.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        srv(&a),
        [
            (50, 7946, "10-42-0-30.peers.default.svc.cluster.local.".to_string()),
            (50, 7947, "10-42-1-31.peers.default.svc.cluster.local.".to_string())
        ]
    );
    // SRV of the Service name: every port.
    let a = answer("web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(srv(&a).iter().map(|s| s.1).collect::<Vec<_>>(), [80, 9100]);

    assert!(nxdomain(&answer("_http._udp.web.default.svc.cluster.local.", RecordType::SRV)), "wrong protocol");
    assert!(nxdomain(&answer("_nope._tcp.web.default.svc.cluster.local.", RecordType::SRV)));
    assert!(nodata(&answer("_http._tcp.web.default.svc.cluster.local.", RecordType::A)));
}

fn ip_v4(s: &str) -> hickory_proto::rr::rdata::A {
    hickory_proto::rr::rdata::A(s.parse().expect("v4"))
}

#[test]
fn an_external_name_is_a_cname_chased_inside_the_zone_and_handed_upstream_outside() {
    let a = answer("ext.default.svc.cluster.local.", RecordType::CNAME);
    assert_eq!(a.answers.len(), 1);
    assert_eq!(a.answers[0].data, RData::CNAME(hickory_proto::rr::rdata::CNAME(name("example.com."))));
    match zone().lookup(&fixture(), &name("ext.default.svc.cluster.local."), RecordType::A) {
        Lookup::Chase { answer, target } => {
            assert_eq!(target, name("example.com."));
            assert_eq!(answer.answers.len(), 1, "the CNAME");
        }
        other => panic!("expected a chase, got {other:?}"),
    }
    // An alias of a cluster name: the chain and the address, in one answer.
    let a = answer("alias.default.svc.cluster.local.", RecordType::A);
    assert_eq!(a.answers.len(), 2);
    assert!(matches!(a.answers[0].data, RData::CNAME(_)));
    assert_eq!(addresses(&a), [ip("10.43.0.10")]);
    assert!(nxdomain(&answer("_http._tcp.ext.default.svc.cluster.local.", RecordType::SRV)));
}

#[test]
fn unknown_cluster_names_are_nxdomain_and_the_rest_goes_upstream() {
    for n in [
        "nope.default.svc.cluster.local.",
        "web.nons.svc.cluster.local.",
        "nons.svc.cluster.local.",
        "a.b.c.d.e.f.svc.cluster.local.",
        "something.cluster.local.",
        // A search-list expansion of an outside name.
        "example.com.default.svc.cluster.local.",
    ] {
        assert!(nxdomain(&answer(n, RecordType::A)), "{n}");
    }
    for n in ["default.svc.cluster.local.", "svc.cluster.local.", "cluster.local."] {
        assert!(nodata(&answer(n, RecordType::A)), "{n}");
    }
    let soa = answer("cluster.local.", RecordType::SOA);
    assert!(matches!(soa.answers[0].data, RData::SOA(ref s) if s.serial == 42), "{soa:?}");
    for n in ["example.com.", "cluster.local.example.com.", "local.", ".", "web.default.svc.cluster.locals."] {
        assert_eq!(zone().lookup(&fixture(), &name(n), RecordType::A), Lookup::Forward, "{n}");
    }
}

#[test]
fn pod_names_are_their_dashed_addresses() {
    assert_eq!(addresses(&answer("10-42-0-5.default.pod.cluster.local.", RecordType::A)), [ip("10.42.0.5")]);
    assert_eq!(addresses(&answer("fd00--5.default.pod.cluster.local.", RecordType::AAAA)), [ip("fd00::5")]);
    assert!(nxdomain(&answer("10-42-0.default.pod.cluster.local.", RecordType::A)));
    assert!(nxdomain(&answer("web.default.pod.cluster.local.", RecordType::A)));
}

#[test]
fn another_cluster_domain_and_an_unsorted_table() {
    let zone = Zone::new("Edge.Internal").expect("zone");
    let mut table = fixture();
    table.services.reverse();
    let table = sorted(Arc::new(table));
    match zone.lookup(&table, &name("web.default.svc.edge.internal."), RecordType::A) {
        Lookup::Answer(a) => assert_eq!(addresses(&a), [ip("10.43.0.10")]),
        other => panic!("{other:?}"),
    }
    assert_eq!(zone.lookup(&table, &name("web.default.svc.cluster.local."), RecordType::A), Lookup::Forward);
    assert!(Zone::new("bad..domain").is_err());
}
