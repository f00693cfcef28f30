//! Recording Kubernetes Events about objects, as the controllers of
//! kube-controller-manager do (`kubectl describe` lists them).

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};

use crate::client::Client;

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
    let ev = Event {
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
    if let Err(e) = client.create(&ev) {
        tracing::warn!(error = %e, reason, "cannot record event");
    }
}
