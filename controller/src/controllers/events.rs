//! Recording Kubernetes Events about objects, as the controllers of
//! kube-controller-manager do (`kubectl describe` lists them), through the
//! same correlation client-go's recorder applies
//! (`tools/record/events_cache.go`), so a component in a loop — a crashing
//! pod on every node, a controller failing every second — cannot fill the
//! store with events:
//!
//! - a repeat of an event (same source, object, type, reason and message)
//!   bumps the stored one's `count` and `lastTimestamp` instead of adding one;
//! - ten events alike but for their message within ten minutes become one,
//!   "(combined from similar events): …", counted from then on;
//! - each source may record 25 events about one object at once, then one
//!   every five minutes (a token bucket); the rest are dropped;
//! - a message is cut to 1,024 bytes (events.k8s.io's note limit).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};

use crate::client::Client;

/// The longest message recorded, in bytes.
pub const MAX_MESSAGE: usize = 1024;
/// Events alike but for their message, within [`AGGREGATE_WINDOW`], that
/// are combined into one.
const AGGREGATE_AFTER: usize = 10;
const AGGREGATE_WINDOW: Duration = Duration::from_secs(600);
/// A source's events about one object: at once, then one per interval.
const BURST: f64 = 25.0;
const REFILL_EVERY: Duration = Duration::from_secs(300);
/// Entries kept per table before old ones are dropped.
const CACHE: usize = 4096;

/// What one process's recorder remembers of the events it recorded.
#[derive(Default)]
pub struct Correlator {
    /// Identical events: the one stored for each, and its count.
    seen: HashMap<String, Seen>,
    /// Similar events: the messages seen in the current window.
    similar: HashMap<String, Similar>,
    /// Tokens per source and object.
    buckets: HashMap<String, Bucket>,
}

struct Seen {
    namespace: String,
    name: String,
    count: i32,
    at: Instant,
}

struct Similar {
    since: Instant,
    messages: HashSet<String>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What to do with one event.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Over the source's budget for this object: drop it.
    Drop,
    /// Record it with this message; `update` names the stored event to
    /// count it on, when there is one.
    Record { message: String, key: String, update: Option<(String, String, i32)> },
}

impl Correlator {
    pub fn shared() -> Arc<Mutex<Correlator>> {
        Arc::new(Mutex::new(Correlator::default()))
    }

    fn decide(&mut self, ev: &Event, now: Instant) -> Decision {
        let o = &ev.involved_object;
        let object =
            [&o.api_version, &o.kind, &o.namespace, &o.name, &o.uid].map(|f| f.as_deref().unwrap_or("")).join("\u{1}");
        let source = ev.source.as_ref().and_then(|s| s.component.as_deref()).unwrap_or("");
        let bucket_key = format!("{source}\u{2}{object}");
        let bucket = self.buckets.entry(bucket_key).or_insert(Bucket { tokens: BURST, at: now });
        let refilled = now.duration_since(bucket.at).as_secs_f64() / REFILL_EVERY.as_secs_f64();
        bucket.tokens = (bucket.tokens + refilled).min(BURST);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return Decision::Drop;
        }
        bucket.tokens -= 1.0;

        let similar_key = format!(
            "{source}\u{2}{object}\u{2}{}\u{2}{}",
            ev.type_.as_deref().unwrap_or(""),
            ev.reason.as_deref().unwrap_or("")
        );
        let message = truncate(ev.message.as_deref().unwrap_or(""), MAX_MESSAGE);
        let similar =
            self.similar.entry(similar_key.clone()).or_insert_with(|| Similar { since: now, messages: HashSet::new() });
        if now.duration_since(similar.since) > AGGREGATE_WINDOW {
            *similar = Similar { since: now, messages: HashSet::new() };
        }
        similar.messages.insert(message.clone());
        let (message, key) = if similar.messages.len() >= AGGREGATE_AFTER {
            let combined = format!("(combined from similar events): {message}");
            (truncate(&combined, MAX_MESSAGE), similar_key)
        } else {
            let key = format!("{similar_key}\u{2}{message}");
            (message, key)
        };
        let update = self.seen.get(&key).map(|s| (s.namespace.clone(), s.name.clone(), s.count));
        self.trim(now);
        Decision::Record { message, key, update }
    }

    /// Remembers where an event was stored and its count.
    fn stored(&mut self, key: String, namespace: String, name: String, count: i32, now: Instant) {
        self.seen.insert(key, Seen { namespace, name, count, at: now });
    }

    /// Keeps each table within [`CACHE`] entries: those older than the
    /// aggregation window go first, then (rarely) everything.
    fn trim(&mut self, now: Instant) {
        if self.seen.len() > CACHE {
            self.seen.retain(|_, s| now.duration_since(s.at) < AGGREGATE_WINDOW);
            if self.seen.len() > CACHE {
                self.seen.clear();
            }
        }
        if self.similar.len() > CACHE {
            self.similar.retain(|_, s| now.duration_since(s.since) < AGGREGATE_WINDOW);
            if self.similar.len() > CACHE {
                self.similar.clear();
            }
        }
        if self.buckets.len() > CACHE {
            // A full bucket is as good as a forgotten one.
            self.buckets.retain(|_, b| now.duration_since(b.at) < REFILL_EVERY.mul_f64(BURST));
            if self.buckets.len() > CACHE {
                self.buckets.clear();
            }
        }
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Records one event; failures are logged, never fatal to a reconcile.
pub fn record(
    client: &Client,
    component: &str,
    (api_version, kind, about): (&str, &str, &ObjectMeta),
    warning: bool,
    reason: &str,
    message: &str,
) {
    let now = jiff::Timestamp::now();
    let ns = about.namespace.clone().unwrap_or_else(|| "default".to_owned());
    let name = about.name.clone().unwrap_or_default();
    let mut ev = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(api_version.to_owned()),
            kind: Some(kind.to_owned()),
            name: Some(name),
            namespace: about.namespace.clone(),
            uid: about.uid.clone(),
            resource_version: about.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        type_: Some(if warning { "Warning" } else { "Normal" }.to_owned()),
        source: Some(EventSource { component: Some(component.to_owned()), host: None }),
        reporting_component: Some(component.to_owned()),
        reporting_instance: Some(component.to_owned()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        ..Default::default()
    };
    let correlator = client.events();
    let mut c = correlator.lock().unwrap_or_else(|p| p.into_inner());
    let clock = Instant::now();
    let (message, key, update) = match c.decide(&ev, clock) {
        Decision::Drop => {
            tracing::debug!(reason, component, "event dropped: over its source's budget for this object");
            return;
        }
        Decision::Record { message, key, update } => (message, key, update),
    };
    ev.message = Some(message.clone());
    // A repeat: count it on the stored event, if that is still there.
    if let Some((ens, ename, count)) = update {
        if let Ok(Some(mut stored)) = client.get::<Event>(&ens, &ename) {
            let count = stored.count.unwrap_or(count).saturating_add(1);
            stored.count = Some(count);
            stored.last_timestamp = Some(Time(now));
            stored.message = Some(message);
            match client.replace(&stored) {
                Ok(_) => return c.stored(key, ens, ename, count, clock),
                Err(e) => tracing::debug!(error = %e, reason, "cannot count a repeated event; recording it anew"),
            }
        }
    }
    match client.create(&ev) {
        Ok(created) => {
            let name = created.metadata.name.unwrap_or_default();
            c.stored(key, ns, name, 1, clock);
        }
        Err(e) => tracing::warn!(error = %e, reason, "cannot record event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &str, message: &str, object: &str) -> Event {
        Event {
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some("default".into()),
                name: Some(object.into()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some("Warning".into()),
            source: Some(EventSource { component: Some("kubelet".into()), host: None }),
            ..Default::default()
        }
    }

    fn record(c: &mut Correlator, ev: &Event, now: Instant) -> Decision {
        let d = c.decide(ev, now);
        if let Decision::Record { key, update: None, .. } = &d {
            c.stored(key.clone(), "default".into(), "stored".into(), 1, now);
        }
        d
    }

    #[test]
    fn a_repeated_event_is_counted_on_the_stored_one() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let ev = event("BackOff", "Back-off restarting failed container", "web");
        assert!(matches!(record(&mut c, &ev, t), Decision::Record { update: None, .. }));
        let again = record(&mut c, &ev, t);
        assert!(matches!(again, Decision::Record { update: Some((_, ref n, 1)), .. } if n == "stored"), "{again:?}");
    }

    #[test]
    fn ten_similar_events_become_one_combined() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let mut messages = Vec::new();
        for i in 0..12 {
            if let Decision::Record { message, update, .. } =
                record(&mut c, &event("Failed", &format!("try {i}"), "web"), t)
            {
                messages.push((message, update.is_some()));
            }
        }
        assert!(messages[..9].iter().all(|(m, counted)| m.starts_with("try ") && !counted));
        assert_eq!(messages[9], ("(combined from similar events): try 9".to_owned(), false));
        assert_eq!(messages[11], ("(combined from similar events): try 11".to_owned(), true), "then counted on it");
        // A new window starts afresh.
        let later = t + AGGREGATE_WINDOW + Duration::from_secs(400);
        let d = record(&mut c, &event("Failed", "try 12", "web"), later);
        assert!(matches!(d, Decision::Record { ref message, .. } if message == "try 12"), "{d:?}");
    }

    #[test]
    fn a_source_gets_a_burst_per_object_then_one_every_five_minutes() {
        let mut c = Correlator::default();
        let t = Instant::now();
        let kept =
            (0..40).filter(|i| record(&mut c, &event(&format!("R{i}"), "m", "web"), t) != Decision::Drop).count();
        assert_eq!(kept, 25);
        assert_ne!(record(&mut c, &event("Other", "m", "db"), t), Decision::Drop, "another object has its own budget");
        assert_eq!(record(&mut c, &event("R41", "m", "web"), t + Duration::from_secs(100)), Decision::Drop);
        assert_ne!(record(&mut c, &event("R42", "m", "web"), t + Duration::from_secs(301)), Decision::Drop);
    }

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary() {
        let mut c = Correlator::default();
        let long = "é".repeat(MAX_MESSAGE);
        let Decision::Record { message, .. } = c.decide(&event("R", &long, "web"), Instant::now()) else {
            panic!("dropped")
        };
        assert!(message.len() <= MAX_MESSAGE && message.len() >= MAX_MESSAGE - 1);
        assert!(long.starts_with(&message));
    }
}
