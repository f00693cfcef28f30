//! What every namespace has in Kubernetes from the moment it exists: the
//! `default` ServiceAccount (the service account controller) and the
//! `kube-root-ca.crt` ConfigMap carrying the cluster CA (the root CA
//! publisher), both put back when deleted. And the aggregation of
//! ClusterRoles: a role with an `aggregationRule` gets the rules of every
//! ClusterRole its selectors match (`admin`, `edit`, `view`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::runner::{Action, Reconcile};
use crate::client::{Client, Kind};
use crate::controllers::ControllerError;
use crate::selector::LabelSelector;
use crate::store::{Key, WatchEvent};

pub const ROOT_CA: &str = "kube-root-ca.crt";

/// A create that lost to another, or whose namespace went meanwhile, is done.
fn made<T>(r: Result<T, ControllerError>) -> Result<(), ControllerError> {
    match r {
        Ok(_) | Err(ControllerError::Conflict(_) | ControllerError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

pub struct ServiceAccountController {
    client: Client,
    /// The cluster CA (PEM); `None` without TLS (`--insecure-http`).
    ca: Option<String>,
    ids: (&'static str, &'static str, &'static str),
}

impl ServiceAccountController {
    pub fn new(client: Client, ca: Option<String>) -> Result<Self, ControllerError> {
        Ok(ServiceAccountController {
            client,
            ca,
            ids: (Namespace::rt()?.id, ServiceAccount::rt()?.id, ConfigMap::rt()?.id),
        })
    }
}

impl Reconcile for ServiceAccountController {
    fn name(&self) -> &'static str {
        "serviceaccount"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        let (ns_id, sa_id, cm_id) = self.ids;
        if ev.resource == ns_id {
            out.push(Key::new(ns_id, "", &ev.name));
        } else if (ev.resource == sa_id && ev.name == "default") || (ev.resource == cm_id && ev.name == ROOT_CA) {
            out.push(Key::new(ns_id, "", &ev.namespace));
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.client.keys::<Namespace>()
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let Some(ns) = self.client.get::<Namespace>("", &key.name)? else { return Ok(Action::Done) };
        // Nothing new goes into a namespace being deleted.
        if ns.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let meta = |name: &str| ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(key.name.clone()),
            ..Default::default()
        };
        if self.client.get::<ServiceAccount>(&key.name, "default")?.is_none() {
            made(self.client.create(&ServiceAccount { metadata: meta("default"), ..Default::default() }))?;
        }
        if let Some(ca) = &self.ca {
            let want: BTreeMap<String, String> = [("ca.crt".to_owned(), ca.clone())].into();
            match self.client.get::<ConfigMap>(&key.name, ROOT_CA)? {
                None => {
                    let mut m = meta(ROOT_CA);
                    m.annotations = Some(
                        [(
                            "kubernetes.io/description".to_owned(),
                            "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_owned(),
                        )]
                        .into(),
                    );
                    let cm = ConfigMap { metadata: m, data: Some(want), ..Default::default() };
                    made(self.client.create(&cm))?;
                }
                Some(mut cm) if cm.data.as_ref() != Some(&want) => {
                    cm.data = Some(want);
                    cm.binary_data = None;
                    cm.metadata.resource_version = None;
                    self.client.replace(&cm)?;
                }
                Some(_) => {}
            }
        }
        Ok(Action::Done)
    }
}

pub struct AggregationController {
    client: Client,
    id: &'static str,
}

impl AggregationController {
    pub fn new(client: Client) -> Result<Self, ControllerError> {
        Ok(AggregationController { client, id: ClusterRole::rt()?.id })
    }
}

impl Reconcile for AggregationController {
    fn name(&self) -> &'static str {
        "clusterrole-aggregation"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        if ev.resource != self.id {
            return;
        }
        // Any role's change may change an aggregated one.
        let aggregated = self.client.list::<ClusterRole>(None).unwrap_or_default();
        for r in aggregated.iter().filter(|r| r.aggregation_rule.is_some()) {
            out.push(Key::new(self.id, "", r.metadata.name.as_deref().unwrap_or_default()));
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.client.keys::<ClusterRole>()
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let Some(mut role) = self.client.get::<ClusterRole>("", &key.name)? else { return Ok(Action::Done) };
        let Some(rule) = &role.aggregation_rule else { return Ok(Action::Done) };
        let selectors: Vec<LabelSelector> =
            rule.cluster_role_selectors.iter().flatten().filter_map(|s| LabelSelector::from_k8s(s).ok()).collect();
        let mut all = self.client.list::<ClusterRole>(None)?;
        all.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut rules: Vec<PolicyRule> = Vec::new();
        for other in all.iter().filter(|o| o.metadata.name != role.metadata.name) {
            let labels = serde_json::json!({"metadata": {"labels": other.metadata.labels}});
            if !selectors.iter().any(|s| s.matches(&labels)) {
                continue;
            }
            for r in other.rules.iter().flatten() {
                if !rules.contains(r) {
                    rules.push(r.clone());
                }
            }
        }
        if role.rules.as_ref() == Some(&rules) {
            return Ok(Action::Done);
        }
        role.rules = Some(rules);
        role.metadata.resource_version = None;
        self.client.replace(&role)?;
        Ok(Action::Done)
    }
}
