//! Kubernetes' default roles and bindings (its `bootstrappolicy`), limited
//! to the resources this server serves: `cluster-admin` for
//! `system:masters`; `system:discovery`, `system:basic-user` and
//! `system:public-info-viewer` for every authenticated user; and the
//! user-facing `admin`, `edit` and `view`, aggregated from
//! `system:aggregate-to-{admin,edit,view}` by the aggregation controller as
//! in Kubernetes, so a role labelled `aggregate-to-view` extends `view`
//! (and `system:aggregated-metrics-reader`, as metrics-server installs it).
//! Rules naming resources this server does not serve (`pods/proxy`,
//! `replicationcontrollers`, the `extensions` group, …) are left out.
//!
//! They are put back at every start, as the API server's post-start hook
//! does: a missing one is made, a changed one gets its rules back — unless
//! it is annotated `rbac.authorization.kubernetes.io/autoupdate: "false"`.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::client::Client;
use crate::controllers::ControllerError;

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule { verbs: v(verbs), api_groups: Some(v(groups)), resources: Some(v(resources)), ..Default::default() }
}

fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule { verbs: v(verbs), non_resource_urls: Some(v(urls)), ..Default::default() }
}

fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    let mut l: BTreeMap<String, String> = [("kubernetes.io/bootstrapping", "rbac-defaults")]
        .iter()
        .chain(labels)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    l.retain(|_, v| !v.is_empty());
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(l),
        annotations: Some([(AUTOUPDATE.to_owned(), "true".to_owned())].into()),
        ..Default::default()
    }
}

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole { metadata: meta(name, labels), rules: Some(rules), aggregation_rule: None }
}

fn aggregated(name: &str, labels: &[(&str, &str)], selector: &str) -> ClusterRole {
    let sel =
        LabelSelector { match_labels: Some([(selector.to_owned(), "true".to_owned())].into()), ..Default::default() };
    ClusterRole {
        metadata: meta(name, labels),
        rules: Some(Vec::new()),
        aggregation_rule: Some(AggregationRule { cluster_role_selectors: Some(vec![sel]) }),
    }
}

const TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<ClusterRole> {
    let public = ["/healthz", "/livez", "/readyz", "/version", "/version/"];
    let mut discovery = vec!["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*"];
    discovery.extend(public);
    vec![
        role("cluster-admin", &[], vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])]),
        role("system:discovery", &[], vec![urls(&["get"], &discovery)]),
        role("system:public-info-viewer", &[], vec![urls(&["get"], &public)]),
        role(
            "system:basic-user",
            &[],
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                rule(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        aggregated("admin", &[], TO_ADMIN),
        aggregated("edit", &[(TO_ADMIN, "true")], TO_EDIT),
        aggregated("view", &[(TO_EDIT, "true")], TO_VIEW),
        role(
            "system:aggregate-to-admin",
            &[(TO_ADMIN, "true")],
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["localsubjectaccessreviews"]),
                rule(
                    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                ),
            ],
        ),
        role(
            "system:aggregate-to-edit",
            &[(TO_EDIT, "true")],
            vec![
                rule(READ, &[""], &["pods/attach", "pods/exec", "pods/portforward", "secrets"]),
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
                rule(WRITE, &[""], &["pods", "pods/attach", "pods/exec", "pods/portforward"]),
                rule(&["create"], &[""], &["pods/eviction"]),
                rule(
                    WRITE,
                    &[""],
                    &["configmaps", "events", "persistentvolumeclaims", "secrets", "serviceaccounts", "services"],
                ),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
                rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
                rule(
                    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
            ],
        ),
        role(
            "system:aggregate-to-view",
            &[(TO_VIEW, "true")],
            vec![
                rule(
                    READ,
                    &[""],
                    &["configmaps", "endpoints", "persistentvolumeclaims", "pods", "serviceaccounts", "services"],
                ),
                rule(READ, &[""], &["events", "pods/log", "pods/status"]),
                rule(READ, &[""], &["namespaces"]),
                rule(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                rule(READ, &["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"]),
                rule(READ, &["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"]),
            ],
        ),
        // What metrics-server installs (K3s bundles it): `kubectl top` for
        // whoever may view.
        role(
            "system:aggregated-metrics-reader",
            &[(TO_VIEW, "true"), (TO_EDIT, "true"), (TO_ADMIN, "true")],
            vec![rule(READ, &["metrics.k8s.io"], &["nodes", "pods"])],
        ),
    ]
}

fn binding(role: &str, groups: &[&str]) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(role, &[]),
        role_ref: RoleRef {
            api_group: super::rbac::GROUP.to_owned(),
            kind: "ClusterRole".to_owned(),
            name: role.to_owned(),
        },
        subjects: Some(
            groups
                .iter()
                .map(|g| Subject {
                    kind: "Group".to_owned(),
                    api_group: Some(super::rbac::GROUP.to_owned()),
                    name: (*g).to_owned(),
                    namespace: None,
                })
                .collect(),
        ),
    }
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    vec![
        binding("cluster-admin", &[super::rbac::MASTERS]),
        binding("system:discovery", &[super::AUTHENTICATED]),
        binding("system:basic-user", &[super::AUTHENTICATED]),
        binding("system:public-info-viewer", &[super::AUTHENTICATED, "system:unauthenticated"]),
    ]
}

fn autoupdate(m: &ObjectMeta) -> bool {
    m.annotations.as_ref().and_then(|a| a.get(AUTOUPDATE)).is_none_or(|v| v != "false")
}

/// Makes or restores the defaults.
pub fn ensure(client: &Client) -> Result<(), ControllerError> {
    for want in cluster_roles() {
        let name = want.metadata.name.clone().unwrap_or_default();
        match client.get::<ClusterRole>("", &name)? {
            None => {
                client.create(&want)?;
            }
            Some(mut have) if autoupdate(&have.metadata) => {
                // An aggregated role's rules are the aggregation controller's.
                let same_rules = want.aggregation_rule.is_some() || have.rules == want.rules;
                if same_rules && have.aggregation_rule == want.aggregation_rule {
                    continue;
                }
                if want.aggregation_rule.is_none() {
                    have.rules = want.rules;
                }
                have.aggregation_rule = want.aggregation_rule;
                have.metadata.resource_version = None;
                client.replace(&have)?;
            }
            Some(_) => {}
        }
    }
    for want in cluster_role_bindings() {
        let name = want.metadata.name.clone().unwrap_or_default();
        match client.get::<ClusterRoleBinding>("", &name)? {
            None => {
                client.create(&want)?;
            }
            Some(mut have) if autoupdate(&have.metadata) && have.subjects != want.subjects => {
                // The role a binding names cannot change; its subjects come back.
                have.subjects = want.subjects;
                have.metadata.resource_version = None;
                client.replace(&have)?;
            }
            Some(_) => {}
        }
    }
    Ok(())
}
