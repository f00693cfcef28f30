//! `POST pods/{name}/eviction` (`policy/v1` Eviction): a delete that asks
//! the pod's PodDisruptionBudget first, as Kubernetes' eviction REST does.
//! A pod that cannot count toward a budget (finished, pending, already being
//! deleted) or that no budget covers is deleted; with one budget, the
//! eviction spends one of its `disruptionsAllowed` (noting the pod in
//! `disruptedPods`, a write that conflicts with any other spending it) and
//! then deletes; none left answers 429, which `kubectl drain` retries.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use super::objects::{delete_opts_of, object_body};
use super::{ApiError, ApiState, Req, Target};
use crate::client::Client;
use crate::controllers::ControllerError;
use crate::controllers::disruption::selector;
use crate::controllers::podutil;

/// How often a budget write that lost a race is tried again.
const RETRIES: usize = 5;

fn too_many_requests(message: String, cause: Option<String>) -> ApiError {
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message);
    if let Some(c) = cause {
        e.details = Some(json!({"causes": [{"reason": "DisruptionBudget", "message": c}]}));
    }
    e
}

fn controller_error(e: ControllerError) -> ApiError {
    match e {
        ControllerError::NotFound(w) | ControllerError::Conflict(w) | ControllerError::Write(w) => w.into(),
        other => ApiError::internal(other.to_string()),
    }
}

/// Kubernetes' `canIgnorePDB`: a pod that is not counted as healthy by any
/// budget may go without asking one.
fn can_ignore_budget(pod: &Pod) -> bool {
    matches!(podutil::phase(pod), "Succeeded" | "Failed" | "Pending") || pod.metadata.deletion_timestamp.is_some()
}

pub async fn evict(st: &Arc<ApiState>, t: &Target, r: Req) -> Result<Response, ApiError> {
    let (bytes, headers, query) = r.bytes(st.config.max_body).await?;
    let (body, _) = object_body(&headers, &bytes)?;
    if body.get("kind").and_then(Value::as_str).is_some_and(|k| k != "Eviction") {
        return Err(ApiError::bad_request("the request body is not an Eviction"));
    }
    let ns = t.namespace.as_deref().unwrap_or_default();
    let name = t.name.as_deref().unwrap_or_default();
    if let Some(n) = body.pointer("/metadata/name").and_then(Value::as_str).filter(|n| *n != name) {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object: {name:?} and {n:?}"
        )));
    }
    let opts = delete_opts_of(body.get("deleteOptions").unwrap_or(&Value::Null), &query)?;
    let client = Client::new(st.writer.clone());
    let pod =
        client.get::<Pod>(ns, name).map_err(controller_error)?.ok_or_else(|| ApiError::not_found("pods", name))?;
    if !can_ignore_budget(&pod) {
        spend_budget(&client, ns, &pod, opts.dry_run)?;
    }
    let mut opts = opts;
    // The pod evicted is the one looked at, not a new one of that name.
    if opts.uid.is_none() {
        opts.uid = pod.metadata.uid.clone();
    }
    st.writer.delete(t.rt, ns, name, &opts)?;
    Ok(super::json(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// Takes one disruption from the budget covering `pod`, or says why not.
fn spend_budget(client: &Client, ns: &str, pod: &Pod, dry_run: bool) -> Result<(), ApiError> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let labels = json!({"metadata": {"labels": pod.metadata.labels}});
    for _ in 0..RETRIES {
        let budgets: Vec<PodDisruptionBudget> = client
            .list::<PodDisruptionBudget>(Some(ns))
            .map_err(controller_error)?
            .into_iter()
            .filter(|b| selector(b).is_some_and(|s| s.matches(&labels)))
            .collect();
        let mut pdb = match budgets.len() {
            0 => return Ok(()),
            1 => budgets.into_iter().next().ok_or_else(|| ApiError::internal("no budget"))?,
            _ => {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
        };
        let pdb_name = pdb.metadata.name.clone().unwrap_or_default();
        let status = pdb.status.clone().unwrap_or_default();
        if status.observed_generation.unwrap_or(0) < pdb.metadata.generation.unwrap_or(0) {
            return Err(too_many_requests(
                "Cannot evict pod as it would violate the pod's disruption budget.".into(),
                Some(format!("The disruption budget {pdb_name} is still being processed by the server.")),
            ));
        }
        // An unhealthy pod may go while the budget holds without it
        // (`unhealthyPodEvictionPolicy: IfHealthyBudget`, the default), or
        // always (`AlwaysAllow`).
        if !podutil::is_ready(pod) {
            let always =
                pdb.spec.as_ref().and_then(|s| s.unhealthy_pod_eviction_policy.as_deref()) == Some("AlwaysAllow");
            if always || status.current_healthy >= status.desired_healthy {
                return Ok(());
            }
        }
        if status.disruptions_allowed <= 0 {
            return Err(too_many_requests(
                "Cannot evict pod as it would violate the pod's disruption budget.".into(),
                Some(format!(
                    "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                    status.desired_healthy, status.current_healthy
                )),
            ));
        }
        if dry_run {
            return Ok(());
        }
        let mut status = status;
        status.disruptions_allowed -= 1;
        let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default();
        status.disrupted_pods.get_or_insert_with(Default::default).insert(name.clone(), Time(now));
        pdb.status = Some(status);
        // resourceVersion kept: a concurrent eviction makes this a conflict.
        match client.replace_status(&pdb) {
            Ok(_) => return Ok(()),
            Err(ControllerError::Conflict(_)) => continue,
            Err(e) => return Err(controller_error(e)),
        }
    }
    Err(too_many_requests("Cannot evict pod: too many evictions at once; try again.".into(), None))
}
