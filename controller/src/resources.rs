//! The kinds this API server serves, with what discovery, routing, tables and
//! field selectors need to know about each.

/// One served resource type.
#[derive(Debug, PartialEq)]
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
    /// A custom resource's definition (one version of a CRD).
    pub custom: Option<Box<Custom>>,
}

/// What a CustomResourceDefinition says of one of its served versions.
#[derive(Debug, PartialEq)]
pub struct Custom {
    /// The CRD's name (`widgets.example.com`).
    pub crd: String,
    /// The version objects are stored as (this one or another).
    pub storage_version: String,
    /// `openAPIV3Schema` (structural; `None`: anything goes).
    pub schema: Option<serde_json::Value>,
    /// `additionalPrinterColumns`, as given.
    pub columns: Vec<serde_json::Value>,
    /// The scale subresource's paths.
    pub scale: Option<ScalePaths>,
    pub categories: Vec<String>,
}

/// Where a custom resource keeps what its scale subresource shows.
#[derive(Debug, PartialEq, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
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
            custom: None,
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
    res!("apiextensions.k8s.io", "CustomResourceDefinition", "customresourcedefinitions", "customresourcedefinition", ["crd", "crds"], ns=false, status=true, scale=false, gen=true, all=false, fields=&[]),
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
    ("apiextensions.k8s.io", "v1"),
];

/// The built-in kind of that group, version and plural (custom resources
/// are the [`Registry`]'s).
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

/// The kinds one cluster serves: the built-in ones and those its
/// CustomResourceDefinitions add. Each custom type is made `'static` once
/// (leaked) and reused while its definition does not change, so a CRD costs
/// its types once per change of what they say, not per update of the CRD.
#[derive(Default)]
pub struct Registry {
    custom: std::sync::RwLock<Vec<&'static ResourceType>>,
    /// Bumped on every change of the custom kinds (the OpenAPI documents'
    /// hashes and discovery's ETags follow it).
    changes: std::sync::atomic::AtomicU64,
    /// The names custom kinds use, each made `'static` once.
    names: std::sync::Mutex<std::collections::HashSet<&'static str>>,
    /// Their lists of names (short names), likewise.
    lists: std::sync::Mutex<Vec<&'static [&'static str]>>,
}

/// Whether `r` is the version its kind is stored as.
fn is_storage(r: &ResourceType) -> bool {
    r.custom.as_ref().is_some_and(|c| c.storage_version == r.version)
}

impl Registry {
    fn custom(&self) -> std::sync::RwLockReadGuard<'_, Vec<&'static ResourceType>> {
        self.custom.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
        find(group, version, plural).or_else(|| {
            self.custom().iter().copied().find(|r| r.group == group && r.version == version && r.plural == plural)
        })
    }

    /// A served version of the kind (the storage version first).
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<&'static ResourceType> {
        by_kind(group, kind).or_else(|| {
            let c = self.custom();
            let of_kind: Vec<_> = c.iter().copied().filter(|r| r.group == group && r.kind == kind).collect();
            of_kind.iter().copied().find(|r| is_storage(r)).or(of_kind.first().copied())
        })
    }

    /// Every served type, built-in first.
    pub fn all(&self) -> Vec<&'static ResourceType> {
        RESOURCES.iter().chain(self.custom().iter().copied()).collect()
    }

    /// One type per stored kind: every built-in one, and each custom kind's
    /// storage version (what namespace deletion and the collector walk).
    pub fn stored(&self) -> Vec<&'static ResourceType> {
        RESOURCES.iter().chain(self.custom().iter().copied().filter(|r| is_storage(r))).collect()
    }

    pub fn in_group(&self, group: &str, version: &str) -> Vec<&'static ResourceType> {
        self.all().into_iter().filter(|r| r.group == group && r.version == version).collect()
    }

    /// The groups served with their versions, preferred first: the built-in
    /// ones, then the custom ones by name.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = GROUPS.iter().map(|(g, v)| (*g, vec![*v])).collect();
        let mut custom: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for r in self.custom().iter() {
            if out.iter().any(|(g, _)| *g == r.group) {
                continue;
            }
            match custom.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version),
                Some(_) => {}
                None => custom.push((r.group, vec![r.version])),
            }
        }
        custom.sort_by(|a, b| a.0.cmp(b.0));
        for (_, vs) in &mut custom {
            vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        }
        out.extend(custom);
        out
    }

    /// Whether `group`/`version` is served.
    pub fn serves(&self, group: &str, version: &str) -> bool {
        self.groups().iter().any(|(g, vs)| *g == group && vs.contains(&version))
    }

    /// The custom kinds of CRD `crd` are now `types` (none: it is gone).
    pub fn set(&self, crd: &str, types: Vec<ResourceType>) {
        let mut c = self.custom.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut kept: Vec<&'static ResourceType> =
            c.iter().copied().filter(|r| r.custom.as_ref().is_none_or(|x| x.crd != crd)).collect();
        let before: Vec<&'static ResourceType> =
            c.iter().copied().filter(|r| r.custom.as_ref().is_some_and(|x| x.crd == crd)).collect();
        let mut changed = before.len() != types.len();
        for t in types {
            match before.iter().find(|b| ***b == t) {
                Some(same) => kept.push(same),
                None => {
                    changed = true;
                    kept.push(Box::leak(Box::new(t)));
                }
            }
        }
        *c = kept;
        if changed {
            self.changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// `s`, made `'static` the first time it is seen.
    pub fn intern(&self, s: &str) -> &'static str {
        let mut names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = names.get(s) {
            return n;
        }
        let n: &'static str = Box::leak(s.to_owned().into_boxed_str());
        names.insert(n);
        n
    }

    /// `items`, as a `'static` list made once.
    pub fn intern_list(&self, items: &[String]) -> &'static [&'static str] {
        let names: Vec<&'static str> = items.iter().map(|i| self.intern(i)).collect();
        let mut lists = self.lists.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(l) = lists.iter().find(|l| **l == names.as_slice()) {
            return l;
        }
        let l: &'static [&'static str] = Box::leak(names.into_boxed_slice());
        lists.push(l);
        l
    }

    /// A count that changes whenever the custom kinds do.
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Kubernetes' ordering of versions: GA over beta over alpha, then by
/// number; versions not of that form last, by name.
pub fn version_priority(v: &str) -> (u8, u32, u32, std::cmp::Reverse<String>) {
    let parse = |v: &str| -> Option<(u8, u32, u32)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let major: u32 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((3, major, 0));
        }
        for (label, rank) in [("beta", 2), ("alpha", 1)] {
            if let Some(n) = tail.strip_prefix(label) {
                return Some((rank, major, n.parse().ok()?));
            }
        }
        None
    };
    match parse(v) {
        Some((rank, major, minor)) => (rank, major, minor, std::cmp::Reverse(String::new())),
        None => (0, 0, 0, std::cmp::Reverse(v.to_owned())),
    }
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

    #[test]
    fn versions_order_as_kubernetes_orders_them() {
        let mut vs = vec!["v1alpha1", "foo", "v2beta1", "v1", "v11alpha2", "v2", "v1beta1", "v10beta3", "bar"];
        vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(vs, ["v2", "v1", "v10beta3", "v2beta1", "v1beta1", "v11alpha2", "v1alpha1", "bar", "foo"]);
    }
}
