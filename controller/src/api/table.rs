//! Server-side tables (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`)
//! with the columns `kubectl get` prints for each kind (priority 1 columns
//! appear with `-o wide`).

use serde_json::{Value, json};

use crate::resources::ResourceType;

struct Col {
    name: &'static str,
    ty: &'static str,
    wide: bool,
}

const fn c(name: &'static str, ty: &'static str, wide: bool) -> Col {
    Col { name, ty, wide }
}

fn columns(kind: &str) -> Vec<Col> {
    match kind {
        "Pod" => vec![
            c("Name", "string", false),
            c("Ready", "string", false),
            c("Status", "string", false),
            c("Restarts", "string", false),
            c("Age", "string", false),
            c("IP", "string", true),
            c("Node", "string", true),
            c("Nominated Node", "string", true),
            c("Readiness Gates", "string", true),
        ],
        "Node" => vec![
            c("Name", "string", false),
            c("Status", "string", false),
            c("Roles", "string", false),
            c("Age", "string", false),
            c("Version", "string", false),
            c("Internal-IP", "string", true),
            c("External-IP", "string", true),
            c("OS-Image", "string", true),
            c("Kernel-Version", "string", true),
            c("Container-Runtime", "string", true),
        ],
        "Deployment" => vec![
            c("Name", "string", false),
            c("Ready", "string", false),
            c("Up-to-date", "integer", false),
            c("Available", "integer", false),
            c("Age", "string", false),
            c("Containers", "string", true),
            c("Images", "string", true),
            c("Selector", "string", true),
        ],
        "ReplicaSet" => vec![
            c("Name", "string", false),
            c("Desired", "integer", false),
            c("Current", "integer", false),
            c("Ready", "integer", false),
            c("Age", "string", false),
            c("Containers", "string", true),
            c("Images", "string", true),
            c("Selector", "string", true),
        ],
        "Job" => vec![
            c("Name", "string", false),
            c("Status", "string", false),
            c("Completions", "string", false),
            c("Duration", "string", false),
            c("Age", "string", false),
            c("Containers", "string", true),
            c("Images", "string", true),
            c("Selector", "string", true),
        ],
        "StatefulSet" => vec![
            c("Name", "string", false),
            c("Ready", "string", false),
            c("Age", "string", false),
            c("Containers", "string", true),
            c("Images", "string", true),
        ],
        "ControllerRevision" => vec![
            c("Name", "string", false),
            c("Controller", "string", false),
            c("Revision", "integer", false),
            c("Age", "string", false),
        ],
        "PersistentVolumeClaim" => vec![
            c("Name", "string", false),
            c("Status", "string", false),
            c("Volume", "string", false),
            c("Capacity", "string", false),
            c("Access Modes", "string", false),
            c("StorageClass", "string", false),
            c("VolumeAttributesClass", "string", false),
            c("Age", "string", false),
            c("VolumeMode", "string", true),
        ],
        "PersistentVolume" => vec![
            c("Name", "string", false),
            c("Capacity", "string", false),
            c("Access Modes", "string", false),
            c("Reclaim Policy", "string", false),
            c("Status", "string", false),
            c("Claim", "string", false),
            c("StorageClass", "string", false),
            c("VolumeAttributesClass", "string", false),
            c("Reason", "string", false),
            c("Age", "string", false),
            c("VolumeMode", "string", true),
        ],
        "StorageClass" => vec![
            c("Name", "string", false),
            c("Provisioner", "string", false),
            c("ReclaimPolicy", "string", false),
            c("VolumeBindingMode", "string", false),
            c("AllowVolumeExpansion", "string", false),
            c("Age", "string", false),
        ],
        "CronJob" => vec![
            c("Name", "string", false),
            c("Schedule", "string", false),
            c("Timezone", "string", false),
            c("Suspend", "boolean", false),
            c("Active", "integer", false),
            c("Last Schedule", "string", false),
            c("Age", "string", false),
            c("Containers", "string", true),
            c("Images", "string", true),
            c("Selector", "string", true),
        ],
        "Lease" => vec![c("Name", "string", false), c("Holder", "string", false), c("Age", "string", false)],
        "ServiceAccount" => vec![c("Name", "string", false), c("Secrets", "string", false), c("Age", "string", false)],
        "Role" | "ClusterRole" | "CustomResourceDefinition" => {
            vec![c("Name", "string", false), c("Created At", "date", false)]
        }
        "RoleBinding" | "ClusterRoleBinding" => vec![
            c("Name", "string", false),
            c("Role", "string", false),
            c("Age", "string", false),
            c("Users", "string", true),
            c("Groups", "string", true),
            c("ServiceAccounts", "string", true),
        ],
        "PodDisruptionBudget" => vec![
            c("Name", "string", false),
            c("Min Available", "string", false),
            c("Max Unavailable", "string", false),
            c("Allowed Disruptions", "integer", false),
            c("Age", "string", false),
        ],
        "DaemonSet" => vec![
            c("Name", "string", false),
            c("Desired", "integer", false),
            c("Current", "integer", false),
            c("Ready", "integer", false),
            c("Up-to-date", "integer", false),
            c("Available", "integer", false),
            c("Node Selector", "string", false),
            c("Age", "string", false),
            c("Containers", "string", true),
            c("Images", "string", true),
            c("Selector", "string", true),
        ],
        "Service" => vec![
            c("Name", "string", false),
            c("Type", "string", false),
            c("Cluster-IP", "string", false),
            c("External-IP", "string", false),
            c("Port(s)", "string", false),
            c("Age", "string", false),
            c("Selector", "string", true),
        ],
        "Namespace" => vec![c("Name", "string", false), c("Status", "string", false), c("Age", "string", false)],
        "ConfigMap" => vec![c("Name", "string", false), c("Data", "integer", false), c("Age", "string", false)],
        "Secret" => vec![
            c("Name", "string", false),
            c("Type", "string", false),
            c("Data", "integer", false),
            c("Age", "string", false),
        ],
        "Endpoints" => vec![c("Name", "string", false), c("Endpoints", "string", false), c("Age", "string", false)],
        "Event" => vec![
            c("Last Seen", "string", false),
            c("Type", "string", false),
            c("Reason", "string", false),
            c("Object", "string", false),
            c("Message", "string", false),
            c("Name", "string", true),
        ],
        _ => vec![c("Name", "string", false), c("Age", "string", false)],
    }
}

/// Kubernetes' `HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    let y = d / 365;
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", s % 60) }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if y < 8 {
        if d % 365 == 0 { format!("{y}y") } else { format!("{y}y{}d", d % 365) }
    } else {
        format!("{y}y")
    }
}

fn age_of(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    human_duration(jiff::Timestamp::now().as_second() - t.as_second())
}

fn s<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn n(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn none(v: Option<String>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or_else(|| "<none>".into())
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn containers_images(v: &Value, ptr: &str) -> (String, String) {
    let cs = arr(v, ptr);
    let names: Vec<&str> = cs.iter().filter_map(|c| c.get("name").and_then(Value::as_str)).collect();
    let images: Vec<&str> = cs.iter().filter_map(|c| c.get("image").and_then(Value::as_str)).collect();
    (names.join(","), images.join(","))
}

/// kubectl's short access modes (`RWO,ROX`).
fn access_modes(modes: &[Value]) -> String {
    let short: Vec<&str> = modes
        .iter()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect();
    short.join(",")
}

fn selector_string(v: &Value, ptr: &str) -> String {
    let mut parts: Vec<String> = v
        .pointer(ptr)
        .and_then(|s| s.get("matchLabels").or(Some(s)))
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}"))).collect())
        .unwrap_or_default();
    for e in v.pointer(&format!("{ptr}/matchExpressions")).and_then(Value::as_array).into_iter().flatten() {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let vals: Vec<&str> = arr(e, "/values").iter().filter_map(Value::as_str).collect();
        parts.push(match e.get("operator").and_then(Value::as_str) {
            Some("In") => format!("{key} in ({})", vals.join(",")),
            Some("NotIn") => format!("{key} notin ({})", vals.join(",")),
            Some("DoesNotExist") => format!("!{key}"),
            _ => key.to_owned(),
        });
    }
    none(Some(parts.join(",")))
}

fn pod_status(p: &Value) -> String {
    let mut reason = s(p, "/status/reason").or(s(p, "/status/phase")).unwrap_or("Unknown").to_owned();
    for cs in arr(p, "/status/containerStatuses") {
        if let Some(r) = s(cs, "/state/waiting/reason") {
            reason = r.to_owned();
        } else if let Some(r) = s(cs, "/state/terminated/reason") {
            reason = r.to_owned();
        }
    }
    if p.pointer("/metadata/deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    reason
}

fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name").unwrap_or_default());
    let age = json!(age_of(s(o, "/metadata/creationTimestamp")));
    match kind {
        "Pod" => {
            let statuses = arr(o, "/status/containerStatuses");
            let total = arr(o, "/spec/containers").len();
            let ready = statuses.iter().filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true)).count();
            let restarts: i64 = statuses.iter().map(|c| n(c, "/restartCount")).sum();
            let gates = arr(o, "/spec/readinessGates");
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts.to_string()),
                age,
                json!(none(s(o, "/status/podIP").map(str::to_owned))),
                json!(none(s(o, "/spec/nodeName").map(str::to_owned))),
                json!(none(s(o, "/status/nominatedNodeName").map(str::to_owned))),
                json!(if gates.is_empty() { "<none>".to_owned() } else { format!("0/{}", gates.len()) }),
            ]
        }
        "Node" => {
            let ready = arr(o, "/status/conditions")
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                .and_then(|c| c.get("status").and_then(Value::as_str));
            let mut status = match ready {
                // As kubectl prints it: Unknown (a silent node) is NotReady too.
                Some("True") => "Ready".to_owned(),
                Some(_) => "NotReady".to_owned(),
                None => "Unknown".to_owned(),
            };
            if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<&str> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|l| l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).collect())
                .unwrap_or_default();
            let addr = |ty: &str| {
                arr(o, "/status/addresses")
                    .iter()
                    .find(|a| a.get("type").and_then(Value::as_str) == Some(ty))
                    .and_then(|a| a.get("address").and_then(Value::as_str))
                    .map(str::to_owned)
            };
            vec![
                name,
                json!(status),
                json!(none(Some(roles.join(",")))),
                age,
                json!(s(o, "/status/nodeInfo/kubeletVersion").unwrap_or_default()),
                json!(none(addr("InternalIP"))),
                json!(none(addr("ExternalIP"))),
                json!(s(o, "/status/nodeInfo/osImage").unwrap_or("<unknown>")),
                json!(s(o, "/status/nodeInfo/kernelVersion").unwrap_or("<unknown>")),
                json!(s(o, "/status/nodeInfo/containerRuntimeVersion").unwrap_or("<unknown>")),
            ]
        }
        "Deployment" => {
            let (cn, im) = containers_images(o, "/spec/template/spec/containers");
            vec![
                name,
                json!(format!("{}/{}", n(o, "/status/readyReplicas"), n(o, "/spec/replicas"))),
                json!(n(o, "/status/updatedReplicas")),
                json!(n(o, "/status/availableReplicas")),
                age,
                json!(cn),
                json!(im),
                json!(selector_string(o, "/spec/selector")),
            ]
        }
        "ReplicaSet" => {
            let (cn, im) = containers_images(o, "/spec/template/spec/containers");
            vec![
                name,
                json!(n(o, "/spec/replicas")),
                json!(n(o, "/status/replicas")),
                json!(n(o, "/status/readyReplicas")),
                age,
                json!(cn),
                json!(im),
                json!(selector_string(o, "/spec/selector")),
            ]
        }
        "DaemonSet" => {
            let (cn, im) = containers_images(o, "/spec/template/spec/containers");
            vec![
                name,
                json!(n(o, "/status/desiredNumberScheduled")),
                json!(n(o, "/status/currentNumberScheduled")),
                json!(n(o, "/status/numberReady")),
                json!(n(o, "/status/updatedNumberScheduled")),
                json!(n(o, "/status/numberAvailable")),
                json!(selector_string(o, "/spec/template/spec/nodeSelector")),
                age,
                json!(cn),
                json!(im),
                json!(selector_string(o, "/spec/selector")),
            ]
        }
        "Job" => {
            let (cn, im) = containers_images(o, "/spec/template/spec/containers");
            let cond = |t: &str| arr(o, "/status/conditions").iter().any(|c| c["type"] == t && c["status"] == "True");
            let status = if cond("Failed") {
                "Failed"
            } else if cond("Complete") {
                "Complete"
            } else if cond("Suspended") {
                "Suspended"
            } else if cond("FailureTarget") {
                "FailureTarget"
            } else if n(o, "/status/terminating") > 0 {
                "Terminating"
            } else {
                "Running"
            };
            let done = n(o, "/status/succeeded");
            let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
                Some(c) => format!("{done}/{c}"),
                None => match n(o, "/spec/parallelism") {
                    p if p > 1 => format!("{done}/1 of {p}"),
                    _ => format!("{done}/1"),
                },
            };
            let ts = |p: &str| s(o, p).and_then(|t| t.parse::<jiff::Timestamp>().ok()).map(|t| t.as_second());
            let duration = match (ts("/status/startTime"), ts("/status/completionTime")) {
                (Some(a), Some(b)) => human_duration(b - a),
                (Some(a), None) => human_duration(jiff::Timestamp::now().as_second() - a),
                _ => String::new(),
            };
            vec![
                name,
                json!(status),
                json!(completions),
                json!(duration),
                age,
                json!(cn),
                json!(im),
                json!(selector_string(o, "/spec/selector")),
            ]
        }
        "StatefulSet" => {
            let (cn, im) = containers_images(o, "/spec/template/spec/containers");
            vec![
                name,
                json!(format!("{}/{}", n(o, "/status/readyReplicas"), n(o, "/spec/replicas"))),
                age,
                json!(cn),
                json!(im),
            ]
        }
        "ControllerRevision" => {
            let owner = arr(o, "/metadata/ownerReferences").iter().find(|r| r["controller"] == true).map(|r| {
                let group = r["apiVersion"].as_str().unwrap_or_default().split('/').rev().nth(1).unwrap_or_default();
                let kind = r["kind"].as_str().unwrap_or_default().to_lowercase();
                let kind = if group.is_empty() { kind } else { format!("{kind}.{group}") };
                format!("{kind}/{}", r["name"].as_str().unwrap_or_default())
            });
            vec![name, json!(none(owner)), json!(n(o, "/revision")), age]
        }
        "PersistentVolumeClaim" => vec![
            name,
            json!(s(o, "/status/phase").unwrap_or_default()),
            json!(s(o, "/spec/volumeName").unwrap_or_default()),
            json!(s(o, "/status/capacity/storage").unwrap_or_default()),
            json!(access_modes(arr(o, "/status/accessModes"))),
            json!(s(o, "/spec/storageClassName").unwrap_or_default()),
            json!(none(s(o, "/spec/volumeAttributesClassName").map(str::to_owned))),
            age,
            json!(s(o, "/spec/volumeMode").unwrap_or("Filesystem")),
        ],
        "PersistentVolume" => {
            let claim = o.pointer("/spec/claimRef").map(|r| {
                format!("{}/{}", r["namespace"].as_str().unwrap_or_default(), r["name"].as_str().unwrap_or_default())
            });
            vec![
                name,
                json!(s(o, "/spec/capacity/storage").unwrap_or_default()),
                json!(access_modes(arr(o, "/spec/accessModes"))),
                json!(s(o, "/spec/persistentVolumeReclaimPolicy").unwrap_or_default()),
                json!(s(o, "/status/phase").unwrap_or_default()),
                json!(claim.unwrap_or_default()),
                json!(s(o, "/spec/storageClassName").unwrap_or_default()),
                json!(none(s(o, "/spec/volumeAttributesClassName").map(str::to_owned))),
                json!(s(o, "/status/reason").unwrap_or_default()),
                age,
                json!(s(o, "/spec/volumeMode").unwrap_or("Filesystem")),
            ]
        }
        "StorageClass" => {
            let default =
                ["storageclass.kubernetes.io/is-default-class", "storageclass.beta.kubernetes.io/is-default-class"]
                    .iter()
                    .any(|a| {
                        o.pointer("/metadata/annotations").and_then(|m| m.get(a)).and_then(Value::as_str)
                            == Some("true")
                    });
            let shown = if default {
                format!("{} (default)", name.as_str().unwrap_or_default())
            } else {
                name.as_str().unwrap_or_default().to_owned()
            };
            vec![
                json!(shown),
                json!(s(o, "/provisioner").unwrap_or_default()),
                json!(s(o, "/reclaimPolicy").unwrap_or("Delete")),
                json!(s(o, "/volumeBindingMode").unwrap_or("Immediate")),
                json!(o.pointer("/allowVolumeExpansion").and_then(Value::as_bool).unwrap_or(false).to_string()),
                age,
            ]
        }
        "CronJob" => {
            let (cn, im) = containers_images(o, "/spec/jobTemplate/spec/template/spec/containers");
            let last = match s(o, "/status/lastScheduleTime") {
                Some(t) => age_of(Some(t)),
                None => "<none>".into(),
            };
            vec![
                name,
                json!(s(o, "/spec/schedule").unwrap_or_default()),
                json!(none(s(o, "/spec/timeZone").map(str::to_owned))),
                json!(o.pointer("/spec/suspend").and_then(Value::as_bool).unwrap_or(false)),
                json!(arr(o, "/status/active").len()),
                json!(last),
                age,
                json!(cn),
                json!(im),
                json!(selector_string(o, "/spec/jobTemplate/spec/selector")),
            ]
        }
        "Lease" => vec![name, json!(s(o, "/spec/holderIdentity").unwrap_or_default()), age],
        "ServiceAccount" => vec![name, json!(arr(o, "/secrets").len()), age],
        "Role" | "ClusterRole" | "CustomResourceDefinition" => {
            vec![name, json!(s(o, "/metadata/creationTimestamp").unwrap_or_default())]
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let of = |kind: &str| -> String {
                let subjects = arr(o, "/subjects").iter().filter(|x| x["kind"] == kind);
                let names: Vec<String> = subjects
                    .map(|x| match (kind, x["namespace"].as_str()) {
                        ("ServiceAccount", Some(ns)) => format!("{ns}/{}", x["name"].as_str().unwrap_or_default()),
                        _ => x["name"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect();
                names.join(", ")
            };
            let role =
                format!("{}/{}", s(o, "/roleRef/kind").unwrap_or_default(), s(o, "/roleRef/name").unwrap_or_default());
            vec![name, json!(role), age, json!(of("User")), json!(of("Group")), json!(of("ServiceAccount"))]
        }
        "PodDisruptionBudget" => {
            let bound = |ptr: &str| match o.pointer(ptr) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => "N/A".into(),
            };
            vec![
                name,
                json!(bound("/spec/minAvailable")),
                json!(bound("/spec/maxUnavailable")),
                json!(n(o, "/status/disruptionsAllowed")),
                age,
            ]
        }
        "Service" => {
            let ports: Vec<String> = arr(o, "/spec/ports")
                .iter()
                .map(|p| {
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) => format!("{}:{np}/{proto}", n(p, "/port")),
                        None => format!("{}/{proto}", n(p, "/port")),
                    }
                })
                .collect();
            let ext: Vec<&str> = arr(o, "/spec/externalIPs").iter().filter_map(Value::as_str).collect();
            let ty = s(o, "/spec/type").unwrap_or("ClusterIP");
            let ext = if ty == "ExternalName" {
                s(o, "/spec/externalName").unwrap_or_default().to_owned()
            } else {
                none(Some(ext.join(",")))
            };
            vec![
                name,
                json!(ty),
                json!(none(s(o, "/spec/clusterIP").map(str::to_owned))),
                json!(ext),
                json!(none(Some(ports.join(",")))),
                age,
                json!(selector_string(o, "/spec/selector")),
            ]
        }
        "Namespace" => vec![name, json!(s(o, "/status/phase").unwrap_or("Active")), age],
        "ConfigMap" => {
            let count = o.get("data").and_then(Value::as_object).map_or(0, |m| m.len())
                + o.get("binaryData").and_then(Value::as_object).map_or(0, |m| m.len());
            vec![name, json!(count), age]
        }
        "Secret" => {
            let count = o.get("data").and_then(Value::as_object).map_or(0, |m| m.len());
            vec![name, json!(s(o, "/type").unwrap_or("Opaque")), json!(count), age]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for sub in arr(o, "/subsets") {
                for a in arr(sub, "/addresses") {
                    let ip = a.get("ip").and_then(Value::as_str).unwrap_or_default();
                    let ports = arr(sub, "/ports");
                    if ports.is_empty() {
                        eps.push(ip.to_owned());
                    }
                    for p in ports {
                        eps.push(format!("{ip}:{}", n(p, "/port")));
                    }
                }
            }
            vec![name, json!(none(Some(eps.join(",")))), age]
        }
        "Event" => {
            let last = s(o, "/lastTimestamp").or(s(o, "/eventTime")).or(s(o, "/metadata/creationTimestamp"));
            let obj = format!(
                "{}/{}",
                s(o, "/involvedObject/kind").unwrap_or_default().to_lowercase(),
                s(o, "/involvedObject/name").unwrap_or_default()
            );
            vec![
                json!(age_of(last)),
                json!(s(o, "/type").unwrap_or_default()),
                json!(s(o, "/reason").unwrap_or_default()),
                json!(obj),
                json!(s(o, "/message").unwrap_or_default().trim()),
                name,
            ]
        }
        _ => vec![name, age],
    }
}

/// What Kubernetes describes the name column with.
const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

/// A custom resource's printer columns: its CRD's, or `Age` when it names
/// none, as Kubernetes serves them.
fn custom_columns(c: &crate::resources::Custom) -> Vec<Value> {
    if c.columns.is_empty() {
        return vec![json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
            "description": "CreationTimestamp is a timestamp representing the server time when this object was created."})];
    }
    c.columns.clone()
}

/// A printer column's cell, as Kubernetes' table convertor makes it: the
/// first match of its JSONPath, typed by the column (`date` as an age);
/// nothing (`null`) when nothing matches or the type does not.
fn custom_cell(col: &Value, o: &Value) -> Value {
    let path = col["jsonPath"].as_str().unwrap_or_default();
    let Ok(p) = serde_json_path::JsonPath::parse(&format!("${path}")) else { return Value::Null };
    let Some(v) = p.query(o).all().first().copied() else { return Value::Null };
    match col["type"].as_str().unwrap_or_default() {
        "integer" => v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)).map_or(Value::Null, |i| json!(i)),
        "number" => v.as_f64().map_or(Value::Null, |f| json!(f)),
        "boolean" => v.as_bool().map_or(Value::Null, |b| json!(b)),
        "date" => match v.as_str() {
            Some(t) => json!(match t.parse::<jiff::Timestamp>() {
                Ok(_) => age_of(Some(t)),
                Err(_) => "<invalid>".to_owned(),
            }),
            None => Value::Null,
        },
        _ => match v {
            Value::String(s) => json!(s),
            Value::Object(_) | Value::Array(_) => json!(v.to_string()),
            other => json!(other.to_string()),
        },
    }
}

/// The column definitions of `rt`'s table.
pub fn column_definitions(rt: &ResourceType) -> Value {
    if let Some(c) = &rt.custom {
        let mut cols = vec![
            json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DESCRIPTION, "priority": 0}),
        ];
        for col in custom_columns(c) {
            let path = col["jsonPath"].as_str().unwrap_or_default();
            let description = col["description"].as_str().map_or_else(
                || format!("Custom resource definition column (in JSONPath format): {path}"),
                str::to_owned,
            );
            cols.push(json!({
                "name": col["name"],
                "type": col["type"],
                "format": col["format"].as_str().unwrap_or_default(),
                "description": description,
                "priority": col["priority"].as_i64().unwrap_or(0),
            }));
        }
        return Value::Array(cols);
    }
    Value::Array(
        columns(rt.kind)
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.ty,
                    "format": if c.name == "Name" { "name" } else { "" },
                    "description": "",
                    "priority": i32::from(c.wide),
                })
            })
            .collect(),
    )
}

/// One table row; `include` is the `includeObject` parameter (`None`,
/// `Object`, or the default `Metadata`).
pub fn row(rt: &ResourceType, o: &Value, include: Option<&str>) -> Value {
    let object = match include {
        Some("None") => Value::Null,
        Some("Object") => o.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
        }),
    };
    let cells = match &rt.custom {
        Some(c) => {
            let name = json!(s(o, "/metadata/name").unwrap_or_default());
            std::iter::once(name).chain(custom_columns(c).iter().map(|col| custom_cell(col, o))).collect()
        }
        None => cells(rt.kind, o),
    };
    json!({"cells": cells, "object": object})
}

pub fn table(rt: &ResourceType, items: &[Value], rv: &str, include: Option<&str>) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": column_definitions(rt),
        "rows": items.iter().map(|o| row(rt, o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400), "3d");
        assert_eq!(human_duration(400 * 86400), "400d");
    }

    #[test]
    fn pod_row_counts_ready_and_restarts() {
        let rt = crate::resources::find("", "v1", "pods").expect("pods");
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2}, {"name": "b", "ready": false, "restartCount": 1,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let r = row(rt, &pod, None);
        assert_eq!(r["cells"][1], "1/2");
        assert_eq!(r["cells"][2], "CrashLoopBackOff");
        assert_eq!(r["cells"][3], "3");
        assert_eq!(r["cells"][5], "10.42.0.5");
        assert_eq!(r["cells"][6], "n1");
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
    }
}
