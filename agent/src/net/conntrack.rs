//! Deleting the conntrack entries of UDP flows to endpoints that left a
//! Service, as kube-proxy does. The Service rules only see a flow's first
//! datagram; the kernel sends the rest where the first went for as long as
//! datagrams keep coming (the entry lives 30 s after the last one, 120 s
//! once both sides spoke). Without this, a client that keeps sending to a
//! ClusterIP — a sensor to its collector, a resolver to a DNS pod — keeps
//! sending to an endpoint that is gone, and never reaches its replacement.
//! TCP needs nothing: a dead endpoint resets or times out, and the client's
//! new connection goes through the rules.
//!
//! The entries are deleted with the `conntrack` tool (conntrack-tools, as
//! kube-proxy did before it moved to netlink), one `conntrack -D` per
//! (destination, endpoint) that went away: only flows DNATed to that
//! endpoint from that ClusterIP and port, or that NodePort. Blocking: call
//! it from a blocking thread.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::nft::UdpDst;

/// Where `conntrack` may be when `PATH` lacks sbin.
const PATHS: [&str; 3] = ["conntrack", "/usr/sbin/conntrack", "/sbin/conntrack"];

/// What `conntrack -D` says when nothing matched: not a failure.
const NOTHING_DELETED: &str = "0 flow entries have been deleted";

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("the conntrack command is not installed (install the conntrack package)")]
    NotInstalled,
    #[error("running conntrack")]
    Spawn(#[source] std::io::Error),
    #[error("conntrack {args}: {stderr}")]
    Failed { args: String, stderr: String },
}

/// The flows of `before` that `after` no longer has.
pub fn gone(before: &BTreeSet<(UdpDst, Ipv4Addr)>, after: &BTreeSet<(UdpDst, Ipv4Addr)>) -> Vec<(UdpDst, Ipv4Addr)> {
    before.difference(after).copied().collect()
}

/// `conntrack -D` arguments for the UDP flows to `dst` DNATed to `endpoint`.
fn args(dst: UdpDst, endpoint: Ipv4Addr) -> Vec<String> {
    let mut a: Vec<String> = ["-D", "-p", "udp"].map(String::from).to_vec();
    match dst {
        UdpDst::ClusterIp(ip, port) => {
            a.extend(["--orig-dst".into(), ip.to_string(), "--orig-port-dst".into(), port.to_string()])
        }
        UdpDst::NodePort(port) => a.extend(["--orig-port-dst".into(), port.to_string()]),
    }
    a.extend(["--dst-nat".into(), endpoint.to_string()]);
    a
}

/// Deletes the conntrack entries of `flows`. Tries every one; the first
/// error is returned.
pub fn clear(flows: &[(UdpDst, Ipv4Addr)]) -> Result<(), ConntrackError> {
    let mut first = None;
    for (dst, endpoint) in flows {
        if let Err(e) = run(&args(*dst, *endpoint)) {
            if matches!(e, ConntrackError::NotInstalled | ConntrackError::Spawn(_)) {
                return Err(e);
            }
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

fn run(args: &[String]) -> Result<(), ConntrackError> {
    for bin in PATHS {
        let out = Command::new(bin).args(args).stdin(Stdio::null()).output();
        let out = match out {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ConntrackError::Spawn(e)),
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || stderr.contains(NOTHING_DELETED) {
            return Ok(());
        }
        return Err(ConntrackError::Failed { args: args.join(" "), stderr: stderr.trim().to_string() });
    }
    Err(ConntrackError::NotInstalled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_flows_that_went_are_cleared_and_each_names_its_endpoint() {
        let a = Ipv4Addr::new(10, 42, 0, 5);
        let b = Ipv4Addr::new(10, 42, 1, 6);
        let dns = UdpDst::ClusterIp(Ipv4Addr::new(10, 43, 0, 10), 53);
        let before: BTreeSet<_> = [(dns, a), (dns, b), (UdpDst::NodePort(30053), a)].into();
        let after: BTreeSet<_> = [(dns, b)].into();
        let gone = gone(&before, &after);
        assert_eq!(gone, vec![(dns, a), (UdpDst::NodePort(30053), a)]);
        assert_eq!(
            args(gone[0].0, gone[0].1).join(" "),
            "-D -p udp --orig-dst 10.43.0.10 --orig-port-dst 53 --dst-nat 10.42.0.5"
        );
        assert_eq!(args(gone[1].0, gone[1].1).join(" "), "-D -p udp --orig-port-dst 30053 --dst-nat 10.42.0.5");
    }
}
