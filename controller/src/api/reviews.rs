//! The authentication and authorization APIs that are asked, not stored:
//! `SelfSubjectAccessReview` (`kubectl auth can-i`), `SelfSubjectRulesReview`
//! (`kubectl auth can-i --list`), `SelfSubjectReview` (`kubectl auth
//! whoami`), and `TokenRequest` on `serviceaccounts/NAME/token` (`kubectl
//! create token`). Each answers about the requesting user — after
//! impersonation, so `--as` asks about someone else.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{ApiError, ApiState, Req};
use crate::auth::token::BoundRef;
use crate::auth::{Attributes, rbac};

pub const AUTHZ: &str = "authorization.k8s.io";
pub const AUTHN: &str = "authentication.k8s.io";

/// What discovery lists for the two groups.
pub fn resource_list(group: &str) -> Option<Value> {
    let resources = match group {
        AUTHZ => json!([
            {"name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview", "namespaced": false,
             "kind": "SelfSubjectAccessReview", "verbs": ["create"]},
            {"name": "selfsubjectrulesreviews", "singularName": "selfsubjectrulesreview", "namespaced": false,
             "kind": "SelfSubjectRulesReview", "verbs": ["create"]},
        ]),
        AUTHN => json!([
            {"name": "selfsubjectreviews", "singularName": "selfsubjectreview", "namespaced": false,
             "kind": "SelfSubjectReview", "verbs": ["create"]},
        ]),
        _ => return None,
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{group}/v1"), "resources": resources}),
    )
}

async fn body(st: &ApiState, r: Req) -> Result<(Value, crate::auth::User), ApiError> {
    let user = r.user.clone();
    let (bytes, headers, _) = r.bytes(st.config.max_body).await?;
    let (v, _) = super::objects::object_body(&headers, &bytes)?;
    Ok((v, user))
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

/// `kind`/`apiVersion` and `metadata` of an answer, as Kubernetes echoes them.
fn answer(kind: &str, api_version: &str, mut v: Value) -> Value {
    v["kind"] = json!(kind);
    v["apiVersion"] = json!(api_version);
    v["metadata"] = json!({"creationTimestamp": Value::Null});
    v
}

pub(crate) async fn access_review(st: &Arc<ApiState>, r: Req) -> Result<Response, ApiError> {
    let (mut v, user) = body(st, r).await?;
    let spec = v.get("spec").cloned().unwrap_or(json!({}));
    let a = if let Some(ra) = spec.get("resourceAttributes").filter(|x| x.is_object()) {
        Attributes {
            verb: str_at(ra, "/verb").to_owned(),
            group: str_at(ra, "/group").to_owned(),
            resource: str_at(ra, "/resource").to_owned(),
            subresource: str_at(ra, "/subresource").to_owned(),
            namespace: str_at(ra, "/namespace").to_owned(),
            name: str_at(ra, "/name").to_owned(),
            path: None,
        }
    } else if let Some(na) = spec.get("nonResourceAttributes").filter(|x| x.is_object()) {
        Attributes {
            verb: str_at(na, "/verb").to_owned(),
            path: Some(str_at(na, "/path").to_owned()),
            ..Attributes::default()
        }
    } else {
        return Err(ApiError::invalid(
            "SelfSubjectAccessReview",
            AUTHZ,
            "",
            vec![crate::validate::FieldError::invalid(
                "spec.resourceAttributes",
                "null",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        ));
    };
    let allowed = rbac::allowed(&st.store, &user, &a)?;
    let mut status = json!({"allowed": allowed});
    if allowed {
        status["reason"] = json!(if user.groups.iter().any(|g| g == rbac::MASTERS) {
            "allowed because the user is in the system:masters group".to_owned()
        } else {
            "allowed by RBAC".to_owned()
        });
    }
    v["status"] = status;
    let v = answer("SelfSubjectAccessReview", &format!("{AUTHZ}/v1"), v);
    Ok(super::json(StatusCode::CREATED, &v))
}

pub(crate) async fn rules_review(st: &Arc<ApiState>, r: Req) -> Result<Response, ApiError> {
    let (mut v, user) = body(st, r).await?;
    let ns = str_at(&v, "/spec/namespace").to_owned();
    if ns.is_empty() {
        return Err(ApiError::bad_request("no namespace on request"));
    }
    let rules = if user.groups.iter().any(|g| g == rbac::MASTERS) {
        vec![
            k8s_openapi::api::rbac::v1::PolicyRule {
                verbs: vec!["*".into()],
                api_groups: Some(vec!["*".into()]),
                resources: Some(vec!["*".into()]),
                ..Default::default()
            },
            k8s_openapi::api::rbac::v1::PolicyRule {
                verbs: vec!["*".into()],
                non_resource_urls: Some(vec!["*".into()]),
                ..Default::default()
            },
        ]
    } else {
        rbac::rules_for(&st.store, &user, Some(&ns))?
    };
    let (mut resource, mut non_resource) = (Vec::new(), Vec::new());
    for rule in rules {
        if let Some(urls) = rule.non_resource_urls.filter(|u| !u.is_empty()) {
            non_resource.push(json!({"verbs": rule.verbs, "nonResourceURLs": urls}));
        } else {
            let mut x = json!({"verbs": rule.verbs, "apiGroups": rule.api_groups.unwrap_or_default(),
                "resources": rule.resources.unwrap_or_default()});
            if let Some(n) = rule.resource_names.filter(|n| !n.is_empty()) {
                x["resourceNames"] = json!(n);
            }
            resource.push(x);
        }
    }
    v["status"] = json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false});
    let v = answer("SelfSubjectRulesReview", &format!("{AUTHZ}/v1"), v);
    Ok(super::json(StatusCode::CREATED, &v))
}

pub(crate) async fn self_review(st: &Arc<ApiState>, r: Req) -> Result<Response, ApiError> {
    let (mut v, user) = body(st, r).await?;
    v["status"] = json!({"userInfo": user.info()});
    let v = answer("SelfSubjectReview", &format!("{AUTHN}/v1"), v);
    Ok(super::json(StatusCode::CREATED, &v))
}

/// Shortest and longest lifetime a token may be asked for (Kubernetes'
/// minimum; its default maximum is the issuer's, here a day, as
/// `--service-account-max-token-expiration` often is).
const MIN_TTL: i64 = 600;
const MAX_TTL: i64 = 24 * 3600;
const DEFAULT_TTL: i64 = 3600;

/// A token for the ServiceAccount `ns/name`, optionally bound to a Pod or
/// Secret of its namespace: valid until it expires or what it names is gone.
fn mint(
    st: &ApiState,
    ns: &str,
    name: &str,
    ttl: i64,
    audiences: Vec<String>,
    bound: Option<(&str, &str)>,
) -> Result<(String, i64), ApiError> {
    let uid_of = |kind: &str, n: &str| crate::auth::uid_of(&st.store, kind, ns, n);
    let sa_uid = uid_of("ServiceAccount", name)?.ok_or_else(|| ApiError::not_found("serviceaccounts", name))?;
    let account = BoundRef { name: name.to_owned(), uid: sa_uid };
    let (mut pod, mut secret) = (None, None);
    if let Some((kind, bound_name)) = bound {
        let slot = match kind {
            "Pod" => &mut pod,
            "Secret" => &mut secret,
            other => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token to object of kind {other}: only Pod and Secret are supported"
                )));
            }
        };
        let uid = uid_of(kind, bound_name)?
            .ok_or_else(|| ApiError::not_found(&format!("{}s", kind.to_lowercase()), bound_name))?;
        *slot = Some(BoundRef { name: bound_name.to_owned(), uid });
    }
    st.issuer
        .mint(ns, account, pod, secret, audiences, ttl)
        .map_err(|e| ApiError::internal(format!("signing a token: {e}")))
}

/// `POST …/serviceaccounts/NAME/token`.
pub(crate) async fn token_request(st: &Arc<ApiState>, ns: &str, name: &str, r: Req) -> Result<Response, ApiError> {
    let (mut v, _) = body(st, r).await?;
    let spec = v.get("spec").cloned().unwrap_or(json!({}));
    let ttl = spec.get("expirationSeconds").and_then(Value::as_i64).unwrap_or(DEFAULT_TTL);
    if ttl < MIN_TTL {
        return Err(ApiError::invalid(
            "TokenRequest",
            AUTHN,
            name,
            vec![crate::validate::FieldError::invalid(
                "spec.expirationSeconds",
                ttl,
                "may not specify a duration less than 10 minutes",
            )],
        ));
    }
    let ttl = ttl.min(MAX_TTL);
    let audiences: Vec<String> = spec
        .get("audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    let bound = spec.get("boundObjectRef").filter(|b| b.is_object());
    let bound = bound.map(|b| (str_at(b, "/kind"), str_at(b, "/name")));
    let (token, exp) = mint(st, ns, name, ttl, audiences.clone(), bound)?;
    let at = jiff::Timestamp::from_second(exp).map(|t| t.to_string()).unwrap_or_default();
    v["spec"]["expirationSeconds"] = json!(ttl);
    v["spec"]["audiences"] = json!(if audiences.is_empty() { st.issuer.audiences().to_vec() } else { audiences });
    v["status"] = json!({"token": token, "expirationTimestamp": at});
    let mut v = answer("TokenRequest", &format!("{AUTHN}/v1"), v);
    v["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": Value::Null});
    Ok(super::json(StatusCode::CREATED, &v))
}
