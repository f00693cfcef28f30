//! The link's protocol without a broker: inputs in, actions out.

use std::time::Duration;

use kedge_common::envelope::{self, DEFAULT_MAX_PAYLOAD};
use kedge_common::sign::{SigningKey, Token};
use kedge_common::wire::{Event, JoinAnswer, JoinRequest, NodeDesired, NodeReport, Presence, Usage};
use tokio::time::Instant;

use super::*;

const DESIRED: &str = "kedge/v1/nodes/n1/desired";
const STATUS: &str = "kedge/v1/nodes/n1/status";
const PRESENCE: &str = "kedge/v1/nodes/n1/presence";
const EVENTS: &str = "kedge/v1/nodes/n1/events";
const NETWORK: &str = "kedge/v1/cluster/network";
const JOIN: &str = "kedge/v1/join/n1";
const ANSWER: &str = "kedge/v1/join/n1/answer";

/// This node's key in these tests.
fn node_key() -> &'static std::sync::Arc<SigningKey> {
    static KEY: std::sync::OnceLock<std::sync::Arc<SigningKey>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| std::sync::Arc::new(SigningKey::generate().expect("key").0))
}

/// This node's sealing key in these tests.
fn seal_key() -> &'static kedge_common::seal::SealSecret {
    static KEY: std::sync::OnceLock<kedge_common::seal::SealSecret> = std::sync::OnceLock::new();
    KEY.get_or_init(|| kedge_common::seal::SealSecret::generate().expect("key"))
}

/// A joined node's link.
fn state(accepted: u64) -> LinkState {
    with_identity(accepted, Identity::in_memory(node_key().clone(), seal_key().clone(), None, 3))
}

fn with_identity(accepted: u64, identity: Identity) -> LinkState {
    LinkState::new(
        Settings {
            node: "n1".into(),
            prefix: "kedge".into(),
            boot_id: "boot-1".into(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            report_refresh: Duration::from_secs(600),
            extra_topics: Vec::new(),
            controller_key: Some(controller().public()),
            identity: Some(identity),
        },
        accepted,
        5,
    )
}

fn report(generation: u64) -> NodeReport {
    NodeReport { node: "n1".into(), observed_generation: generation, time: 1, ..Default::default() }
}

fn event(time: i64) -> Event {
    Event { time, normal: true, reason: "Started".into(), message: format!("event {time}"), pod: None, seq: 0 }
}

/// The controller's signing key in these tests (the node has pinned it).
fn controller() -> &'static SigningKey {
    static KEY: std::sync::OnceLock<SigningKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("key").0)
}

fn snapshot(node: &str, generation: u64) -> Vec<u8> {
    signed_by(controller(), node, generation)
}

fn signed_by(key: &SigningKey, node: &str, generation: u64) -> Vec<u8> {
    let d = NodeDesired { node: node.into(), generation, pods: Vec::new(), delete_volumes: Vec::new() };
    envelope::encode_signed(&d, Purpose::Desired, key).expect("encode")
}

fn message(payload: Vec<u8>) -> Input {
    Input::Message { topic: DESIRED.into(), payload }
}

/// The publishes among `actions`, as (topic, payload).
fn publishes(actions: &[Action]) -> Vec<(&str, &[u8])> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish(p) => Some((p.topic.as_str(), p.payload.as_slice())),
            _ => None,
        })
        .collect()
}

/// The reports published, checked to carry the node's signature, with
/// their counters taken out (see [`counters`]).
fn reports(actions: &[Action]) -> Vec<NodeReport> {
    publishes(actions)
        .into_iter()
        .filter(|(t, _)| *t == STATUS)
        .map(|(_, b)| {
            let mut r: NodeReport =
                envelope::decode_verified(b, DEFAULT_MAX_PAYLOAD, Purpose::Report, &node_key().public())
                    .expect("a report signed by the node");
            r.seq = 0;
            r
        })
        .collect()
}

/// The counters of everything published, in order: (topic, seq).
fn counters(actions: &[Action]) -> Vec<(&str, u64)> {
    publishes(actions)
        .into_iter()
        .map(|(t, b)| {
            let seq = match t {
                STATUS => envelope::decode::<NodeReport>(b, DEFAULT_MAX_PAYLOAD).expect("report").seq,
                EVENTS => envelope::decode::<Event>(b, DEFAULT_MAX_PAYLOAD).expect("event").seq,
                PRESENCE => Presence::from_json(b).expect("presence").seq,
                _ => 0,
            };
            (t, seq)
        })
        .collect()
}

fn events(actions: &[Action]) -> Vec<Event> {
    publishes(actions)
        .into_iter()
        .filter(|(t, _)| *t == EVENTS)
        .map(|(_, b)| {
            let mut ev: Event = envelope::decode_verified(b, DEFAULT_MAX_PAYLOAD, Purpose::Event, &node_key().public())
                .expect("an event signed by the node");
            ev.seq = 0;
            ev
        })
        .collect()
}

fn delivered(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver(d) => Some(d.generation),
            _ => None,
        })
        .collect()
}

#[test]
fn a_connect_subscribes_says_online_and_reports_at_once() {
    let now = Instant::now();
    let mut s = state(0);
    assert!(s.handle(Input::Report(Box::new(report(0))), now).is_empty(), "nothing goes out while offline");
    let actions = s.handle(Input::Connected, now);
    assert_eq!(actions[0], Action::Connected(true));
    assert_eq!(actions[1], Action::Subscribe { topic: DESIRED.into() });
    assert_eq!(actions[2], Action::Subscribe { topic: NETWORK.into() });
    let (topic, payload) = publishes(&actions)[0];
    assert_eq!(topic, PRESENCE);
    let presence = Presence::from_json(payload).expect("presence JSON");
    assert!(presence.online && presence.boot_id == "boot-1");
    presence.verify("n1", &node_key().public()).expect("presence signed by the node");
    assert_eq!(reports(&actions), vec![report(0)]);
    // Every reconnect reports again, even unchanged: the broker may have lost it.
    s.handle(Input::Disconnected, now);
    assert_eq!(reports(&s.handle(Input::Connected, now)).len(), 1);
}

#[test]
fn only_newer_valid_snapshots_for_this_node_are_handed_on() {
    let now = Instant::now();
    let mut s = state(4);
    s.handle(Input::Connected, now);
    assert!(delivered(&s.handle(message(snapshot("n1", 4)), now)).is_empty(), "the cached generation is not newer");
    assert_eq!(delivered(&s.handle(message(snapshot("n1", 5)), now)), vec![5]);
    assert!(delivered(&s.handle(message(snapshot("n1", 5)), now)).is_empty(), "a retained re-delivery");
    assert!(delivered(&s.handle(message(snapshot("n1", 3)), now)).is_empty(), "an older one");
    let other_topic = Input::Message { topic: "kedge/v1/nodes/n2/desired".into(), payload: snapshot("n1", 9) };
    assert!(s.handle(other_topic, now).is_empty());
    assert!(s.handle(message(Vec::new()), now).is_empty(), "a cleared retained message changes nothing");

    // Garbage, another node's snapshot, an oversize one: refused, told as events.
    let oversize = {
        let mut big = state(0);
        big.settings.max_payload = 16;
        big.handle(Input::Connected, now);
        big.handle(message(snapshot("n1", 9)), now)
    };
    assert!(delivered(&oversize).is_empty());
    assert_eq!(events(&oversize)[0].reason, "SnapshotRejected");
    for bad in [b"hello".to_vec(), snapshot("n2", 9)] {
        let actions = s.handle(message(bad), now);
        assert!(delivered(&actions).is_empty());
        let ev = events(&actions);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].reason, "SnapshotRejected");
        assert!(!ev[0].normal);
    }
    // And the newest accepted generation still rules.
    assert_eq!(delivered(&s.handle(message(snapshot("n1", 6)), now)), vec![6]);
}

fn network(generation: u64) -> Input {
    let table = kedge_common::network::ClusterNetwork { generation, ..Default::default() };
    let payload = envelope::encode_signed(&table, Purpose::Network, controller()).expect("encode");
    Input::Message { topic: NETWORK.into(), payload }
}

fn networks(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::DeliverNetwork { table, payload } => {
                let back: kedge_common::network::ClusterNetwork =
                    kedge_common::envelope::decode(payload, DEFAULT_MAX_PAYLOAD).expect("the payload is kept");
                assert_eq!(&back, table.as_ref());
                Some(table.generation)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn only_newer_valid_network_tables_are_handed_on() {
    let now = Instant::now();
    let mut s = state(0); // the cache holds network generation 5
    s.handle(Input::Connected, now);
    assert!(networks(&s.handle(network(5), now)).is_empty(), "the cached generation is not newer");
    assert_eq!(networks(&s.handle(network(6), now)), vec![6]);
    assert!(networks(&s.handle(network(6), now)).is_empty(), "a retained re-delivery");
    let cleared = Input::Message { topic: NETWORK.into(), payload: Vec::new() };
    assert!(s.handle(cleared, now).is_empty(), "a cleared retained table changes nothing");
    let garbage = Input::Message { topic: NETWORK.into(), payload: b"\xff\x00garbage".to_vec() };
    let actions = s.handle(garbage, now);
    assert!(networks(&actions).is_empty());
    assert_eq!(events(&actions).iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(), ["NetworkTableRejected"]);
    assert_eq!(networks(&s.handle(network(7), now)), vec![7], "the newest accepted generation still rules");
}

#[test]
fn reports_are_coalesced_and_published_when_they_change_or_are_due() {
    let t0 = Instant::now();
    let mut s = state(0);
    // Offline: only the newest is kept.
    for g in 1..=3 {
        assert!(s.handle(Input::Report(Box::new(report(g))), t0).is_empty());
    }
    assert_eq!(reports(&s.handle(Input::Connected, t0)), vec![report(3)]);
    // Time and usage move on their own: not a change.
    let mut same = report(3);
    same.time = 99;
    same.usage = Usage { memory_bytes: 5, load_milli: 7 };
    assert!(reports(&s.handle(Input::Report(Box::new(same)), t0)).is_empty());
    assert!(reports(&s.handle(Input::Tick, t0 + Duration::from_secs(599))).is_empty());
    // The refresh interval republishes it.
    assert_eq!(reports(&s.handle(Input::Tick, t0 + Duration::from_secs(600))).len(), 1);
    // A real change goes out at once.
    assert_eq!(reports(&s.handle(Input::Report(Box::new(report(4))), t0 + Duration::from_secs(601))), vec![report(4)]);
}

#[test]
fn events_wait_offline_in_a_bounded_queue_and_drops_ride_on_the_report() {
    let now = Instant::now();
    let mut s = state(0);
    s.handle(Input::Report(Box::new(report(1))), now);
    for t in 0..(EVENT_QUEUE as i64 + 5) {
        assert!(s.handle(Input::Event(event(t)), now).is_empty());
    }
    assert_eq!(s.queued_events(), EVENT_QUEUE, "memory stays flat");
    let actions = s.handle(Input::Connected, now);
    let sent = events(&actions);
    assert_eq!(sent.len(), EVENT_QUEUE);
    assert_eq!(sent.first().map(|e| e.time), Some(5), "the oldest five went");
    assert_eq!(sent.last().map(|e| e.time), Some(EVENT_QUEUE as i64 + 4), "in order");
    assert_eq!(reports(&actions)[0].events_dropped, 5);
    assert_eq!(s.queued_events(), 0);
    // Told once: the next report carries none.
    assert_eq!(reports(&s.handle(Input::Report(Box::new(report(2))), now))[0].events_dropped, 0);
    // Events the driver's channel lost count too.
    s.handle(Input::EventsLost(2), now);
    assert_eq!(reports(&s.handle(Input::Report(Box::new(report(3))), now))[0].events_dropped, 2);
}

#[test]
fn what_the_client_refuses_is_tried_again() {
    let now = Instant::now();
    let mut s = state(0);
    s.handle(Input::Report(Box::new(report(1))), now);
    s.handle(Input::EventsLost(3), now);
    let actions = s.handle(Input::Connected, now);
    // The client's queue was full: everything is refused.
    for a in actions.iter().filter(|a| matches!(a, Action::Subscribe { .. } | Action::Publish(_))) {
        s.refused(a.clone());
    }
    s.handle(Input::Event(event(1)), now).into_iter().for_each(|a| s.refused(a));
    let retry = s.handle(Input::Tick, now);
    assert!(retry.contains(&Action::Subscribe { topic: DESIRED.into() }));
    assert!(publishes(&retry).iter().any(|(t, _)| *t == PRESENCE));
    let r = reports(&retry);
    assert_eq!(r.len(), 1, "the unchanged report is still sent");
    assert_eq!(r[0].events_dropped, 3, "with the drop count it carried");
    assert_eq!(events(&retry).iter().map(|e| e.time).collect::<Vec<_>>(), vec![1]);
    assert!(s.handle(Input::Tick, now).is_empty(), "and nothing twice");
}

#[test]
fn stopping_says_offline_and_disconnects_cleanly() {
    let now = Instant::now();
    let mut offline = state(0);
    assert!(offline.handle(Input::Stop, now).is_empty(), "nothing to say without a connection");
    let mut s = state(0);
    s.handle(Input::Connected, now);
    let actions = s.handle(Input::Stop, now);
    let (topic, payload) = publishes(&actions)[0];
    assert_eq!(topic, PRESENCE);
    assert!(!Presence::from_json(payload).expect("presence").online);
    assert_eq!(actions.last(), Some(&Action::Disconnect));
    assert!(s.handle(Input::Report(Box::new(report(9))), now).is_empty(), "a stopped link publishes nothing");
}

/// The broker is hostile: anyone may publish a retained snapshot or table
/// with a higher generation. Unsigned, signed by another key, or signed
/// for the other purpose: refused and told as an event; the node keeps
/// what it has, and a genuine newer one still goes through.
#[test]
fn forged_snapshots_and_tables_are_refused() {
    let now = Instant::now();
    let mut s = state(0);
    s.handle(Input::Connected, now);
    let (stranger, _) = SigningKey::generate().expect("key");
    let unsigned = envelope::encode(&NodeDesired {
        node: "n1".into(),
        generation: 99,
        pods: Vec::new(),
        delete_volumes: Vec::new(),
    })
    .expect("encode");
    let as_network = {
        let t = kedge_common::network::ClusterNetwork { generation: 99, ..Default::default() };
        envelope::encode_signed(&t, Purpose::Desired, controller()).expect("encode")
    };
    for (what, input) in [
        ("unsigned snapshot", message(unsigned)),
        ("snapshot signed by another key", message(signed_by(&stranger, "n1", 99))),
        ("table signed as a snapshot", Input::Message { topic: NETWORK.into(), payload: as_network }),
    ] {
        let actions = s.handle(input, now);
        assert!(delivered(&actions).is_empty() && networks(&actions).is_empty(), "{what} taken");
        let ev = events(&actions);
        assert_eq!(ev.len(), 1, "{what}: one event");
        assert!(ev[0].reason.ends_with("Rejected") && !ev[0].normal, "{what}: {ev:?}");
    }
    assert_eq!(delivered(&s.handle(message(snapshot("n1", 1)), now)), vec![1], "the genuine one still goes");
}

/// A node that never got a token takes nothing, and says why.
#[test]
fn a_node_without_a_pinned_key_takes_nothing() {
    let now = Instant::now();
    let mut s = state(0);
    s.settings.controller_key = None;
    s.handle(Input::Connected, now);
    let actions = s.handle(message(snapshot("n1", 1)), now);
    assert!(delivered(&actions).is_empty());
    assert!(events(&actions)[0].message.contains("has not joined"), "{:?}", events(&actions));
    assert!(networks(&s.handle(network(9), now)).is_empty());
}

/// Everything the node sends is numbered, strictly upwards, from this
/// start's count; the Last Will is numbered above the online presence of
/// the connection it belongs to and below everything after the next one.
#[test]
fn messages_are_numbered_and_the_will_sits_between_connections() {
    let now = Instant::now();
    let mut s = state(0);
    let (_, will) = s.will();
    let will = Presence::from_json(&will).expect("will");
    assert!(!will.online);
    will.verify("n1", &node_key().public()).expect("the will is signed");
    s.handle(Input::Report(Box::new(report(0))), now);
    let first = s.handle(Input::Connected, now);
    let c = counters(&first);
    let online = c.iter().find(|(t, _)| *t == PRESENCE).expect("online").1;
    assert!(online < will.seq, "the will fires after this online presence: taken as newer");
    assert_eq!(online >> 32, 3, "this start's count");
    s.handle(Input::Event(event(1)), now);
    let mut all: Vec<u64> = c.iter().map(|(_, n)| *n).collect();
    all.extend(counters(&s.handle(Input::Event(event(2)), now)).iter().map(|(_, n)| *n));
    assert!(all.windows(2).all(|w| w[0] < w[1]), "strictly upwards: {all:?}");
    s.handle(Input::Disconnected, now);
    let (_, next_will) = s.will();
    let reconnect = s.handle(Input::Connected, now);
    let next = counters(&reconnect);
    let next_online = next.iter().find(|(t, _)| *t == PRESENCE).expect("online").1;
    assert!(next_online > will.seq, "the old will replayed later is older than the new presence");
    assert!(Presence::from_json(&next_will).expect("will").seq > next_online);
}

fn joining() -> LinkState {
    let token = Token::generate(controller().public()).expect("token");
    with_identity(0, Identity::in_memory(node_key().clone(), seal_key().clone(), Some(token), 1))
}

fn answer(s: &LinkState, accepted: bool, key: &SigningKey) -> Input {
    let a = JoinAnswer {
        node: "n1".into(),
        key: node_key().public().to_string(),
        nonce: s.join_nonce.clone(),
        accepted,
        reason: if accepted { String::new() } else { "token expired".into() },
    };
    Input::Message {
        topic: ANSWER.into(),
        payload: envelope::encode_signed(&a, Purpose::JoinAnswer, key).expect("encode"),
    }
}

/// Until the controller accepts its key a node sends its join request and
/// nothing else — no presence, no report — asking again with backoff.
#[test]
fn a_node_joins_before_it_says_anything_else() {
    let now = Instant::now();
    let mut s = joining();
    s.handle(Input::Report(Box::new(report(0))), now);
    let actions = s.handle(Input::Connected, now);
    assert!(actions.contains(&Action::Subscribe { topic: ANSWER.into() }));
    assert!(!actions.contains(&Action::Subscribe { topic: DESIRED.into() }), "no snapshot before joining");
    let p = publishes(&actions);
    assert_eq!(p.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [JOIN], "the join request alone");
    let req: JoinRequest = envelope::decode_verified(p[0].1, DEFAULT_MAX_PAYLOAD, Purpose::Join, &node_key().public())
        .expect("signed with the key it names");
    assert_eq!(req.key, node_key().public().to_string());
    let token = s.settings.identity.as_ref().and_then(|i| i.join_token.clone()).expect("token");
    let proof = kedge_common::sign::signature_from_text(&req.proof).expect("proof");
    assert!(kedge_common::sign::verify_join_proof(&token.secret, "n1", &token.id, &node_key().public(), &proof));
    assert!(!String::from_utf8_lossy(p[0].1).contains(&token.secret), "the secret never travels");
    assert!(publishes(&s.handle(Input::Event(event(1)), now)).is_empty(), "no events before joining");
    // Asked again after the backoff, and not before.
    assert!(publishes(&s.handle(Input::Tick, now + Duration::from_secs(1))).is_empty());
    assert_eq!(publishes(&s.handle(Input::Tick, now + JOIN_BACKOFF)).len(), 1);
    assert!(publishes(&s.handle(Input::Tick, now + JOIN_BACKOFF * 2)).is_empty(), "the wait doubles");
    assert_eq!(publishes(&s.handle(Input::Tick, now + JOIN_BACKOFF * 3)).len(), 1);
}

/// An answer is taken only if the controller signed it for this request;
/// a refusal leaves the node asking; the acceptance opens the session.
#[test]
fn only_the_controllers_answer_to_this_request_joins() {
    let now = Instant::now();
    let mut s = joining();
    s.handle(Input::Report(Box::new(report(0))), now);
    s.handle(Input::Connected, now);
    let (stranger, _) = SigningKey::generate().expect("key");
    let forged = answer(&s, true, &stranger);
    assert!(s.handle(forged, now).is_empty() && !s.is_joined(), "signed by another key");
    let mut old = answer(&s, true, controller());
    s.join_nonce = "another-start".into();
    assert!(s.handle(std::mem::replace(&mut old, Input::Tick), now).is_empty() && !s.is_joined(), "an old answer");
    let refused = answer(&s, false, controller());
    assert!(s.handle(refused, now).is_empty() && !s.is_joined(), "refused: still asking");
    let actions = s.handle(answer(&s, true, controller()), now);
    assert!(s.is_joined());
    assert_eq!(actions[0], Action::Joined, "recorded first");
    assert!(actions.contains(&Action::Subscribe { topic: DESIRED.into() }));
    assert!(publishes(&actions).iter().any(|(t, _)| *t == PRESENCE));
    assert_eq!(reports(&actions).len(), 1, "the waiting report goes out");
    assert!(s.handle(answer(&s, true, controller()), now).is_empty(), "joined once");
}

/// A node never given a token sends nothing at all.
#[test]
fn a_node_without_a_token_sends_nothing() {
    let now = Instant::now();
    let mut s = state(0);
    s.settings.identity = None;
    s.joined = false;
    s.handle(Input::Report(Box::new(report(0))), now);
    assert!(publishes(&s.handle(Input::Connected, now)).is_empty());
    assert!(publishes(&s.handle(Input::Tick, now + JOIN_BACKOFF_MAX * 2)).is_empty());
}

/// A snapshot sealed to this node opens; one sealed to another node's key
/// (a node cannot read, nor be fed, another's) is refused and told.
#[test]
fn snapshots_sealed_to_this_node_open_and_others_do_not() {
    let now = Instant::now();
    let mut s = state(0);
    s.handle(Input::Connected, now);
    let sealed_to = |key: &kedge_common::seal::SealPublic, generation: u64| {
        let d = NodeDesired { node: "n1".into(), generation, pods: Vec::new(), delete_volumes: Vec::new() };
        message(envelope::encode_sealed(&d, Purpose::Desired, controller(), Some(key)).expect("seal"))
    };
    assert_eq!(delivered(&s.handle(sealed_to(&seal_key().public(), 2), now)), vec![2]);
    let other = kedge_common::seal::SealSecret::generate().expect("key");
    let actions = s.handle(sealed_to(&other.public(), 3), now);
    assert!(delivered(&actions).is_empty());
    assert_eq!(events(&actions)[0].reason, "SnapshotRejected");
}

const ROTATE: &str = "kedge/v1/nodes/n1/rotate";

/// A waiting key pair is asked for signed with the current key and proven
/// with the new one, again with backoff; only the controller's answer to
/// this request switches the link over: then it signs with the new key and
/// opens snapshots sealed to either sealing key (one may be on its way).
#[test]
fn a_key_rotation_switches_over_only_on_the_controllers_answer() {
    let now = Instant::now();
    let mut s = state(0);
    s.handle(Input::Connected, now);
    let (new, _) = SigningKey::generate().expect("key");
    let new = std::sync::Arc::new(new);
    let next_seal = kedge_common::seal::SealSecret::generate().expect("seal");
    let next = crate::identity::NextKey { key: new.clone(), seal: next_seal.clone() };
    assert!(s.wants_rotation());
    let actions = s.handle(Input::Rotate(next.clone()), now);
    assert!(actions.contains(&Action::Subscribe { topic: ANSWER.into() }), "the answer comes where join answers do");
    let p = publishes(&actions);
    assert_eq!(p.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [ROTATE]);
    let req: kedge_common::wire::RotateRequest =
        envelope::decode_verified(p[0].1, DEFAULT_MAX_PAYLOAD, Purpose::Rotate, &node_key().public())
            .expect("signed with the current key");
    assert_eq!(req.proven_key().expect("proven by the new key"), new.public());
    assert!(!s.wants_rotation(), "one at a time");
    assert!(s.handle(Input::Rotate(next), now).is_empty());
    // Asked again after the backoff.
    assert!(publishes(&s.handle(Input::Tick, now + Duration::from_secs(1))).iter().all(|(t, _)| *t != ROTATE));
    assert!(publishes(&s.handle(Input::Tick, now + JOIN_BACKOFF)).iter().any(|(t, _)| *t == ROTATE));
    let reply = |s: &LinkState, accepted: bool, key: &SigningKey, nonce: Option<&str>| {
        let nonce = nonce.map_or_else(|| s.rotation.as_ref().expect("under way").nonce.clone(), str::to_owned);
        let a = JoinAnswer {
            node: "n1".into(),
            key: new.public().to_string(),
            nonce,
            accepted,
            reason: if accepted { String::new() } else { "this key was used before".into() },
        };
        Input::Message {
            topic: ANSWER.into(),
            payload: envelope::encode_signed(&a, Purpose::JoinAnswer, key).expect("encode"),
        }
    };
    let (stranger, _) = SigningKey::generate().expect("key");
    assert!(s.handle(reply(&s, true, &stranger, None), now).is_empty(), "signed by another key");
    assert!(s.handle(reply(&s, true, controller(), Some("old")), now).is_empty(), "for another request");
    assert_eq!(s.client_id(), node_key().client_id("n1"));
    // Accepted: recorded, and from now on the new key speaks.
    let sealed_to = |key: &kedge_common::seal::SealPublic, generation: u64| {
        let d = NodeDesired { node: "n1".into(), generation, pods: Vec::new(), delete_volumes: Vec::new() };
        message(envelope::encode_sealed(&d, Purpose::Desired, controller(), Some(key)).expect("seal"))
    };
    assert_eq!(s.handle(reply(&s, true, controller(), None), now), vec![Action::Rotated]);
    assert_eq!(s.client_id(), new.client_id("n1"), "the next connection's client id");
    let ticked = s.handle(Input::Report(Box::new(report(7))), now);
    let p = publishes(&ticked);
    let (_, body) = p.iter().find(|(t, _)| *t == STATUS).expect("a report");
    assert!(envelope::decode_verified::<NodeReport>(body, DEFAULT_MAX_PAYLOAD, Purpose::Report, &new.public()).is_ok());
    assert_eq!(delivered(&s.handle(sealed_to(&seal_key().public(), 2), now)), vec![2], "sealed before the switch");
    assert_eq!(delivered(&s.handle(sealed_to(&next_seal.public(), 3), now)), vec![3]);
    assert!(s.wants_rotation(), "done: another may follow");
    // A refusal drops the waiting pair, and the key stays.
    let (third, _) = SigningKey::generate().expect("key");
    let third = crate::identity::NextKey { key: std::sync::Arc::new(third), seal: next_seal };
    s.handle(Input::Rotate(third), now);
    let a = JoinAnswer {
        node: "n1".into(),
        key: s.rotation.as_ref().expect("under way").next.key.public().to_string(),
        nonce: s.rotation.as_ref().expect("under way").nonce.clone(),
        accepted: false,
        reason: "this key was used before".into(),
    };
    let refused = Input::Message {
        topic: ANSWER.into(),
        payload: envelope::encode_signed(&a, Purpose::JoinAnswer, controller()).expect("encode"),
    };
    assert_eq!(s.handle(refused, now), vec![Action::RotationRefused("this key was used before".into())]);
    assert_eq!(s.client_id(), new.client_id("n1"));
}
