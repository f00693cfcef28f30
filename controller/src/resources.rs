//! The kinds this API server serves, with what discovery, routing, tables and
//! field selectors need to know about each.

/// One served resource type.
#[derive(Debug)]
pub struct ResourceType {
    /// API group (`""` for core).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    /// Store prefix, `group/plural` (`core/…` for the core group).
    pub id: &'static str,
    /// Has a `status` subresource: the main resource ignores status changes
    /// and `…/status` changes only status.
    pub status: bool,
    /// Has a `scale` subresource.
    pub scale: bool,
    /// `metadata.generation` is kept and bumped on spec changes.
    pub generation: bool,
    /// Part of `kubectl get all`.
    pub in_all: bool,
    /// Field selector labels beyond `metadata.name` and `metadata.namespace`.
    pub fields: &'static [&'static str],
}

impl ResourceType {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_owned() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `pods` or `deployments.apps`, as Kubernetes names resources in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.to_owned() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

const POD_FIELDS: &[&str] = &[
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
];
const EVENT_FIELDS: &[&str] = &[
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
];

macro_rules! res {
    ($group:tt, $kind:literal, $plural:literal, $singular:literal, [$($short:literal),*], ns=$ns:literal,
     status=$status:literal, scale=$scale:literal, gen=$gen:literal, all=$all:literal, fields=$fields:expr) => {
        ResourceType {
            group: $group,
            version: "v1",
            kind: $kind,
            plural: $plural,
            singular: $singular,
            short_names: &[$($short),*],
            namespaced: $ns,
            id: concat!(if_core!($group), "/", $plural),
            status: $status,
            scale: $scale,
            generation: $gen,
            in_all: $all,
            fields: $fields,
        }
    };
}
macro_rules! if_core {
    ("") => {
        "core"
    };
    ($g:literal) => {
        $g
    };
}

pub static RESOURCES: &[ResourceType] = &[
    res!("", "Namespace", "namespaces", "namespace", ["ns"], ns=false, status=true, scale=false, gen=false, all=false, fields=&["status.phase"]),
    res!("", "Node", "nodes", "node", ["no"], ns=false, status=true, scale=false, gen=false, all=false, fields=&["spec.unschedulable"]),
    res!("", "Pod", "pods", "pod", ["po"], ns=true, status=true, scale=false, gen=true, all=true, fields=POD_FIELDS),
    res!("", "Service", "services", "service", ["svc"], ns=true, status=true, scale=false, gen=false, all=true, fields=&["spec.clusterIP", "spec.type"]),
    res!("", "Endpoints", "endpoints", "endpoints", ["ep"], ns=true, status=false, scale=false, gen=false, all=false, fields=&[]),
    res!("", "ConfigMap", "configmaps", "configmap", ["cm"], ns=true, status=false, scale=false, gen=false, all=false, fields=&[]),
    res!("", "Secret", "secrets", "secret", [], ns=true, status=false, scale=false, gen=false, all=false, fields=&["type"]),
    res!("", "PersistentVolumeClaim", "persistentvolumeclaims", "persistentvolumeclaim", ["pvc"], ns=true, status=true, scale=false, gen=false, all=false, fields=&[]),
    res!("", "PersistentVolume", "persistentvolumes", "persistentvolume", ["pv"], ns=false, status=true, scale=false, gen=false, all=false, fields=&[]),
    res!("", "Event", "events", "event", ["ev"], ns=true, status=false, scale=false, gen=false, all=false, fields=EVENT_FIELDS),
    res!("apps", "Deployment", "deployments", "deployment", ["deploy"], ns=true, status=true, scale=true, gen=true, all=true, fields=&[]),
    res!("apps", "ReplicaSet", "replicasets", "replicaset", ["rs"], ns=true, status=true, scale=true, gen=true, all=true, fields=&["status.replicas"]),
    res!("apps", "DaemonSet", "daemonsets", "daemonset", ["ds"], ns=true, status=true, scale=false, gen=true, all=true, fields=&[]),
    res!("apps", "StatefulSet", "statefulsets", "statefulset", ["sts"], ns=true, status=true, scale=true, gen=true, all=true, fields=&[]),
    res!("apps", "ControllerRevision", "controllerrevisions", "controllerrevision", [], ns=true, status=false, scale=false, gen=false, all=false, fields=&[]),
    res!("batch", "Job", "jobs", "job", [], ns=true, status=true, scale=false, gen=true, all=true, fields=&[]),
    res!("batch", "CronJob", "cronjobs", "cronjob", ["cj"], ns=true, status=true, scale=false, gen=true, all=true, fields=&[]),
    res!("coordination.k8s.io", "Lease", "leases", "lease", [], ns=true, status=false, scale=false, gen=false, all=false, fields=&[]),
    res!("policy", "PodDisruptionBudget", "poddisruptionbudgets", "poddisruptionbudget", ["pdb"], ns=true, status=true, scale=false, gen=true, all=false, fields=&[]),
    res!("", "ServiceAccount", "serviceaccounts", "serviceaccount", ["sa"], ns=true, status=false, scale=false, gen=false, all=false, fields=&[]),
    res!("rbac.authorization.k8s.io", "Role", "roles", "role", [], ns=true, status=false, scale=false, gen=false, all=false, fields=&[]),
    res!("rbac.authorization.k8s.io", "ClusterRole", "clusterroles", "clusterrole", [], ns=false, status=false, scale=false, gen=false, all=false, fields=&[]),
    res!("rbac.authorization.k8s.io", "RoleBinding", "rolebindings", "rolebinding", [], ns=true, status=false, scale=false, gen=false, all=false, fields=&[]),
    res!("rbac.authorization.k8s.io", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding", [], ns=false, status=false, scale=false, gen=false, all=false, fields=&[]),
    res!("storage.k8s.io", "StorageClass", "storageclasses", "storageclass", ["sc"], ns=false, status=false, scale=false, gen=false, all=false, fields=&[]),
];

/// The API groups served, with their one version each.
pub const GROUPS: &[(&str, &str)] = &[
    ("", "v1"),
    ("apps", "v1"),
    ("batch", "v1"),
    ("coordination.k8s.io", "v1"),
    ("policy", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
    ("storage.k8s.io", "v1"),
];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_kind(group: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.group == group && r.kind == kind)
}

pub fn in_group<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static ResourceType> + use<'a> {
    RESOURCES.iter().filter(move |r| r.group == group && r.version == version)
}

pub fn namespaces() -> &'static ResourceType {
    &RESOURCES[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_grouped() {
        let mut ids: Vec<_> = RESOURCES.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), RESOURCES.len());
        assert_eq!(find("apps", "v1", "deployments").map(|r| r.id), Some("apps/deployments"));
        assert_eq!(find("", "v1", "pods").map(|r| r.id), Some("core/pods"));
        assert_eq!(namespaces().kind, "Namespace");
    }
}
