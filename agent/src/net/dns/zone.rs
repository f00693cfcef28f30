//! The cluster domain's names, answered from the network table without I/O
//! (the records CoreDNS's `kubernetes` plugin serves, per the Kubernetes
//! DNS specification):
//!
//! - `SVC.NS.svc.DOMAIN`: the ClusterIPs (A/AAAA); for a headless Service
//!   its ready endpoints; for an ExternalName a CNAME.
//! - `EP.SVC.NS.svc.DOMAIN`: a headless Service's ready endpoint, by its
//!   `hostname` or its dashed address (`10-42-0-5`).
//! - `_PORT._PROTO.SVC.NS.svc.DOMAIN` (and SRV of `SVC.NS.svc.DOMAIN`):
//!   SRV per named port, to the Service name, or to each endpoint's name
//!   for a headless Service, with the addresses as additional records.
//! - `A-B-C-D.NS.pod.DOMAIN`: that address (CoreDNS's `pods insecure`).
//! - Names that exist without the asked type answer NODATA, unknown names
//!   NXDOMAIN, both with the zone's SOA for negative caching.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use kedge_common::network::{ClusterNetwork, EndpointNet, ServiceKind, ServiceNet};

/// TTL of every record served (CoreDNS's default): short, the table changes.
pub const TTL: u32 = 5;
/// Longest CNAME chain followed inside the zone.
const MAX_CHAIN: usize = 8;

/// What the zone says about one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// Not in the cluster domain: for the upstream resolvers.
    Forward,
    /// The zone's answer.
    Answer(Answer),
    /// An ExternalName outside the zone: `answer` holds the CNAME chain;
    /// the target's records of the asked type come from upstream.
    Chase { answer: Answer, target: Name },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
    /// Negative (NXDOMAIN or NODATA): the SOA goes into the authority section.
    pub soa: Option<Record>,
}

/// The cluster domain.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Lower-case, fully qualified.
    origin: Name,
    labels: Vec<Vec<u8>>,
    soa_mname: Name,
    soa_rname: Name,
}

/// The domain is checked here rather than by hickory-proto: formatting its
/// errors would link its IDNA tables (about 100 KB) into the agent.
#[derive(Debug, thiserror::Error)]
#[error("invalid cluster domain {domain:?}: must be DNS labels (a-z, 0-9, '-') joined by dots")]
pub struct ZoneError {
    domain: String,
}

impl Zone {
    pub fn new(domain: &str) -> Result<Self, ZoneError> {
        let err = || ZoneError { domain: domain.to_string() };
        let lower = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
        if lower.is_empty() || lower.len() > 253 || !lower.split('.').all(kedge_common::pod::is_dns_label) {
            return Err(err());
        }
        let labels: Vec<Vec<u8>> = lower.split('.').map(|l| l.as_bytes().to_vec()).collect();
        let under = |first: &[&[u8]]| {
            Name::from_labels(first.iter().copied().chain(labels.iter().map(Vec::as_slice))).map_err(|_| err())
        };
        let origin = under(&[])?;
        let soa_mname = under(&[b"ns", b"dns"])?;
        let soa_rname = under(&[b"hostmaster"])?;
        Ok(Zone { origin, labels, soa_mname, soa_rname })
    }

    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The labels of `name` in front of the zone, or None outside it.
    fn relative<'a>(&self, name: &'a Name) -> Option<Vec<&'a [u8]>> {
        let labels: Vec<&[u8]> = name.iter().collect();
        let n = labels.len().checked_sub(self.labels.len())?;
        let inside = labels[n..].iter().zip(&self.labels).all(|(a, b)| a.eq_ignore_ascii_case(b));
        inside.then(|| labels[..n].to_vec())
    }

    fn soa(&self, table: &ClusterNetwork) -> Record {
        // The generation's low 32 bits: the serial moves when the table does.
        let serial = table.generation as u32;
        let soa = SOA::new(self.soa_mname.clone(), self.soa_rname.clone(), serial, 7200, 1800, 86400, TTL);
        Record::from_rdata(self.origin.clone(), TTL, RData::SOA(soa))
    }

    /// Answers `qtype` for `qname` from `table` (services sorted by
    /// namespace and name, as the table is published).
    pub fn lookup(&self, table: &ClusterNetwork, qname: &Name, qtype: RecordType) -> Lookup {
        let mut chain: Vec<Record> = Vec::new();
        let mut name = qname.clone();
        for _ in 0..MAX_CHAIN {
            let Some(rel) = self.relative(&name) else {
                return if chain.is_empty() {
                    Lookup::Forward
                } else {
                    Lookup::Chase { answer: self.positive(chain, Vec::new()), target: name }
                };
            };
            match self.find(table, &name, &rel, qtype) {
                Found::Records(answers, additionals) => {
                    chain.extend(answers);
                    return Lookup::Answer(self.positive(chain, additionals));
                }
                Found::Alias(target) if qtype == RecordType::CNAME => {
                    chain.push(cname(&name, target));
                    return Lookup::Answer(self.positive(chain, Vec::new()));
                }
                Found::Alias(target) => {
                    chain.push(cname(&name, target.clone()));
                    name = target;
                }
                Found::NoData => return Lookup::Answer(self.negative(table, chain, ResponseCode::NoError)),
                Found::NoName if chain.is_empty() => {
                    return Lookup::Answer(self.negative(table, chain, ResponseCode::NXDomain));
                }
                // A dangling alias: the CNAME is the answer.
                Found::NoName => return Lookup::Answer(self.negative(table, chain, ResponseCode::NoError)),
            }
        }
        Lookup::Answer(Answer { rcode: ResponseCode::ServFail, answers: chain, additionals: Vec::new(), soa: None })
    }

    fn positive(&self, answers: Vec<Record>, additionals: Vec<Record>) -> Answer {
        Answer { rcode: ResponseCode::NoError, answers, additionals, soa: None }
    }

    fn negative(&self, table: &ClusterNetwork, answers: Vec<Record>, rcode: ResponseCode) -> Answer {
        Answer { rcode, answers, additionals: Vec::new(), soa: Some(self.soa(table)) }
    }

    /// One name inside the zone; `rel` is its labels in front of the zone.
    fn find(&self, table: &ClusterNetwork, name: &Name, rel: &[&[u8]], qtype: RecordType) -> Found {
        let lower: Vec<String> = rel.iter().map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect();
        let l: Vec<&str> = lower.iter().map(String::as_str).collect();
        match l.as_slice() {
            [] if qtype == RecordType::SOA => Found::Records(vec![self.soa(table)], Vec::new()),
            [] | ["svc"] | ["pod"] => Found::NoData,
            [ns, "svc"] if table.services.iter().any(|s| s.namespace == *ns) => Found::NoData,
            [svc, ns, "svc"] => match service(table, ns, svc) {
                Some(s) => self.service(s, name, qtype),
                None => Found::NoName,
            },
            [ep, svc, ns, "svc"] => match service(table, ns, svc).filter(|s| s.headless) {
                Some(s) => {
                    let ips: Vec<IpAddr> = ready(s).filter(|e| endpoint_label(e) == *ep).map(|e| e.ip).collect();
                    if ips.is_empty() { Found::NoName } else { addresses(name, &ips, qtype) }
                }
                None => Found::NoName,
            },
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                match service(table, ns, svc) {
                    Some(s) => self.srv(s, Some((&port[1..], &proto[1..])), name, qtype),
                    None => Found::NoName,
                }
            }
            [ip, _ns, "pod"] => match dashed_ip(ip) {
                Some(ip) => addresses(name, &[ip], qtype),
                None => Found::NoName,
            },
            _ => Found::NoName,
        }
    }

    fn service(&self, s: &ServiceNet, name: &Name, qtype: RecordType) -> Found {
        if s.kind == ServiceKind::ExternalName {
            return match s.external_name.as_deref().and_then(|n| Name::from_ascii(n).ok()) {
                Some(mut target) => {
                    target.set_fqdn(true);
                    Found::Alias(target)
                }
                None => Found::NoData,
            };
        }
        if qtype == RecordType::SRV {
            return self.srv(s, None, name, qtype);
        }
        if s.headless {
            let ips: Vec<IpAddr> = ready(s).map(|e| e.ip).collect();
            return addresses(name, &dedup(ips), qtype);
        }
        addresses(name, &s.cluster_ips, qtype)
    }

    /// SRV records of `port` (name, protocol), or of every port.
    fn srv(&self, s: &ServiceNet, port: Option<(&str, &str)>, name: &Name, qtype: RecordType) -> Found {
        if s.kind == ServiceKind::ExternalName {
            return Found::NoName;
        }
        let wanted = |pname: &str, proto: &str| match port {
            Some((want, want_proto)) => !pname.is_empty() && pname == want && proto == want_proto,
            None => true,
        };
        let service_name = match self.under(&[s.name.as_bytes(), s.namespace.as_bytes(), b"svc"]) {
            Some(n) => n,
            None => return Found::NoName,
        };
        // (port, target, target's address)
        let mut targets: Vec<(u16, Name, IpAddr)> = Vec::new();
        let mut known = false;
        if s.headless {
            for subset in &s.subsets {
                for p in subset.ports.iter().filter(|p| wanted(&p.name, p.protocol.lower())) {
                    known = true;
                    for e in &subset.ready {
                        let label = endpoint_label(e);
                        if let Some(target) =
                            self.under(&[label.as_bytes(), s.name.as_bytes(), s.namespace.as_bytes(), b"svc"])
                        {
                            targets.push((p.port, target, e.ip));
                        }
                    }
                }
            }
            // A named port of the Service with no endpoint yet still exists.
            known |= s.ports.iter().any(|p| wanted(&p.name, p.protocol.lower()));
        } else {
            for p in s.ports.iter().filter(|p| wanted(&p.name, p.protocol.lower())) {
                known = true;
                for ip in &s.cluster_ips {
                    targets.push((p.port, service_name.clone(), *ip));
                }
            }
        }
        if !known {
            return Found::NoName;
        }
        if qtype != RecordType::SRV && qtype != RecordType::ANY {
            return Found::NoData;
        }
        let mut answers: Vec<Record> = Vec::new();
        let mut additionals: Vec<Record> = Vec::new();
        let mut seen: Vec<(u16, Name)> = Vec::new();
        for (port, target, _) in &targets {
            if !seen.iter().any(|(p, t)| p == port && t == target) {
                seen.push((*port, target.clone()));
            }
        }
        let weight = u16::try_from(100 / seen.len().max(1)).unwrap_or(100).max(1);
        for (port, target) in &seen {
            answers.push(Record::from_rdata(name.clone(), TTL, RData::SRV(SRV::new(0, weight, *port, target.clone()))));
        }
        let mut extra: Vec<(Name, IpAddr)> = Vec::new();
        for (_, target, ip) in targets {
            if !extra.iter().any(|(t, i)| *t == target && *i == ip) {
                extra.push((target, ip));
            }
        }
        for (target, ip) in extra {
            additionals.push(address_record(&target, ip));
        }
        if answers.is_empty() { Found::NoData } else { Found::Records(answers, additionals) }
    }

    /// `labels` followed by the zone.
    fn under(&self, labels: &[&[u8]]) -> Option<Name> {
        Name::from_labels(labels.iter().copied().chain(self.labels.iter().map(Vec::as_slice))).ok()
    }
}

enum Found {
    Records(Vec<Record>, Vec<Record>),
    Alias(Name),
    NoData,
    NoName,
}

/// The Service `ns`/`name`: the table's services are sorted by namespace and name.
fn service<'t>(table: &'t ClusterNetwork, ns: &str, name: &str) -> Option<&'t ServiceNet> {
    table
        .services
        .binary_search_by(|s| (s.namespace.as_str(), s.name.as_str()).cmp(&(ns, name)))
        .ok()
        .and_then(|i| table.services.get(i))
}

fn ready(s: &ServiceNet) -> impl Iterator<Item = &EndpointNet> {
    s.subsets.iter().flat_map(|sub| sub.ready.iter())
}

/// An endpoint's name under its Service: its hostname, or its address
/// with dashes (`10-42-0-5`, `fd00--5`).
pub fn endpoint_label(e: &EndpointNet) -> String {
    match e.hostname.as_deref().filter(|h| !h.is_empty()) {
        Some(h) => h.to_ascii_lowercase(),
        None => e.ip.to_string().replace(['.', ':'], "-"),
    }
}

/// `10-42-0-5` → 10.42.0.5; `fd00--5` → fd00::5.
fn dashed_ip(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        return label.replace('-', ".").parse::<Ipv4Addr>().ok().map(IpAddr::V4);
    }
    label.replace('-', ":").parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

fn dedup(ips: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// The A (AAAA) records among `ips` for an A (AAAA) question; NODATA when
/// there is none of that type (or for another type).
fn addresses(name: &Name, ips: &[IpAddr], qtype: RecordType) -> Found {
    let records: Vec<Record> = ips
        .iter()
        .filter(|ip| match qtype {
            RecordType::A => ip.is_ipv4(),
            RecordType::AAAA => ip.is_ipv6(),
            RecordType::ANY => true,
            _ => false,
        })
        .map(|ip| address_record(name, *ip))
        .collect();
    if records.is_empty() { Found::NoData } else { Found::Records(records, Vec::new()) }
}

fn address_record(name: &Name, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), TTL, data)
}

fn cname(name: &Name, target: Name) -> Record {
    Record::from_rdata(name.clone(), TTL, RData::CNAME(CNAME(target)))
}

/// The table as [`Zone::lookup`] reads it: services sorted by namespace and
/// name (a table that is not is sorted here, once per change).
pub fn sorted(table: std::sync::Arc<ClusterNetwork>) -> std::sync::Arc<ClusterNetwork> {
    fn key(s: &ServiceNet) -> (&str, &str) {
        (s.namespace.as_str(), s.name.as_str())
    }
    if table.services.windows(2).all(|w| key(&w[0]) <= key(&w[1])) {
        return table;
    }
    tracing::warn!(generation = table.generation, "network table services not sorted; sorting for DNS");
    let mut copy = (*table).clone();
    copy.services.sort_by(|a, b| key(a).cmp(&key(b)));
    std::sync::Arc::new(copy)
}

#[cfg(test)]
pub(super) mod tests;
