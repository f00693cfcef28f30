//! Per-kind defaults and validation, following Kubernetes' `defaults.go` and
//! `validation.go` for the fields this project uses.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetUpdateStrategy, Deployment, DeploymentStrategy, ReplicaSet, RollingUpdateDaemonSet,
    RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Endpoints, Event, Namespace, NamespaceSpec, NamespaceStatus, Node, Pod, PodSpec, PodStatus,
    PodTemplateSpec, ResourceRequirements, Secret, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::FieldError;
use super::names;
use crate::resources::ResourceType;
use crate::selector;
use kedge_common::quantity;

type Errs = Vec<FieldError>;

const MAX_ANNOTATIONS: usize = 256 * 1024;
const MAX_DATA: usize = 1024 * 1024;

pub fn metadata(rt: &ResourceType, m: &ObjectMeta, errs: &mut Errs) {
    match m.name.as_deref() {
        None | Some("") => errs.push(FieldError::required("metadata.name")),
        Some(n) => {
            let bad = match rt.kind {
                "Namespace" => names::dns1123_label(n),
                "Service" => names::dns1035_label(n),
                // Path segment names, as Kubernetes allows them for these
                // (`system:discovery`).
                "Event" | "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding" => {
                    (n.contains(['/', '%']) || n == "." || n == "..")
                        .then(|| "may not contain '/' or '%' or be '.' or '..'".to_owned())
                }
                _ => names::dns1123_subdomain(n),
            };
            if let Some(why) = bad {
                errs.push(FieldError::invalid("metadata.name", n, &why));
            }
        }
    }
    labels("metadata.labels", m.labels.as_ref(), errs);
    if let Some(a) = &m.annotations {
        let mut total = 0;
        for (k, v) in a {
            total += k.len() + v.len();
            if let Some(why) = names::qualified_name(k) {
                errs.push(FieldError::invalid("metadata.annotations", k, &why));
            }
        }
        if total > MAX_ANNOTATIONS {
            errs.push(FieldError::too_long("metadata.annotations", MAX_ANNOTATIONS));
        }
    }
}

fn labels(path: &str, l: Option<&BTreeMap<String, String>>, errs: &mut Errs) {
    for (k, v) in l.into_iter().flatten() {
        if let Some(why) = names::qualified_name(k) {
            errs.push(FieldError::invalid(path, k, &why));
        }
        if let Some(why) = names::label_value(v) {
            errs.push(FieldError::invalid(format!("{path}[{k}]"), v, &why));
        }
    }
}

fn one_of(errs: &mut Errs, path: &str, value: Option<&str>, allowed: &[&str]) {
    if let Some(v) = value {
        if !allowed.contains(&v) {
            errs.push(FieldError::not_supported(path, v, allowed));
        }
    }
}

fn port_range(errs: &mut Errs, path: &str, p: i32) {
    if !(1..=65535).contains(&p) {
        errs.push(FieldError::invalid(path, p, "must be between 1 and 65535, inclusive"));
    }
}

// ---------------------------------------------------------------- pods

fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        "IfNotPresent"
    } else {
        match last.split_once(':') {
            None => "Always",
            Some((_, "latest")) => "Always",
            Some(_) => "IfNotPresent",
        }
    }
}

fn default_container(c: &mut Container) {
    if c.image_pull_policy.is_none() {
        c.image_pull_policy = Some(default_pull_policy(c.image.as_deref().unwrap_or_default()).to_owned());
    }
    c.termination_message_path.get_or_insert_with(|| "/dev/termination-log".to_owned());
    c.termination_message_policy.get_or_insert_with(|| "File".to_owned());
    let res = c.resources.get_or_insert_with(ResourceRequirements::default);
    // As Kubernetes: a resource with a limit and no request requests its limit.
    if let Some(limits) = res.limits.clone() {
        let requests = res.requests.get_or_insert_with(BTreeMap::new);
        for (k, v) in limits {
            requests.entry(k).or_insert(v);
        }
    }
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".to_owned());
    }
}

pub fn default_pod_spec(s: &mut PodSpec) {
    s.restart_policy.get_or_insert_with(|| "Always".to_owned());
    s.dns_policy.get_or_insert_with(|| "ClusterFirst".to_owned());
    s.termination_grace_period_seconds.get_or_insert(30);
    s.scheduler_name.get_or_insert_with(|| "default-scheduler".to_owned());
    s.security_context.get_or_insert_with(Default::default);
    s.enable_service_links.get_or_insert(true);
    s.containers.iter_mut().for_each(default_container);
    s.init_containers.iter_mut().flatten().for_each(default_container);
}

fn resources(errs: &mut Errs, path: &str, r: Option<&ResourceRequirements>) {
    let Some(r) = r else { return };
    let mut parsed =
        |kind: &str, m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            let mut out = BTreeMap::new();
            for (name, q) in m.into_iter().flatten() {
                match quantity::parse_milli(&q.0) {
                    Ok(v) => {
                        out.insert(name.clone(), v);
                    }
                    Err(e) => errs.push(FieldError::invalid(format!("{path}.{kind}[{name}]"), &q.0, &e.to_string())),
                }
            }
            out
        };
    let limits = parsed("limits", r.limits.as_ref());
    let requests = parsed("requests", r.requests.as_ref());
    for (name, req) in &requests {
        if let Some(lim) = limits.get(name) {
            if req > lim {
                let q = r.requests.as_ref().and_then(|m| m.get(name)).map(|q| q.0.clone()).unwrap_or_default();
                let l = r.limits.as_ref().and_then(|m| m.get(name)).map(|q| q.0.clone()).unwrap_or_default();
                errs.push(FieldError::invalid(
                    format!("{path}.requests"),
                    &q,
                    &format!("must be less than or equal to {name} limit of {l}"),
                ));
            }
        }
    }
}

fn container(errs: &mut Errs, path: &str, c: &Container, volumes: &BTreeSet<String>) {
    if c.name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name")));
    } else if let Some(why) = names::dns1123_label(&c.name) {
        errs.push(FieldError::invalid(format!("{path}.name"), &c.name, &why));
    }
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        errs.push(FieldError::required(format!("{path}.image")));
    }
    one_of(
        errs,
        &format!("{path}.imagePullPolicy"),
        c.image_pull_policy.as_deref(),
        &["Always", "IfNotPresent", "Never"],
    );
    let mut port_names = BTreeSet::new();
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        port_range(errs, &format!("{pp}.containerPort"), p.container_port);
        if let Some(h) = p.host_port {
            if h != 0 {
                port_range(errs, &format!("{pp}.hostPort"), h);
            }
        }
        one_of(errs, &format!("{pp}.protocol"), p.protocol.as_deref(), &["SCTP", "TCP", "UDP"]);
        if let Some(n) = &p.name {
            if let Some(why) = names::port_name(n) {
                errs.push(FieldError::invalid(format!("{pp}.name"), n, &why));
            } else if !port_names.insert(n.clone()) {
                errs.push(FieldError::duplicate(format!("{pp}.name"), n));
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        if e.name.is_empty() {
            errs.push(FieldError::required(format!("{path}.env[{i}].name")));
        } else if let Some(why) = names::env_var_name(&e.name) {
            errs.push(FieldError::invalid(format!("{path}.env[{i}].name"), &e.name, &why));
        }
    }
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        if !volumes.contains(&m.name) {
            errs.push(FieldError::not_found(format!("{path}.volumeMounts[{i}].name"), &m.name));
        }
        if m.mount_path.is_empty() {
            errs.push(FieldError::required(format!("{path}.volumeMounts[{i}].mountPath")));
        }
    }
    resources(errs, &format!("{path}.resources"), c.resources.as_ref());
}

pub fn validate_pod_spec(errs: &mut Errs, path: &str, s: &PodSpec) {
    let mut volumes = BTreeSet::new();
    for (i, v) in s.volumes.iter().flatten().enumerate() {
        let vp = format!("{path}.volumes[{i}]");
        if let Some(why) = names::dns1123_label(&v.name) {
            errs.push(FieldError::invalid(format!("{vp}.name"), &v.name, &why));
        } else if !volumes.insert(v.name.clone()) {
            errs.push(FieldError::duplicate(format!("{vp}.name"), &v.name));
        }
        let sources = serde_json::to_value(v)
            .ok()
            .and_then(|j| j.as_object().map(|o| o.keys().filter(|k| *k != "name").count()))
            .unwrap_or(0);
        if sources == 0 {
            errs.push(FieldError::required(vp.clone()).with_detail("must specify a volume type"));
        } else if sources > 1 {
            errs.push(FieldError::forbidden(vp, "may not specify more than 1 volume type"));
        }
    }
    if s.containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers")));
    }
    let mut seen = BTreeSet::new();
    for (list, items) in
        [("initContainers", s.init_containers.as_deref().unwrap_or_default()), ("containers", &s.containers)]
    {
        for (i, c) in items.iter().enumerate() {
            let cp = format!("{path}.{list}[{i}]");
            container(errs, &cp, c, &volumes);
            if !c.name.is_empty() && !seen.insert(c.name.clone()) {
                errs.push(FieldError::duplicate(format!("{cp}.name"), &c.name));
            }
        }
    }
    one_of(errs, &format!("{path}.restartPolicy"), s.restart_policy.as_deref(), &["Always", "Never", "OnFailure"]);
    one_of(
        errs,
        &format!("{path}.dnsPolicy"),
        s.dns_policy.as_deref(),
        &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
    );
    if let Some(g) = s.termination_grace_period_seconds {
        if g < 0 {
            errs.push(FieldError::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                g,
                "must be greater than or equal to 0",
            ));
        }
    }
    labels(&format!("{path}.nodeSelector"), s.node_selector.as_ref(), errs);
    for (i, t) in s.tolerations.iter().flatten().enumerate() {
        let tp = format!("{path}.tolerations[{i}]");
        one_of(errs, &format!("{tp}.operator"), t.operator.as_deref(), &["Equal", "Exists"]);
        one_of(
            errs,
            &format!("{tp}.effect"),
            t.effect.as_deref().filter(|e| !e.is_empty()),
            &["NoExecute", "NoSchedule", "PreferNoSchedule"],
        );
        if t.toleration_seconds.is_some() && t.effect.as_deref() != Some("NoExecute") {
            errs.push(FieldError::invalid(
                format!("{tp}.effect"),
                t.effect.as_deref().unwrap_or_default(),
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        if t.operator.as_deref() == Some("Exists") && t.value.as_deref().is_some_and(|v| !v.is_empty()) {
            errs.push(FieldError::invalid(
                format!("{tp}.operator"),
                "Exists",
                "value must be empty when `operator` is 'Exists'",
            ));
        }
    }
}

fn qos_class(s: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for c in &s.containers {
        let r = c.resources.as_ref();
        let req = r.and_then(|r| r.requests.as_ref());
        let lim = r.and_then(|r| r.limits.as_ref());
        any |= req.is_some_and(|m| !m.is_empty()) || lim.is_some_and(|m| !m.is_empty());
        for res in ["cpu", "memory"] {
            let l = lim.and_then(|m| m.get(res));
            let q = req.and_then(|m| m.get(res)).or(l);
            if l.is_none() || q.map(|q| &q.0) != l.map(|l| &l.0) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

pub fn pod(p: &mut Pod, old: Option<&Pod>, errs: &mut Errs) {
    let spec = p.spec.get_or_insert_with(Default::default);
    default_pod_spec(spec);
    validate_pod_spec(errs, "spec", spec);
    match old {
        None => {
            let status = p.status.get_or_insert_with(PodStatus::default);
            status.phase.get_or_insert_with(|| "Pending".to_owned());
            status.qos_class.get_or_insert_with(|| qos_class(spec).to_owned());
        }
        Some(old) => {
            // A mirror pod stays what its node made (Kubernetes: the mirror
            // annotation may not change, nor, then, the spec).
            let mirror = |p: &Pod| p.metadata.annotations.as_ref().and_then(|a| a.get(MIRROR_ANNOTATION)).cloned();
            if mirror(old) != mirror(p) {
                errs.push(FieldError::forbidden(
                    format!("metadata.annotations[{MIRROR_ANNOTATION}]"),
                    "may not add, remove or change the mirror pod annotation",
                ));
            } else if mirror(old).is_some() && old.spec != p.spec {
                errs.push(FieldError::forbidden("spec", "a mirror pod is read-only: edit its static pod on its node"));
            }
            // Kubernetes lets an update change only images, activeDeadlineSeconds,
            // tolerations (additions) and an unset nodeName (binding).
            let strip = |s: &PodSpec| {
                let mut s = s.clone();
                s.containers.iter_mut().for_each(|c| c.image = None);
                s.init_containers.iter_mut().flatten().for_each(|c| c.image = None);
                s.active_deadline_seconds = None;
                s.tolerations = None;
                s
            };
            if let (Some(new), Some(prev)) = (p.spec.as_ref(), old.spec.as_ref()) {
                let mut new_s = strip(new);
                let prev_s = strip(prev);
                if prev_s.node_name.is_none() {
                    new_s.node_name = None;
                }
                if new_s != prev_s {
                    errs.push(FieldError::forbidden(
                        "spec",
                        "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations)",
                    ));
                }
            }
        }
    }
}

// ------------------------------------------------------------ workloads

fn template(errs: &mut Errs, sel: &LabelSelector, t: &mut PodTemplateSpec, only_always: bool) {
    let spec = t.spec.get_or_insert_with(Default::default);
    default_pod_spec(spec);
    validate_pod_spec(errs, "spec.template.spec", spec);
    if only_always && spec.restart_policy.as_deref() != Some("Always") {
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            spec.restart_policy.as_deref().unwrap_or_default(),
            &["Always"],
        ));
    }
    let tlabels = t.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    labels("spec.template.metadata.labels", Some(&tlabels), errs);
    let empty = sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty);
    if empty {
        errs.push(FieldError::required("spec.selector"));
        return;
    }
    match selector::LabelSelector::from_k8s(sel) {
        Err(why) => errs.push(FieldError::invalid("spec.selector", "", &why)),
        Ok(s) => {
            let obj = serde_json::json!({"metadata": {"labels": tlabels}});
            if !s.matches(&obj) {
                let shown: Vec<String> = tlabels.iter().map(|(k, v)| format!("\"{k}\":\"{v}\"")).collect();
                errs.push(FieldError::invalid(
                    "spec.template.metadata.labels",
                    format!("map[string]string{{{}}}", shown.join(", ")),
                    "`selector` does not match template `labels`",
                ));
            }
        }
    }
}

fn selector_immutable(errs: &mut Errs, new: &LabelSelector, old: Option<&LabelSelector>) {
    if let Some(old) = old {
        if old != new {
            errs.push(FieldError::invalid("spec.selector", "", "field is immutable"));
        }
    }
}

fn replicas(errs: &mut Errs, r: Option<i32>) {
    if let Some(r) = r {
        if r < 0 {
            errs.push(FieldError::invalid("spec.replicas", r, "must be greater than or equal to 0"));
        }
    }
}

pub fn deployment(d: &mut Deployment, old: Option<&Deployment>, errs: &mut Errs) {
    let spec = d.spec.get_or_insert_with(Default::default);
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    let strategy = spec.strategy.get_or_insert_with(DeploymentStrategy::default);
    strategy.type_.get_or_insert_with(|| "RollingUpdate".to_owned());
    if strategy.type_.as_deref() == Some("RollingUpdate") {
        let ru = strategy.rolling_update.get_or_insert_with(RollingUpdateDeployment::default);
        ru.max_surge.get_or_insert_with(|| IntOrString::String("25%".into()));
        ru.max_unavailable.get_or_insert_with(|| IntOrString::String("25%".into()));
    }
    one_of(errs, "spec.strategy.type", strategy.type_.as_deref(), &["Recreate", "RollingUpdate"]);
    if let Some(ru) = &strategy.rolling_update {
        let surge = int_or_percent(errs, "spec.strategy.rollingUpdate.maxSurge", ru.max_surge.as_ref());
        let unavailable =
            int_or_percent(errs, "spec.strategy.rollingUpdate.maxUnavailable", ru.max_unavailable.as_ref());
        if surge == Some(0) && unavailable == Some(0) {
            errs.push(FieldError::invalid(
                "spec.strategy.rollingUpdate.maxUnavailable",
                0,
                "may not be 0 when `maxSurge` is 0",
            ));
        }
    }
    if strategy.type_.as_deref() == Some("Recreate") && strategy.rolling_update.is_some() {
        errs.push(FieldError::forbidden(
            "spec.strategy.rollingUpdate",
            "may not be specified when strategy `type` is 'Recreate'",
        ));
    }
    replicas(errs, spec.replicas);
    template(errs, &spec.selector, &mut spec.template, true);
    selector_immutable(errs, &spec.selector, old.and_then(|o| o.spec.as_ref()).map(|s| &s.selector));
}

/// Checks an int-or-percent rollout bound (≥ 0; a percentage up to 100%);
/// returns it when it is a plain number or a percentage, for the "both
/// zero" rule (only its zero-ness matters there).
fn int_or_percent(errs: &mut Errs, path: &str, v: Option<&IntOrString>) -> Option<i64> {
    match v? {
        IntOrString::Int(i) if *i < 0 => {
            errs.push(FieldError::invalid(path, i, "must be greater than or equal to 0"));
            None
        }
        IntOrString::Int(i) => Some(i64::from(*i)),
        IntOrString::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if (0..=100).contains(&p) => Some(p),
            Some(_) => {
                errs.push(FieldError::invalid(path, s, "must not be greater than 100%"));
                None
            }
            None => {
                errs.push(FieldError::invalid(path, s, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
                None
            }
        },
    }
}

pub fn replica_set(r: &mut ReplicaSet, old: Option<&ReplicaSet>, errs: &mut Errs) {
    let spec = r.spec.get_or_insert_with(Default::default);
    spec.replicas.get_or_insert(1);
    replicas(errs, spec.replicas);
    let sel = spec.selector.clone();
    match spec.template.as_mut() {
        Some(t) => template(errs, &sel, t, true),
        None if spec.replicas.unwrap_or(0) > 0 => errs.push(FieldError::required("spec.template")),
        None => {}
    }
    selector_immutable(errs, &spec.selector, old.and_then(|o| o.spec.as_ref()).map(|s| &s.selector));
}

pub fn daemon_set(d: &mut DaemonSet, old: Option<&DaemonSet>, errs: &mut Errs) {
    let spec = d.spec.get_or_insert_with(Default::default);
    spec.revision_history_limit.get_or_insert(10);
    let us = spec.update_strategy.get_or_insert_with(DaemonSetUpdateStrategy::default);
    us.type_.get_or_insert_with(|| "RollingUpdate".to_owned());
    if us.type_.as_deref() == Some("RollingUpdate") {
        let ru = us.rolling_update.get_or_insert_with(RollingUpdateDaemonSet::default);
        ru.max_unavailable.get_or_insert(IntOrString::Int(1));
        ru.max_surge.get_or_insert(IntOrString::Int(0));
    }
    one_of(errs, "spec.updateStrategy.type", us.type_.as_deref(), &["OnDelete", "RollingUpdate"]);
    template(errs, &spec.selector, &mut spec.template, true);
    selector_immutable(errs, &spec.selector, old.and_then(|o| o.spec.as_ref()).map(|s| &s.selector));
}

// ------------------------------------------------------------------ jobs

/// A Job: Kubernetes' defaults, a generated selector on the Job's uid
/// (unless `manualSelector`), and its rules (restartPolicy Never or
/// OnFailure, Indexed needs completions, spec mostly immutable).
pub fn job(j: &mut k8s_openapi::api::batch::v1::Job, old: Option<&k8s_openapi::api::batch::v1::Job>, errs: &mut Errs) {
    use crate::controllers::job::{CONTROLLER_UID, JOB_NAME};
    let name = j.metadata.name.clone().unwrap_or_default();
    let uid = j.metadata.uid.clone().unwrap_or_default();
    let spec = j.spec.get_or_insert_with(Default::default);
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    spec.backoff_limit.get_or_insert(6);
    spec.completion_mode.get_or_insert_with(|| "NonIndexed".to_owned());
    spec.suspend.get_or_insert(false);
    spec.manual_selector.get_or_insert(false);
    spec.pod_replacement_policy.get_or_insert_with(|| "TerminatingOrFailed".to_owned());
    one_of(errs, "spec.completionMode", spec.completion_mode.as_deref(), &["NonIndexed", "Indexed"]);
    if spec.completion_mode.as_deref() == Some("Indexed") && spec.completions.is_none() {
        errs.push(FieldError::required("spec.completions"));
    }
    for (path, v) in [
        ("spec.parallelism", spec.parallelism.map(i64::from)),
        ("spec.completions", spec.completions.map(i64::from)),
        ("spec.backoffLimit", spec.backoff_limit.map(i64::from)),
        ("spec.ttlSecondsAfterFinished", spec.ttl_seconds_after_finished.map(i64::from)),
    ] {
        if let Some(v) = v.filter(|v| *v < 0) {
            errs.push(FieldError::invalid(path, v, "must be greater than or equal to 0"));
        }
    }
    if let Some(d) = spec.active_deadline_seconds.filter(|d| *d <= 0) {
        errs.push(FieldError::invalid("spec.activeDeadlineSeconds", d, "must be greater than 0"));
    }
    if spec.manual_selector != Some(true) {
        // The selector Kubernetes generates: the Job's own uid, on the
        // selector and on the template (kept from the stored Job on update).
        let uid = old.and_then(|o| o.metadata.uid.clone()).filter(|u| !u.is_empty()).unwrap_or(uid);
        let tmeta = spec.template.metadata.get_or_insert_with(Default::default);
        let labels = tmeta.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(CONTROLLER_UID.to_owned(), uid.clone());
        labels.insert(JOB_NAME.to_owned(), name.clone());
        labels.insert("controller-uid".to_owned(), uid.clone());
        labels.insert("job-name".to_owned(), name);
        if old.is_none() || spec.selector.is_none() {
            spec.selector = Some(LabelSelector {
                match_labels: Some([(CONTROLLER_UID.to_owned(), uid)].into_iter().collect()),
                match_expressions: None,
            });
        }
    }
    let sel = spec.selector.clone().unwrap_or_default();
    template(errs, &sel, &mut spec.template, false);
    let rp = spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref());
    if !matches!(rp, Some("Never" | "OnFailure")) {
        // (defaulting made it Always when it was unset)
        errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            rp.unwrap_or_default(),
            &["OnFailure", "Never"],
        ));
    }
    if let Some(o) = old.and_then(|o| o.spec.as_ref()) {
        if o.template != spec.template && o.suspend != Some(true) {
            errs.push(FieldError::invalid("spec.template", "{...}", "field is immutable"));
        }
        if o.completions != spec.completions {
            errs.push(FieldError::invalid("spec.completions", "{...}", "field is immutable"));
        }
        if o.completion_mode != spec.completion_mode {
            errs.push(FieldError::invalid("spec.completionMode", "{...}", "field is immutable"));
        }
        selector_immutable(errs, &sel, o.selector.as_ref());
    }
}

/// A CronJob: Kubernetes' defaults, a schedule and time zone that parse,
/// and the Job template's own rules.
pub fn cron_job(
    c: &mut k8s_openapi::api::batch::v1::CronJob,
    _old: Option<&k8s_openapi::api::batch::v1::CronJob>,
    errs: &mut Errs,
) {
    let spec = c.spec.get_or_insert_with(Default::default);
    spec.concurrency_policy.get_or_insert_with(|| "Allow".to_owned());
    spec.suspend.get_or_insert(false);
    spec.successful_jobs_history_limit.get_or_insert(3);
    spec.failed_jobs_history_limit.get_or_insert(1);
    one_of(errs, "spec.concurrencyPolicy", spec.concurrency_policy.as_deref(), &["Allow", "Forbid", "Replace"]);
    if spec.schedule.trim().is_empty() {
        errs.push(FieldError::required("spec.schedule"));
    } else if let Err(e) = crate::controllers::cronjob::parse(&spec.schedule, None) {
        errs.push(FieldError::invalid("spec.schedule", &spec.schedule, &e));
    }
    if let Some(tz) = spec.time_zone.as_deref() {
        if jiff::tz::TimeZone::get(tz).is_err() {
            errs.push(FieldError::invalid("spec.timeZone", tz, &format!("unknown time zone {tz}")));
        }
    }
    for (path, v) in [
        ("spec.startingDeadlineSeconds", spec.starting_deadline_seconds),
        ("spec.successfulJobsHistoryLimit", spec.successful_jobs_history_limit.map(i64::from)),
        ("spec.failedJobsHistoryLimit", spec.failed_jobs_history_limit.map(i64::from)),
    ] {
        if let Some(v) = v.filter(|v| *v < 0) {
            errs.push(FieldError::invalid(path, v, "must be greater than or equal to 0"));
        }
    }
    let jt = spec.job_template.spec.get_or_insert_with(Default::default);
    jt.backoff_limit.get_or_insert(6);
    jt.completion_mode.get_or_insert_with(|| "NonIndexed".to_owned());
    jt.suspend.get_or_insert(false);
    if jt.completions.is_none() && jt.parallelism.is_none() {
        jt.completions = Some(1);
    }
    jt.parallelism.get_or_insert(1);
    let tspec = jt.template.spec.get_or_insert_with(Default::default);
    default_pod_spec(tspec);
    validate_pod_spec(errs, "spec.jobTemplate.spec.template.spec", tspec);
    let rp = tspec.restart_policy.as_deref();
    if !matches!(rp, Some("Never" | "OnFailure")) {
        errs.push(FieldError::not_supported(
            "spec.jobTemplate.spec.template.spec.restartPolicy",
            rp.unwrap_or_default(),
            &["OnFailure", "Never"],
        ));
    }
}

pub fn lease(
    l: &mut k8s_openapi::api::coordination::v1::Lease,
    _old: Option<&k8s_openapi::api::coordination::v1::Lease>,
    errs: &mut Errs,
) {
    let spec = l.spec.get_or_insert_with(Default::default);
    if let Some(d) = spec.lease_duration_seconds.filter(|d| *d <= 0) {
        errs.push(FieldError::invalid("spec.leaseDurationSeconds", d, "must be greater than 0"));
    }
    if let Some(t) = spec.lease_transitions.filter(|t| *t < 0) {
        errs.push(FieldError::invalid("spec.leaseTransitions", t, "must be greater than or equal to 0"));
    }
}

// ------------------------------------------------------ disruption budgets

pub fn pod_disruption_budget(
    b: &mut k8s_openapi::api::policy::v1::PodDisruptionBudget,
    _old: Option<&k8s_openapi::api::policy::v1::PodDisruptionBudget>,
    errs: &mut Errs,
) {
    let spec = b.spec.get_or_insert_with(Default::default);
    if spec.min_available.is_some() && spec.max_unavailable.is_some() {
        errs.push(FieldError::invalid("spec", "{...}", "minAvailable and maxUnavailable cannot be both set"));
    }
    int_or_percent(errs, "spec.minAvailable", spec.min_available.as_ref());
    int_or_percent(errs, "spec.maxUnavailable", spec.max_unavailable.as_ref());
    if let Some(p) = spec.unhealthy_pod_eviction_policy.as_deref() {
        one_of(errs, "spec.unhealthyPodEvictionPolicy", Some(p), &["IfHealthyBudget", "AlwaysAllow"]);
    }
    if let Some(s) = &spec.selector {
        if let Err(e) = crate::selector::LabelSelector::from_k8s(s) {
            errs.push(FieldError::invalid("spec.selector", "{...}", &e));
        }
    }
}

// ------------------------------------------------------------- services

pub fn service(s: &mut Service, old: Option<&Service>, errs: &mut Errs) {
    // Kubernetes' status is a struct with a struct in it: `{loadBalancer: {}}`
    // at least, never null (clients read `.status.loadBalancer.ingress`).
    s.status.get_or_insert_with(Default::default).load_balancer.get_or_insert_with(Default::default);
    let spec = s.spec.get_or_insert_with(Default::default);
    let ty = spec.type_.get_or_insert_with(|| "ClusterIP".to_owned()).clone();
    one_of(errs, "spec.type", Some(&ty), &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]);
    spec.session_affinity.get_or_insert_with(|| "None".to_owned());
    if ty != "ExternalName" {
        spec.internal_traffic_policy.get_or_insert_with(|| "Cluster".to_owned());
        spec.ip_families.get_or_insert_with(|| vec!["IPv4".to_owned()]);
        spec.ip_family_policy.get_or_insert_with(|| "SingleStack".to_owned());
    } else if spec.external_name.as_deref().is_none_or(str::is_empty) {
        errs.push(FieldError::required("spec.externalName"));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        spec.external_traffic_policy.get_or_insert_with(|| "Cluster".to_owned());
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let ports = spec.ports.get_or_insert_with(Vec::new);
    if ports.is_empty() && ty != "ExternalName" && !headless {
        errs.push(FieldError::required("spec.ports"));
    }
    let multi = ports.len() > 1;
    let mut seen_names = BTreeSet::new();
    let mut seen_ports = BTreeSet::new();
    for (i, p) in ports.iter_mut().enumerate() {
        let pp = format!("spec.ports[{i}]");
        p.protocol.get_or_insert_with(|| "TCP".to_owned());
        p.target_port.get_or_insert(IntOrString::Int(p.port));
        port_range(errs, &format!("{pp}.port"), p.port);
        one_of(errs, &format!("{pp}.protocol"), p.protocol.as_deref(), &["SCTP", "TCP", "UDP"]);
        match p.name.as_deref() {
            None | Some("") if multi => errs.push(FieldError::required(format!("{pp}.name"))),
            None | Some("") => {}
            Some(n) => {
                if let Some(why) = names::dns1123_label(n) {
                    errs.push(FieldError::invalid(format!("{pp}.name"), n, &why));
                } else if !seen_names.insert(n.to_owned()) {
                    errs.push(FieldError::duplicate(format!("{pp}.name"), n));
                }
            }
        }
        let key = (p.port, p.protocol.clone().unwrap_or_default());
        if !seen_ports.insert(key) {
            errs.push(FieldError::duplicate(
                pp.clone(),
                &format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or_default()),
            ));
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) => port_range(errs, &format!("{pp}.targetPort"), *t),
            Some(IntOrString::String(n)) => {
                if let Some(why) = names::port_name(n) {
                    errs.push(FieldError::invalid(format!("{pp}.targetPort"), n, &why));
                }
            }
            None => {}
        }
        if let Some(np) = p.node_port {
            if ty != "NodePort" && ty != "LoadBalancer" {
                errs.push(FieldError::forbidden(
                    format!("{pp}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if !(30000..=32767).contains(&np) {
                errs.push(FieldError::invalid(
                    format!("{pp}.nodePort"),
                    np,
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                ));
            }
        }
    }
    labels("spec.selector", spec.selector.as_ref(), errs);
    if let Some(old_ip) = old.and_then(|o| o.spec.as_ref()).and_then(|s| s.cluster_ip.as_deref()) {
        match spec.cluster_ip.as_deref() {
            None | Some("") => spec.cluster_ip = Some(old_ip.to_owned()),
            Some(ip) if ip != old_ip => {
                errs.push(FieldError::invalid("spec.clusterIPs[0]", ip, "may not change once set"))
            }
            _ => {}
        }
        if let Some(ips) = old.and_then(|o| o.spec.as_ref()).and_then(|s| s.cluster_ips.clone()) {
            spec.cluster_ips.get_or_insert(ips);
        }
    }
}

// --------------------------------------------------- config and others

fn data_keys<'a>(errs: &mut Errs, path: &str, keys: impl Iterator<Item = &'a String>) {
    for k in keys {
        if let Some(why) = names::config_key(k) {
            errs.push(FieldError::invalid(path, k, &why));
        }
    }
}

pub fn config_map(c: &mut ConfigMap, old: Option<&ConfigMap>, errs: &mut Errs) {
    data_keys(errs, "data", c.data.iter().flatten().map(|(k, _)| k));
    data_keys(errs, "binaryData", c.binary_data.iter().flatten().map(|(k, _)| k));
    let mut size = 0;
    for (k, v) in c.data.iter().flatten() {
        size += k.len() + v.len();
        if c.binary_data.as_ref().is_some_and(|b| b.contains_key(k)) {
            errs.push(FieldError::invalid("data", k, "duplicate of key present in binaryData"));
        }
    }
    size += c.binary_data.iter().flatten().map(|(k, v)| k.len() + v.0.len()).sum::<usize>();
    if size > MAX_DATA {
        errs.push(FieldError::too_long("data", MAX_DATA));
    }
    immutable_data(
        errs,
        old.and_then(|o| o.immutable),
        old.map(|o| (&o.data, &o.binary_data)) != Some((&c.data, &c.binary_data)),
    );
}

fn immutable_data(errs: &mut Errs, was_immutable: Option<bool>, changed: bool) {
    if was_immutable == Some(true) && changed {
        errs.push(FieldError::forbidden("data", "field is immutable when `immutable` is set"));
    }
}

pub fn secret(s: &mut Secret, old: Option<&Secret>, errs: &mut Errs) {
    if let Some(sd) = s.string_data.take() {
        let data = s.data.get_or_insert_with(BTreeMap::new);
        for (k, v) in sd {
            data.insert(k, ByteString(v.into_bytes()));
        }
    }
    s.type_.get_or_insert_with(|| "Opaque".to_owned());
    data_keys(errs, "data", s.data.iter().flatten().map(|(k, _)| k));
    let size: usize = s.data.iter().flatten().map(|(k, v)| k.len() + v.0.len()).sum();
    if size > MAX_DATA {
        errs.push(FieldError::too_long("data", MAX_DATA));
    }
    if let Some(old) = old {
        if old.type_ != s.type_ {
            errs.push(FieldError::invalid("type", s.type_.as_deref().unwrap_or_default(), "field is immutable"));
        }
        immutable_data(errs, old.immutable, old.data != s.data);
    }
}

pub fn namespace(n: &mut Namespace, _old: Option<&Namespace>, _errs: &mut Errs) {
    if let Some(name) = n.metadata.name.clone() {
        n.metadata.labels.get_or_insert_with(BTreeMap::new).insert("kubernetes.io/metadata.name".into(), name);
    }
    n.spec.get_or_insert_with(|| NamespaceSpec { finalizers: Some(vec!["kubernetes".into()]) });
    let status = n.status.get_or_insert_with(NamespaceStatus::default);
    status.phase.get_or_insert_with(|| "Active".to_owned());
}

pub fn node(n: &mut Node, _old: Option<&Node>, errs: &mut Errs) {
    if let Some(spec) = &n.spec {
        for (i, t) in spec.taints.iter().flatten().enumerate() {
            if let Some(why) = names::qualified_name(&t.key) {
                errs.push(FieldError::invalid(format!("spec.taints[{i}].key"), &t.key, &why));
            }
            one_of(
                errs,
                &format!("spec.taints[{i}].effect"),
                Some(&t.effect),
                &["NoExecute", "NoSchedule", "PreferNoSchedule"],
            );
        }
    }
}

pub fn endpoints(e: &mut Endpoints, _old: Option<&Endpoints>, errs: &mut Errs) {
    for (i, s) in e.subsets.iter().flatten().enumerate() {
        for (j, p) in s.ports.iter().flatten().enumerate() {
            port_range(errs, &format!("subsets[{i}].ports[{j}].port"), p.port);
        }
        for (j, a) in s.addresses.iter().flatten().enumerate() {
            if a.ip.parse::<std::net::IpAddr>().is_err() {
                errs.push(FieldError::invalid(
                    format!("subsets[{i}].addresses[{j}].ip"),
                    &a.ip,
                    "must be a valid IP address",
                ));
            }
        }
    }
}

pub fn event(e: &mut Event, _old: Option<&Event>, errs: &mut Errs) {
    let ns = e.metadata.namespace.clone().unwrap_or_default();
    if let Some(ins) = e.involved_object.namespace.as_deref() {
        if !ins.is_empty() && ins != ns {
            errs.push(FieldError::invalid("involvedObject.namespace", ins, "does not match event.namespace"));
        }
    }
    one_of(errs, "type", e.type_.as_deref(), &["Normal", "Warning"]);
    // Kubernetes caps events.k8s.io's note at 1 KiB but not core/v1's
    // message; a megabyte each, events filled the store and the memory of
    // every watcher. 4 KiB holds any message a recorder writes.
    if e.message.as_ref().is_some_and(|m| m.len() > MAX_EVENT_MESSAGE) {
        errs.push(FieldError::too_long("message", MAX_EVENT_MESSAGE));
    }
}

/// The longest Event message taken, in bytes.
pub const MAX_EVENT_MESSAGE: usize = 4096;

// ------------------------------------------------------------ stateful sets

/// A StatefulSet: Kubernetes' defaults (OrderedReady, RollingUpdate with
/// partition 0, claims retained), its template and claim templates, and
/// the rule that only replicas, ordinals, template, updateStrategy,
/// persistentVolumeClaimRetentionPolicy and minReadySeconds may change.
pub fn stateful_set(
    s: &mut k8s_openapi::api::apps::v1::StatefulSet,
    old: Option<&k8s_openapi::api::apps::v1::StatefulSet>,
    errs: &mut Errs,
) {
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetUpdateStrategy,
    };
    let spec = s.spec.get_or_insert_with(Default::default);
    spec.replicas.get_or_insert(1);
    spec.revision_history_limit.get_or_insert(10);
    spec.pod_management_policy.get_or_insert_with(|| "OrderedReady".to_owned());
    let us = spec.update_strategy.get_or_insert_with(StatefulSetUpdateStrategy::default);
    us.type_.get_or_insert_with(|| "RollingUpdate".to_owned());
    if us.type_.as_deref() == Some("RollingUpdate") {
        us.rolling_update.get_or_insert_with(RollingUpdateStatefulSetStrategy::default).partition.get_or_insert(0);
    }
    let retention = spec
        .persistent_volume_claim_retention_policy
        .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
    retention.when_deleted.get_or_insert_with(|| "Retain".to_owned());
    retention.when_scaled.get_or_insert_with(|| "Retain".to_owned());
    one_of(errs, "spec.podManagementPolicy", spec.pod_management_policy.as_deref(), &["OrderedReady", "Parallel"]);
    one_of(errs, "spec.updateStrategy.type", us.type_.as_deref(), &["OnDelete", "RollingUpdate"]);
    if us.type_.as_deref() == Some("OnDelete") && us.rolling_update.is_some() {
        errs.push(FieldError::invalid(
            "spec.updateStrategy.rollingUpdate",
            "{...}",
            "only allowed for updateStrategy 'RollingUpdate'",
        ));
    }
    if let Some(p) = us.rolling_update.as_ref().and_then(|r| r.partition).filter(|p| *p < 0) {
        errs.push(FieldError::invalid(
            "spec.updateStrategy.rollingUpdate.partition",
            p,
            "must be greater than or equal to 0",
        ));
    }
    for (path, v) in [
        ("spec.persistentVolumeClaimRetentionPolicy.whenDeleted", retention.when_deleted.as_deref()),
        ("spec.persistentVolumeClaimRetentionPolicy.whenScaled", retention.when_scaled.as_deref()),
    ] {
        one_of(errs, path, v, &["Retain", "Delete"]);
    }
    if let Some(m) = spec.min_ready_seconds.filter(|m| *m < 0) {
        errs.push(FieldError::invalid("spec.minReadySeconds", m, "must be greater than or equal to 0"));
    }
    if let Some(start) = spec.ordinals.as_ref().and_then(|o| o.start).filter(|s| *s < 0) {
        errs.push(FieldError::invalid("spec.ordinals.start", start, "must be greater than or equal to 0"));
    }
    replicas(errs, spec.replicas);
    // The pods mount their claims as volumes named after the templates.
    let claimed: Vec<String> = spec
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|t| t.metadata.name.clone())
        .filter(|n| {
            !spec
                .template
                .spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .is_some_and(|v| v.iter().any(|v| &v.name == n))
        })
        .collect();
    let vols = spec.template.spec.get_or_insert_with(Default::default).volumes.get_or_insert_with(Vec::new);
    vols.extend(claimed.iter().map(|n| k8s_openapi::api::core::v1::Volume {
        name: n.clone(),
        persistent_volume_claim: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
            claim_name: n.clone(),
            read_only: None,
        }),
        ..Default::default()
    }));
    template(errs, &spec.selector, &mut spec.template, true);
    if let Some(ps) = spec.template.spec.as_mut() {
        if let Some(vols) = ps.volumes.as_mut() {
            vols.retain(|v| !claimed.contains(&v.name));
        }
        if ps.volumes.as_ref().is_some_and(Vec::is_empty) {
            ps.volumes = None;
        }
    }
    let mut claim_names = BTreeSet::new();
    for (i, t) in spec.volume_claim_templates.iter_mut().flatten().enumerate() {
        let at = format!("spec.volumeClaimTemplates[{i}]");
        let name = t.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            errs.push(FieldError::required(format!("{at}.metadata.name")));
        } else if let Some(why) = names::dns1123_label(&name) {
            errs.push(FieldError::invalid(format!("{at}.metadata.name"), &name, &why));
        } else if !claim_names.insert(name.clone()) {
            errs.push(FieldError::duplicate(format!("{at}.metadata.name"), &name));
        }
        claim_spec(errs, &format!("{at}.spec"), t.spec.get_or_insert_with(Default::default));
    }
    if let (Some(old), Some(new)) = (old.and_then(|o| o.spec.as_ref()), s.spec.as_ref()) {
        // Everything but the mutable fields must match the stored spec.
        let frozen = |sp: &k8s_openapi::api::apps::v1::StatefulSetSpec| {
            let mut sp = sp.clone();
            sp.replicas = None;
            sp.ordinals = None;
            sp.template = Default::default();
            sp.update_strategy = None;
            sp.persistent_volume_claim_retention_policy = None;
            sp.min_ready_seconds = None;
            sp.revision_history_limit = None;
            serde_json::to_value(sp).unwrap_or_default()
        };
        if frozen(old) != frozen(new) {
            errs.push(FieldError::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
}

/// A ControllerRevision: its revision number is not negative, and its data
/// never changes.
pub fn controller_revision(
    r: &mut k8s_openapi::api::apps::v1::ControllerRevision,
    old: Option<&k8s_openapi::api::apps::v1::ControllerRevision>,
    errs: &mut Errs,
) {
    if r.revision < 0 {
        errs.push(FieldError::invalid("revision", r.revision, "must be greater than or equal to 0"));
    }
    if let Some(old) = old {
        if old.data != r.data {
            errs.push(FieldError::invalid("data", "{...}", "field is immutable"));
        }
    }
}

// ---------------------------------------------------------------- storage

const ACCESS_MODES: &[&str] = &["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"];

fn access_modes(errs: &mut Errs, path: &str, modes: Option<&Vec<String>>) {
    match modes {
        None => errs.push(FieldError::required(path).with_detail("at least 1 access mode is required")),
        Some(m) if m.is_empty() => {
            errs.push(FieldError::required(path).with_detail("at least 1 access mode is required"))
        }
        Some(m) => m.iter().for_each(|a| one_of(errs, path, Some(a), ACCESS_MODES)),
    }
}

fn storage_size(errs: &mut Errs, path: &str, q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) {
    match q {
        None => errs.push(FieldError::required(path)),
        Some(q) => match quantity::parse_milli(&q.0) {
            Ok(v) if v > 0 => {}
            Ok(_) => errs.push(FieldError::invalid(path, &q.0, "must be greater than zero")),
            Err(e) => errs.push(FieldError::invalid(path, &q.0, &e.to_string())),
        },
    }
}

fn claim_spec(errs: &mut Errs, path: &str, spec: &mut k8s_openapi::api::core::v1::PersistentVolumeClaimSpec) {
    spec.volume_mode.get_or_insert_with(|| "Filesystem".to_owned());
    one_of(errs, &format!("{path}.volumeMode"), spec.volume_mode.as_deref(), &["Block", "Filesystem"]);
    access_modes(errs, &format!("{path}.accessModes"), spec.access_modes.as_ref());
    let size = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage"));
    storage_size(errs, &format!("{path}.resources[storage]"), size);
    if let Some(sel) = &spec.selector {
        if let Err(e) = crate::selector::LabelSelector::from_k8s(sel) {
            errs.push(FieldError::invalid(format!("{path}.selector"), "{...}", &e));
        }
    }
}

/// A PersistentVolumeClaim: access modes and a storage request; the spec is
/// immutable once created, except the requested size, and the class and
/// volume name the volume controller fills in (an unset class gets the
/// default one; binding sets `volumeName`).
pub fn persistent_volume_claim(
    c: &mut k8s_openapi::api::core::v1::PersistentVolumeClaim,
    old: Option<&k8s_openapi::api::core::v1::PersistentVolumeClaim>,
    errs: &mut Errs,
) {
    let spec = c.spec.get_or_insert_with(Default::default);
    claim_spec(errs, "spec", spec);
    if let Some(old) = old.and_then(|o| o.spec.as_ref()) {
        let mut was = old.clone();
        let mut now = spec.clone();
        for s in [&mut was, &mut now] {
            s.resources = None;
            s.volume_attributes_class_name = None;
        }
        // Filled in once: an unset class or volume may be set.
        if was.storage_class_name.is_none() {
            was.storage_class_name = now.storage_class_name.clone();
        }
        if was.volume_name.as_deref().unwrap_or_default().is_empty() {
            was.volume_name = now.volume_name.clone();
        }
        if was != now {
            errs.push(FieldError::forbidden(
                "spec",
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            ));
        }
    }
}

/// A PersistentVolume: capacity, access modes and exactly one source;
/// statically made volumes are retained by default.
pub fn persistent_volume(
    v: &mut k8s_openapi::api::core::v1::PersistentVolume,
    _old: Option<&k8s_openapi::api::core::v1::PersistentVolume>,
    errs: &mut Errs,
) {
    let spec = v.spec.get_or_insert_with(Default::default);
    spec.persistent_volume_reclaim_policy.get_or_insert_with(|| "Retain".to_owned());
    spec.volume_mode.get_or_insert_with(|| "Filesystem".to_owned());
    one_of(
        errs,
        "spec.persistentVolumeReclaimPolicy",
        spec.persistent_volume_reclaim_policy.as_deref(),
        &["Delete", "Recycle", "Retain"],
    );
    one_of(errs, "spec.volumeMode", spec.volume_mode.as_deref(), &["Block", "Filesystem"]);
    access_modes(errs, "spec.accessModes", spec.access_modes.as_ref());
    storage_size(errs, "spec.capacity", spec.capacity.as_ref().and_then(|c| c.get("storage")));
    let sources = serde_json::to_value(&*spec)
        .ok()
        .and_then(|j| {
            j.as_object().map(|o| {
                o.keys()
                    .filter(|k| {
                        !matches!(
                            k.as_str(),
                            "accessModes"
                                | "capacity"
                                | "claimRef"
                                | "mountOptions"
                                | "nodeAffinity"
                                | "persistentVolumeReclaimPolicy"
                                | "storageClassName"
                                | "volumeAttributesClassName"
                                | "volumeMode"
                        )
                    })
                    .count()
            })
        })
        .unwrap_or(0);
    if sources == 0 {
        errs.push(FieldError::required("spec").with_detail("must specify a volume type"));
    } else if sources > 1 {
        errs.push(FieldError::forbidden("spec", "may not specify more than 1 volume type"));
    }
    for (path, p) in [
        ("spec.hostPath.path", spec.host_path.as_ref().map(|h| h.path.as_str())),
        ("spec.local.path", spec.local.as_ref().map(|l| l.path.as_str())),
    ] {
        if let Some(p) = p.filter(|p| !p.starts_with('/')) {
            errs.push(FieldError::invalid(path, p, "must be an absolute path"));
        }
    }
    if spec.local.is_some() && spec.node_affinity.as_ref().and_then(|a| a.required.as_ref()).is_none() {
        errs.push(FieldError::required("spec.nodeAffinity").with_detail("Local volume requires node affinity"));
    }
}

/// A StorageClass: a provisioner, `Delete` and `Immediate` by default, and
/// nothing but its labels and annotations changes afterwards.
pub fn storage_class(
    c: &mut k8s_openapi::api::storage::v1::StorageClass,
    old: Option<&k8s_openapi::api::storage::v1::StorageClass>,
    errs: &mut Errs,
) {
    c.reclaim_policy.get_or_insert_with(|| "Delete".to_owned());
    c.volume_binding_mode.get_or_insert_with(|| "Immediate".to_owned());
    if c.provisioner.is_empty() {
        errs.push(FieldError::required("provisioner"));
    }
    one_of(errs, "reclaimPolicy", c.reclaim_policy.as_deref(), &["Delete", "Retain"]);
    one_of(errs, "volumeBindingMode", c.volume_binding_mode.as_deref(), &["Immediate", "WaitForFirstConsumer"]);
    if let Some(old) = old {
        for (path, changed) in [
            ("parameters", old.parameters != c.parameters),
            ("provisioner", old.provisioner != c.provisioner),
            ("reclaimPolicy", old.reclaim_policy != c.reclaim_policy),
            ("volumeBindingMode", old.volume_binding_mode != c.volume_binding_mode),
        ] {
            if changed {
                errs.push(FieldError::forbidden(path, "updates to this field are forbidden"));
            }
        }
    }
}

// ------------------------------------------------------------------ RBAC

/// A ServiceAccount: nothing beyond its metadata to check.
pub fn service_account(
    _s: &mut k8s_openapi::api::core::v1::ServiceAccount,
    _old: Option<&k8s_openapi::api::core::v1::ServiceAccount>,
    _errs: &mut Errs,
) {
}

/// Kubernetes' `ValidatePolicyRule`.
fn policy_rules(errs: &mut Errs, rules: &[k8s_openapi::api::rbac::v1::PolicyRule], namespaced: bool) {
    for (i, r) in rules.iter().enumerate() {
        let p = format!("rules[{i}]");
        if r.verbs.is_empty() {
            errs.push(FieldError::required(format!("{p}.verbs")).with_detail("verbs must contain at least one value"));
        }
        let urls = r.non_resource_urls.as_deref().unwrap_or_default();
        if !urls.is_empty() {
            if namespaced {
                errs.push(FieldError::invalid(
                    format!("{p}.nonResourceURLs"),
                    urls.join(","),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            let mixed = [&r.api_groups, &r.resources, &r.resource_names]
                .iter()
                .any(|x| x.as_ref().is_some_and(|v| !v.is_empty()));
            if mixed {
                errs.push(FieldError::invalid(
                    format!("{p}.nonResourceURLs"),
                    urls.join(","),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if r.api_groups.as_ref().is_none_or(Vec::is_empty) {
            errs.push(
                FieldError::required(format!("{p}.apiGroups"))
                    .with_detail("resource rules must supply at least one api group"),
            );
        }
        if r.resources.as_ref().is_none_or(Vec::is_empty) {
            errs.push(
                FieldError::required(format!("{p}.resources"))
                    .with_detail("resource rules must supply at least one resource"),
            );
        }
    }
}

pub fn role(
    r: &mut k8s_openapi::api::rbac::v1::Role,
    _old: Option<&k8s_openapi::api::rbac::v1::Role>,
    errs: &mut Errs,
) {
    policy_rules(errs, r.rules.get_or_insert_with(Vec::new), true);
}

pub fn cluster_role(
    r: &mut k8s_openapi::api::rbac::v1::ClusterRole,
    _old: Option<&k8s_openapi::api::rbac::v1::ClusterRole>,
    errs: &mut Errs,
) {
    // An aggregated role's rules are the aggregation controller's.
    if let Some(agg) = &r.aggregation_rule {
        for (i, s) in agg.cluster_role_selectors.iter().flatten().enumerate() {
            if let Err(e) = crate::selector::LabelSelector::from_k8s(s) {
                errs.push(FieldError::invalid(format!("aggregationRule.clusterRoleSelectors[{i}]"), "{...}", &e));
            }
        }
    }
    policy_rules(errs, r.rules.get_or_insert_with(Vec::new), false);
}

/// Subjects and the role referred to; `roleRef` cannot change.
fn binding(
    errs: &mut Errs,
    subjects: &mut [k8s_openapi::api::rbac::v1::Subject],
    role_ref: &k8s_openapi::api::rbac::v1::RoleRef,
    old_ref: Option<&k8s_openapi::api::rbac::v1::RoleRef>,
    cluster: bool,
) {
    const GROUP: &str = "rbac.authorization.k8s.io";
    if role_ref.api_group != GROUP {
        errs.push(FieldError::not_supported("roleRef.apiGroup", &role_ref.api_group, &[GROUP]));
    }
    let kinds: &[&str] = if cluster { &["ClusterRole"] } else { &["ClusterRole", "Role"] };
    if !kinds.contains(&role_ref.kind.as_str()) {
        errs.push(FieldError::not_supported("roleRef.kind", &role_ref.kind, kinds));
    }
    if role_ref.name.is_empty() {
        errs.push(FieldError::required("roleRef.name"));
    }
    if old_ref.is_some_and(|o| o != role_ref) {
        errs.push(FieldError::invalid("roleRef", "{...}", "cannot change roleRef"));
    }
    for (i, s) in subjects.iter_mut().enumerate() {
        let p = format!("subjects[{i}]");
        if s.name.is_empty() {
            errs.push(FieldError::required(format!("{p}.name")));
        }
        match s.kind.as_str() {
            "ServiceAccount" => {
                if s.api_group.as_deref().is_some_and(|g| !g.is_empty()) {
                    errs.push(FieldError::not_supported(
                        format!("{p}.apiGroup"),
                        s.api_group.as_deref().unwrap_or_default(),
                        &[""],
                    ));
                }
                if cluster && s.namespace.as_deref().is_none_or(str::is_empty) {
                    errs.push(FieldError::required(format!("{p}.namespace")));
                }
            }
            "User" | "Group" => {
                let g = s.api_group.get_or_insert_with(|| GROUP.to_owned());
                if g != GROUP {
                    errs.push(FieldError::not_supported(format!("{p}.apiGroup"), g, &[GROUP]));
                }
            }
            other => {
                errs.push(FieldError::not_supported(format!("{p}.kind"), other, &["ServiceAccount", "User", "Group"]))
            }
        }
    }
}

pub fn role_binding(
    b: &mut k8s_openapi::api::rbac::v1::RoleBinding,
    old: Option<&k8s_openapi::api::rbac::v1::RoleBinding>,
    errs: &mut Errs,
) {
    let subjects = b.subjects.get_or_insert_with(Vec::new);
    binding(errs, subjects, &b.role_ref, old.map(|o| &o.role_ref), false);
}

pub fn cluster_role_binding(
    b: &mut k8s_openapi::api::rbac::v1::ClusterRoleBinding,
    old: Option<&k8s_openapi::api::rbac::v1::ClusterRoleBinding>,
    errs: &mut Errs,
) {
    let subjects = b.subjects.get_or_insert_with(Vec::new);
    binding(errs, subjects, &b.role_ref, old.map(|o| &o.role_ref), true);
}
