//! Events expire, as in Kubernetes (`--event-ttl`, default 1 h): each event
//! is deleted that long after it was last seen, so the store does not grow
//! with every scheduling decision and restart ever recorded.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;

use super::runner::{Action, Reconcile};
use crate::client::{Client, Kind};
use crate::controllers::ControllerError;
use crate::store::{EventType, Key, WatchEvent};

pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

pub struct EventTtl {
    client: Client,
    ttl: Duration,
    id: &'static str,
}

impl EventTtl {
    pub fn new(client: Client, ttl: Duration) -> Result<Self, ControllerError> {
        Ok(EventTtl { client, ttl, id: Event::rt()?.id })
    }
}

impl Reconcile for EventTtl {
    fn name(&self) -> &'static str {
        "event-ttl"
    }

    fn keys_for(&mut self, ev: &WatchEvent, out: &mut Vec<Key>) {
        if ev.resource == self.id && ev.kind != EventType::Deleted {
            out.push(Key::new(self.id, &ev.namespace, &ev.name));
        }
    }

    fn all_keys(&mut self) -> Result<Vec<Key>, ControllerError> {
        self.client.keys::<Event>()
    }

    fn reconcile(&mut self, key: &Key) -> Result<Action, ControllerError> {
        let Some(ev) = self.client.get::<Event>(&key.namespace, &key.name)? else { return Ok(Action::Done) };
        let seen = ev
            .last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(ev.event_time.as_ref().map(|t| t.0))
            .or(ev.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .map_or(0, |t| t.as_second());
        let age = jiff::Timestamp::now().as_second() - seen;
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        if age >= ttl {
            super::ignore_not_found(self.client.delete::<Event>(
                &key.namespace,
                &key.name,
                ev.metadata.uid.as_deref(),
            ))?;
            return Ok(Action::Done);
        }
        Ok(Action::RequeueAfter(Duration::from_secs((ttl - age).unsigned_abs())))
    }
}
