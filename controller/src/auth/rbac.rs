//! Role-based access control, as Kubernetes' RBAC authorizer decides: a
//! request is allowed when a ClusterRoleBinding, or a RoleBinding of the
//! request's namespace, names the user (or one of its groups, or its
//! service account) and binds a role with a rule that matches the request.
//! Nothing is cached: bindings and roles are read from the store per
//! decision, so a change applies to the next request. The admin (group
//! `system:masters`) is allowed everything without a lookup.

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};
use serde::de::DeserializeOwned;

use super::{Attributes, User};
use crate::store::{Store, StoreError};

pub const GROUP: &str = "rbac.authorization.k8s.io";
pub const MASTERS: &str = "system:masters";

fn list<T: DeserializeOwned>(store: &Store, kind: &str, ns: Option<&str>) -> Result<Vec<T>, StoreError> {
    let Some(rt) = crate::resources::by_kind(GROUP, kind) else { return Ok(Vec::new()) };
    let (items, _) = store.list(rt.id, ns, None)?;
    // An object that does not decode grants nothing.
    Ok(items.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect())
}

fn get<T: DeserializeOwned>(store: &Store, kind: &str, ns: &str, name: &str) -> Result<Option<T>, StoreError> {
    let Some(rt) = crate::resources::by_kind(GROUP, kind) else { return Ok(None) };
    Ok(store.get(&crate::store::Key::new(rt.id, ns, name))?.and_then(|v| serde_json::from_value(v).ok()))
}

/// Whether `subject` names `user` (a ServiceAccount subject without a
/// namespace is of the binding's).
fn applies(subject: &Subject, user: &User, binding_ns: &str) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.name,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(binding_ns);
            user.name == format!("system:serviceaccount:{ns}:{}", subject.name)
        }
        _ => false,
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Whether `rule` allows the request (Kubernetes' `RuleAllows`).
pub fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !has(&rule.verbs, &a.verb) {
        return false;
    }
    match &a.path {
        Some(path) => rule
            .non_resource_urls
            .iter()
            .flatten()
            .any(|u| u == "*" || u == path || u.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix))),
        None => {
            let groups = rule.api_groups.as_deref().unwrap_or_default();
            let resources = rule.resources.as_deref().unwrap_or_default();
            let combined =
                if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
            let resource_ok = resources.iter().any(|r| {
                r == "*" || *r == combined || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
            });
            let names = rule.resource_names.as_deref().unwrap_or_default();
            has(groups, &a.group) && resource_ok && (names.is_empty() || names.contains(&a.name))
        }
    }
}

/// The rules granted to `user`: cluster-wide, and in `namespace` when one
/// is given.
pub fn rules_for(store: &Store, user: &User, namespace: Option<&str>) -> Result<Vec<PolicyRule>, StoreError> {
    let mut rules = Vec::new();
    for b in list::<ClusterRoleBinding>(store, "ClusterRoleBinding", None)? {
        if b.subjects.iter().flatten().any(|s| applies(s, user, "")) && b.role_ref.kind == "ClusterRole" {
            if let Some(r) = get::<ClusterRole>(store, "ClusterRole", "", &b.role_ref.name)? {
                rules.extend(r.rules.unwrap_or_default());
            }
        }
    }
    if let Some(ns) = namespace.filter(|n| !n.is_empty()) {
        for b in list::<RoleBinding>(store, "RoleBinding", Some(ns))? {
            if !b.subjects.iter().flatten().any(|s| applies(s, user, ns)) {
                continue;
            }
            let granted = match b.role_ref.kind.as_str() {
                "ClusterRole" => get::<ClusterRole>(store, "ClusterRole", "", &b.role_ref.name)?.and_then(|r| r.rules),
                "Role" => get::<Role>(store, "Role", ns, &b.role_ref.name)?.and_then(|r| r.rules),
                _ => None,
            };
            rules.extend(granted.unwrap_or_default());
        }
    }
    Ok(rules)
}

/// Whether `user` may do what `a` describes.
pub fn allowed(store: &Store, user: &User, a: &Attributes) -> Result<bool, StoreError> {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Ok(true);
    }
    let ns = (!a.namespace.is_empty()).then_some(a.namespace.as_str());
    Ok(rules_for(store, user, ns)?.iter().any(|r| rule_allows(r, a)))
}

/// Whether `held` grants everything `wanted` does (Kubernetes'
/// `ConfirmNoEscalation`): each verb, group, resource and name of `wanted`
/// must be covered by one rule of `held`, a wildcard only by a wildcard.
pub fn covers(held: &[PolicyRule], wanted: &PolicyRule) -> bool {
    let one = |v: &str| vec![v.to_owned()];
    let verbs = &wanted.verbs;
    if let Some(urls) = wanted.non_resource_urls.as_deref().filter(|u| !u.is_empty()) {
        return verbs.iter().all(|verb| {
            urls.iter().all(|url| {
                held.iter().any(|h| {
                    let hv = h.verbs.iter().any(|v| v == "*" || v == verb);
                    let hu = h.non_resource_urls.iter().flatten().any(|u| {
                        u == "*" || u == url || u.strip_suffix('*').is_some_and(|p| url.starts_with(p) && url != "*")
                    });
                    hv && hu
                })
            })
        });
    }
    let groups = wanted.api_groups.clone().unwrap_or_else(|| one(""));
    let resources = wanted.resources.clone().unwrap_or_default();
    let names = wanted.resource_names.clone().unwrap_or_default();
    verbs.iter().all(|verb| {
        groups.iter().all(|group| {
            resources.iter().all(|res| {
                held.iter().any(|h| {
                    let hv = h.verbs.iter().any(|v| v == "*" || v == verb);
                    let hg = h.api_groups.iter().flatten().any(|g| g == "*" || g == group);
                    let hr = h.resources.iter().flatten().any(|r| {
                        r == "*" || r == res || res.split_once('/').is_some_and(|(_, sub)| *r == format!("*/{sub}"))
                    });
                    let hn = match h.resource_names.as_deref() {
                        None | Some([]) => true,
                        Some(held_names) => !names.is_empty() && names.iter().all(|n| held_names.contains(n)),
                    };
                    hv && hg && hr && hn
                })
            })
        })
    })
}

/// Kubernetes' escalation check on a write of a role or binding by `user`:
/// a role may only hold rules its author holds (or the author may
/// `escalate`), a binding may only grant a role whose rules its author
/// holds (or may `bind` it); an aggregated ClusterRole, which may gather
/// anything, needs the author to hold everything. `obj` is the object as it
/// would be stored.
pub fn check_escalation(
    store: &Store,
    user: &User,
    kind: &str,
    ns: &str,
    obj: &serde_json::Value,
) -> Result<(), crate::api::ApiError> {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    let name = obj.pointer("/metadata/name").and_then(serde_json::Value::as_str).unwrap_or_default();
    let plural = match kind {
        "Role" => "roles",
        "ClusterRole" => "clusterroles",
        "RoleBinding" => "rolebindings",
        "ClusterRoleBinding" => "clusterrolebindings",
        _ => return Ok(()),
    };
    let scope = if kind.starts_with("Cluster") { None } else { Some(ns) };
    let attrs = |verb: &str, resource: &str, name: &str| Attributes {
        verb: verb.to_owned(),
        group: GROUP.to_owned(),
        resource: resource.to_owned(),
        namespace: scope.unwrap_or_default().to_owned(),
        name: name.to_owned(),
        ..Attributes::default()
    };
    let forbidden = |why: String| {
        let mut e = crate::api::ApiError::forbidden(format!("{plural}.{GROUP} \"{name}\" is forbidden: {why}"));
        e.details = Some(serde_json::json!({"name": name, "group": GROUP, "kind": plural}));
        e
    };
    let not_held = |missing: &[PolicyRule]| {
        let list: Vec<String> = missing
            .iter()
            .map(|r| {
                format!(
                    "{{APIGroups:{:?}, Resources:{:?}, ResourceNames:{:?}, NonResourceURLs:{:?}, Verbs:{:?}}}",
                    r.api_groups.clone().unwrap_or_default(),
                    r.resources.clone().unwrap_or_default(),
                    r.resource_names.clone().unwrap_or_default(),
                    r.non_resource_urls.clone().unwrap_or_default(),
                    r.verbs
                )
            })
            .collect();
        forbidden(format!(
            "user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            user.groups,
            list.join("\n")
        ))
    };
    let held = rules_for(store, user, scope)?;
    let rules_of = |v: &serde_json::Value| -> Vec<PolicyRule> {
        v.get("rules").cloned().and_then(|r| serde_json::from_value(r).ok()).unwrap_or_default()
    };
    match kind {
        "Role" | "ClusterRole" => {
            if allowed(store, user, &attrs("escalate", plural, name))? {
                return Ok(());
            }
            if obj.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                let everything = PolicyRule {
                    verbs: vec!["*".into()],
                    api_groups: Some(vec!["*".into()]),
                    resources: Some(vec!["*".into()]),
                    ..Default::default()
                };
                if !covers(&held, &everything) {
                    return Err(forbidden("must have cluster-admin privileges to use the aggregationRule".into()));
                }
            }
            let missing: Vec<PolicyRule> = rules_of(obj).into_iter().filter(|r| !covers(&held, r)).collect();
            if missing.is_empty() { Ok(()) } else { Err(not_held(&missing)) }
        }
        _ => {
            let role_kind = obj.pointer("/roleRef/kind").and_then(serde_json::Value::as_str).unwrap_or_default();
            let role_name = obj.pointer("/roleRef/name").and_then(serde_json::Value::as_str).unwrap_or_default();
            let (role_plural, role_ns) = if role_kind == "Role" { ("roles", ns) } else { ("clusterroles", "") };
            let mut bind = attrs("bind", role_plural, role_name);
            bind.namespace = role_ns.to_owned();
            if allowed(store, user, &bind)? {
                return Ok(());
            }
            let rt = crate::resources::by_kind(GROUP, role_kind);
            let role = match rt {
                Some(rt) => store.get(&crate::store::Key::new(rt.id, role_ns, role_name))?,
                None => None,
            };
            // A binding to a role that does not exist grants nothing yet;
            // Kubernetes refuses it unless the author may bind it.
            let Some(role) = role else {
                return Err(forbidden(format!(
                    "{role_kind} {role_name:?} not found and user {:?} may not bind it",
                    user.name
                )));
            };
            let missing: Vec<PolicyRule> = rules_of(&role).into_iter().filter(|r| !covers(&held, r)).collect();
            if missing.is_empty() { Ok(()) } else { Err(not_held(&missing)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        PolicyRule {
            verbs: v(verbs),
            api_groups: Some(v(groups)),
            resources: Some(v(resources)),
            resource_names: (!names.is_empty()).then(|| v(names)),
            non_resource_urls: None,
        }
    }

    fn req(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: resource.to_owned(),
            subresource: sub.to_owned(),
            namespace: "default".to_owned(),
            name: name.to_owned(),
            path: None,
        }
    }

    #[test]
    fn rules_match_as_kubernetes_matches_them() {
        let r = rule(&["get", "list"], &[""], &["pods", "pods/log"], &[]);
        assert!(rule_allows(&r, &req("list", "", "pods", "", "")));
        assert!(rule_allows(&r, &req("get", "", "pods", "log", "web")));
        assert!(!rule_allows(&r, &req("create", "", "pods", "", "")), "verb");
        assert!(!rule_allows(&r, &req("get", "apps", "pods", "", "")), "group");
        assert!(!rule_allows(&r, &req("create", "", "pods", "exec", "web")), "subresource");
        let named = rule(&["get"], &[""], &["configmaps"], &["one"]);
        assert!(rule_allows(&named, &req("get", "", "configmaps", "", "one")));
        assert!(!rule_allows(&named, &req("get", "", "configmaps", "", "two")));
        assert!(!rule_allows(&named, &req("list", "", "configmaps", "", "")));
        let any_status = rule(&["update"], &["*"], &["*/status"], &[]);
        assert!(rule_allows(&any_status, &req("update", "apps", "deployments", "status", "d")));
        assert!(!rule_allows(&any_status, &req("update", "apps", "deployments", "", "d")));
        let urls = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: Some(vec!["/healthz".into(), "/apis/*".into()]),
            ..Default::default()
        };
        let path = |p: &str| Attributes { path: Some(p.to_owned()), ..req("get", "", "", "", "") };
        assert!(rule_allows(&urls, &path("/healthz")) && rule_allows(&urls, &path("/apis/apps/v1")));
        assert!(!rule_allows(&urls, &path("/metrics")));
    }

    #[test]
    fn covering_a_rule_needs_every_part_of_it() {
        let held = [rule(&["get", "list"], &[""], &["pods", "configmaps"], &[])];
        assert!(covers(&held, &rule(&["get"], &[""], &["pods"], &[])));
        assert!(covers(&held, &rule(&["get"], &[""], &["configmaps"], &["one"])));
        assert!(!covers(&held, &rule(&["get", "delete"], &[""], &["pods"], &[])), "a verb not held");
        assert!(!covers(&held, &rule(&["get"], &[""], &["secrets"], &[])), "a resource not held");
        assert!(!covers(&held, &rule(&["*"], &[""], &["pods"], &[])), "a wildcard only by a wildcard");
        assert!(covers(&[rule(&["*"], &["*"], &["*"], &[])], &rule(&["*"], &["apps"], &["*"], &[])));
        let only_one = [rule(&["get"], &[""], &["configmaps"], &["one"])];
        assert!(!covers(&only_one, &rule(&["get"], &[""], &["configmaps"], &[])), "all names from one");
    }
}
