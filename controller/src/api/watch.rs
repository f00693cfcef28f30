//! `?watch=true`: newline-delimited JSON watch events, streamed.
//!
//! Without a `resourceVersion` (or with "0") the watch starts with a
//! synthetic ADDED event per existing object, as Kubernetes does; with one it
//! resumes from the store's history, or answers an ERROR event carrying a
//! 410 `Expired` status when that revision is too old.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::error::ApiError;
use super::objects::selectors;
use super::{ApiState, Format, Req, Target, table};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{EventType, WatchEvent};

const BOOKMARK_EVERY: Duration = Duration::from_secs(30);

struct Filter {
    resource: &'static str,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, o: &Value) -> bool {
        self.labels.matches(o) && self.fields.matches(o)
    }

    /// The event as this watcher sees it: a change that moves an object into
    /// the selection is ADDED, out of it DELETED.
    fn view(&self, ev: &WatchEvent) -> Option<EventType> {
        if ev.resource != self.resource || self.namespace.as_deref().is_some_and(|ns| ns != ev.namespace) {
            return None;
        }
        let now = self.matches(&ev.object);
        let before = ev.prev.as_ref().is_some_and(|p| self.matches(p));
        match ev.kind {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Deleted => before.then_some(EventType::Deleted),
            EventType::Modified => match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
        }
    }
}

struct Encoder {
    rt: &'static crate::resources::ResourceType,
    /// JSON, a Table or metadata only (YAML streams as JSON).
    format: Format,
    include: Option<String>,
}

impl Encoder {
    fn line(&self, ty: &str, object: &Value) -> Bytes {
        let object = if self.format == Format::Table && ty != "ERROR" && ty != "BOOKMARK" {
            let rv = object.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
            table::table(self.rt, std::slice::from_ref(object), rv, self.include.as_deref())
        } else if self.format == Format::Partial && ty != "ERROR" {
            super::partial(object.clone())
        } else {
            let mut o = object.clone();
            if ty != "ERROR" && ty != "BOOKMARK" {
                crate::crd::present(self.rt, &mut o);
            }
            o
        };
        let mut v = serde_json::to_vec(&json!({"type": ty, "object": object})).unwrap_or_default();
        v.push(b'\n');
        Bytes::from(v)
    }

    fn bookmark_object(&self, rev: u64) -> Value {
        let table = self.format == Format::Table;
        let kind = if table { "Table".to_owned() } else { self.rt.kind.to_owned() };
        let api = if table { "meta.k8s.io/v1".to_owned() } else { self.rt.api_version() };
        json!({"kind": kind, "apiVersion": api, "metadata": {"resourceVersion": rev.to_string()}})
    }

    fn bookmark(&self, rev: u64) -> Bytes {
        self.line("BOOKMARK", &self.bookmark_object(rev))
    }

    /// The bookmark that ends a watch-list's initial events.
    fn initial_events_end(&self, rev: u64) -> Bytes {
        let mut b = self.bookmark_object(rev);
        b["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        self.line("BOOKMARK", &b)
    }
}

pub fn serve(st: &Arc<ApiState>, t: &Target, r: &Req) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(t.rt, r)?;
    let filter = Filter { resource: t.rt.id, namespace: t.namespace.clone(), labels, fields };
    let enc = Encoder { rt: t.rt, format: r.format(), include: r.param("includeObject").map(str::to_owned) };
    let bookmarks = r.flag("allowWatchBookmarks");
    let timeout = r.param("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs);
    let from = match r.param("resourceVersion").filter(|v| !v.is_empty() && *v != "0") {
        Some(v) => Some(v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))?),
        None => None,
    };

    // `sendInitialEvents=true` (client-go's watch-list): the current state as
    // ADDED events, then a bookmark marking their end, whatever the
    // resourceVersion says.
    let initial_events = r.flag("sendInitialEvents");
    let mut initial: Vec<Bytes> = Vec::new();
    let mut last = from.unwrap_or(0);
    // Listing and subscribing happen without an await in between, so no
    // write can fall between them on this single-threaded runtime.
    let start = match from {
        // A revision this store never reached (say, after its data was
        // wiped): the client must re-list, as after a compaction.
        Some(rev) if rev > st.store.revision() && !initial_events => {
            Err(crate::store::Gone { requested: rev, oldest: st.store.revision() })
        }
        Some(rev) if !initial_events => st.store.hub().subscribe(rev),
        _ => {
            let (items, rev) = st.store.list(t.rt.id, t.namespace.as_deref(), None)?;
            last = rev;
            for o in items.iter().filter(|o| filter.matches(o)) {
                initial.push(enc.line("ADDED", o));
            }
            if initial_events {
                initial.push(enc.initial_events_end(rev));
            }
            st.store.hub().subscribe(rev)
        }
    };
    let (replay, live) = match start {
        Ok(s) => (s.replay, Some(s.live)),
        Err(gone) => {
            let status = ApiError::gone(gone.to_string()).status();
            initial.push(enc.line("ERROR", &status));
            (Vec::new(), None)
        }
    };
    for ev in &replay {
        last = last.max(ev.rev);
        if let Some(ty) = filter.view(ev) {
            initial.push(enc.line(ty.as_str(), &ev.object));
        }
    }

    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let mut shutdown = st.shutdown.clone();
    let open = st.telemetry.api.watch_opened();
    tokio::spawn(async move {
        let _open = open;
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let Some(mut live) = live else { return };
        let deadline = timeout.and_then(|d| tokio::time::Instant::now().checked_add(d));
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let line = tokio::select! {
                ev = live.recv() => match ev {
                    Ok(ev) => {
                        last = last.max(ev.rev);
                        match filter.view(&ev) {
                            Some(ty) => enc.line(ty.as_str(), &ev.object),
                            None => continue,
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "watcher fell behind; closing its watch with 410");
                        let _ = tx.send(enc.line("ERROR", &ApiError::gone("watch fell behind; re-list").status())).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => enc.bookmark(last),
                _ = sleep => return,
                _ = shutdown.changed() => return,
                _ = tx.closed() => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache, private")],
        Body::from_stream(stream),
    )
        .into_response())
}
