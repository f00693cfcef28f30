//! MQTT topic names (design.md §3). `prefix` defaults to [`DEFAULT_PREFIX`].

/// Default topic prefix; configurable with `--topic-prefix`.
pub const DEFAULT_PREFIX: &str = "kedge";
/// Major protocol version carried in every topic.
pub const TOPIC_VERSION: &str = "v1";

/// What a node topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeTopic {
    Desired,
    Status,
    Presence,
    Events,
    /// A joined node's key rotation request ([`crate::wire::RotateRequest`]).
    Rotate,
}

impl NodeTopic {
    /// The topic's last level (`status`, `presence`…).
    pub fn leaf(self) -> &'static str {
        match self {
            NodeTopic::Desired => "desired",
            NodeTopic::Status => "status",
            NodeTopic::Presence => "presence",
            NodeTopic::Events => "events",
            NodeTopic::Rotate => "rotate",
        }
    }
}

/// `{prefix}/v1/nodes/{node}/{leaf}`.
pub fn node_topic(prefix: &str, node: &str, which: NodeTopic) -> String {
    format!("{prefix}/{TOPIC_VERSION}/nodes/{node}/{}", which.leaf())
}

/// `{prefix}/v1/nodes/+/{leaf}`: one kind of topic of every node.
pub fn all_nodes_filter(prefix: &str, which: NodeTopic) -> String {
    format!("{prefix}/{TOPIC_VERSION}/nodes/+/{}", which.leaf())
}

/// `{prefix}/v1/fleet/nodes/{node}`: the dashboard JSON of one node.
pub fn fleet_node_topic(prefix: &str, node: &str) -> String {
    format!("{prefix}/{TOPIC_VERSION}/fleet/nodes/{node}")
}

/// `{prefix}/v1/fleet/summary`: the dashboard JSON of the whole fleet.
pub fn fleet_summary_topic(prefix: &str) -> String {
    format!("{prefix}/{TOPIC_VERSION}/fleet/summary")
}

/// `{prefix}/v1/cluster/network`: the retained network table (Services,
/// endpoints, nodes' pod CIDRs) every agent serves from.
pub fn cluster_network_topic(prefix: &str) -> String {
    format!("{prefix}/{TOPIC_VERSION}/cluster/network")
}

/// `{prefix}/v1/join/{node}`: a node's join request.
pub fn join_topic(prefix: &str, node: &str) -> String {
    format!("{prefix}/{TOPIC_VERSION}/join/{node}")
}

/// `{prefix}/v1/join/+`: every node's join request (not the answers).
pub fn join_filter(prefix: &str) -> String {
    format!("{prefix}/{TOPIC_VERSION}/join/+")
}

/// `{prefix}/v1/join/{node}/answer`: the controller's signed answer.
pub fn join_answer_topic(prefix: &str, node: &str) -> String {
    format!("{prefix}/{TOPIC_VERSION}/join/{node}/answer")
}

/// The node name of a join request's topic; `None` for anything else.
pub fn parse_join_topic<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    let node = topic.strip_prefix(prefix)?.strip_prefix('/')?.strip_prefix(TOPIC_VERSION)?.strip_prefix("/join/")?;
    valid_node_name(node).then_some(node)
}

/// `{prefix}/v1/nodes/{node}/rpc/open`: the controller's session opens
/// for one node ([`crate::session`]).
pub fn session_open_topic(prefix: &str, node: &str) -> String {
    format!("{prefix}/{TOPIC_VERSION}/nodes/{node}/rpc/open")
}

/// `{prefix}/v1/nodes/{node}/rpc/{sid}/in` (to the node) or `…/out` (from it).
pub fn session_topic(prefix: &str, node: &str, sid: &str, dir: crate::session::Dir) -> String {
    let leaf = match dir {
        crate::session::Dir::ToNode => "in",
        crate::session::Dir::ToController => "out",
    };
    format!("{prefix}/{TOPIC_VERSION}/nodes/{node}/rpc/{sid}/{leaf}")
}

/// `{prefix}/v1/nodes/{node}/rpc/+/in`: every session's frames to one node.
pub fn session_in_filter(prefix: &str, node: &str) -> String {
    format!("{prefix}/{TOPIC_VERSION}/nodes/{node}/rpc/+/in")
}

/// `{prefix}/v1/nodes/+/rpc/+/out`: every node's session frames.
pub fn session_out_filter(prefix: &str) -> String {
    format!("{prefix}/{TOPIC_VERSION}/nodes/+/rpc/+/out")
}

/// The node, session id and direction of a session frame's topic; `None`
/// for anything else.
pub fn parse_session_topic<'a>(prefix: &str, topic: &'a str) -> Option<(&'a str, &'a str, crate::session::Dir)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?.strip_prefix(TOPIC_VERSION)?.strip_prefix("/nodes/")?;
    let mut parts = rest.split('/');
    let (node, rpc, sid, leaf) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let dir = match leaf {
        "in" => crate::session::Dir::ToNode,
        "out" => crate::session::Dir::ToController,
        _ => return None,
    };
    (parts.next().is_none() && rpc == "rpc" && valid_node_name(node) && crate::session::valid_sid(sid))
        .then_some((node, sid, dir))
}

/// Whether `name` can be a node's part of a topic (and its MQTT client id):
/// a non-empty DNS subdomain-ish name without MQTT separators or wildcards.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// `mqtt://HOST[:PORT]` (port 1883) or `mqtts://HOST[:PORT]` (TLS, port
/// 8883); `tcp://` and `ssl://` are read as their aliases, as Paho does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl std::str::FromStr for BrokerUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (tls, rest) = match s.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (false, rest),
            Some(("mqtts" | "ssl", rest)) => (true, rest),
            Some((scheme, _)) => {
                return Err(format!("{s}: unknown scheme {scheme:?} (use mqtt://HOST:PORT or mqtts://HOST:PORT)"));
            }
            None => (false, s),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| format!("{s}: {p:?} is not a port number"))?)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{s}: no host (use mqtt://HOST:PORT)"));
        }
        Ok(BrokerUrl { host: host.to_string(), port, tls })
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        match self.host.contains(':') {
            true => write!(f, "{scheme}://[{}]:{}", self.host, self.port),
            false => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

/// Parses a node topic back into node name and kind; `None` for anything else,
/// including node names containing MQTT wildcards or separators.
pub fn parse_node_topic<'a>(prefix: &str, topic: &'a str) -> Option<(&'a str, NodeTopic)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let rest = rest.strip_prefix(TOPIC_VERSION)?.strip_prefix("/nodes/")?;
    let (node, leaf) = rest.split_once('/')?;
    if node.is_empty() || node.contains(['+', '#']) {
        return None;
    }
    let which = match leaf {
        "desired" => NodeTopic::Desired,
        "status" => NodeTopic::Status,
        "presence" => NodeTopic::Presence,
        "events" => NodeTopic::Events,
        "rotate" => NodeTopic::Rotate,
        _ => return None,
    };
    Some((node, which))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_topics_round_trip() {
        for which in [NodeTopic::Desired, NodeTopic::Status, NodeTopic::Presence, NodeTopic::Events, NodeTopic::Rotate]
        {
            let t = node_topic("kedge", "pi-7", which);
            assert_eq!(parse_node_topic("kedge", &t), Some(("pi-7", which)));
        }
        assert_eq!(node_topic("kedge", "n1", NodeTopic::Desired), "kedge/v1/nodes/n1/desired");
        assert_eq!(all_nodes_filter("kedge", NodeTopic::Status), "kedge/v1/nodes/+/status");
        assert_eq!(fleet_node_topic("kedge", "n1"), "kedge/v1/fleet/nodes/n1");
        assert_eq!(parse_join_topic("kedge", &join_topic("kedge", "pi-7")), Some("pi-7"));
        assert_eq!(parse_join_topic("kedge", &join_answer_topic("kedge", "pi-7")), None);
        assert_eq!(parse_join_topic("kedge", "kedge/v1/join/+"), None);
        use crate::session::Dir;
        let t = session_topic("kedge", "pi-7", "s-1_x", Dir::ToController);
        assert_eq!(t, "kedge/v1/nodes/pi-7/rpc/s-1_x/out");
        assert_eq!(parse_session_topic("kedge", &t), Some(("pi-7", "s-1_x", Dir::ToController)));
        let t = session_topic("kedge", "pi-7", "s", Dir::ToNode);
        assert_eq!(parse_session_topic("kedge", &t), Some(("pi-7", "s", Dir::ToNode)));
        assert_eq!(parse_session_topic("kedge", &session_open_topic("kedge", "pi-7")), None);
        assert_eq!(parse_session_topic("kedge", "kedge/v1/nodes/pi-7/rpc/s/out/x"), None);
        assert_eq!(parse_session_topic("kedge", "kedge/v1/nodes/+/rpc/s/out"), None);
        assert_eq!(parse_node_topic("kedge", &session_open_topic("kedge", "pi-7")), None);
        assert!(
            valid_node_name("pi-7.lab") && !valid_node_name("a/b") && !valid_node_name("+") && !valid_node_name("")
        );
    }

    #[test]
    fn broker_urls() {
        let u: BrokerUrl = "mqtt://127.0.0.1:1884".parse().expect("url");
        assert_eq!(u, BrokerUrl { host: "127.0.0.1".into(), port: 1884, tls: false });
        let u: BrokerUrl = "mqtt://broker.lan".parse().expect("url");
        assert_eq!(u.port, 1883);
        let u: BrokerUrl = "mqtts://broker.lan".parse().expect("url");
        assert_eq!((u.port, u.tls), (8883, true));
        assert_eq!(u.to_string(), "mqtts://broker.lan:8883");
        let u: BrokerUrl = "ssl://[::1]:9883".parse().expect("url");
        assert_eq!((u.host.as_str(), u.port, u.tls, u.to_string().as_str()), ("::1", 9883, true, "mqtts://[::1]:9883"));
        assert!("http://x".parse::<BrokerUrl>().is_err());
        assert!("mqtt://x:99999".parse::<BrokerUrl>().is_err());
        assert!("mqtt://:1883".parse::<BrokerUrl>().is_err());
    }

    #[test]
    fn foreign_topics_are_rejected() {
        assert_eq!(parse_node_topic("kedge", "kedge/v2/nodes/n1/desired"), None);
        assert_eq!(parse_node_topic("kedge", "other/v1/nodes/n1/desired"), None);
        assert_eq!(parse_node_topic("kedge", "kedge/v1/nodes/n1/bogus"), None);
        assert_eq!(parse_node_topic("kedge", "kedge/v1/nodes//desired"), None);
        assert_eq!(parse_node_topic("kedge", "kedge/v1/nodes/n1/x/desired"), None);
    }
}
