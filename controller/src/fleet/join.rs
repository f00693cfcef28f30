//! Nodes join with a bootstrap token (design.md §3a). An agent publishes a
//! [`JoinRequest`] on `{prefix}/v1/join/{node}`: its name, the public key it
//! made, the token's id and an HMAC keyed with the token's secret over
//! those (the secret never travels), signed with the key itself (proof that
//! it holds it). The controller checks the signature, the token (known,
//! right secret, not expired, not used up) and the name (not joined with
//! another key), then records the key on the Node — creating it — spends a
//! use of the token and answers, signed, on `…/join/{node}/answer`. A
//! refused join creates nothing and stores nothing; the answer says why.
//!
//! A key joins once: it is remembered (`joined/{key}` in the store's
//! records), so a captured request replayed after the Node was deleted
//! does not bring the revoked key back. A node re-joins with a new token,
//! for which the agent makes a new key. A request repeated while the key
//! is the Node's (the answer was lost) is answered again and spends nothing.
//!
//! A joined node rotates its key (`kedge-agent rotate-key`) with a
//! [`RotateRequest`] on `{prefix}/v1/nodes/{node}/rotate`, signed with its
//! current key and carrying the new key's signature: the Node is given the
//! new key (and sealing key), which is remembered like a joined one, and the
//! old key speaks for nothing from then on. A request whose new key is
//! already the Node's (the answer was lost) is answered again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kedge_common::envelope;
use kedge_common::sign::{self, PublicKey, Purpose, SigningKey};
use kedge_common::topics;
use kedge_common::wire::{JoinAnswer, JoinRequest, RotateRequest};
use rumqttc::{AsyncClient, QoS};

use super::trust::{self, Bucket, NODE_KEY_ANNOTATION, SEAL_KEY_ANNOTATION, Trust};
use crate::client::Client;
use crate::tokens;

/// Join requests looked at per second, and in a burst: a flood of them is
/// dropped unanswered rather than queued.
const JOIN_RATE: f64 = 10.0;
const JOIN_BURST: f64 = 50.0;

pub struct Joins {
    client: Client,
    tokens_dir: PathBuf,
    key: Arc<SigningKey>,
    mqtt: AsyncClient,
    prefix: String,
    max_payload: usize,
    bucket: Bucket,
    /// Requests dropped over the rate.
    pub dropped: u64,
}

fn joined_record(key: &PublicKey) -> String {
    format!("joined/{key}")
}

impl Joins {
    pub fn new(
        client: Client,
        tokens_dir: PathBuf,
        key: Arc<SigningKey>,
        mqtt: AsyncClient,
        prefix: String,
        max_payload: usize,
    ) -> Joins {
        Joins {
            client,
            tokens_dir,
            key,
            mqtt,
            prefix,
            max_payload,
            bucket: Bucket::new(JOIN_RATE, JOIN_BURST, Instant::now()),
            dropped: 0,
        }
    }

    /// Whether a request is looked at: not empty, and within the rate
    /// join and rotation requests share.
    fn admitted(&mut self, payload: &[u8]) -> bool {
        if payload.is_empty() {
            return false;
        }
        if !self.bucket.take(Instant::now()) {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(dropped = self.dropped, "join and rotation requests over the rate limit; dropped");
            }
            return false;
        }
        true
    }

    /// One join request, on `node`'s join topic.
    pub fn handle(&mut self, node: &str, payload: &[u8], trust: &mut Trust) {
        if !self.admitted(payload) {
            return;
        }
        let req = match self.verified(node, payload) {
            Ok(r) => r,
            Err(e) => {
                // Nothing to answer to: not a request this node could have made.
                tracing::warn!(%node, bytes = payload.len(), error = %e, "join request dropped");
                return;
            }
        };
        let outcome = self.decide(node, &req);
        match &outcome {
            Ok(true) => {
                tracing::info!(%node, key = %req.key, token = %req.token_id, "node joined");
                trust.forget(node);
            }
            // Asked again: what is known of the node (its counters) stays.
            Ok(false) => tracing::info!(%node, "join asked again by the joined key; answered again"),
            Err(reason) => tracing::warn!(%node, token = %req.token_id, %reason, "join refused"),
        }
        self.answer(JoinAnswer {
            node: node.to_owned(),
            key: req.key,
            nonce: req.nonce,
            accepted: outcome.is_ok(),
            reason: outcome.err().unwrap_or_default(),
        });
    }

    /// One key rotation request, on `node`'s rotate topic.
    pub fn rotate(&mut self, node: &str, payload: &[u8], trust: &mut Trust) {
        if !self.admitted(payload) {
            return;
        }
        let (req, new) = match self.rotation(node, payload) {
            Ok(r) => r,
            Err(e) => {
                // Not the node's: nothing to answer to.
                tracing::warn!(%node, bytes = payload.len(), error = %e, "key rotation request dropped");
                return;
            }
        };
        let outcome = self.rotate_to(node, &req, new);
        match &outcome {
            Ok(true) => {
                tracing::info!(%node, key = %new, "node rotated its key");
                trust.forget(node);
            }
            Ok(false) => tracing::info!(%node, "key rotation asked again by the new key; answered again"),
            Err(reason) => tracing::warn!(%node, %reason, "key rotation refused"),
        }
        self.answer(JoinAnswer {
            node: node.to_owned(),
            key: req.key,
            nonce: req.nonce,
            accepted: outcome.is_ok(),
            reason: outcome.err().unwrap_or_default(),
        });
    }

    /// The request and its new key, if it is for this topic's node, proves
    /// the new key, and is signed by the node's current key — or the new
    /// key already is the node's (asked again: the proof is enough).
    fn rotation(&self, node: &str, payload: &[u8]) -> Result<(RotateRequest, PublicKey), String> {
        let req: RotateRequest = envelope::decode(payload, self.max_payload).map_err(|e| e.to_string())?;
        if req.node != node {
            return Err(format!("request names node {:?}", req.node));
        }
        let new = req.proven_key()?;
        let current = self.client.get::<Node>("", node).map_err(|e| e.to_string())?.as_ref().and_then(trust::node_key);
        match current {
            Some(k) if k == new => Ok((req, new)),
            Some(k) => {
                envelope::decode_verified::<RotateRequest>(payload, self.max_payload, Purpose::Rotate, &k)
                    .map_err(|e| format!("not signed by the node's key: {e}"))?;
                Ok((req, new))
            }
            None => Err(format!("node {node} has not joined (or was revoked)")),
        }
    }

    /// Gives the Node the new key, unless it joined before. `Ok(false)`:
    /// it already has it.
    fn rotate_to(&self, node: &str, req: &RotateRequest, new: PublicKey) -> Result<bool, String> {
        let Some(mut n) = self.client.get::<Node>("", node).map_err(|e| e.to_string())? else {
            return Err(format!("node {node} is gone"));
        };
        if trust::node_key(&n) == Some(new) {
            return Ok(false);
        }
        let seal = req.seal_key.parse::<kedge_common::seal::SealPublic>().map_err(|e| e.to_string())?;
        kedge_common::seal::seal(&seal, b"").map_err(|_| "the sealing key is not usable".to_owned())?;
        let store = self.client.store();
        if store.record(&joined_record(&new)).map_err(|e| e.to_string())?.is_some() {
            return Err("this key was used before; rotate to a fresh one".into());
        }
        let a = n.metadata.annotations.get_or_insert_with(BTreeMap::new);
        a.insert(NODE_KEY_ANNOTATION.into(), new.to_string());
        a.insert(SEAL_KEY_ANNOTATION.into(), seal.to_string());
        n.metadata.resource_version = None;
        self.client.replace(&n).map_err(|e| e.to_string())?;
        store.put_record(&joined_record(&new), node.as_bytes()).map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Publishes a signed answer on the node's join answer topic.
    fn answer(&self, answer: JoinAnswer) {
        let node = answer.node.clone();
        match envelope::encode_signed(&answer, Purpose::JoinAnswer, &self.key) {
            Ok(bytes) => {
                let topic = topics::join_answer_topic(&self.prefix, &node);
                if let Err(e) = self.mqtt.try_publish(topic, QoS::AtLeastOnce, false, bytes) {
                    tracing::warn!(%node, error = %e, "join answer not queued; the agent asks again");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a join answer"),
        }
    }

    /// The request, if it is well formed, for this topic's node and signed
    /// with the key it names.
    fn verified(&self, node: &str, payload: &[u8]) -> Result<JoinRequest, String> {
        let req: JoinRequest = envelope::decode(payload, self.max_payload).map_err(|e| e.to_string())?;
        if req.node != node {
            return Err(format!("request names node {:?}", req.node));
        }
        let key: PublicKey = req.key.parse().map_err(|e: sign::SignError| e.to_string())?;
        envelope::decode_verified::<JoinRequest>(payload, self.max_payload, Purpose::Join, &key)
            .map_err(|e| e.to_string())
    }

    /// Whether the join is allowed; if so, it is carried out (Node with the
    /// key, a use of the token spent, the key remembered). `Ok(false)`: the
    /// joined key asking again.
    fn decide(&self, node: &str, req: &JoinRequest) -> Result<bool, String> {
        let key: PublicKey = req.key.parse().map_err(|e: sign::SignError| e.to_string())?;
        // Every snapshot is sealed to this key: a node without one, or with
        // one nothing can be sealed to (a small-order point), cannot join.
        let seal = req.seal_key.parse::<kedge_common::seal::SealPublic>().map_err(|e| e.to_string())?;
        kedge_common::seal::seal(&seal, b"").map_err(|_| "the sealing key is not usable".to_owned())?;
        let seal = Some(seal);
        let proof = sign::signature_from_text(&req.proof).unwrap_or_default();
        let now = jiff::Timestamp::now().as_second();
        let checked = tokens::check(
            &self.tokens_dir,
            &req.token_id,
            |secret| sign::verify_join_proof(secret, node, &req.token_id, &key, &proof),
            now,
        );
        let existing = self.client.get::<Node>("", node).map_err(|e| e.to_string())?;
        match existing.as_ref().and_then(trust::node_key) {
            // Asked again (the answer was lost): the join it repeats may
            // have spent the token's last use, or it has expired since.
            Some(k) if k == key => {
                return match checked {
                    Ok(_) | Err(tokens::Refusal::UsedUp(_) | tokens::Refusal::Expired { .. }) => Ok(false),
                    Err(e) => Err(e.to_string()),
                };
            }
            Some(_) => {
                checked.map_err(|e| e.to_string())?;
                return Err(format!(
                    "node {node} is joined with another key; delete the Node (kubectl delete node {node}) or revoke it (kedge-controller node revoke {node}) to let a new one join"
                ));
            }
            None if existing.as_ref().is_some_and(trust::revoked) => {
                checked.map_err(|e| e.to_string())?;
                return Err(format!(
                    "node {node} was revoked; delete the Node (kubectl delete node {node}) to let it join anew"
                ));
            }
            None => {}
        }
        let record = checked.map_err(|e| e.to_string())?;
        let store = self.client.store();
        if store.record(&joined_record(&key)).map_err(|e| e.to_string())?.is_some() {
            return Err("this key joined before and was revoked; a new token gives the node a new key".into());
        }
        tokens::spend(&self.tokens_dir, &req.token_id, record).map_err(|e| e.to_string())?;
        let annotate = |meta: &mut ObjectMeta| {
            let a = meta.annotations.get_or_insert_with(BTreeMap::new);
            a.insert(NODE_KEY_ANNOTATION.into(), key.to_string());
            match seal {
                Some(s) => a.insert(SEAL_KEY_ANNOTATION.into(), s.to_string()),
                None => a.remove(SEAL_KEY_ANNOTATION),
            };
        };
        match existing {
            Some(mut n) => {
                annotate(&mut n.metadata);
                n.metadata.resource_version = None;
                self.client.replace(&n).map_err(|e| e.to_string())?;
            }
            None => {
                let mut n = Node {
                    metadata: ObjectMeta { name: Some(node.to_owned()), ..Default::default() },
                    ..Default::default()
                };
                annotate(&mut n.metadata);
                self.client.create(&n).map_err(|e| e.to_string())?;
            }
        }
        // Last: a join that failed above does not burn the key (the agent
        // asks again with it).
        store.put_record(&joined_record(&key), node.as_bytes()).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::Request;
    use std::time::Duration;

    struct Fixture {
        client: Client,
        joins: Joins,
        trust: Trust,
        rx: flume::Receiver<Request>,
        controller: Arc<SigningKey>,
        dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(crate::store::Store::open(&dir.path().join("s.redb"), 100).expect("store"));
        let writer = crate::write::Writer::new(store, crate::write::DEFAULT_SERVICE_CIDR);
        writer.system_namespaces().expect("namespaces");
        let client = Client::new(writer);
        let (tx, rx) = flume::unbounded();
        let controller = Arc::new(crate::tls::signing_key(dir.path()).expect("key"));
        let joins = Joins::new(
            client.clone(),
            dir.path().join("tokens"),
            controller.clone(),
            AsyncClient::from_senders(tx),
            "kedge".into(),
            1 << 20,
        );
        Fixture { client, joins, trust: Trust::default(), rx, controller, dir }
    }

    fn request(node: &str, key: &SigningKey, token: &sign::Token) -> Vec<u8> {
        let k = key.public();
        let req = JoinRequest {
            node: node.into(),
            key: k.to_string(),
            token_id: token.id.clone(),
            proof: sign::signature_text(&sign::join_proof(&token.secret, node, &token.id, &k)),
            nonce: "n".into(),
            seal_key: kedge_common::seal::SealSecret::generate().expect("key").public().to_string(),
        };
        envelope::encode_signed(&req, Purpose::Join, key).expect("encode")
    }

    impl Fixture {
        fn token(&self, ttl: Option<Duration>, uses: Option<u32>) -> sign::Token {
            tokens::create(self.dir.path(), ttl, uses).expect("token")
        }

        /// Sends a request and returns the answer (None: unanswered).
        fn join(&mut self, node: &str, payload: &[u8]) -> Option<JoinAnswer> {
            self.joins.handle(node, payload, &mut self.trust);
            self.answer(node)
        }

        /// Sends a key rotation request and returns the answer.
        fn rotate(&mut self, node: &str, payload: &[u8]) -> Option<JoinAnswer> {
            self.joins.rotate(node, payload, &mut self.trust);
            self.answer(node)
        }

        fn answer(&mut self, node: &str) -> Option<JoinAnswer> {
            let answers: Vec<JoinAnswer> = self
                .rx
                .try_iter()
                .filter_map(|r| match r {
                    Request::Publish(p) => {
                        assert_eq!(p.topic, format!("kedge/v1/join/{node}/answer"));
                        Some(
                            envelope::decode_verified(
                                &p.payload,
                                1 << 20,
                                Purpose::JoinAnswer,
                                &self.controller.public(),
                            )
                            .expect("an answer signed by the controller"),
                        )
                    }
                    _ => None,
                })
                .collect();
            assert!(answers.len() <= 1);
            answers.into_iter().next()
        }

        fn node_key(&self, node: &str) -> Option<PublicKey> {
            self.client.get::<Node>("", node).expect("get").as_ref().and_then(trust::node_key)
        }

        fn nodes(&self) -> usize {
            self.client.list::<Node>(None).expect("list").len()
        }
    }

    fn refused(a: Option<JoinAnswer>, why: &str) {
        let a = a.expect("answered");
        assert!(!a.accepted && a.reason.contains(why), "{why}: {a:?}");
    }

    #[test]
    fn only_a_valid_token_joins_and_a_refusal_creates_nothing() {
        let mut f = fixture();
        let (key, _) = SigningKey::generate().expect("key");
        let good = f.token(None, None);
        let wrong = sign::Token { secret: "0000000000000000".into(), ..good.clone() };
        refused(f.join("n1", &request("n1", &key, &wrong)), "wrong secret");
        let unknown = sign::Token { id: "zzzzzz".into(), ..good.clone() };
        refused(f.join("n1", &request("n1", &key, &unknown)), "unknown token");
        let expired = f.token(Some(Duration::from_secs(1)), None);
        let path = f.dir.path().join("tokens").join(format!("{}.json", expired.id));
        let mut record: tokens::TokenRecord =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("record");
        record.expires = Some(record.created - 10);
        std::fs::write(&path, serde_json::to_vec(&record).expect("json")).expect("write");
        refused(f.join("n1", &request("n1", &key, &expired)), "expired");
        let once = f.token(None, Some(1));
        let (other, _) = SigningKey::generate().expect("key");
        assert!(f.join("n9", &request("n9", &other, &once)).expect("answer").accepted);
        refused(f.join("n1", &request("n1", &key, &once)), "used up");
        assert_eq!(f.node_key("n1"), None, "no Node for a refused join");
        assert_eq!(f.nodes(), 1, "only n9's");
        // A request signed by a key other than the one it names, or for
        // another node's topic: dropped unanswered.
        let (thief, _) = SigningKey::generate().expect("key");
        let mut stolen: JoinRequest = envelope::decode(&request("n1", &key, &good), 1 << 20).expect("decode");
        stolen.nonce = "x".into();
        assert!(f.join("n1", &envelope::encode_signed(&stolen, Purpose::Join, &thief).expect("encode")).is_none());
        assert!(f.join("n2", &request("n1", &key, &good)).is_none());
        assert!(f.join("n1", b"\x01garbage").is_none());
        assert_eq!(f.nodes(), 1);
        // The good one: the Node, with the key recorded on it.
        let a = f.join("n1", &request("n1", &key, &good)).expect("answer");
        assert!(a.accepted && a.nonce == "n" && a.key == key.public().to_string(), "{a:?}");
        assert_eq!(f.node_key("n1"), Some(key.public()));
        let n1 = f.client.get::<Node>("", "n1").expect("get").expect("n1");
        assert!(trust::seal_key(&n1).is_some(), "the sealing key recorded too");
    }

    /// A request for `new` from `node`, signed with `signer`.
    fn rotation(node: &str, new: &SigningKey, signer: &SigningKey, nonce: &str) -> Vec<u8> {
        let seal = kedge_common::seal::SealSecret::generate().expect("seal").public();
        envelope::encode_signed(&RotateRequest::new(node, new, &seal, nonce), Purpose::Rotate, signer).expect("encode")
    }

    #[test]
    fn a_joined_node_rotates_to_a_fresh_key_signed_with_its_own() {
        let mut f = fixture();
        let good = f.token(None, None);
        let (old, _) = SigningKey::generate().expect("key");
        let (n2, _) = SigningKey::generate().expect("key");
        assert!(f.join("n1", &request("n1", &old, &good)).expect("answer").accepted);
        assert!(f.join("n2", &request("n2", &n2, &good)).expect("answer").accepted);
        let seal_before = f.client.get::<Node>("", "n1").expect("get").as_ref().and_then(trust::seal_key);
        let (new, _) = SigningKey::generate().expect("key");
        // Forged: signed by another joined node, or by nobody's key, or for
        // a node that never joined: unanswered, nothing changes.
        assert!(f.rotate("n1", &rotation("n1", &new, &n2, "a")).is_none());
        assert!(f.rotate("n1", &rotation("n1", &new, &new, "a")).is_none());
        assert!(f.rotate("n7", &rotation("n7", &new, &new, "a")).is_none());
        assert!(f.rotate("n1", b"\x01garbage").is_none());
        assert_eq!(f.node_key("n1"), Some(old.public()));
        // To a key that joined before (n2's): refused.
        refused(f.rotate("n1", &rotation("n1", &n2, &old, "b")), "used before");
        // Signed with its key: the Node gets the new key and sealing key.
        let asked = rotation("n1", &new, &old, "c");
        let a = f.rotate("n1", &asked).expect("answer");
        assert!(a.accepted && a.nonce == "c" && a.key == new.public().to_string(), "{a:?}");
        assert_eq!(f.node_key("n1"), Some(new.public()));
        let seal_after = f.client.get::<Node>("", "n1").expect("get").as_ref().and_then(trust::seal_key);
        assert!(seal_after.is_some() && seal_after != seal_before, "the new sealing key recorded");
        // Asked again (the answer was lost): answered, nothing changes.
        assert!(f.rotate("n1", &asked).expect("answer").accepted);
        assert_eq!(f.node_key("n1"), Some(new.public()));
        // The old key speaks for nothing now, rotations included.
        let (third, _) = SigningKey::generate().expect("key");
        assert!(f.rotate("n1", &rotation("n1", &third, &old, "d")).is_none());
        assert_eq!(f.node_key("n1"), Some(new.public()));
        // Nor does it join again: it is remembered.
        refused(f.join("n1", &request("n1", &old, &good)), "joined with another key");
    }

    #[test]
    fn a_name_keeps_its_key_until_revoked_and_a_revoked_key_never_returns() {
        let mut f = fixture();
        let (first, _) = SigningKey::generate().expect("key");
        let once = f.token(None, Some(1));
        let first_request = request("n1", &first, &once);
        assert!(f.join("n1", &first_request).expect("answer").accepted);
        // The same request again (its answer was lost): answered, no use spent.
        assert!(f.join("n1", &first_request).expect("answer").accepted);
        // Another key under the same name: refused while n1 has its key.
        let good = f.token(None, None);
        let (second, _) = SigningKey::generate().expect("key");
        refused(f.join("n1", &request("n1", &second, &good)), "joined with another key");
        assert_eq!(f.node_key("n1"), Some(first.public()));
        // Deleted: the old request replayed does not bring the key back.
        f.client.delete::<Node>("", "n1", None).expect("delete");
        refused(f.join("n1", &request("n1", &first, &good)), "joined before and was revoked");
        assert_eq!(f.nodes(), 0);
        // The node comes back with a new token, hence a new key.
        assert!(f.join("n1", &request("n1", &second, &good)).expect("answer").accepted);
        assert_eq!(f.node_key("n1"), Some(second.public()));
        // Revoked (`node revoke`): the Node stays, and no key joins under
        // its name — not even with a valid token — until it is deleted.
        let mut n1 = f.client.get::<Node>("", "n1").expect("get").expect("n1");
        n1.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(NODE_KEY_ANNOTATION.into(), trust::REVOKED.into());
        n1.metadata.resource_version = None;
        f.client.replace(&n1).expect("revoke");
        let (third, _) = SigningKey::generate().expect("key");
        refused(f.join("n1", &request("n1", &third, &good)), "was revoked");
        // A sealing key nothing can be sealed to (all zero, a small-order
        // point): refused.
        let (fourth, _) = SigningKey::generate().expect("key");
        let mut bad: JoinRequest = envelope::decode(&request("n4", &fourth, &good), 1 << 20).expect("decode");
        bad.seal_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into();
        let bad = envelope::encode_signed(&bad, Purpose::Join, &fourth).expect("encode");
        refused(f.join("n4", &bad), "sealing key");
    }
}
