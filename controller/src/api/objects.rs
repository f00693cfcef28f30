//! Create, read, update, patch and delete of stored objects, with the
//! `status`, `scale` and `binding` subresources.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{ApiState, Req, Target, json_warn, meta, table};
use crate::patch::{self, PatchType};
use crate::resources::{self, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Key, Mutation};
use crate::validate::{self, FieldValidation, strict};

/// Namespaces that always exist and may not be deleted.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

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
fn object_body(headers: &axum::http::HeaderMap, bytes: &[u8]) -> Result<(Value, Vec<String>), ApiError> {
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

/// Checks (and fills) `apiVersion`/`kind` of a body against the URL's type.
fn check_type(rt: &ResourceType, body: &mut Value) -> Result<(), ApiError> {
    let want_av = rt.api_version();
    for (field, want) in [("apiVersion", want_av.as_str()), ("kind", rt.kind)] {
        match body.get(field).and_then(Value::as_str) {
            None | Some("") => {
                body[field] = Value::String(want.to_owned());
            }
            Some(have) if have != want => {
                return Err(ApiError::bad_request(format!(
                    "the {field} in the data ({have}) does not match the expected {field} ({want})"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

pub fn get(st: &Arc<ApiState>, t: &Target, r: &Req) -> Result<Response, ApiError> {
    let obj = st.store.get(&key(t))?.ok_or_else(|| ApiError::not_found(&t.rt.qualified(), name_of(t)))?;
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
    let (items, rev) = st.store.list(t.rt.id, t.namespace.as_deref(), after.as_deref())?;
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
        selected.push(item);
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

fn ensure_namespace(st: &ApiState, rt: &ResourceType, ns: &str) -> Result<(), ApiError> {
    if !rt.namespaced {
        return Ok(());
    }
    match st.store.get(&Key::new(resources::namespaces().id, "", ns))? {
        Some(n) if meta::get(&n, "deletionTimestamp").is_some() => Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {ns} because it is being terminated"
        ))),
        Some(_) => Ok(()),
        None => Err(ApiError::not_found("namespaces", ns)),
    }
}

pub async fn create(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    if t.name.is_some() {
        return Err(ApiError::method_not_allowed("POST", t.rt.plural));
    }
    let w = WriteOpts::from_req(&r)?;
    let (bytes, headers, _) = r.bytes(st.config.max_body).await?;
    let (body, dups) = object_body(&headers, &bytes)?;
    let (obj, warnings) = create_object(st, t.rt, ns_of(t), body, &dups, w)?;
    Ok(json_warn(StatusCode::CREATED, &obj, &warnings))
}

/// Creates an object of `rt` in `ns` (empty for cluster-scoped kinds): the
/// create path shared by the HTTP API and the in-process control loops.
/// Returns the stored object and any field-validation warnings.
pub(crate) fn create_object(
    st: &ApiState,
    rt: &'static ResourceType,
    ns: &str,
    mut body: Value,
    dups: &[String],
    w: WriteOpts,
) -> Result<(Value, Vec<String>), ApiError> {
    check_type(rt, &mut body)?;
    if rt.namespaced {
        match meta::get_str(&body, "namespace") {
            Some(n) if n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta::set(&mut body, "namespace", json!(ns)),
        }
    } else {
        meta::remove(&mut body, "namespace");
    }
    if meta::get_str(&body, "name").is_none() {
        if let Some(prefix) = meta::get_str(&body, "generateName").map(str::to_owned) {
            meta::set(&mut body, "name", json!(format!("{prefix}{}", meta::random_suffix())));
        }
    }
    if meta::get_str(&body, "resourceVersion").is_some() {
        return Err(ApiError::bad_request("resourceVersion should not be set on objects to be created"));
    }
    for f in
        ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "managedFields"]
    {
        meta::remove(&mut body, f);
    }
    if rt.status && rt.kind != "Node" {
        if let Some(o) = body.as_object_mut() {
            o.remove("status");
        }
    }
    ensure_namespace(st, rt, ns)?;
    let admitted = validate::admit(rt, body, dups, w.mode, None)?;
    let mut obj = admitted.object;
    meta::set(&mut obj, "uid", json!(meta::new_uid()));
    meta::set(&mut obj, "creationTimestamp", json!(meta::now()));
    if rt.generation {
        meta::set(&mut obj, "generation", json!(1));
    }
    if rt.kind == "Service" {
        allocate_service(st, &mut obj)?;
    }
    let name = meta::get_str(&obj, "name").unwrap_or_default().to_owned();
    let k = Key::new(rt.id, ns, &name);
    let out = st.store.mutate(&k, |cur| {
        if cur.is_some() {
            return Err(ApiError::already_exists(&rt.qualified(), &name));
        }
        if w.dry_run {
            return Ok(Mutation::Keep);
        }
        Ok(Mutation::Put(obj.clone()))
    })?;
    if w.dry_run {
        return Ok((obj, admitted.warnings));
    }
    tracing::info!(resource = rt.id, namespace = %ns, %name, rv = out.revision.unwrap_or(0), "created");
    Ok((out.object.unwrap_or(Value::Null), admitted.warnings))
}

/// Assigns a Service its cluster IP and node ports where it has none, and
/// refuses ones another Service holds. Used on create and on update (a type
/// change can call for new ones); the Service itself does not count as "other".
fn allocate_service(st: &ApiState, svc: &mut Value) -> Result<(), ApiError> {
    let id = resources::find("", "v1", "services").map_or("core/services", |r| r.id);
    let (all, _) = st.store.list(id, None, None)?;
    let me = (meta::get_str(svc, "namespace").map(str::to_owned), meta::get_str(svc, "name").map(str::to_owned));
    let others: Vec<&Value> = all
        .iter()
        .filter(|o| {
            (meta::get_str(o, "namespace").map(str::to_owned), meta::get_str(o, "name").map(str::to_owned)) != me
        })
        .collect();
    let name = meta::get_str(svc, "name").unwrap_or_default().to_owned();
    let taken = |field: &str, value: &str, why: &str| {
        ApiError::invalid("Service", "", &name, vec![crate::api::error::FieldError::invalid(field, value, why)])
    };
    let ty = svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_owned();
    if ty == "ExternalName" {
        return Ok(());
    }
    match svc.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned) {
        None => {
            let used: BTreeSet<&str> =
                others.iter().filter_map(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str)).collect();
            let (base, bits) = st.config.service_cidr;
            let size = 1u32 << (32 - u32::from(bits.min(30)));
            // .1 is kept for the `kubernetes` service, as in Kubernetes.
            let ip = (2..size - 1)
                .map(|i| Ipv4Addr::from(u32::from(base) + i).to_string())
                .find(|ip| !used.contains(ip.as_str()))
                .ok_or_else(|| ApiError::internal("no free cluster IP in the service range"))?;
            svc["spec"]["clusterIP"] = json!(ip);
            svc["spec"]["clusterIPs"] = json!([ip]);
        }
        Some(ip) => {
            if ip != "None" && others.iter().any(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str) == Some(&ip))
            {
                return Err(taken("spec.clusterIPs", &ip, "failed to allocate IP: provided IP is already allocated"));
            }
            svc["spec"]["clusterIPs"] = json!([ip]);
        }
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        let mut used: BTreeSet<i64> = others
            .iter()
            .flat_map(|s| s.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default())
            .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
            .collect();
        if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for (i, p) in ports.iter_mut().enumerate() {
                match p.get("nodePort").and_then(Value::as_i64) {
                    Some(n) if !used.insert(n) => {
                        return Err(taken(
                            &format!("spec.ports[{i}].nodePort"),
                            &n.to_string(),
                            "provided port is already allocated",
                        ));
                    }
                    Some(_) => {}
                    None => {
                        let free = (30000..=32767)
                            .find(|n| !used.contains(n))
                            .ok_or_else(|| ApiError::internal("no free node port"))?;
                        used.insert(free);
                        p["nodePort"] = json!(free);
                    }
                }
            }
        }
    }
    Ok(())
}

/// The write parameters every mutating verb takes.
#[derive(Clone, Copy)]
pub(crate) struct WriteOpts {
    pub mode: FieldValidation,
    /// `dryRun=All`: run every check and answer as if written, store nothing.
    pub dry_run: bool,
}

impl WriteOpts {
    /// How the control loops write: strict, for real.
    pub const INTERNAL: WriteOpts = WriteOpts { mode: FieldValidation::Strict, dry_run: false };
}

impl WriteOpts {
    fn from_req(r: &Req) -> Result<Self, ApiError> {
        Ok(WriteOpts { mode: FieldValidation::parse(r.param("fieldValidation"))?, dry_run: dry_run(r)? })
    }
}

fn dry_run(r: &Req) -> Result<bool, ApiError> {
    match r.param("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("unsupported dryRun value {other:?}: only All is supported"))),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Main,
    Status,
}

/// The shared update path of PUT and PATCH: `make` turns the stored object
/// into the candidate, which is then checked, admitted and written in the
/// same transaction.
/// Where an object lives, for the shared write paths.
#[derive(Clone, Copy)]
pub(crate) struct At<'a> {
    pub rt: &'static ResourceType,
    pub ns: &'a str,
    pub name: &'a str,
}

pub(crate) fn update(
    st: &ApiState,
    at: At<'_>,
    part: Part,
    w: WriteOpts,
    dups: &[String],
    make: impl FnOnce(&Value) -> Result<Value, ApiError>,
) -> Result<(Value, Vec<String>), ApiError> {
    let At { rt, ns, name } = at;
    let name = name.to_owned();
    let mut warnings = Vec::new();
    let mut preview = None;
    let out = st.store.mutate(&Key::new(rt.id, ns, &name), |cur| {
        let old = cur.ok_or_else(|| ApiError::not_found(&rt.qualified(), &name))?;
        let mut cand = make(&old)?;
        if !cand.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        check_type(rt, &mut cand)?;
        match meta::get_str(&cand, "name") {
            Some(n) if n != name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => meta::set(&mut cand, "name", json!(name)),
        }
        if rt.namespaced {
            match meta::get_str(&cand, "namespace") {
                Some(n) if n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => meta::set(&mut cand, "namespace", json!(ns)),
            }
        }
        if let Some(rv) = meta::get_str(&cand, "resourceVersion") {
            if Some(rv) != meta::get_str(&old, "resourceVersion") {
                return Err(ApiError::stale(&rt.qualified(), &name));
            }
        }
        if rt.status {
            cand = match part {
                Part::Main => {
                    let mut c = cand;
                    match old.get("status") {
                        Some(s) => c["status"] = s.clone(),
                        None => {
                            c.as_object_mut().map(|o| o.remove("status"));
                        }
                    }
                    c
                }
                Part::Status => {
                    let mut c = old.clone();
                    match cand.get("status") {
                        Some(s) => c["status"] = s.clone(),
                        None => {
                            c.as_object_mut().map(|o| o.remove("status"));
                        }
                    }
                    c
                }
            };
        }
        for f in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
            match meta::get(&old, f) {
                Some(v) => meta::set(&mut cand, f, v.clone()),
                None => meta::remove(&mut cand, f),
            }
        }
        let admitted = validate::admit(rt, cand, dups, w.mode, Some(&old))?;
        warnings = admitted.warnings;
        let mut obj = admitted.object;
        if rt.kind == "Service" {
            allocate_service(st, &mut obj)?;
        }
        if rt.generation && obj.get("spec") != old.get("spec") {
            let g = meta::get(&old, "generation").and_then(Value::as_i64).unwrap_or(0);
            meta::set(&mut obj, "generation", json!(g + 1));
        }
        if meta::without_rv(&obj) == meta::without_rv(&old) {
            return Ok(Mutation::Keep);
        }
        if w.dry_run {
            preview = Some(obj);
            return Ok(Mutation::Keep);
        }
        let finalizers_empty = meta::get(&obj, "finalizers").and_then(Value::as_array).is_none_or(Vec::is_empty);
        // (A namespace's own finalizer lives in `spec.finalizers`; only the
        // namespace controller removes a namespace.)
        if meta::get(&obj, "deletionTimestamp").is_some() && finalizers_empty && rt.kind != "Namespace" {
            return Ok(Mutation::Delete);
        }
        Ok(Mutation::Put(obj))
    })?;
    if out.revision.is_some() {
        tracing::info!(resource = rt.id, namespace = %ns, %name, rv = out.revision.unwrap_or(0), "updated");
    }
    Ok((preview.or(out.object).unwrap_or(Value::Null), warnings))
}

fn part_of(t: &Target) -> Part {
    if t.sub.as_deref() == Some("status") { Part::Status } else { Part::Main }
}

pub async fn replace(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    let w = WriteOpts::from_req(&r)?;
    let (bytes, headers, _) = r.bytes(st.config.max_body).await?;
    let (body, dups) = object_body(&headers, &bytes)?;
    if t.sub.as_deref() == Some("scale") {
        return write_scale(st, t, w.dry_run, |_| Ok(body));
    }
    let (obj, warnings) = update(st, at(t), part_of(t), w, &dups, |_| Ok(body))?;
    Ok(json_warn(StatusCode::OK, &obj, &warnings))
}

pub async fn patch(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    let w = WriteOpts::from_req(&r)?;
    let (bytes, headers, _) = r.bytes(st.config.max_body).await?;
    let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let ty = PatchType::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media(ct))?;
    let (patch_doc, dups) =
        strict::parse(&bytes).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    let kind = t.rt.kind;
    let apply = |base: Value| -> Result<Value, ApiError> {
        let mut doc = base;
        patch::apply(kind, &mut doc, patch_doc, ty).map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(doc)
    };
    if t.sub.as_deref() == Some("scale") {
        return write_scale(st, t, w.dry_run, apply);
    }
    // Duplicates inside a JSON patch are op objects, not fields of the object.
    let dups = if ty == PatchType::Json { Vec::new() } else { dups };
    let (obj, warnings) = update(st, at(t), part_of(t), w, &dups, |old| apply(old.clone()))?;
    Ok(json_warn(StatusCode::OK, &obj, &warnings))
}

/// The `autoscaling/v1` Scale view of a Deployment or ReplicaSet.
fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    let _ = rt;
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
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

fn write_scale(
    st: &Arc<ApiState>,
    t: &Target,
    dry_run: bool,
    make: impl FnOnce(Value) -> Result<Value, ApiError>,
) -> Result<Response, ApiError> {
    let rt = t.rt;
    let w = WriteOpts { mode: FieldValidation::Ignore, dry_run };
    let (obj, _) = update(st, at(t), Part::Main, w, &[], |old| {
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
                vec![crate::api::error::FieldError::invalid(
                    "spec.replicas",
                    replicas,
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut new = old.clone();
        if let Some(rv) = scale.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            meta::set(&mut new, "resourceVersion", json!(rv));
        }
        new["spec"]["replicas"] = json!(replicas);
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
        .ok_or_else(|| {
            ApiError::invalid("Binding", "", name_of(t), vec![crate::api::error::FieldError::required("target.name")])
        })?
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
        let b = super::binding::Binding { namespace: ns_of(t).to_owned(), name, node };
        super::binding::bind_many(st, &[b], None)?.pop().unwrap_or(Ok(()))?;
    }
    Ok(super::json(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// `DeleteOptions` from the body or the query.
#[derive(Debug, Default)]
pub(crate) struct DeleteOpts {
    pub uid: Option<String>,
    pub rv: Option<String>,
    pub dry_run: bool,
    pub propagation: Propagation,
}

/// `propagationPolicy`: what happens to the objects this one owns.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Delete now; the garbage collector deletes dependents afterwards.
    #[default]
    Background,
    /// Dependents are deleted first; the owner waits (`foregroundDeletion` finalizer).
    Foreground,
    /// Dependents are kept and lose their owner reference (`orphan` finalizer).
    Orphan,
}

impl Propagation {
    /// The finalizer that makes the garbage collector act before the owner goes.
    pub fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some(FOREGROUND_FINALIZER),
            Propagation::Orphan => Some(ORPHAN_FINALIZER),
        }
    }
}

pub const ORPHAN_FINALIZER: &str = "orphan";
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

fn delete_opts(body: &[u8], r_query: &std::collections::HashMap<String, String>) -> Result<DeleteOpts, ApiError> {
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
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
        propagation,
        dry_run: dry_body || dry_query,
        uid: v.pointer("/preconditions/uid").and_then(Value::as_str).map(str::to_owned),
        rv: v.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(str::to_owned),
    })
}

/// What deleting `old` means: set `deletionTimestamp` while finalizers
/// remain, remove it otherwise.
pub fn deletion(old: Value) -> Mutation {
    let has_finalizers = meta::get(&old, "finalizers").and_then(Value::as_array).is_some_and(|f| !f.is_empty());
    if !has_finalizers {
        return Mutation::Delete;
    }
    if meta::get(&old, "deletionTimestamp").is_some() {
        return Mutation::Keep;
    }
    let mut o = old;
    start_deletion(&mut o);
    Mutation::Put(o)
}

/// Sets `deletionTimestamp` (and bumps `generation`, as Kubernetes does, so
/// controllers comparing `observedGeneration` notice).
fn start_deletion(o: &mut Value) {
    meta::set(o, "deletionTimestamp", json!(meta::now()));
    meta::set(o, "deletionGracePeriodSeconds", json!(0));
    if let Some(g) = meta::get(o, "generation").and_then(Value::as_i64).filter(|g| *g > 0) {
        meta::set(o, "generation", json!(g + 1));
    }
}

/// Foreground and orphan deletion: the object stays, marked, with the
/// finalizer the garbage collector acts on and then removes.
fn mark_for_collection(old: Value, finalizer: &str) -> Mutation {
    let mut o = old;
    let before = o.clone();
    let list = meta::meta_mut(&mut o).entry("finalizers").or_insert_with(|| json!([]));
    if let Some(l) = list.as_array_mut() {
        if !l.iter().any(|f| f == finalizer) {
            l.push(json!(finalizer));
        }
    }
    if meta::get(&o, "deletionTimestamp").is_none() {
        start_deletion(&mut o);
    }
    if o == before { Mutation::Keep } else { Mutation::Put(o) }
}

pub async fn delete(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    let (bytes, _, query) = r.bytes(st.config.max_body).await?;
    let opts = delete_opts(&bytes, &query)?;
    let obj = delete_object(st, t.rt, ns_of(t), name_of(t), &opts)?;
    Ok(super::json(StatusCode::OK, &obj))
}

/// Deletes (or, with finalizers, marks for deletion) one object: the delete
/// path shared by the HTTP API and the control loops. Returns its last state.
pub(crate) fn delete_object(
    st: &ApiState,
    rt: &'static ResourceType,
    ns: &str,
    name: &str,
    opts: &DeleteOpts,
) -> Result<Value, ApiError> {
    if rt.kind == "Namespace" {
        return delete_namespace(st, name, opts);
    }
    let q = rt.qualified();
    let out = st.store.mutate::<ApiError, _>(&Key::new(rt.id, ns, name), |cur| {
        let old = cur.ok_or_else(|| ApiError::not_found(&q, name))?;
        preconditions(&q, name, &old, opts)?;
        if opts.dry_run {
            return Ok(Mutation::Keep);
        }
        Ok(match opts.propagation.finalizer() {
            None => deletion(old),
            Some(f) => mark_for_collection(old, f),
        })
    })?;
    if out.revision.is_some() {
        tracing::info!(resource = rt.id, namespace = %ns, %name, "deleted");
    }
    Ok(out.object.unwrap_or(Value::Null))
}

fn preconditions(q: &str, name: &str, old: &Value, opts: &DeleteOpts) -> Result<(), ApiError> {
    if let Some(uid) = &opts.uid {
        let have = meta::get_str(old, "uid").unwrap_or_default();
        if uid != have {
            return Err(ApiError::conflict(
                q,
                name,
                &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"),
            ));
        }
    }
    if let Some(rv) = &opts.rv {
        let have = meta::get_str(old, "resourceVersion").unwrap_or_default();
        if rv != have {
            return Err(ApiError::conflict(
                q,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"
                ),
            ));
        }
    }
    Ok(())
}

/// Deleting a namespace marks it `Terminating`; the namespace controller
/// (`controllers::namespace`) then deletes its contents and finally the
/// namespace, as Kubernetes does.
fn delete_namespace(st: &ApiState, name: &str, opts: &DeleteOpts) -> Result<Value, ApiError> {
    if SYSTEM_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    let key = Key::new(resources::namespaces().id, "", name);
    let out = st.store.mutate::<ApiError, _>(&key, |cur| {
        let old = cur.ok_or_else(|| ApiError::not_found("namespaces", name))?;
        preconditions("namespaces", name, &old, opts)?;
        if meta::get(&old, "deletionTimestamp").is_some() || opts.dry_run {
            return Ok(Mutation::Keep);
        }
        let mut o = old;
        meta::set(&mut o, "deletionTimestamp", json!(meta::now()));
        o["status"]["phase"] = json!("Terminating");
        Ok(Mutation::Put(o))
    })?;
    tracing::info!(namespace = %name, "namespace terminating");
    Ok(out.object.unwrap_or(Value::Null))
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
    let outs = st.store.mutate_many::<ApiError, _>(&keys, |cur| {
        Ok(cur.iter().map(|o| if dry { Mutation::Keep } else { o.clone().map_or(Mutation::Keep, deletion) }).collect())
    })?;
    let deleted: Vec<Value> = outs.into_iter().filter_map(|o| o.object).collect();
    let rv = st.store.revision().to_string();
    Ok(super::json(
        StatusCode::OK,
        &json!({"kind": t.rt.list_kind(), "apiVersion": t.rt.api_version(), "metadata": {"resourceVersion": rv}, "items": deleted}),
    ))
}
