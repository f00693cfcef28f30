//! The endpoints controller: for each Service with a selector, an Endpoints
//! object listing the matching pods' IPs (ready ones under `addresses`, the
//! rest under `notReadyAddresses`) and the Service's ports, with named
//! `targetPort`s resolved against each pod's container ports.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service, ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::podutil;
use super::runner::{Action, Reconcile};
use crate::client::{Client, Kind};
use crate::controllers::ControllerError;
use crate::selector::LabelSelector;
use crate::store::{Key, WatchEvent};

/// Marks the Endpoints this controller maintains (only those are deleted
/// with their Service).
pub const MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
const CONTROLLER: &str = "endpoint-controller";

pub struct EndpointsController {
    client: Client,
    ids: (&'static str, &'static str, &'static str),
}

impl EndpointsController {
    pub fn new(client: Client) -> Result<Self, ControllerError> {
        Ok(EndpointsController { client, ids: (Service::rt()?.id, Pod::rt()?.id, Endpoints::rt()?.id) })
    }
}

/// The pods a Service selects; none for one without a selector, nor for an
/// `ExternalName` Service, which is a DNS alias with no endpoints.
fn selector(svc: &Service) -> Option<LabelSelector> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty()).map(LabelSelector::from_map)
}

/// A Service port resolved on one pod: (name, container port, protocol).
type ResolvedPort = (Option<String>, i32, String);

/// The container port a Service port reaches on `pod`, if it has one.
fn target_port(sp: &ServicePort, pod: &Pod) -> Option<i32> {
    match sp.target_port.as_ref() {
        None => Some(sp.port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => {
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            pod.spec.as_ref()?.containers.iter().flat_map(|c| c.ports.iter().flatten()).find_map(|p| {
                (p.name.as_deref() == Some(name.as_str()) && p.protocol.as_deref().unwrap_or("TCP") == proto)
                    .then_some(p.container_port)
            })
        }
    }
}

/// The pod's `hostname` when its `subdomain` names this Service (in the
/// same namespace), as Kubernetes sets it: DNS then answers
/// `HOSTNAME.SERVICE.NAMESPACE.svc.DOMAIN` with the pod's address.
fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let host = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.is_some()
        && spec.subdomain == svc.metadata.name
        && pod.metadata.namespace == svc.metadata.namespace)
        .then(|| host.to_owned())
}

/// The Endpoints subsets for `svc` over `pods`: pods with the same resolved
/// ports share a subset, as Kubernetes packs them.
pub fn subsets(svc: &Service, pods: &[Pod]) -> Vec<EndpointSubset> {
    let ports = svc.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
    let publish_all = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses) == Some(true);
    let mut groups: BTreeMap<Vec<ResolvedPort>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()) else { continue };
        if !podutil::is_active(pod) {
            continue;
        }
        let resolved: Vec<ResolvedPort> = ports
            .iter()
            .filter_map(|sp| {
                target_port(sp, pod).map(|p| (sp.name.clone(), p, sp.protocol.clone().unwrap_or_else(|| "TCP".into())))
            })
            .collect();
        if resolved.is_empty() && !ports.is_empty() {
            continue;
        }
        let addr = EndpointAddress {
            ip,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            hostname: hostname(svc, pod),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
        };
        let entry = groups.entry(resolved).or_default();
        if publish_all || podutil::is_ready(pod) { entry.0.push(addr) } else { entry.1.push(addr) }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name,
                            port,
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect()
                }),
            }
        })
        .collect()
}

impl Reconcile for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        let (svc_id, pod_id, ep_id) = self.ids;
        // An Endpoints object of ours changed by someone else is put back;
        // one that is not ours (a selectorless Service's) is left alone.
        let ours = ev.object.pointer(&format!("/metadata/labels/{}", MANAGED_BY.replace('/', "~1"))).is_some();
        if ev.resource == svc_id || (ev.resource == ep_id && ours) {
            out.push(Key::new(svc_id, &ev.namespace, &ev.name));
        } else if ev.resource == pod_id {
            for svc in self.client.list::<Service>(Some(&ev.namespace)).unwrap_or_default() {
                let Some(sel) = selector(&svc) else { continue };
                if sel.matches(&ev.object) || ev.prev.as_ref().is_some_and(|p| sel.matches(p)) {
                    out.push(Key::new(svc_id, &ev.namespace, svc.metadata.name.as_deref().unwrap_or_default()));
                }
            }
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.client.keys::<Service>()
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let existing = self.client.get::<Endpoints>(&key.namespace, &key.name)?;
        // Ours (and only ours) goes with its Service, or when the Service
        // becomes an ExternalName.
        let drop_ours = |existing: Option<Endpoints>| -> Result<Action, ControllerError> {
            if let Some(ep) =
                existing.filter(|ep| ep.metadata.labels.as_ref().is_some_and(|l| l.contains_key(MANAGED_BY)))
            {
                super::ignore_not_found(self.client.delete::<Endpoints>(
                    &key.namespace,
                    &key.name,
                    ep.metadata.uid.as_deref(),
                ))?;
            }
            Ok(Action::Done)
        };
        let Some(svc) = self.client.get::<Service>(&key.namespace, &key.name)? else {
            return drop_ours(existing);
        };
        let Some(sel) = selector(&svc) else {
            let external = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName");
            return if external { drop_ours(existing) } else { Ok(Action::Done) };
        };
        let pods: Vec<Pod> = self
            .client
            .list::<Pod>(Some(&key.namespace))?
            .into_iter()
            .filter(|p| sel.matches(&serde_json::json!({"metadata": {"labels": p.metadata.labels}})))
            .collect();
        let subsets = subsets(&svc, &pods);
        let mut labels = svc.metadata.labels.clone().unwrap_or_default();
        labels.insert(MANAGED_BY.to_owned(), CONTROLLER.to_owned());
        let want_subsets = (!subsets.is_empty()).then_some(subsets);
        match existing {
            Some(mut ep) => {
                if ep.subsets == want_subsets && ep.metadata.labels == Some(labels.clone()) {
                    return Ok(Action::Done);
                }
                ep.subsets = want_subsets;
                ep.metadata.labels = Some(labels);
                ep.metadata.resource_version = None;
                self.client.replace(&ep)?;
            }
            None => {
                let ep = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(key.name.clone()),
                        namespace: Some(key.namespace.clone()),
                        labels: Some(labels),
                        ..Default::default()
                    },
                    subsets: want_subsets,
                };
                self.client.create(&ep)?;
            }
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus, ServiceSpec};

    use super::*;

    fn svc(name: &str) -> Service {
        Service {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), ..Default::default() },
            spec: Some(ServiceSpec { cluster_ip: Some("None".into()), ..Default::default() }),
            ..Default::default()
        }
    }

    fn pod(name: &str, ip: &str, ready: bool, hostname: Option<&str>, subdomain: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), ..Default::default() },
            spec: Some(PodSpec {
                hostname: hostname.map(Into::into),
                subdomain: subdomain.map(Into::into),
                node_name: Some("n1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    /// Kubernetes' rule: the hostname is published only when the pod's
    /// subdomain is this Service; unready pods land in notReadyAddresses.
    #[test]
    fn hostnames_for_pods_whose_subdomain_is_the_service() {
        let pods = [
            pod("db-0", "10.42.0.2", true, Some("db-0"), Some("db")),
            pod("db-1", "10.42.0.3", false, Some("db-1"), Some("db")),
            pod("other", "10.42.0.4", true, Some("other"), Some("elsewhere")),
            pod("plain", "10.42.0.5", true, Some("plain"), None),
        ];
        let s = subsets(&svc("db"), &pods);
        assert_eq!(s.len(), 1);
        let ready: Vec<(&str, Option<&str>)> =
            s[0].addresses.iter().flatten().map(|a| (a.ip.as_str(), a.hostname.as_deref())).collect();
        assert_eq!(ready, [("10.42.0.2", Some("db-0")), ("10.42.0.4", None), ("10.42.0.5", None)]);
        let not_ready: Vec<(&str, Option<&str>)> =
            s[0].not_ready_addresses.iter().flatten().map(|a| (a.ip.as_str(), a.hostname.as_deref())).collect();
        assert_eq!(not_ready, [("10.42.0.3", Some("db-1"))]);
    }
}
