//! Who a request comes from and what it may do.
//!
//! Authentication: the admin token of the written kubeconfig is
//! `system:admin` in `system:masters` (as K3s's admin), allowed everything;
//! a ServiceAccount token (a JWT from [`token::Issuer`]) is
//! `system:serviceaccount:NS:NAME` in `system:serviceaccounts`,
//! `system:serviceaccounts:NS` and `system:authenticated`, once its
//! ServiceAccount — and the pod or secret it is bound to — still exist with
//! the uids it names. Anything else is 401. With `--insecure-http` a
//! request without a ServiceAccount token is the admin.
//!
//! Then impersonation (`Impersonate-User`/`-Group`/`-Uid` headers, what
//! `kubectl --as` sends), allowed by RBAC's `impersonate` verb, and the RBAC
//! decision ([`rbac`]) on the request's attributes, Kubernetes' 403 when
//! refused.

pub mod bootstrap;
pub mod rbac;
pub mod token;

use std::collections::BTreeMap;

use axum::http::{HeaderMap, Method, header};
use serde_json::{Value, json};

use crate::api::ApiError;
use crate::store::{Key, Store};

pub const ADMIN: &str = "system:admin";
pub const AUTHENTICATED: &str = "system:authenticated";

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    pub fn admin() -> User {
        User {
            name: ADMIN.to_owned(),
            groups: vec![rbac::MASTERS.to_owned(), AUTHENTICATED.to_owned()],
            ..User::default()
        }
    }

    /// A ServiceAccount's user, with the groups Kubernetes gives it.
    pub fn service_account(ns: &str, name: &str, uid: &str) -> User {
        User {
            name: format!("system:serviceaccount:{ns}:{name}"),
            uid: uid.to_owned(),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{ns}"),
                AUTHENTICATED.to_owned(),
            ],
            extra: BTreeMap::new(),
        }
    }

    /// `userInfo` as the authentication API writes it.
    pub fn info(&self) -> Value {
        let mut v = json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }
}

/// What a request does, as the authorizer sees it (Kubernetes'
/// `authorizer.Attributes`). `path` is set for a non-resource request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: Option<String>,
}

impl Attributes {
    /// The attributes of a request (Kubernetes' `RequestInfo`): a path under
    /// `/api/v1` or `/apis/G/V` is a resource request, anything else a
    /// non-resource one with the method's verb.
    pub fn of(method: &Method, path: &str, query: &str) -> Attributes {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, rest) = match segs.as_slice() {
            ["api", _v, rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", g, _v, rest @ ..] if !rest.is_empty() => (*g, rest),
            _ => {
                let verb = match *method {
                    Method::GET | Method::HEAD => "get",
                    Method::POST => "post",
                    Method::PUT => "put",
                    Method::PATCH => "patch",
                    Method::DELETE => "delete",
                    _ => "",
                };
                return Attributes { verb: verb.to_owned(), path: Some(path.to_owned()), ..Attributes::default() };
            }
        };
        let (namespace, rest): (&str, &[&str]) = match rest {
            ["namespaces", ns, more @ ..] if !more.is_empty() => (ns, more),
            // `namespaces/NAME` is the namespace itself, in itself.
            ["namespaces", ns] => (ns, &["namespaces", ns][..]),
            r => ("", r),
        };
        let (resource, name, sub) = match rest {
            [r] => (*r, "", ""),
            [r, n] => (*r, *n, ""),
            [r, n, s, ..] => (*r, *n, *s),
            [] => ("", "", ""),
        };
        let watch = form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == "watch" && v != "0" && !v.eq_ignore_ascii_case("false"));
        let verb = match (method, name.is_empty()) {
            // Streams that run commands or open ports create them, whichever
            // method (a WebSocket upgrade is a GET).
            _ if matches!(sub, "exec" | "attach" | "portforward") => "create",
            (&Method::GET | &Method::HEAD, true) if watch => "watch",
            (&Method::GET | &Method::HEAD, true) => "list",
            (&Method::GET | &Method::HEAD, false) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, true) => "deletecollection",
            (&Method::DELETE, false) => "delete",
            _ => "",
        };
        Attributes {
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: resource.to_owned(),
            subresource: sub.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            path: None,
        }
    }

    /// Kubernetes' 403 for `user` doing this.
    pub fn forbidden(&self, user: &User) -> ApiError {
        let mut e = match &self.path {
            Some(p) => {
                ApiError::forbidden(format!("forbidden: User \"{}\" cannot {} path \"{p}\"", user.name, self.verb))
            }
            None => {
                let qualified = if self.group.is_empty() {
                    self.resource.clone()
                } else {
                    format!("{}.{}", self.resource, self.group)
                };
                let what = if self.name.is_empty() { qualified } else { format!("{qualified} \"{}\"", self.name) };
                let res = if self.subresource.is_empty() {
                    self.resource.clone()
                } else {
                    format!("{}/{}", self.resource, self.subresource)
                };
                let scope = if self.namespace.is_empty() {
                    "at the cluster scope".to_owned()
                } else {
                    format!("in the namespace \"{}\"", self.namespace)
                };
                let mut e = ApiError::forbidden(format!(
                    "{what} is forbidden: User \"{}\" cannot {} resource \"{res}\" in API group \"{}\" {scope}",
                    user.name, self.verb, self.group
                ));
                let mut d = json!({"kind": self.resource});
                if !self.name.is_empty() {
                    d["name"] = json!(self.name);
                }
                if !self.group.is_empty() {
                    d["group"] = json!(self.group);
                }
                e.details = Some(d);
                e
            }
        };
        if e.details.is_none() {
            e.details = Some(json!({}));
        }
        e
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The user a request comes from, or 401.
pub fn authenticate(
    store: &Store,
    issuer: &token::Issuer,
    admin_token: Option<&str>,
    headers: &HeaderMap,
) -> Result<User, ApiError> {
    let presented = bearer(headers);
    match (presented, admin_token) {
        (Some(t), _) if token::looks_like_jwt(t) => service_account_user(store, issuer, t),
        (Some(t), Some(admin)) if kedge_common::sign::same_secret(t.as_bytes(), admin.as_bytes()) => Ok(User::admin()),
        // No authentication configured (`--insecure-http`): the admin.
        (_, None) => Ok(User::admin()),
        _ => Err(ApiError::unauthorized()),
    }
}

/// The uid of the core object `kind` `ns/name`, if it exists.
pub(crate) fn uid_of(store: &Store, kind: &str, ns: &str, name: &str) -> Result<Option<String>, ApiError> {
    let Some(rt) = crate::resources::by_kind("", kind) else { return Ok(None) };
    let obj = store.get(&Key::new(rt.id, ns, name))?;
    Ok(obj.and_then(|o| crate::meta::get_str(&o, "uid").map(str::to_owned)))
}

fn service_account_user(store: &Store, issuer: &token::Issuer, t: &str) -> Result<User, ApiError> {
    let refuse = |why: String| {
        tracing::debug!(%why, "refused a service account token");
        ApiError::unauthorized()
    };
    let claims = issuer.verify(t).map_err(|e| refuse(e.to_string()))?;
    let k = &claims.kube;
    let uid_of = |kind: &str, ns: &str, name: &str| uid_of(store, kind, ns, name);
    if uid_of("ServiceAccount", &k.namespace, &k.serviceaccount.name)?.as_deref() != Some(&k.serviceaccount.uid) {
        return Err(refuse(format!("service account {}/{} is gone", k.namespace, k.serviceaccount.name)));
    }
    for (kind, bound) in [("Pod", &k.pod), ("Secret", &k.secret)] {
        if let Some(b) = bound {
            if uid_of(kind, &k.namespace, &b.name)?.as_deref() != Some(&b.uid) {
                return Err(refuse(format!("the {kind} {}/{} the token is bound to is gone", k.namespace, b.name)));
            }
        }
    }
    let mut user = User::service_account(&k.namespace, &k.serviceaccount.name, &k.serviceaccount.uid);
    if let Some(p) = &k.pod {
        user.extra.insert("authentication.kubernetes.io/pod-name".into(), vec![p.name.clone()]);
        user.extra.insert("authentication.kubernetes.io/pod-uid".into(), vec![p.uid.clone()]);
    }
    user.extra.insert("authentication.kubernetes.io/credential-id".into(), vec![format!("JTI={}", claims.jti)]);
    Ok(user)
}

/// The user a request acts as: `user` itself, or who its `Impersonate-*`
/// headers name when RBAC lets `user` impersonate them.
pub fn impersonate(store: &Store, user: User, headers: &HeaderMap) -> Result<User, ApiError> {
    let values = |name: &str| -> Vec<String> {
        headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect()
    };
    let Some(name) = values("impersonate-user").into_iter().next() else {
        if !values("impersonate-group").is_empty() || !values("impersonate-uid").is_empty() {
            return Err(ApiError::bad_request(
                "requested impersonation of groups or uid without impersonating a user".to_owned(),
            ));
        }
        return Ok(user);
    };
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next().unwrap_or_default();
    let check = |a: Attributes| -> Result<(), ApiError> {
        if rbac::allowed(store, &user, &a)? { Ok(()) } else { Err(a.forbidden(&user)) }
    };
    let sa = name.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':'));
    let target = match sa {
        Some((ns, sa_name)) => Attributes {
            verb: "impersonate".into(),
            resource: "serviceaccounts".into(),
            namespace: ns.into(),
            name: sa_name.into(),
            ..Attributes::default()
        },
        None => Attributes {
            verb: "impersonate".into(),
            resource: "users".into(),
            name: name.clone(),
            ..Attributes::default()
        },
    };
    check(target)?;
    for g in &groups {
        check(Attributes {
            verb: "impersonate".into(),
            resource: "groups".into(),
            name: g.clone(),
            ..Attributes::default()
        })?;
    }
    if !uid.is_empty() {
        check(Attributes {
            verb: "impersonate".into(),
            group: "authentication.k8s.io".into(),
            resource: "uids".into(),
            name: uid.clone(),
            ..Attributes::default()
        })?;
    }
    let mut as_user = match (sa, groups.is_empty()) {
        // A service account named without groups gets its own.
        (Some((ns, sa_name)), true) => User::service_account(ns, sa_name, ""),
        _ => User { name: name.clone(), groups, ..User::default() },
    };
    as_user.uid = uid;
    let unauthenticated = "system:unauthenticated";
    if name == "system:anonymous" {
        if !as_user.groups.iter().any(|g| g == unauthenticated) {
            as_user.groups.push(unauthenticated.to_owned());
        }
    } else if !as_user.groups.iter().any(|g| g == AUTHENTICATED || g == unauthenticated) {
        as_user.groups.push(AUTHENTICATED.to_owned());
    }
    Ok(as_user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(method: Method, path: &str, query: &str) -> (String, String, String, String, String, String) {
        let x = Attributes::of(&method, path, query);
        (x.verb, x.group, x.resource, x.subresource, x.namespace, x.name)
    }

    fn t(v: &str, g: &str, r: &str, s: &str, ns: &str, n: &str) -> (String, String, String, String, String, String) {
        (v.into(), g.into(), r.into(), s.into(), ns.into(), n.into())
    }

    #[test]
    fn requests_have_kubernetes_attributes() {
        assert_eq!(a(Method::GET, "/api/v1/namespaces/default/pods", ""), t("list", "", "pods", "", "default", ""));
        assert_eq!(a(Method::GET, "/api/v1/pods", "watch=1"), t("watch", "", "pods", "", "", ""));
        assert_eq!(
            a(Method::GET, "/apis/apps/v1/namespaces/x/deployments/d/scale", ""),
            t("get", "apps", "deployments", "scale", "x", "d")
        );
        assert_eq!(
            a(Method::GET, "/api/v1/namespaces/x/pods/p/exec", "command=sh"),
            t("create", "", "pods", "exec", "x", "p")
        );
        assert_eq!(
            a(Method::DELETE, "/api/v1/namespaces/x/configmaps", ""),
            t("deletecollection", "", "configmaps", "", "x", "")
        );
        assert_eq!(a(Method::GET, "/api/v1/namespaces/x", ""), t("get", "", "namespaces", "", "x", "x"));
        assert_eq!(a(Method::GET, "/api/v1/nodes/n1", ""), t("get", "", "nodes", "", "", "n1"));
        let p = Attributes::of(&Method::GET, "/openapi/v2", "");
        assert_eq!((p.verb.as_str(), p.path.as_deref()), ("get", Some("/openapi/v2")));
        let p = Attributes::of(&Method::GET, "/apis/apps/v1", "");
        assert_eq!(p.path.as_deref(), Some("/apis/apps/v1"), "discovery is a path");
    }

    #[test]
    fn forbidden_messages_are_kubernetes_words() {
        let sa = User::service_account("default", "default", "u");
        let list = Attributes::of(&Method::GET, "/api/v1/namespaces/default/pods", "");
        assert_eq!(
            list.forbidden(&sa).message,
            "pods is forbidden: User \"system:serviceaccount:default:default\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
        let exec = Attributes::of(&Method::POST, "/api/v1/namespaces/default/pods/web/exec", "");
        assert_eq!(
            exec.forbidden(&sa).message,
            "pods \"web\" is forbidden: User \"system:serviceaccount:default:default\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\""
        );
        let nodes = Attributes::of(&Method::GET, "/apis/storage.k8s.io/v1/storageclasses", "");
        assert!(nodes.forbidden(&sa).message.ends_with("in API group \"storage.k8s.io\" at the cluster scope"));
        let path = Attributes::of(&Method::GET, "/metrics", "");
        assert_eq!(
            path.forbidden(&sa).message,
            "forbidden: User \"system:serviceaccount:default:default\" cannot get path \"/metrics\""
        );
    }
}
