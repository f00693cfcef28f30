//! The Kubernetes-shaped HTTP API: routing, content negotiation and the
//! discovery/OpenAPI documents kubectl needs before it sends anything.

mod discovery;
pub mod error;
mod eviction;
mod exec;
mod logs;
mod metrics;
mod objects;
mod portforward;
mod proto;
/// Entry points for the fuzz targets (`fuzz/`); not API.
#[doc(hidden)]
pub mod fuzzing {
    /// A Kubernetes protobuf request body (`application/vnd.kubernetes.protobuf`), as JSON.
    pub fn protobuf_body(body: &[u8]) -> Result<serde_json::Value, String> {
        super::proto::decode(body).map_err(|e| e.to_string())
    }
}
pub mod reviews;
#[rustfmt::skip]
mod proto_schema;
pub(crate) mod openapi;
mod openapi_pb;
mod spdy;
mod table;
mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::watch as signal;

use crate::resources::{self, ResourceType};
use crate::store::SharedStore;
use crate::write::Writer;
pub use error::ApiError;

/// Largest request body accepted (Kubernetes uses 3 MiB).
pub const DEFAULT_MAX_BODY: usize = 3 * 1024 * 1024;

pub struct ApiConfig {
    pub max_body: usize,
    /// Bearer token every request must carry (`None`: no authentication, for
    /// loopback-only listeners).
    pub token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { max_body: DEFAULT_MAX_BODY, token: None }
    }
}

pub struct ApiState {
    /// Reads.
    pub store: SharedStore,
    /// Writes: the same path the control loops take.
    pub writer: Writer,
    pub config: ApiConfig,
    /// Flips to `true` on shutdown so open watch streams end.
    pub shutdown: signal::Receiver<bool>,
    /// Sessions to nodes through the fleet link (`pods/log`); `None`
    /// without one.
    pub relay: Option<Arc<crate::fleet::relay::Relay>>,
    /// `/metrics`, and the API's own counters.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// The fleet's liveness, in memory: the `renewTime` of the nodes'
    /// Leases is read from it (`None` without a fleet link).
    pub liveness: Option<Arc<dyn crate::controllers::nodelifecycle::Liveness>>,
    /// Signs and checks ServiceAccount tokens.
    pub issuer: Arc<crate::auth::token::Issuer>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new().fallback(dispatch).with_state(state)
}

async fn dispatch(State(st): State<Arc<ApiState>>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let verb = verb(&method, req.headers(), req.uri().query().unwrap_or_default());
    let resp = match route(&st, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let elapsed = started.elapsed();
    let code = resp.status().as_u16();
    st.telemetry.api.request(labels(verb, &path, code), elapsed);
    tracing::debug!(%method, %path, status = code, elapsed_us = elapsed.as_micros() as u64, "request");
    resp
}

/// The request's verb as the API server's metrics name it.
fn verb(method: &Method, headers: &HeaderMap, query: &str) -> &'static str {
    let apply =
        || headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("apply-patch"));
    let watch = || {
        form_urlencoded::parse(query.as_bytes())
            .any(|(k, v)| k == "watch" && v != "0" && !v.eq_ignore_ascii_case("false"))
    };
    match *method {
        Method::GET if watch() => "WATCH",
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH if apply() => "APPLY",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Labels for the request counters: the resource the path names, if any,
/// and the verb refined by it (a GET of a collection is a LIST, exec and
/// port-forward are CONNECT). Paths naming no known resource get empty
/// labels, so made-up paths cannot grow the metrics.
fn labels(verb: &'static str, path: &str, code: u16) -> crate::telemetry::RequestLabels {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => ("", "", &[][..]),
    };
    let rest = match rest {
        ["namespaces", _, r @ ..] if !r.is_empty() => r,
        r => r,
    };
    let found = rest.first().and_then(|p| resources::find(group, version, p));
    let (resource, named, sub) = match (found, rest) {
        // Only the subresources served: a made-up one cannot grow the metrics.
        (Some(rt), [_, _, s]) => {
            let known = ["status", "scale", "binding", "eviction", "log", "exec", "attach", "portforward", "token"];
            (rt.plural, true, known.iter().find(|k| *k == s).copied().unwrap_or(""))
        }
        (Some(rt), [_, _]) => (rt.plural, true, ""),
        (Some(rt), _) => (rt.plural, false, ""),
        (None, _) => ("", false, ""),
    };
    let verb = match (verb, named, sub) {
        ("GET", false, _) if !resource.is_empty() => "LIST",
        ("DELETE", false, _) if !resource.is_empty() => "DELETECOLLECTION",
        (_, _, "exec" | "attach" | "portforward") => "CONNECT",
        (v, _, _) => v,
    };
    let known = !resource.is_empty();
    crate::telemetry::RequestLabels {
        verb,
        group: if known { group.to_owned() } else { String::new() },
        version: if known { version.to_owned() } else { String::new() },
        resource: resource.to_owned(),
        subresource: if known { sub.to_owned() } else { String::new() },
        code,
    }
}

/// The request as the object handlers see it.
pub(crate) struct Req {
    pub method: Method,
    pub query: HashMap<String, String>,
    /// The query as sent (for parameters given more than once).
    pub raw_query: String,
    pub headers: HeaderMap,
    /// The connection's upgrade, for the streaming subresources.
    pub extensions: axum::http::Extensions,
    pub body: Body,
    /// Who asks (after impersonation).
    pub user: crate::auth::User,
}

impl Req {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str)
    }

    /// A boolean parameter as Kubernetes reads one: absent, `0` or `false`
    /// (any case) is false, anything else true (Python's client sends `True`).
    pub fn flag(&self, k: &str) -> bool {
        self.param(k).is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
    }

    /// Whether the request asks to upgrade to `proto` (`websocket`, `SPDY/3.1`).
    pub fn upgrades_to(&self, proto: &str) -> bool {
        self.headers
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.eq_ignore_ascii_case(proto))
    }

    /// Every value of a parameter, in order (`command=sh&command=-c`).
    pub fn params(&self, k: &str) -> Vec<String> {
        form_urlencoded::parse(self.raw_query.as_bytes()).filter(|(n, _)| n == k).map(|(_, v)| v.into_owned()).collect()
    }

    pub fn wants_table(&self) -> bool {
        self.format() == Format::Table
    }

    /// The answer's form: the first media type of `Accept` this server
    /// writes (a client asking for protobuf first also lists JSON).
    pub fn format(&self) -> Format {
        let accept: Vec<&str> = self.headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
        accept.iter().flat_map(|v| v.split(',')).find_map(Format::of).unwrap_or(Format::Json)
    }

    /// Reads the body, refusing more than `limit` bytes with 413.
    pub async fn bytes(self, limit: usize) -> Result<(Bytes, HeaderMap, HashMap<String, String>), ApiError> {
        let declared = self
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::too_large(limit));
        }
        let b = axum::body::to_bytes(self.body, limit).await.map_err(|e| {
            if declared.is_none() {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(format!("reading request body: {e}"))
            }
        })?;
        Ok((b, self.headers, self.query))
    }
}

/// What an object answer is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Yaml,
    /// `as=Table` (`kubectl get`).
    Table,
    /// `as=PartialObjectMetadata` / `PartialObjectMetadataList`: metadata
    /// only (client-go's metadata informers, garbage collectors).
    Partial,
}

impl Format {
    /// One media range of `Accept`; `None` for one not written here.
    fn of(range: &str) -> Option<Format> {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let (mut as_, mut group) = (None, None);
        for p in parts {
            match p.split_once('=') {
                Some(("as", v)) => as_ = Some(v.to_owned()),
                Some(("g", v)) => group = Some(v.to_owned()),
                _ => {}
            }
        }
        let json = matches!(media.as_str(), "application/json" | "application/*" | "*/*");
        match (as_.as_deref(), group.as_deref()) {
            (None, _) if json => Some(Format::Json),
            (None, _) if media == "application/yaml" => Some(Format::Yaml),
            (Some("Table"), Some("meta.k8s.io")) if json => Some(Format::Table),
            (Some("PartialObjectMetadata" | "PartialObjectMetadataList"), Some("meta.k8s.io")) if json => {
                Some(Format::Partial)
            }
            _ => None,
        }
    }
}

/// Which object(s) a resource path names.
#[derive(Debug)]
pub(crate) struct Target {
    pub rt: &'static ResourceType,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

async fn route(st: &Arc<ApiState>, req: Request) -> Result<Response, ApiError> {
    // Health and version stay public, as Kubernetes' public-info role.
    let public = matches!(req.uri().path(), "/healthz" | "/livez" | "/readyz" | "/version")
        || ["/healthz/", "/livez/", "/readyz/"].iter().any(|p| req.uri().path().starts_with(p));
    let user = if public {
        crate::auth::User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..Default::default()
        }
    } else {
        let user = crate::auth::authenticate(&st.store, &st.issuer, st.config.token.as_deref(), req.headers())?;
        let user = crate::auth::impersonate(&st.store, user, req.headers())?;
        let attrs = crate::auth::Attributes::of(
            req.method(),
            req.uri().path().trim_end_matches('/'),
            req.uri().query().unwrap_or_default(),
        );
        if !crate::auth::rbac::allowed(&st.store, &user, &attrs)? {
            tracing::debug!(user = %user.name, ?attrs, "forbidden");
            return Err(attrs.forbidden(&user));
        }
        user
    };
    // The test hook of issue 19: a request handler that panics, to show the
    // panic answered with a 500 and the API answering on (debug builds only).
    #[cfg(debug_assertions)]
    if std::env::var_os("KEDGE_TEST_PANIC_PATH").is_some_and(|p| p == req.uri().path()) {
        panic!("injected into {} (KEDGE_TEST_PANIC_PATH)", req.uri().path());
    }
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    let query: HashMap<String, String> =
        axum::extract::Query::try_from_uri(&parts.uri).map(|q| q.0).unwrap_or_default();
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let r = Req {
        method: parts.method,
        query,
        raw_query,
        headers: parts.headers,
        extensions: parts.extensions,
        body,
        user,
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get = r.method == Method::GET;
    match segs.as_slice() {
        ["version"] if get => Ok(json(StatusCode::OK, &discovery::version())),
        [probe @ ("healthz" | "livez" | "readyz"), only @ ..] if get && only.len() <= 1 => {
            health(st, probe, only.first().copied(), &r)
        }
        ["metrics"] if get => metrics_text(st, &r.headers),
        ["api"] if get => Ok(json(StatusCode::OK, &discovery::api_versions())),
        ["apis"] if get => Ok(json(StatusCode::OK, &discovery::api_groups(st.store.kinds()))),
        ["apis", g] if get && discovery::group(st.store.kinds(), g).is_some() => {
            Ok(json(StatusCode::OK, &discovery::group(st.store.kinds(), g).unwrap_or(Value::Null)))
        }
        ["api", "v1"] if get => Ok(json(StatusCode::OK, &discovery::resource_list(st.store.kinds(), "", "v1"))),
        ["apis", metrics::GROUP] if get => {
            Ok(json(StatusCode::OK, &discovery::group_of(metrics::GROUP, metrics::VERSION)))
        }
        ["apis", metrics::GROUP, metrics::VERSION] if get => Ok(json(StatusCode::OK, &metrics::resource_list())),
        ["apis", metrics::GROUP, metrics::VERSION, rest @ ..] => {
            metrics::serve(st, &r.method, r.param("labelSelector"), rest, &path).await
        }
        ["apis", g, v] if get && st.store.kinds().serves(g, v) => {
            Ok(json(StatusCode::OK, &discovery::resource_list(st.store.kinds(), g, v)))
        }
        ["apis", g @ (reviews::AUTHZ | reviews::AUTHN)] if get => {
            Ok(json(StatusCode::OK, &discovery::group_of(g, "v1")))
        }
        ["apis", g @ (reviews::AUTHZ | reviews::AUTHN), "v1"] if get => {
            Ok(json(StatusCode::OK, &reviews::resource_list(g).unwrap_or(Value::Null)))
        }
        ["apis", reviews::AUTHZ, "v1", "selfsubjectaccessreviews"] if r.method == Method::POST => {
            reviews::access_review(st, r).await
        }
        ["apis", reviews::AUTHZ, "v1", "selfsubjectrulesreviews"] if r.method == Method::POST => {
            reviews::rules_review(st, r).await
        }
        ["apis", reviews::AUTHN, "v1", "selfsubjectreviews"] if r.method == Method::POST => {
            reviews::self_review(st, r).await
        }
        ["api", "v1", "namespaces", ns, "serviceaccounts", name, "token"] if r.method == Method::POST => {
            let (ns, name) = ((*ns).to_owned(), (*name).to_owned());
            reviews::token_request(st, &ns, &name, r).await
        }
        ["openapi", "v3"] if get => Ok(json(StatusCode::OK, &openapi::root(st.store.kinds()))),
        ["openapi", "v3", rest @ ..] if get => openapi_v3(st.store.kinds(), &rest.join("/"), &r, &path),
        ["openapi", "v2"] if get => Ok(openapi_v2(st.store.kinds(), &r.headers)),
        ["api", "v1", rest @ ..] => resource(st, r, "", "v1", rest, &path).await,
        ["apis", g, v, rest @ ..] => resource(st, r, g, v, rest, &path).await,
        _ => Err(ApiError::no_route(&path)),
    }
}

async fn resource(
    st: &Arc<ApiState>,
    r: Req,
    group: &str,
    version: &str,
    rest: &[&str],
    path: &str,
) -> Result<Response, ApiError> {
    // `namespaces/{ns}/{plural}/…` addresses namespaced objects; anything else
    // is `{plural}[/{name}[/{sub}]]` (cluster-scoped, or all namespaces).
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if st.store.kinds().find(group, version, plural).is_some_and(|rt| rt.namespaced) =>
        {
            (Some((*ns).to_owned()), {
                let mut v = vec![*plural];
                v.extend_from_slice(tail);
                v
            })
        }
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some((*n).to_owned()), None),
        [p, n, s] => (*p, Some((*n).to_owned()), Some((*s).to_owned())),
        _ => return Err(ApiError::no_route(path)),
    };
    let rt = st.store.kinds().find(group, version, plural).ok_or_else(|| ApiError::no_route(path))?;
    if rt.namespaced && name.is_some() && namespace.is_none() {
        return Err(ApiError::no_route(path));
    }
    if let Some(s) = sub.as_deref() {
        let known = (s == "status" && rt.status)
            || (s == "scale" && rt.scale)
            || (matches!(s, "binding" | "eviction" | "log" | "exec" | "attach" | "portforward")
                && rt.kind == "Pod"
                && rt.group.is_empty());
        if !known {
            return Err(ApiError::no_route(path));
        }
    }
    let t = Target { rt, namespace, name, sub };
    let format = r.format();
    let streams = (r.method == Method::GET && r.flag("watch"))
        || matches!(t.sub.as_deref(), Some("log" | "exec" | "attach" | "portforward"));
    let mut resp = answer(st, &t, r, path).await?;
    if rt.custom.is_some() && !streams && resp.status().is_success() {
        resp = in_version(resp, rt).await;
    }
    match format {
        Format::Yaml | Format::Partial if !streams && resp.status().is_success() => Ok(reformat(resp, format).await),
        _ => Ok(resp),
    }
}

/// A custom resource answer (object, list or table) in the version the
/// request named: stored objects carry the version they were stored in
/// (the storage version then, which may have moved since).
async fn in_version(resp: Response, rt: &crate::resources::ResourceType) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::internal("reading an answer to convert it").into_response();
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let objects: Vec<&mut Value> = match v.get("kind").and_then(Value::as_str) {
        Some("Table") => v["rows"].as_array_mut().into_iter().flatten().filter_map(|r| r.get_mut("object")).collect(),
        Some(k) if k.ends_with("List") => v["items"].as_array_mut().into_iter().flatten().collect(),
        _ => vec![&mut v],
    };
    let av = rt.api_version();
    let mut changed = false;
    for o in objects.into_iter().filter(|o| o.get("kind").and_then(Value::as_str) == Some(rt.kind)) {
        changed |= o.get("apiVersion").and_then(Value::as_str) != Some(av.as_str());
        crate::crd::present(rt, o);
    }
    if !changed {
        return Response::from_parts(parts, Body::from(bytes));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(serde_json::to_vec(&v).unwrap_or_default()))
}

/// A JSON object answer rewritten as YAML, or as its metadata only.
async fn reformat(resp: Response, format: Format) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::internal("reading an answer to reformat it").into_response();
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    if format == Format::Partial {
        v = partial(v);
        let body = serde_json::to_vec(&v).unwrap_or_default();
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(body));
    }
    match serde_yaml_ng::to_string(&v) {
        Ok(yaml) => {
            parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(yaml))
        }
        Err(e) => ApiError::internal(format!("writing YAML: {e}")).into_response(),
    }
}

/// An object as `PartialObjectMetadata`, a list as `PartialObjectMetadataList`.
pub(crate) fn partial(mut v: Value) -> Value {
    let api = "meta.k8s.io/v1";
    match v.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => serde_json::json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": api,
            "metadata": v.get_mut("metadata").map(Value::take).unwrap_or_else(|| serde_json::json!({})),
            "items": items.into_iter().map(partial).collect::<Vec<_>>(),
        }),
        _ => serde_json::json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": api,
            "metadata": v.get_mut("metadata").map(Value::take).unwrap_or_else(|| serde_json::json!({})),
        }),
    }
}

async fn answer(st: &Arc<ApiState>, t: &Target, r: Req, path: &str) -> Result<Response, ApiError> {
    let m = r.method.clone();
    match (&m, t.name.is_some()) {
        (&Method::GET, false) if r.flag("watch") => watch::serve(st, t, &r),
        (&Method::GET, false) => objects::list(st, t, &r),
        (&Method::POST, false) => objects::create(st, t, r).await,
        (&Method::DELETE, false) => objects::delete_collection(st, t, r).await,
        (&Method::GET, true) if t.sub.as_deref() == Some("log") => {
            // The request's body is not held across the wait for the node.
            let (node, request) = logs::prepare(st, t, &r)?;
            drop(r);
            logs::serve(st, node, request).await
        }
        (_, true) if t.sub.as_deref() == Some("log") => Err(ApiError::method_not_allowed(m.as_str(), path)),
        (&Method::GET | &Method::POST, true) if matches!(t.sub.as_deref(), Some("exec" | "attach")) => {
            exec::serve(st, t, r).await
        }
        (&Method::GET | &Method::POST, true) if t.sub.as_deref() == Some("portforward") => {
            portforward::serve(st, t, r).await
        }
        (_, true) if matches!(t.sub.as_deref(), Some("exec" | "attach" | "portforward")) => {
            Err(ApiError::method_not_allowed(m.as_str(), path))
        }
        (&Method::GET, true) => objects::get(st, t, &r),
        (&Method::POST, true) if t.sub.as_deref() == Some("binding") => objects::bind(st, t, r).await,
        (&Method::POST, true) if t.sub.as_deref() == Some("eviction") => eviction::evict(st, t, r).await,
        (&Method::PUT, true) => objects::replace(st, t, r).await,
        (&Method::PATCH, true) => objects::patch(st, t, r).await,
        (&Method::DELETE, true) if t.sub.is_none() => objects::delete(st, t, r).await,
        _ => Err(ApiError::method_not_allowed(m.as_str(), path)),
    }
}

/// `/livez`, `/readyz`, `/healthz` and their single checks
/// (`/readyz/etcd`), as Kubernetes answers them: `ok`, or with `?verbose`
/// one `[+]name ok` line per check; a failed check is `[-]name failed` and
/// 500. `?exclude=name` leaves a check out. `etcd` is the store answering
/// a read; `etcd-readiness` (readiness only) fails while writes fail on
/// I/O (a full disk) until one succeeds again; `shutdown` (readiness only)
/// fails once the server is stopping.
fn health(st: &ApiState, probe: &str, only: Option<&str>, r: &Req) -> Result<Response, ApiError> {
    let mut checks: Vec<(&str, Result<(), String>)> = vec![
        ("ping", Ok(())),
        ("log", Ok(())),
        ("etcd", st.store.record("health").map(drop).map_err(|e| e.to_string())),
    ];
    if probe == "readyz" {
        // Not ready while writes fail (a full disk): reads go on, but a
        // client sent here could not change anything.
        checks.push(("etcd-readiness", st.store.writable()));
        let stopping = *st.shutdown.borrow();
        checks.push(("shutdown", if stopping { Err("the server is shutting down".into()) } else { Ok(()) }));
    }
    if let Some(name) = only {
        let Some((_, result)) = checks.into_iter().find(|(n, _)| *n == name) else {
            return Err(ApiError::no_route(&format!("/{probe}/{name}")));
        };
        return Ok(match result {
            Ok(()) => (StatusCode::OK, "ok").into_response(),
            Err(why) => {
                tracing::warn!(check = name, %why, "health check failed");
                (StatusCode::INTERNAL_SERVER_ERROR, format!("internal server error: {name} failed")).into_response()
            }
        });
    }
    let excluded = r.params("exclude");
    let mut text = String::new();
    let mut failed = false;
    for (name, result) in checks.iter().filter(|(n, _)| !excluded.iter().any(|e| e == n)) {
        match result {
            Ok(()) => text.push_str(&format!("[+]{name} ok\n")),
            Err(why) => {
                tracing::warn!(check = name, %why, "health check failed");
                failed = true;
                text.push_str(&format!("[-]{name} failed: reason withheld\n"));
            }
        }
    }
    for e in excluded.iter().filter(|e| checks.iter().any(|(n, _)| n == e)) {
        text.push_str(&format!("[+]{e} excluded: ok\n"));
    }
    let verbose = r.query.contains_key("verbose");
    let (code, body) = match (failed, verbose) {
        (false, false) => (StatusCode::OK, "ok".to_owned()),
        (false, true) => (StatusCode::OK, format!("{text}{probe} check passed\n")),
        (true, _) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{text}{probe} check failed\n")),
    };
    Ok((code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// Whether the client already holds the document tagged `etag`.
fn cached(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*")
}

fn not_modified(etag: &str) -> Response {
    let mut resp = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// `/openapi/v2`: JSON, or gnostic's protobuf for a client that asks for
/// it (kubectl 1.27/1.28), tagged so a client revalidates with
/// `If-None-Match` and gets 304 while the document is unchanged.
fn openapi_v2(kinds: &crate::resources::Registry, headers: &HeaderMap) -> Response {
    let etag = openapi::etag(kinds, "v2");
    if cached(headers, &etag) {
        return not_modified(&etag);
    }
    let proto = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("com.github.proto-openapi.spec.v2"));
    let doc = openapi::v2(kinds);
    let (ctype, body) = if proto {
        (openapi_pb::CONTENT_TYPE, openapi_pb::document(&doc))
    } else {
        ("application/json", serde_json::to_vec(&doc).unwrap_or_default())
    };
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static(ctype))], body).into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    resp
}

/// `/openapi/v3/<gv>`: tagged like v2; asked for by the `hash` the root
/// handed out it may be cached for good (the hash names the content), and
/// an outdated hash is redirected to the current one, as Kubernetes does.
fn openapi_v3(kinds: &crate::resources::Registry, gv: &str, r: &Req, path: &str) -> Result<Response, ApiError> {
    if !openapi::serves(kinds, gv) {
        return Err(ApiError::no_route(path));
    }
    let etag = openapi::etag(kinds, gv);
    let current = etag.trim_matches('"');
    if let Some(h) = r.param("hash").filter(|h| *h != current) {
        tracing::debug!(gv, stale = h, "redirecting an outdated OpenAPI hash");
        let location = format!("/openapi/v3/{gv}?hash={current}");
        return Ok((StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, location)]).into_response());
    }
    if cached(&r.headers, &etag) {
        return Ok(not_modified(&etag));
    }
    let doc = openapi::document(kinds, gv).ok_or_else(|| ApiError::no_route(path))?;
    let mut resp = json(StatusCode::OK, &doc);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    let cache = if r.param("hash").is_some() { "public, immutable" } else { "no-cache, private" };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(resp)
}

/// `/metrics`: OpenMetrics for a scraper that asks for it, else the
/// Prometheus text format.
fn metrics_text(st: &ApiState, headers: &HeaderMap) -> Result<Response, ApiError> {
    let accept = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok());
    let (ctype, body) =
        st.telemetry.render(accept).map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, HeaderValue::from_static(ctype))], body).into_response())
}

/// Resolves once the server is stopping (ends streaming subresources).
pub(crate) async fn stopping(shutdown: &mut signal::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await;
}

/// A JSON response.
pub(crate) fn json(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// A JSON response with Kubernetes `Warning` headers.
pub(crate) fn json_warn(code: StatusCode, v: &Value, warnings: &[String]) -> Response {
    let mut resp = json(code, v);
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("warning", h);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(method: Method, content_type: Option<&str>, path_and_query: &str, code: u16) -> (String, String, String) {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        let mut h = HeaderMap::new();
        if let Some(ct) = content_type {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).expect("header"));
        }
        let x = labels(verb(&method, &h, query), path, code);
        (x.verb.to_owned(), format!("{}/{}/{}", x.group, x.version, x.resource), x.subresource)
    }

    #[test]
    fn requests_are_labelled_as_the_api_server_labels_them() {
        let s = |v: &str, r: &str, sub: &str| (v.to_owned(), r.to_owned(), sub.to_owned());
        assert_eq!(l(Method::GET, None, "/api/v1/namespaces/default/pods", 200), s("LIST", "/v1/pods", ""));
        assert_eq!(l(Method::GET, None, "/api/v1/pods?watch=true", 200), s("WATCH", "/v1/pods", ""));
        assert_eq!(l(Method::GET, None, "/api/v1/pods?watch=false", 200), s("LIST", "/v1/pods", ""));
        assert_eq!(l(Method::GET, None, "/api/v1/namespaces/default/pods/web", 200), s("GET", "/v1/pods", ""));
        assert_eq!(l(Method::GET, None, "/api/v1/namespaces/default/pods/web/log", 200), s("GET", "/v1/pods", "log"));
        assert_eq!(
            l(Method::POST, None, "/api/v1/namespaces/default/pods/web/exec", 101),
            s("CONNECT", "/v1/pods", "exec")
        );
        assert_eq!(
            l(Method::PATCH, Some("application/apply-patch+yaml"), "/apis/apps/v1/namespaces/x/deployments/d", 200),
            s("APPLY", "apps/v1/deployments", "")
        );
        assert_eq!(
            l(Method::DELETE, None, "/api/v1/namespaces/x/configmaps", 200),
            s("DELETECOLLECTION", "/v1/configmaps", "")
        );
        assert_eq!(l(Method::GET, None, "/api/v1/namespaces/kube-system", 200), s("GET", "/v1/namespaces", ""));
        assert_eq!(l(Method::GET, None, "/api/v1/nodes", 200), s("LIST", "/v1/nodes", ""));
        // Paths naming no resource, or no subresource served, cannot grow the label sets.
        assert_eq!(l(Method::GET, None, "/api/v1/namespaces/a/pods/b/x8f3k", 401), s("GET", "/v1/pods", ""));
        assert_eq!(l(Method::GET, None, "/apis/made.up/v1/things/x", 404), s("GET", "//", ""));
        assert_eq!(l(Method::GET, None, "/openapi/v3", 200), s("GET", "//", ""));
    }
}
