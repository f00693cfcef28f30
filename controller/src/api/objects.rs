//! The HTTP side of create, read, update, patch and delete, with the
//! `status`, `scale` and `binding` subresources: bodies, query parameters and
//! responses. The writes themselves are [`crate::write`]'s.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{ApiState, Req, Target, json_warn, table};
use crate::meta;
use crate::patch::{self, PatchType};
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::Key;
use crate::validate::{FieldError, FieldValidation, strict};
use crate::write::{At, Binding, DeleteOpts, Part, Propagation, WriteOpts};

fn ns_of(t: &Target) -> &str {
    t.namespace.as_deref().unwrap_or_default()
}

fn name_of(t: &Target) -> &str {
    t.name.as_deref().unwrap_or_default()
}

fn at(t: &Target) -> At<'_> {
    At { rt: t.rt, ns: ns_of(t), name: name_of(t) }
}

fn key(t: &Target) -> Key {
    Key::new(t.rt.id, ns_of(t), name_of(t))
}

/// Parses a JSON object body, noting duplicated keys.
fn parse_body(bytes: &[u8]) -> Result<(Value, Vec<String>), ApiError> {
    let (v, dups) =
        strict::parse(bytes).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    Ok((v, dups))
}

/// An object body in JSON, or in Kubernetes protobuf (what typed clients
/// such as `kubectl create deployment` send), as JSON.
pub(super) fn object_body(headers: &axum::http::HeaderMap, bytes: &[u8]) -> Result<(Value, Vec<String>), ApiError> {
    let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    match ct.split(';').next().unwrap_or_default().trim() {
        "application/json" | "" => parse_body(bytes),
        super::proto::CONTENT_TYPE => {
            let v = super::proto::decode(bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
            Ok((v, Vec::new()))
        }
        _ => Err(ApiError::unsupported_media(ct)),
    }
}

/// A node's Lease as it is now: `renewTime` is the node's last sign of life
/// from the fleet (kept in memory, not written per heartbeat).
fn renewed(st: &ApiState, rt: &ResourceType, mut obj: Value) -> Value {
    let node_lease = rt.kind == "Lease"
        && meta::get_str(&obj, "namespace") == Some(crate::controllers::nodelifecycle::NODE_LEASE_NAMESPACE);
    if let (true, Some(l)) = (node_lease, &st.liveness) {
        let node = meta::get_str(&obj, "name").unwrap_or_default().to_owned();
        if let Some(t) = l.heartbeat(&node).and_then(|s| jiff::Timestamp::from_second(s).ok()) {
            obj["spec"]["renewTime"] = json!(t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string());
        }
    }
    obj
}

pub fn get(st: &Arc<ApiState>, t: &Target, r: &Req) -> Result<Response, ApiError> {
    let obj = st.store.get(&key(t))?.ok_or_else(|| ApiError::not_found(&t.rt.qualified(), name_of(t)))?;
    let obj = renewed(st, t.rt, obj);
    let body = match t.sub.as_deref() {
        Some("scale") => scale_of(t.rt, &obj),
        _ if r.wants_table() => {
            table::table(t.rt, std::slice::from_ref(&obj), &meta_rv(&obj), r.param("includeObject"))
        }
        _ => obj,
    };
    Ok(super::json(StatusCode::OK, &body))
}

fn meta_rv(obj: &Value) -> String {
    meta::get_str(obj, "resourceVersion").unwrap_or_default().to_owned()
}

/// Label and field selectors from the query.
pub(crate) fn selectors(rt: &ResourceType, r: &Req) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let ls = LabelSelector::parse(r.param("labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fs = FieldSelector::parse(r.param("fieldSelector").unwrap_or_default(), rt.fields)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((ls, fs))
}

pub fn list(st: &Arc<ApiState>, t: &Target, r: &Req) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(t.rt, r)?;
    let limit = r.param("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
    let after = match r.param("continue").filter(|c| !c.is_empty()) {
        Some(c) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::bad_request("invalid continue token"))?,
        ),
        None => None,
    };
    if let (Some(a), Some(ns)) = (after.as_deref(), t.namespace.as_deref()) {
        if a.split_once('/').map(|(n, _)| n) != Some(ns) {
            return Err(ApiError::bad_request("invalid continue token: it belongs to another list"));
        }
    }
    let exact = list_version(r, after.is_some())?;
    let (mut items, mut rev) = st.store.list(t.rt.id, t.namespace.as_deref(), after.as_deref())?;
    if let Some(at) = exact {
        items = as_of(st, t, items, rev, at)?;
        rev = at;
    }
    let mut selected: Vec<Value> = Vec::new();
    let mut cont = None;
    for item in items {
        if !(ls.matches(&item) && fs.matches(&item)) {
            continue;
        }
        if limit.is_some_and(|l| selected.len() == l) {
            if let Some(last) = selected.last() {
                let k = format!(
                    "{}/{}",
                    meta::get_str(last, "namespace").unwrap_or_default(),
                    meta::get_str(last, "name").unwrap_or_default()
                );
                cont = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k));
            }
            break;
        }
        selected.push(renewed(st, t.rt, item));
    }
    let rv = rev.to_string();
    let body = if r.wants_table() {
        let mut tb = table::table(t.rt, &selected, &rv, r.param("includeObject"));
        if let Some(c) = &cont {
            tb["metadata"]["continue"] = json!(c);
        }
        tb
    } else {
        let mut md = json!({"resourceVersion": rv});
        if let Some(c) = cont {
            md["continue"] = json!(c);
        }
        json!({"kind": t.rt.list_kind(), "apiVersion": t.rt.api_version(), "metadata": md, "items": selected})
    };
    Ok(super::json(StatusCode::OK, &body))
}

/// The revision a list must be answered at: `Some` for
/// `resourceVersionMatch=Exact`, `None` for the newest (no version, or
/// `NotOlderThan`, which the newest always is). Refuses what Kubernetes
/// refuses.
fn list_version(r: &Req, continues: bool) -> Result<Option<u64>, ApiError> {
    let rv = r.param("resourceVersion").filter(|v| !v.is_empty());
    let Some(matching) = r.param("resourceVersionMatch").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let Some(rv) = rv else {
        return Err(ApiError::bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided"));
    };
    if continues {
        return Err(ApiError::bad_request("resourceVersionMatch is forbidden when continue is provided"));
    }
    let n = rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
    match matching {
        "NotOlderThan" => Ok(None),
        "Exact" if n == 0 => {
            Err(ApiError::bad_request("resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""))
        }
        "Exact" => Ok(Some(n)),
        other => Err(ApiError::bad_request(format!(
            "unsupported resourceVersionMatch value \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
        ))),
    }
}

/// `items`, listed at revision `now`, as they were at revision `at`: the
/// changes since are undone from the watch history, newest first. A
/// revision older than the history is 410 Gone, as after an etcd
/// compaction; a future one is Kubernetes' "too large" timeout.
fn as_of(st: &ApiState, t: &Target, items: Vec<Value>, now: u64, at: u64) -> Result<Vec<Value>, ApiError> {
    if at > now {
        return Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!("Too large resource version: {at}, current: {now}"),
        ));
    }
    // A commit and the publishing of its event happen in one call on the
    // server's one thread, so the history already holds every revision up
    // to `now`.
    let undo = st.store.hub().between(at, now).map_err(|_| {
        ApiError::gone(format!("The resourceVersion for the provided list is too old. (requested {at})"))
    })?;
    let name = |o: &Value| {
        (
            meta::get_str(o, "namespace").unwrap_or_default().to_owned(),
            meta::get_str(o, "name").unwrap_or_default().to_owned(),
        )
    };
    let mut objects: std::collections::BTreeMap<(String, String), Value> =
        items.into_iter().map(|o| (name(&o), o)).collect();
    for ev in undo.iter().rev() {
        if ev.resource != t.rt.id || t.namespace.as_deref().is_some_and(|ns| ns != ev.namespace) {
            continue;
        }
        let k = (ev.namespace.clone(), ev.name.clone());
        match (&ev.kind, &ev.prev) {
            (crate::store::EventType::Added, _) | (_, None) => {
                objects.remove(&k);
            }
            (_, Some(prev)) => {
                objects.insert(k, prev.clone());
            }
        }
    }
    Ok(objects.into_values().collect())
}

/// The RBAC escalation check, for writes of roles and bindings.
fn escalation(st: &ApiState, t: &Target, user: &crate::auth::User, obj: &Value) -> Result<(), ApiError> {
    if t.rt.group != crate::auth::rbac::GROUP || t.sub.is_some() {
        return Ok(());
    }
    crate::auth::rbac::check_escalation(&st.store, user, t.rt.kind, ns_of(t), obj)
}

pub async fn create(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    if t.name.is_some() {
        return Err(ApiError::method_not_allowed("POST", t.rt.plural));
    }
    let manager = field_manager(&r)?;
    let w = write_opts(&r, &manager)?;
    let user = r.user.clone();
    let (bytes, headers, _) = r.bytes(st.config.max_body).await?;
    let (body, dups) = object_body(&headers, &bytes)?;
    escalation(st, t, &user, &body)?;
    let (obj, warnings) = st.writer.create(t.rt, ns_of(t), body, &dups, w)?;
    Ok(json_warn(StatusCode::CREATED, &obj, &warnings))
}

/// The request's field manager: `?fieldManager=`, else its user agent up
/// to the first `/` (`kubectl`, `OpenAPI-Generator`), as Kubernetes names it.
fn field_manager(r: &Req) -> Result<String, ApiError> {
    let agent = || {
        r.headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.split('/').next().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    let m = r.param("fieldManager").filter(|m| !m.is_empty()).map_or_else(agent, str::to_owned);
    if m.chars().count() > 128 {
        return Err(ApiError::bad_request("fieldManager: Too long: may not be longer than 128"));
    }
    if m.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad_request("fieldManager: Invalid value: must only contain printable characters"));
    }
    Ok(m)
}

fn write_opts<'a>(r: &Req, manager: &'a str) -> Result<WriteOpts<'a>, ApiError> {
    let v = r.param("fieldValidation");
    let mode = FieldValidation::parse(v).ok_or_else(|| {
        ApiError::bad_request(format!(
            "fieldValidation parameter unsupported: {:?}, must be one of Strict, Warn or Ignore",
            v.unwrap_or_default()
        ))
    })?;
    Ok(WriteOpts { mode, dry_run: dry_run(r)?, fields: crate::write::Fields::Track(manager) })
}

fn dry_run(r: &Req) -> Result<bool, ApiError> {
    match r.param("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("unsupported dryRun value {other:?}: only All is supported"))),
    }
}

fn part_of(t: &Target) -> Part {
    if t.sub.as_deref() == Some("status") { Part::Status } else { Part::Main }
}

pub async fn replace(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    let manager = field_manager(&r)?;
    let w = write_opts(&r, &manager)?;
    let user = r.user.clone();
    let (bytes, headers, _) = r.bytes(st.config.max_body).await?;
    let (body, dups) = object_body(&headers, &bytes)?;
    if t.sub.as_deref() == Some("scale") {
        return write_scale(st, t, w, |_| Ok(body));
    }
    // The body is the object as it would be stored: checked before the write.
    escalation(st, t, &user, &body)?;
    let (obj, warnings) = st.writer.update::<ApiError>(at(t), part_of(t), w, &dups, |_| Ok(body))?;
    Ok(json_warn(StatusCode::OK, &obj, &warnings))
}

/// Server-side apply's content type.
pub const APPLY: &str = "application/apply-patch+yaml";

/// An apply: the body (YAML or JSON) is the manager's whole intent for the
/// object, merged by [`crate::managed::apply`]; it makes the object when
/// there is none. Conflicts are Kubernetes' 409 with one cause per field.
async fn server_side_apply(
    st: &Arc<ApiState>,
    t: &Target,
    w: WriteOpts<'_>,
    manager: &str,
    force: bool,
    user: &crate::auth::User,
    bytes: &[u8],
) -> Result<Response, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::bad_request("the apply body is not UTF-8"))?;
    let applied: Value =
        serde_yaml_ng::from_str(text).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if !applied.is_object() {
        return Err(ApiError::bad_request("the apply body must be an object"));
    }
    let (kind, api_version) =
        (applied.get("kind").and_then(Value::as_str), applied.get("apiVersion").and_then(Value::as_str));
    match (api_version, kind) {
        (None, _) | (Some(""), _) => return Err(ApiError::bad_request("apiVersion must be set in the apply body")),
        (_, None) | (_, Some("")) => return Err(ApiError::bad_request("kind must be set in the apply body")),
        (Some(v), Some(k)) if v != t.rt.api_version() || k != t.rt.kind => {
            return Err(ApiError::bad_request(format!(
                "the apply body is a {v} {k}, not a {} {}",
                t.rt.api_version(),
                t.rt.kind
            )));
        }
        _ => {}
    }
    let name = name_of(t);
    match meta::get_str(&applied, "name") {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        _ => {}
    }
    let status = part_of(t) == Part::Status;
    let conflicted = |c: Vec<crate::managed::Conflict>| {
        let mut e = ApiError::new(StatusCode::CONFLICT, "Conflict", crate::managed::conflict_message(&c));
        let causes: Vec<Value> = c
            .iter()
            .map(|c| {
                json!({"reason": "FieldManagerConflict", "message": c.with(),
                       "field": crate::managed::fieldset::display(&c.path)})
            })
            .collect();
        e.details = Some(json!({"name": name, "group": t.rt.group, "kind": t.rt.plural, "causes": causes}));
        e
    };
    let w = WriteOpts { fields: crate::write::Fields::AsIs, ..w };
    // Twice at most: made meanwhile by someone else, it is applied to.
    for _ in 0..2 {
        let exists = st.store.get(&key(t))?.is_some();
        if !exists && !status {
            let mut empty = json!({"apiVersion": t.rt.api_version(), "kind": t.rt.kind, "metadata": {"name": name}});
            if t.rt.namespaced {
                empty["metadata"]["namespace"] = json!(ns_of(t));
            }
            let obj = crate::managed::apply(t.rt, false, &empty, &applied, manager, force).map_err(conflicted)?;
            escalation(st, t, user, &obj)?;
            match st.writer.create(t.rt, ns_of(t), obj, &[], w) {
                Ok((obj, warnings)) => return Ok(json_warn(StatusCode::CREATED, &obj, &warnings)),
                Err(crate::write::WriteError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let (obj, warnings) = st.writer.update::<ApiError>(at(t), part_of(t), w, &[], |old| {
            let v = crate::managed::apply(t.rt, status, old, &applied, manager, force).map_err(conflicted)?;
            escalation(st, t, user, &v)?;
            Ok(v)
        })?;
        return Ok(json_warn(StatusCode::OK, &obj, &warnings));
    }
    Err(ApiError::conflict(&t.rt.qualified(), name, "the object was made and deleted while being applied"))
}

pub async fn patch(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    let manager = field_manager(&r)?;
    let w = write_opts(&r, &manager)?;
    let user = r.user.clone();
    let force = r.flag("force");
    let manager_given = r.param("fieldManager").is_some_and(|m| !m.is_empty());
    let (bytes, headers, _) = r.bytes(st.config.max_body).await?;
    let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if ct.split(';').next().map(str::trim) == Some(APPLY) {
        if !manager_given {
            return Err(ApiError::invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                vec![FieldError::required("fieldManager").with_detail("is required for apply patch")],
            ));
        }
        return server_side_apply(st, t, w, &manager, force, &user, &bytes).await;
    }
    if force {
        return Err(ApiError::invalid(
            "PatchOptions",
            "meta.k8s.io",
            "",
            vec![FieldError::forbidden("force", "may not be specified for non-apply patch")],
        ));
    }
    let ty = PatchType::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media(ct))?;
    if ty == PatchType::Strategic && t.rt.custom.is_some() {
        // As Kubernetes: custom resources have no patch strategies.
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        ));
    }
    let (patch_doc, dups) =
        strict::parse(&bytes).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    let kind = t.rt.kind;
    let apply = |base: Value| -> Result<Value, ApiError> {
        let mut doc = base;
        patch::apply(kind, &mut doc, patch_doc, ty).map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(doc)
    };
    if t.sub.as_deref() == Some("scale") {
        return write_scale(st, t, w, apply);
    }
    // Duplicates inside a JSON patch are op objects, not fields of the object.
    let dups = if ty == PatchType::Json { Vec::new() } else { dups };
    let (obj, warnings) = st.writer.update::<ApiError>(at(t), part_of(t), w, &dups, |old| {
        let v = apply(old.clone())?;
        escalation(st, t, &user, &v)?;
        Ok(v)
    })?;
    Ok(json_warn(StatusCode::OK, &obj, &warnings))
}

/// Where a kind keeps its replica counts and selector (a custom
/// resource's CRD says; the built-in kinds keep them in the same places).
fn scale_paths(rt: &ResourceType) -> (&str, &str, Option<&str>) {
    match rt.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        Some(p) => (&p.spec_replicas, &p.status_replicas, p.label_selector.as_deref()),
        None => (".spec.replicas", ".status.replicas", None),
    }
}

/// The `autoscaling/v1` Scale view of a Deployment, ReplicaSet,
/// StatefulSet or scalable custom resource.
fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let (spec_path, status_path, selector_path) = scale_paths(rt);
    let selector = match selector_path {
        Some(p) => crate::crd::at_path(obj, p).and_then(Value::as_str).unwrap_or_default().to_owned(),
        None => obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
            })
            .unwrap_or_default(),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta::get(obj, "name"),
            "namespace": meta::get(obj, "namespace"),
            "uid": meta::get(obj, "uid"),
            "resourceVersion": meta::get(obj, "resourceVersion"),
            "creationTimestamp": meta::get(obj, "creationTimestamp"),
        },
        "spec": {"replicas": crate::crd::at_path(obj, spec_path).cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": crate::crd::at_path(obj, status_path).cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

fn write_scale(
    st: &Arc<ApiState>,
    t: &Target,
    w: WriteOpts<'_>,
    make: impl FnOnce(Value) -> Result<Value, ApiError>,
) -> Result<Response, ApiError> {
    let rt = t.rt;
    let w = WriteOpts { mode: FieldValidation::Ignore, ..w };
    let (obj, _) = st.writer.update(at(t), Part::Main, w, &[], |old| {
        let scale = make(scale_of(rt, old))?;
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| ApiError::bad_request("spec.replicas must be an integer"))?;
        if replicas < 0 || replicas > i64::from(i32::MAX) {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                name_of(t),
                vec![FieldError::invalid("spec.replicas", replicas, "must be greater than or equal to 0")],
            ));
        }
        let mut new = old.clone();
        if let Some(rv) = scale.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            meta::set(&mut new, "resourceVersion", json!(rv));
        }
        crate::crd::set_path(&mut new, scale_paths(rt).0, json!(replicas));
        Ok(new)
    })?;
    Ok(super::json(StatusCode::OK, &scale_of(rt, &obj)))
}

pub async fn bind(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    let dry = dry_run(&r)?;
    let (bytes, _, _) = r.bytes(st.config.max_body).await?;
    let (body, _) = parse_body(&bytes)?;
    let node = body
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::invalid("Binding", "", name_of(t), vec![FieldError::required("target.name")]))?
        .to_owned();
    let name = name_of(t).to_owned();
    if dry {
        let pod = st.store.get(&key(t))?.ok_or_else(|| ApiError::not_found("pods", &name))?;
        if let Some(cur) = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                "pods",
                &name,
                &format!("pod {name} is already assigned to node \"{cur}\""),
            ));
        }
    } else {
        let b = Binding { namespace: ns_of(t).to_owned(), name, node };
        st.writer.bind_many(&[b], None)?.pop().unwrap_or(Ok(()))?;
    }
    Ok(super::json(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// `DeleteOptions` from the body (JSON, or protobuf as typed clients such
/// as `kubectl drain` send it) or the query.
pub(super) fn delete_opts(
    headers: &axum::http::HeaderMap,
    body: &[u8],
    r_query: &std::collections::HashMap<String, String>,
) -> Result<DeleteOpts, ApiError> {
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        let (v, _) = object_body(headers, body).map_err(|e| match e.code {
            StatusCode::BAD_REQUEST => ApiError::bad_request(format!("invalid DeleteOptions: {}", e.message)),
            _ => e,
        })?;
        if v.get("kind").and_then(Value::as_str).is_some_and(|k| k != "DeleteOptions") {
            return Err(ApiError::bad_request("invalid DeleteOptions: the body is not a DeleteOptions"));
        }
        v
    };
    delete_opts_of(&v, r_query)
}

/// `DeleteOptions` from its JSON (`Null` for none) and the query.
pub(super) fn delete_opts_of(
    v: &Value,
    r_query: &std::collections::HashMap<String, String>,
) -> Result<DeleteOpts, ApiError> {
    let grace_period =
        match v.get("gracePeriodSeconds") {
            Some(Value::Null) | None => match r_query.get("gracePeriodSeconds") {
                None => None,
                Some(g) => Some(g.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}: not a whole number"))
                })?),
            },
            Some(g) => Some(g.as_i64().ok_or_else(|| {
                ApiError::bad_request(format!("invalid DeleteOptions: gracePeriodSeconds {g} is not a whole number"))
            })?),
        };
    let propagation = match v
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or(r_query.get("propagationPolicy").map(String::as_str))
    {
        None | Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some(p) => return Err(ApiError::bad_request(format!("unsupported propagationPolicy {p:?}"))),
    };
    let dry_body = v.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|d| d == "All"));
    let dry_query = match r_query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("unsupported dryRun value {other:?}: only All is supported")));
        }
    };
    Ok(DeleteOpts {
        grace_period,
        propagation,
        dry_run: dry_body || dry_query,
        uid: v.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_owned),
        rv: v.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_owned),
    })
}

pub async fn delete(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    let (bytes, headers, query) = r.bytes(st.config.max_body).await?;
    let opts = delete_opts(&headers, &bytes, &query)?;
    let obj = st.writer.delete(t.rt, ns_of(t), name_of(t), &opts)?;
    Ok(super::json(StatusCode::OK, &obj))
}

pub async fn delete_collection(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    let (ls, fs) = selectors(t.rt, &r)?;
    let dry = dry_run(&r)?;
    if t.rt.kind == "Namespace" {
        return Err(ApiError::method_not_allowed("DELETE", "namespaces"));
    }
    let (items, _) = st.store.list(t.rt.id, t.namespace.as_deref(), None)?;
    let keys: Vec<Key> = items
        .iter()
        .filter(|i| ls.matches(i) && fs.matches(i))
        .map(|i| {
            Key::new(
                t.rt.id,
                meta::get_str(i, "namespace").unwrap_or_default(),
                meta::get_str(i, "name").unwrap_or_default(),
            )
        })
        .collect();
    let deleted = st.writer.delete_many(&keys, dry)?;
    let rv = st.store.revision().to_string();
    Ok(super::json(
        StatusCode::OK,
        &json!({"kind": t.rt.list_kind(), "apiVersion": t.rt.api_version(), "metadata": {"resourceVersion": rv}, "items": deleted}),
    ))
}
