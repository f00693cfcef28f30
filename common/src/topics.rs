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
}

impl NodeTopic {
    fn leaf(self) -> &'static str {
        match self {
            NodeTopic::Desired => "desired",
            NodeTopic::Status => "status",
            NodeTopic::Presence => "presence",
            NodeTopic::Events => "events",
        }
    }
}

/// `{prefix}/v1/nodes/{node}/{leaf}`.
pub fn node_topic(prefix: &str, node: &str, which: NodeTopic) -> String {
    format!("{prefix}/{TOPIC_VERSION}/nodes/{node}/{}", which.leaf())
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
        _ => return None,
    };
    Some((node, which))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_topics_round_trip() {
        for which in [NodeTopic::Desired, NodeTopic::Status, NodeTopic::Presence, NodeTopic::Events] {
            let t = node_topic("kedge", "pi-7", which);
            assert_eq!(parse_node_topic("kedge", &t), Some(("pi-7", which)));
        }
        assert_eq!(node_topic("kedge", "n1", NodeTopic::Desired), "kedge/v1/nodes/n1/desired");
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
