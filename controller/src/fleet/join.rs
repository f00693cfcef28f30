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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kedge_common::envelope;
use kedge_common::sign::{self, PublicKey, Purpose, SigningKey};
use kedge_common::topics;
use kedge_common::wire::{JoinAnswer, JoinRequest};
use rumqttc::{AsyncClient, QoS};

use super::trust::{self, Bucket, NODE_KEY_ANNOTATION, Trust};
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

    /// One join request, on `node`'s join topic.
    pub fn handle(&mut self, node: &str, payload: &[u8], trust: &mut Trust) {
        if payload.is_empty() {
            return;
        }
        if !self.bucket.take(Instant::now()) {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(dropped = self.dropped, "join requests over the rate limit; dropped");
            }
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
            Ok(()) => {
                tracing::info!(%node, key = %req.key, token = %req.token_id, "node joined");
                trust.forget(node);
            }
            Err(reason) => tracing::warn!(%node, token = %req.token_id, %reason, "join refused"),
        }
        let answer = JoinAnswer {
            node: node.to_owned(),
            key: req.key,
            nonce: req.nonce,
            accepted: outcome.is_ok(),
            reason: outcome.err().unwrap_or_default(),
        };
        match envelope::encode_signed(&answer, Purpose::JoinAnswer, &self.key) {
            Ok(bytes) => {
                let topic = topics::join_answer_topic(&self.prefix, node);
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
    /// key, the key remembered, a use of the token spent).
    fn decide(&self, node: &str, req: &JoinRequest) -> Result<(), String> {
        let key: PublicKey = req.key.parse().map_err(|e: sign::SignError| e.to_string())?;
        let proof = sign::signature_from_text(&req.proof).unwrap_or_default();
        let now = jiff::Timestamp::now().as_second();
        let record = tokens::check(
            &self.tokens_dir,
            &req.token_id,
            |secret| sign::verify_join_proof(secret, node, &req.token_id, &key, &proof),
            now,
        )
        .map_err(|e| e.to_string())?;
        let existing = self.client.get::<Node>("", node).map_err(|e| e.to_string())?;
        match existing.as_ref().and_then(trust::node_key) {
            Some(k) if k == key => return Ok(()), // asked again: the answer was lost
            Some(_) => {
                return Err(format!(
                    "node {node} is joined with another key; delete the Node (kubectl delete node {node}) or revoke it (kedge-controller node revoke {node}) to let a new one join"
                ));
            }
            None => {}
        }
        let store = self.client.store();
        if store.record(&joined_record(&key)).map_err(|e| e.to_string())?.is_some() {
            return Err("this key joined before and was revoked; a new token gives the node a new key".into());
        }
        store.put_record(&joined_record(&key), node.as_bytes()).map_err(|e| e.to_string())?;
        tokens::spend(&self.tokens_dir, &req.token_id, record).map_err(|e| e.to_string())?;
        let annotate = |meta: &mut ObjectMeta| {
            meta.annotations.get_or_insert_with(BTreeMap::new).insert(NODE_KEY_ANNOTATION.into(), key.to_string());
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
        Ok(())
    }
}
