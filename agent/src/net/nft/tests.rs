//! The renderer without a kernel: what rules a table turns into. The real
//! traffic tests (network namespaces, root) are in agent/tests/net_nft.rs.

use kedge_common::network::{EndpointNet, EndpointPortNet, ServicePortNet, SubsetNet};

use super::apply::{delta, listed};
use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn node() -> NodeNetwork {
    NodeNetwork {
        node: "n1".into(),
        node_ips: vec![ip("192.168.1.10"), ip("fd00::10")],
        pod_cidr: "10.42.1.0/24".parse().expect("cidr"),
        cluster_cidr: "10.42.0.0/16".parse().expect("cidr"),
        bridge: "kedge0".into(),
        gateway: ip("10.42.1.1"),
        overlay_headroom: false,
    }
}

fn port(name: &str, protocol: Protocol, port: u16) -> ServicePortNet {
    ServicePortNet { name: name.into(), protocol, port, node_port: None }
}

fn subset(ready: &[&str], ports: &[(&str, Protocol, u16)]) -> SubsetNet {
    SubsetNet {
        ready: ready.iter().map(|a| EndpointNet { ip: ip(a), hostname: None }).collect(),
        not_ready: vec![],
        ports: ports
            .iter()
            .map(|(n, p, port)| EndpointPortNet { name: (*n).into(), protocol: *p, port: *port })
            .collect(),
    }
}

fn service(name: &str, cluster_ip: &str, ports: Vec<ServicePortNet>, subsets: Vec<SubsetNet>) -> ServiceNet {
    ServiceNet {
        namespace: "default".into(),
        name: name.into(),
        cluster_ips: vec![ip(cluster_ip)],
        ports,
        subsets,
        ..ServiceNet::default()
    }
}

fn web() -> ServiceNet {
    service(
        "web",
        "10.43.0.10",
        vec![port("", Protocol::TCP, 80)],
        vec![subset(&["10.42.1.5", "10.42.2.7"], &[("", Protocol::TCP, 8080)])],
    )
}

fn table(services: Vec<ServiceNet>) -> ClusterNetwork {
    ClusterNetwork { generation: 1, services, ..ClusterNetwork::default() }
}

/// The whole script of what `render` makes of it.
fn script(table: &ClusterNetwork, node: &NodeNetwork, host_ports: &[HostPort]) -> String {
    render(table, node, host_ports).to_string()
}

fn lines(script: &str) -> Vec<&str> {
    script.lines().collect()
}

fn has(script: &str, line: &str) -> bool {
    script.lines().any(|l| l == line)
}

#[track_caller]
fn assert_has(script: &str, line: &str) {
    assert!(has(script, line), "missing line\n  {line}\nin\n{script}");
}

#[test]
fn cluster_ip_dnats_to_ready_endpoints_at_random() {
    let s = script(&table(vec![web()]), &node(), &[]);
    assert_has(&s, "add element inet kedge service-ips { 10.43.0.10 . tcp . 80 : goto svc-default/web/tcp/80 }");
    assert_has(&s, "add rule inet kedge services ip daddr . meta l4proto . th dport vmap @service-ips");
    // Each endpoint 1/2 of the time: the first with 1/2, else the second.
    let chain: Vec<&str> = s.lines().filter(|l| l.starts_with("add rule inet kedge svc-default/web/tcp/80 ")).collect();
    assert_eq!(
        chain,
        [
            "add rule inet kedge svc-default/web/tcp/80 numgen random mod 2 == 0 meta l4proto tcp dnat ip to 10.42.1.5:8080",
            "add rule inet kedge svc-default/web/tcp/80 meta l4proto tcp dnat ip to 10.42.2.7:8080",
        ]
    );
    assert!(
        !s.contains("add element inet kedge no-endpoint-services"),
        "a Service with endpoints is not rejected: {s}"
    );
}

#[test]
fn the_random_choice_is_uniform_over_the_endpoints() {
    let eps = ["10.42.1.2", "10.42.1.3", "10.42.1.4", "10.42.1.5"];
    let svc =
        service("web", "10.43.0.10", vec![port("", Protocol::TCP, 80)], vec![subset(&eps, &[("", Protocol::TCP, 80)])]);
    let s = script(&table(vec![svc]), &node(), &[]);
    let mods: Vec<u32> = s
        .lines()
        .filter(|l| l.starts_with("add rule inet kedge svc-default/web/tcp/80 "))
        .map(|l| {
            l.split("numgen random mod ")
                .nth(1)
                .map_or(1, |r| r.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0))
        })
        .collect();
    assert_eq!(mods, [4, 3, 2, 1], "rule i of n fires with 1/(n-i), the last always: {s}");
    // P(endpoint i) = 1/(n-i) * prod_{j<i} (1 - 1/(n-j)) = 1/n.
    let mut left = 1.0f64;
    for m in mods {
        let p = left / f64::from(m);
        assert!((p - 0.25).abs() < 1e-9, "{p}");
        left -= p;
    }
}

#[test]
fn masquerade_for_outside_clients_node_ports_hairpin_and_egress() {
    let s = script(&table(vec![web()]), &node(), &[]);
    // A ClusterIP reached from outside the cluster range (the node itself).
    assert_has(
        &s,
        "add rule inet kedge services ip saddr != 10.42.0.0/16 ip daddr . meta l4proto . th dport @service-ips jump mark-for-masquerade",
    );
    assert_has(&s, "add rule inet kedge nat-postrouting jump masquerading");
    assert_has(
        &s,
        "add rule inet kedge masquerading meta mark & 0x4000 == 0x4000 meta mark set meta mark and 0xffffbfff masquerade fully-random",
    );
    // Hairpin and same-node pods, after DNAT.
    assert_has(
        &s,
        "add rule inet kedge masquerading ct status dnat ip saddr 10.42.1.0/24 ip daddr 10.42.1.0/24 masquerade fully-random",
    );
    // Leaving the cluster, but not between pod CIDRs.
    assert_has(
        &s,
        "add rule inet kedge masquerading ip saddr 10.42.1.0/24 ip daddr != 10.42.0.0/16 masquerade fully-random",
    );
}

#[test]
fn the_table_is_replaced_in_one_script_without_touching_others() {
    let s = script(&table(vec![web()]), &node(), &[]);
    let l = lines(&s);
    let first_command = l.iter().position(|l| !l.starts_with('#')).expect("commands");
    assert_eq!(&l[first_command..first_command + 2], ["add table inet kedge", "flush table inet kedge"]);
    for line in &l[first_command..] {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[2..4], ["inet", "kedge"], "every command names table inet kedge: {line}");
        assert!(!line.contains("ruleset"), "{line}");
        assert!(!line.starts_with("delete"), "the table is never deleted by an apply: {line}");
    }
    for map in ["service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports"] {
        assert_has(&s, &format!("flush map inet kedge {map}"));
    }
}

#[test]
fn rendering_is_deterministic_whatever_the_input_order() {
    let mut other = service(
        "api",
        "10.43.0.20",
        vec![port("b", Protocol::UDP, 53), port("a", Protocol::TCP, 53)],
        vec![
            subset(&["10.42.3.9", "10.42.1.4"], &[("a", Protocol::TCP, 5353), ("b", Protocol::UDP, 5353)]),
            subset(&["10.42.2.2"], &[("a", Protocol::TCP, 5353), ("b", Protocol::UDP, 5353)]),
        ],
    );
    let a = script(&table(vec![web(), other.clone()]), &node(), &[]);
    assert_eq!(a, script(&table(vec![web(), other.clone()]), &node(), &[]));
    other.ports.reverse();
    other.subsets.reverse();
    other.subsets[0].ready.reverse();
    let b = script(&table(vec![other, web()]), &node(), &[]);
    assert_eq!(a, b, "the same Services in another order render the same script");
}

#[test]
fn udp_and_several_ports_each_get_their_own_chain() {
    let dns = service(
        "dns",
        "10.43.0.53",
        vec![port("dns", Protocol::UDP, 53), port("dns-tcp", Protocol::TCP, 53), port("metrics", Protocol::TCP, 9153)],
        vec![subset(
            &["10.42.1.8"],
            &[("dns", Protocol::UDP, 1053), ("dns-tcp", Protocol::TCP, 1053), ("metrics", Protocol::TCP, 9153)],
        )],
    );
    let s = script(&table(vec![dns]), &node(), &[]);
    assert_has(
        &s,
        "add element inet kedge service-ips { 10.43.0.53 . tcp . 53 : goto svc-default/dns/tcp/53, 10.43.0.53 . tcp . 9153 : goto svc-default/dns/tcp/9153, 10.43.0.53 . udp . 53 : goto svc-default/dns/udp/53 }",
    );
    assert_has(&s, "add rule inet kedge svc-default/dns/udp/53 meta l4proto udp dnat ip to 10.42.1.8:1053");
    assert_has(&s, "add rule inet kedge svc-default/dns/tcp/53 meta l4proto tcp dnat ip to 10.42.1.8:1053");
    assert_has(&s, "add rule inet kedge svc-default/dns/tcp/9153 meta l4proto tcp dnat ip to 10.42.1.8:9153");
}

#[test]
fn a_named_target_port_resolves_per_subset() {
    // Two pods name their port "http" on different numbers: two subsets.
    let svc = service(
        "web",
        "10.43.0.10",
        vec![port("http", Protocol::TCP, 80), port("admin", Protocol::TCP, 81)],
        vec![
            subset(&["10.42.1.5"], &[("http", Protocol::TCP, 8080), ("admin", Protocol::TCP, 9000)]),
            subset(&["10.42.1.6"], &[("http", Protocol::TCP, 8081)]),
        ],
    );
    let s = script(&table(vec![svc]), &node(), &[]);
    assert_has(
        &s,
        "add rule inet kedge svc-default/web/tcp/80 numgen random mod 2 == 0 meta l4proto tcp dnat ip to 10.42.1.5:8080",
    );
    assert_has(&s, "add rule inet kedge svc-default/web/tcp/80 meta l4proto tcp dnat ip to 10.42.1.6:8081");
    // Port "admin" exists only in the first subset.
    assert_has(&s, "add rule inet kedge svc-default/web/tcp/81 meta l4proto tcp dnat ip to 10.42.1.5:9000");
    assert!(!s.contains("10.42.1.6/9000"), "{s}");
}

#[test]
fn a_port_without_ready_endpoints_is_rejected_at_once() {
    let mut svc = web();
    svc.subsets[0].not_ready = std::mem::take(&mut svc.subsets[0].ready);
    let empty = service("empty", "10.43.0.11", vec![port("", Protocol::TCP, 80)], vec![]);
    let s = script(&table(vec![svc, empty]), &node(), &[]);
    assert_has(
        &s,
        "add element inet kedge no-endpoint-services { 10.43.0.10 . tcp . 80 : goto reject-chain, 10.43.0.11 . tcp . 80 : goto reject-chain }",
    );
    assert!(!s.contains("add element inet kedge service-ips"), "not-ready endpoints are not routed to: {s}");
    assert!(!s.contains("add rule inet kedge svc-") && !s.contains("add chain inet kedge svc-"), "{s}");
    // The filter hooks look at new connections before DNAT, and reject
    // TCP with a reset, the rest with ICMP port unreachable.
    for chain in ["filter-input", "filter-forward", "filter-output"] {
        assert_has(&s, &format!("add rule inet kedge {chain} ct state new jump endpoints-check"));
    }
    assert_has(&s, "add rule inet kedge endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services");
    assert_has(&s, "add rule inet kedge reject-chain meta l4proto tcp reject with tcp reset");
    assert_has(&s, "add rule inet kedge reject-chain reject");
}

#[test]
fn client_ip_affinity_keeps_a_set_per_endpoint() {
    let mut svc = web();
    svc.affinity_seconds = Some(600);
    let s = script(&table(vec![svc]), &node(), &[]);
    let set = "aff-default/web/tcp/80__10.42.1.5/8080/600s";
    let ep = "ep-default/web/tcp/80__10.42.1.5/8080";
    assert_has(&s, &format!("add set inet kedge {set} {{ type ipv4_addr; flags dynamic,timeout; timeout 600s; }}"));
    assert_has(&s, &format!("add chain inet kedge {ep}"));
    assert_has(&s, &format!("add rule inet kedge {ep} update @{set} {{ ip saddr }}"));
    assert_has(&s, &format!("add rule inet kedge {ep} meta l4proto tcp dnat ip to 10.42.1.5:8080"));
    // A known client goes back to its endpoint before any random choice.
    let chain: Vec<&str> = s.lines().filter(|l| l.starts_with("add rule inet kedge svc-default/web/tcp/80 ")).collect();
    assert_eq!(
        chain,
        [
            format!("add rule inet kedge svc-default/web/tcp/80 ip saddr @{set} goto {ep}"),
            "add rule inet kedge svc-default/web/tcp/80 ip saddr @aff-default/web/tcp/80__10.42.2.7/8080/600s goto ep-default/web/tcp/80__10.42.2.7/8080".to_string(),
            format!("add rule inet kedge svc-default/web/tcp/80 numgen random mod 2 == 0 goto {ep}"),
            "add rule inet kedge svc-default/web/tcp/80 goto ep-default/web/tcp/80__10.42.2.7/8080".to_string(),
        ]
    );
    // Sets are never flushed: their entries survive an apply.
    assert!(!s.contains("flush set inet kedge aff-"), "{s}");
    let plain = script(&table(vec![web()]), &node(), &[]);
    assert!(!plain.contains("aff-") && !plain.contains("ep-"), "no affinity, no sets or endpoint chains: {plain}");
}

#[test]
fn headless_and_external_name_services_get_no_rules() {
    let mut headless = web();
    headless.name = "db".into();
    headless.headless = true;
    headless.cluster_ips.clear();
    let external = ServiceNet {
        namespace: "default".into(),
        name: "ext".into(),
        kind: ServiceKind::ExternalName,
        external_name: Some("example.com".into()),
        ports: vec![port("", Protocol::TCP, 443)],
        ..ServiceNet::default()
    };
    let s = script(&table(vec![headless, external]), &node(), &[]);
    assert!(!s.contains("default/db") && !s.contains("default/ext"), "{s}");
    assert_eq!(s, script(&table(vec![]), &node(), &[]), "the same script as no Services at all");
}

#[test]
fn node_ports_answer_on_the_node_addresses_and_are_masqueraded() {
    let mut svc = web();
    svc.kind = ServiceKind::NodePort;
    svc.ports[0].node_port = Some(30080);
    let mut lb = service("lb", "10.43.0.12", vec![port("", Protocol::UDP, 5000)], vec![]);
    lb.kind = ServiceKind::LoadBalancer;
    lb.ports[0].node_port = Some(30500);
    // A ClusterIP Service's node_port (should not happen) opens nothing.
    let mut plain = service("plain", "10.43.0.13", vec![port("", Protocol::TCP, 80)], vec![]);
    plain.ports[0].node_port = Some(30600);
    let s = script(&table(vec![svc, lb, plain]), &node(), &[]);
    assert_has(&s, "add element inet kedge nodeport-ips { 192.168.1.10 }");
    assert_has(
        &s,
        "add rule inet kedge services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
    );
    assert_has(&s, "add element inet kedge service-nodeports { tcp . 30080 : goto svc-default/web/tcp/80 }");
    assert_has(
        &s,
        "add rule inet kedge services ip daddr @nodeport-ips meta l4proto . th dport @service-nodeports jump mark-for-masquerade",
    );
    // A LoadBalancer is a NodePort; without endpoints it is rejected too.
    assert_has(&s, "add element inet kedge no-endpoint-nodeports { udp . 30500 : goto reject-chain }");
    assert_has(
        &s,
        "add rule inet kedge endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
    );
    assert!(!s.contains("30600"), "{s}");

    // No IPv4 node address known: every local address, as kube-proxy.
    let mut n = node();
    n.node_ips = vec![ip("fd00::1")];
    let s = script(&table(vec![]), &n, &[]);
    assert_has(
        &s,
        "add rule inet kedge services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
    );
}

#[test]
fn host_ports_dnat_to_their_pod() {
    let hp = |host_ip: Option<&str>, host_port, pod_ip: &str| HostPort {
        protocol: Protocol::TCP,
        host_ip: host_ip.map(ip),
        host_port,
        pod_ip: ip(pod_ip),
        container_port: 80,
    };
    let ports = [hp(Some("192.168.1.10"), 8443, "10.42.1.9"), hp(None, 8080, "10.42.1.7"), hp(None, 8081, "fd00::7")];
    let s = script(&table(vec![]), &node(), &ports);
    let any = "fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080";
    assert_has(&s, &format!("add rule inet kedge hostports {any} dnat ip to 10.42.1.7:80"));
    assert_has(&s, "add rule inet kedge hostports ip daddr 192.168.1.10 tcp dport 8443 dnat ip to 10.42.1.9:80");
    assert!(!s.contains("8081"), "IPv6 pods are skipped: {s}");
    assert_has(&s, "add rule inet kedge services jump hostports");
}

#[test]
fn ipv6_addresses_are_skipped_not_rendered() {
    let mut svc = service(
        "dual",
        "fd00:43::10",
        vec![port("", Protocol::TCP, 80)],
        vec![subset(&["fd00:42::5", "10.42.1.5"], &[("", Protocol::TCP, 8080)])],
    );
    svc.cluster_ips.push(ip("10.43.0.30"));
    let s = script(&table(vec![svc]), &node(), &[]);
    assert!(!s.contains("fd00"), "{s}");
    assert_has(&s, "add element inet kedge service-ips { 10.43.0.30 . tcp . 80 : goto svc-default/dual/tcp/80 }");
    assert_has(&s, "add rule inet kedge svc-default/dual/tcp/80 meta l4proto tcp dnat ip to 10.42.1.5:8080");
}

#[test]
fn odd_names_are_made_safe_and_stay_distinct() {
    assert_eq!(object_name(&["default", "web", "tcp", "80"]), "default/web/tcp/80");
    let a = object_name(&["we ird", "x;y", "tcp", "80"]);
    let b = object_name(&["we_ird", "x_y", "tcp", "80"]);
    assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || b"-/_".contains(&c)), "{a}");
    assert_ne!(a, b);
    let long = "a".repeat(300);
    assert!(object_name(&[&long, "b", "tcp", "80"]).len() <= NAME_MAX);
}

#[test]
fn the_sweep_reads_only_kedges_objects_from_a_listing() {
    let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
        {"chain": {"family": "inet", "table": "kedge", "name": "svc-old", "handle": 3}},
        {"chain": {"family": "ip", "table": "kedge", "name": "other-family", "handle": 3}},
        {"chain": {"family": "inet", "table": "filter", "name": "input", "handle": 1}}]}"#;
    assert_eq!(listed(json, "chain").expect("listing").into_iter().collect::<Vec<_>>(), ["svc-old"]);
    assert!(listed(b"not json", "chain").is_err());
}

fn delta_lines(prev: &ClusterNetwork, next: &ClusterNetwork) -> (Vec<String>, Vec<String>) {
    let d = delta(&render(prev, &node(), &[]), &render(next, &node(), &[])).expect("expressible as changes");
    (d.script.lines().map(str::to_string).collect(), d.stale_chains)
}

#[test]
fn a_changed_endpoint_rewrites_only_its_service_chain() {
    let mut other = web();
    other.name = "other".into();
    other.cluster_ips = vec![ip("10.43.0.20")];
    let before = table(vec![web(), other.clone()]);
    let mut moved = web();
    moved.subsets[0].ready[1].ip = ip("10.42.2.8");
    let (lines, stale) = delta_lines(&before, &table(vec![moved, other]));
    assert_eq!(
        lines,
        [
            "add table inet kedge",
            "flush chain inet kedge svc-default/web/tcp/80",
            "add rule inet kedge svc-default/web/tcp/80 numgen random mod 2 == 0 meta l4proto tcp dnat ip to 10.42.1.5:8080",
            "add rule inet kedge svc-default/web/tcp/80 meta l4proto tcp dnat ip to 10.42.2.8:8080",
        ]
    );
    assert!(stale.is_empty());
}

#[test]
fn a_service_going_away_or_losing_its_endpoints_changes_elements_and_empties_its_chain() {
    let mut other = web();
    other.name = "other".into();
    other.cluster_ips = vec![ip("10.43.0.20")];
    let before = table(vec![web(), other.clone()]);

    let (lines, stale) = delta_lines(&before, &table(vec![web()]));
    assert_eq!(
        lines,
        [
            "add table inet kedge",
            "delete element inet kedge service-ips { 10.43.0.20 . tcp . 80 }",
            "flush chain inet kedge svc-default/other/tcp/80",
        ]
    );
    assert_eq!(stale, ["svc-default/other/tcp/80"]);

    other.subsets.clear();
    let (lines, stale) = delta_lines(&before, &table(vec![web(), other]));
    assert_eq!(
        lines,
        [
            "add table inet kedge",
            "delete element inet kedge service-ips { 10.43.0.20 . tcp . 80 }",
            "flush chain inet kedge svc-default/other/tcp/80",
            "add element inet kedge no-endpoint-services { 10.43.0.20 . tcp . 80 : goto reject-chain }",
        ]
    );
    assert_eq!(stale, ["svc-default/other/tcp/80"]);
}

#[test]
fn new_services_and_affinity_changes_add_and_delete_their_objects() {
    let mut sticky = web();
    sticky.affinity_seconds = Some(60);
    let (lines, stale) = delta_lines(&table(vec![]), &table(vec![sticky.clone()]));
    let set = "aff-default/web/tcp/80__10.42.1.5/8080/60s";
    for want in [
        "add chain inet kedge svc-default/web/tcp/80".to_string(),
        "add chain inet kedge ep-default/web/tcp/80__10.42.1.5/8080".to_string(),
        format!("add set inet kedge {set} {{ type ipv4_addr; flags dynamic,timeout; timeout 60s; }}"),
        format!("add rule inet kedge ep-default/web/tcp/80__10.42.1.5/8080 update @{set} {{ ip saddr }}"),
        "add element inet kedge service-ips { 10.43.0.10 . tcp . 80 : goto svc-default/web/tcp/80 }".to_string(),
    ] {
        assert!(lines.contains(&want), "{want} missing from {lines:#?}");
    }
    assert!(stale.is_empty());
    // Chains and sets come before the rules and elements that use them.
    let pos = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix)).expect(prefix);
    assert!(
        pos("add chain") < pos("add rule") && pos("add set") < pos("add rule") && pos("add rule") < pos("add element")
    );

    // Affinity off: the sets and endpoint chains go, after the rules using them.
    let (lines, stale) = delta_lines(&table(vec![sticky]), &table(vec![web()]));
    let delete_set = lines.iter().position(|l| l == &format!("delete set inet kedge {set}")).expect("set deleted");
    let flush = lines.iter().position(|l| l == "flush chain inet kedge svc-default/web/tcp/80").expect("flushed");
    assert!(flush < delete_set, "{lines:#?}");
    assert_eq!(stale, ["ep-default/web/tcp/80__10.42.1.5/8080", "ep-default/web/tcp/80__10.42.2.7/8080"]);
}

#[test]
fn a_chain_defined_differently_needs_the_whole_script() {
    let prev = render(&table(vec![web()]), &node(), &[]);
    let mut next = prev.clone();
    if let Some(chain) = next.chains.get_mut("nat-prerouting") {
        chain.spec = Some("{ type nat hook prerouting priority -99; }".into());
    }
    assert!(delta(&prev, &next).is_none());
    assert!(delta(&prev, &prev).is_some_and(|d| d.script == "add table inet kedge\n" && d.stale_chains.is_empty()));
}
