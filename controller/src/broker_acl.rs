//! `kedge-controller broker-acl`: a Mosquitto ACL file that confines each
//! node to its own topics, for a broker where every node logs in as its
//! node name (a password file entry, or a client certificate whose CN is
//! the name with `use_identity_as_username true`). The controller logs in as
//! `controller`; clients without a login (dashboards) read the fleet's JSON
//! only. (No client can knock a node off by taking its client id: that id
//! is derived from the node's key, see `SigningKey::client_id`. Mosquitto's
//! `use_username_as_clientid` would make it guessable again, and refuses
//! clients without a login.)
//!
//! The ACL is defence in depth (design.md §3a): what a node runs is trusted
//! for the controller's signature, what it says for its own, whatever the
//! broker lets through.

use kedge_common::topics::{self, NodeTopic};

/// The ACL file for topic prefix `prefix`, with `controller` the
/// controller's user name.
pub fn mosquitto_acl(prefix: &str, controller: &str) -> String {
    // Mosquitto puts the client's user name in for %u.
    let node = |which| topics::node_topic(prefix, "%u", which);
    let v = topics::TOPIC_VERSION;
    format!(
        "# Mosquitto ACL for the kedge fleet (kedge-controller broker-acl).\n\
         # Needs, in mosquitto.conf: acl_file, and a login per node named as the node\n\
         # (password_file, or client certificates with use_identity_as_username true).\n\
         # Mosquitto warns that the network table's pattern has no %u: every node reads it.\n\
         \n\
         # Clients without a login (dashboards): the fleet's JSON, read only.\n\
         topic read {prefix}/{v}/fleet/#\n\
         \n\
         user {controller}\n\
         topic readwrite {prefix}/#\n\
         \n\
         # Every node, logged in as its node name: its own topics only.\n\
         pattern read {desired}\n\
         pattern read {network}\n\
         pattern write {status}\n\
         pattern write {presence}\n\
         pattern write {events}\n\
         pattern write {rotate}\n\
         pattern readwrite {prefix}/{v}/nodes/%u/rpc/#\n\
         pattern write {join}\n\
         pattern read {answer}\n",
        desired = node(NodeTopic::Desired),
        network = topics::cluster_network_topic(prefix),
        status = node(NodeTopic::Status),
        presence = node(NodeTopic::Presence),
        events = node(NodeTopic::Events),
        rotate = node(NodeTopic::Rotate),
        join = topics::join_topic(prefix, "%u"),
        answer = topics::join_answer_topic(prefix, "%u"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_their_own_topics_and_the_controller_all() {
        let acl = mosquitto_acl("kedge", "controller");
        let lines: Vec<&str> = acl.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
        assert_eq!(lines[0], "topic read kedge/v1/fleet/#", "anonymous: dashboards only");
        assert_eq!(lines[1..3], ["user controller", "topic readwrite kedge/#"]);
        for want in [
            "pattern read kedge/v1/nodes/%u/desired",
            "pattern write kedge/v1/nodes/%u/status",
            "pattern write kedge/v1/nodes/%u/presence",
            "pattern write kedge/v1/join/%u",
            "pattern read kedge/v1/join/%u/answer",
            "pattern read kedge/v1/cluster/network",
        ] {
            assert!(lines.contains(&want), "{want} in\n{acl}");
        }
        // Nothing lets a node at another node's topics.
        assert!(lines.iter().filter(|l| l.starts_with("pattern")).all(|l| !l.contains('+') && !l.contains("nodes/#")));
        assert!(mosquitto_acl("acme", "c").contains("pattern read acme/v1/nodes/%u/desired"));
    }
}
