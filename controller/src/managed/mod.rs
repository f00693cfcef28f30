//! Field ownership (`metadata.managedFields`) and server-side apply, with
//! structured-merge-diff's rules over [`schema`]'s shapes and
//! [`fieldset`]'s path sets.
//!
//! Every write through the API names a field manager (`?fieldManager=`, or
//! the client's user agent up to its first `/`). An update gives its
//! manager the fields it changed, in an `Update` entry, and takes them from
//! every other manager. An apply (`application/apply-patch+yaml`) is a
//! manager's whole intent: its fields are merged into the object (keyed
//! lists item by item, sets by value, atomic values whole), the fields it
//! applied last time and no longer does are removed unless someone else
//! also owns them, and a field another manager owns whose value the apply
//! would change is a conflict — refused with Kubernetes' 409 unless
//! `force=true`, which takes it over. The apply's fields become its
//! `Apply` entry. The control loops' own writes leave the entries alone.
//!
//! As in Kubernetes, the manager `kubectl` (what `kubectl apply
//! --server-side` uses) may take over, without `--force-conflicts`, the
//! fields that client-side apply last applied
//! (`kubectl.kubernetes.io/last-applied-configuration`), and keeps that
//! annotation in step with what it applies, so client-side `kubectl apply`
//! goes on working on the same object.

pub mod fieldset;
pub mod schema;

use serde_json::{Map, Value, json};

use self::fieldset::{Path, Set};
use self::schema::{ListKind, Table, Ty};
use crate::resources::ResourceType;

pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The manager `kubectl apply --server-side` uses.
pub const KUBECTL: &str = "kubectl";

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    /// `""` or `status`.
    pub subresource: String,
    pub fields: Set,
}

impl Entry {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_json(),
        });
        if !self.subresource.is_empty() {
            v["subresource"] = json!(self.subresource);
        }
        v
    }

    fn from_json(v: &Value) -> Option<Entry> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        Some(Entry {
            manager: s("manager"),
            operation: s("operation"),
            api_version: s("apiVersion"),
            time: s("time"),
            subresource: s("subresource"),
            fields: Set::from_json(v.get("fieldsV1")?)?,
        })
    }

    fn is(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }
}

/// The entries of an object (ones that do not parse are dropped).
pub fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Entry::from_json).collect())
        .unwrap_or_default()
}

fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries.iter().filter(|e| !e.fields.is_empty()).map(Entry::to_json).collect();
    let m = crate::meta::meta_mut(obj);
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

/// The part of an object whose fields are owned: no type or identity
/// metadata, and the main resource or the status, whichever is written.
fn tracked(rt: &ResourceType, status: bool, obj: &Value) -> Value {
    let mut v = obj.clone();
    let Some(o) = v.as_object_mut() else { return Value::Null };
    if status {
        return json!({"status": o.remove("status").unwrap_or(Value::Null)});
    }
    o.remove("apiVersion");
    o.remove("kind");
    if rt.status {
        o.remove("status");
    }
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            m.remove(f);
        }
        if m.is_empty() {
            o.remove("metadata");
        }
    }
    v
}

/// A keyed list item's path element: `k:{"name":"web"}` (keys in order of
/// name; a missing `protocol` is its default, `TCP`).
fn item_key(keys: &[String], item: &Value) -> Option<String> {
    let o = item.as_object()?;
    let mut sorted: Vec<&String> = keys.iter().collect();
    sorted.sort();
    let mut m = Map::new();
    for k in sorted {
        match o.get(k) {
            Some(v) => {
                m.insert(k.clone(), v.clone());
            }
            None if k == "protocol" => {
                m.insert(k.clone(), json!("TCP"));
            }
            None => {}
        }
    }
    (!m.is_empty()).then(|| format!("k:{}", Value::Object(m)))
}

/// The set of field paths `v` holds.
pub fn field_set(t: &Table, ty: &Ty, v: &Value) -> Set {
    let mut out = Set::default();
    walk(t, ty, v, &mut Vec::new(), &mut out);
    out
}

fn walk(t: &Table, ty: &Ty, v: &Value, at: &mut Path, out: &mut Set) {
    match (ty, v) {
        (Ty::Struct(_) | Ty::Schema(_) | Ty::Map(_) | Ty::Any, Value::Object(o)) => {
            if o.is_empty() {
                out.insert(at);
            }
            // A field the kind does not have is dropped by admission
            // (or refused, under Strict): nobody owns it.
            for (k, child) in o.iter().filter(|(k, c)| !c.is_null() && t.has_field(ty, k)) {
                at.push(format!("f:{k}"));
                walk(t, &t.field(ty, k), child, at, out);
                at.pop();
            }
        }
        (Ty::List(ListKind::Map(keys), elem), Value::Array(items)) => {
            let all: Option<Vec<String>> = items.iter().map(|i| item_key(keys, i)).collect();
            let Some(all) = all else {
                out.insert(at);
                return;
            };
            for (key, item) in all.into_iter().zip(items) {
                at.push(key);
                out.insert(at);
                walk(t, elem, item, at, out);
                // The item itself is in the set; its fields too.
                at.pop();
            }
        }
        (Ty::List(ListKind::Set, _), Value::Array(items)) => {
            for i in items {
                at.push(format!("v:{i}"));
                out.insert(at);
                at.pop();
            }
        }
        _ => out.insert(at),
    }
}

/// The value at `path` in `v`, if it is there.
fn value_at<'a>(t: &Table, ty: &Ty, v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let Some((first, rest)) = path.split_first() else { return Some(v) };
    if let Some(f) = first.strip_prefix("f:") {
        return value_at(t, &t.field(ty, f), v.get(f)?, rest);
    }
    let items = v.as_array()?;
    let (pos, elem) = item(ty, items, first)?;
    value_at(t, elem, &items[pos], rest)
}

/// Where in `items`, a list of type `ty`, the item a path element
/// (`k:{…}` or `v:…`) names is, and the items' type.
fn item<'t>(ty: &'t Ty, items: &[Value], elem: &str) -> Option<(usize, &'t Ty)> {
    match ty {
        Ty::List(ListKind::Map(keys), e) => {
            Some((items.iter().position(|i| item_key(keys, i).as_deref() == Some(elem))?, e))
        }
        Ty::List(_, e) => {
            let want: Value = serde_json::from_str(elem.strip_prefix("v:")?).ok()?;
            Some((items.iter().position(|i| *i == want)?, e))
        }
        _ => None,
    }
}

/// Whether `path` differs between `a` and `b` (an item: whether it is in
/// one and not the other).
fn differs(t: &Table, ty: &Ty, a: &Value, b: &Value, path: &[String]) -> bool {
    let (x, y) = (value_at(t, ty, a, path), value_at(t, ty, b, path));
    match path.last() {
        Some(e) if e.starts_with("k:") || e.starts_with("v:") => x.is_some() != y.is_some(),
        _ => x != y,
    }
}

/// Removes `path` from `v`.
fn remove_at(t: &Table, ty: &Ty, v: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else { return };
    if let Some(f) = first.strip_prefix("f:") {
        let child_ty = t.field(ty, f);
        if rest.is_empty() {
            if let Some(o) = v.as_object_mut() {
                o.remove(f);
            }
        } else if let Some(c) = v.get_mut(f) {
            remove_at(t, &child_ty, c, rest);
        }
        return;
    }
    let Some(items) = v.as_array_mut() else { return };
    let Some((pos, elem)) = item(ty, items, first) else { return };
    if rest.is_empty() {
        items.remove(pos);
    } else {
        remove_at(t, elem, &mut items[pos], rest);
    }
}

/// `applied` merged into `live`: fields set, keyed items merged by key,
/// set items added, anything else replaced; a null removes.
fn merge(t: &Table, ty: &Ty, live: &mut Value, applied: &Value) {
    match (ty, &mut *live, applied) {
        (Ty::Struct(_) | Ty::Schema(_) | Ty::Map(_) | Ty::Any, Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                if av.is_null() {
                    l.remove(k);
                    continue;
                }
                let child = t.field(ty, k);
                match l.get_mut(k) {
                    Some(lv) => merge(t, &child, lv, av),
                    None => {
                        l.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (Ty::List(ListKind::Map(keys), elem), Value::Array(l), Value::Array(a))
            if a.iter().all(|i| item_key(keys, i).is_some()) =>
        {
            for ai in a {
                let key = item_key(keys, ai);
                match l.iter_mut().find(|li| item_key(keys, li) == key) {
                    Some(li) => merge(t, elem, li, ai),
                    None => l.push(ai.clone()),
                }
            }
        }
        (Ty::List(ListKind::Set, _), Value::Array(l), Value::Array(a)) => {
            for ai in a {
                if !l.contains(ai) {
                    l.push(ai.clone());
                }
            }
        }
        _ => *live = applied.clone(),
    }
}

/// A conflict: a field `manager` owns that an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// Of an `Update` owner, the API version it wrote (Kubernetes names it).
    pub using: Option<String>,
    pub path: Path,
}

impl Conflict {
    /// `conflict with "kubectl-edit" using v1`.
    pub fn with(&self) -> String {
        match &self.using {
            Some(v) => format!("conflict with \"{}\" using {v}", self.manager),
            None => format!("conflict with \"{}\"", self.manager),
        }
    }
}

/// Kubernetes' words for a refused apply.
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    let n = conflicts.len();
    let list = |c: &Conflict| format!("{}: {}", c.with(), fieldset::display(&c.path));
    if n == 1 {
        format!("Apply failed with 1 conflict: {}", list(&conflicts[0]))
    } else {
        let all: Vec<String> = conflicts.iter().map(list).collect();
        format!("Apply failed with {n} conflicts: {}", all.join("\n"))
    }
}

fn now() -> String {
    crate::meta::now()
}

/// Gives `manager` its part of a create.
pub fn on_create(rt: &'static ResourceType, obj: &mut Value, manager: &str) {
    let t = Table::get();
    let ty = t.root(rt);
    let fields = field_set(t, &ty, &tracked(rt, false, obj));
    let e = Entry {
        manager: manager.to_owned(),
        operation: "Update".into(),
        api_version: rt.api_version(),
        time: now(),
        subresource: String::new(),
        fields,
    };
    write_entries(obj, &[e]);
}

/// Tracks an update by `manager` from `old` to `new` (of the status when
/// `status`). A request that sets `managedFields` itself (other than
/// leaving them as they are) has them taken as the start; `[{}]` clears.
pub fn on_update(rt: &'static ResourceType, status: bool, old: &Value, new: &mut Value, manager: Option<&str>) {
    let kept = old.pointer("/metadata/managedFields").cloned();
    let Some(manager) = manager else {
        // The control loops: ownership as it was, as it was written.
        let m = crate::meta::meta_mut(new);
        match kept {
            Some(k) => m.insert("managedFields".into(), k),
            None => m.remove("managedFields"),
        };
        return;
    };
    let sent = new.pointer("/metadata/managedFields").cloned();
    let mut list = match &sent {
        Some(s) if Some(s) != kept.as_ref() && !status => {
            s.as_array().map(|a| a.iter().filter_map(Entry::from_json).collect()).unwrap_or_default()
        }
        _ => entries(old),
    };
    let t = Table::get();
    let ty = t.root(rt);
    let (o, n) = (tracked(rt, status, old), tracked(rt, status, new));
    let (old_set, new_set) = (field_set(t, &ty, &o), field_set(t, &ty, &n));
    let mut changed = Set::default();
    for p in new_set.paths() {
        if differs(t, &ty, &o, &n, &p) {
            changed.insert(&p);
        }
    }
    let removed = old_set.difference(&new_set);
    let taken = changed.union(&removed);
    if !taken.is_empty() {
        let sub = if status { "status" } else { "" };
        for e in list.iter_mut() {
            e.fields = e.fields.difference(&taken);
        }
        let fields = changed
            .union(&list.iter().find(|e| e.is(manager, "Update", sub)).map(|e| e.fields.clone()).unwrap_or_default());
        let fields = fields.difference(&removed);
        list.retain(|e| !e.is(manager, "Update", sub));
        list.push(Entry {
            manager: manager.to_owned(),
            operation: "Update".into(),
            api_version: rt.api_version(),
            time: now(),
            subresource: sub.to_owned(),
            fields,
        });
    }
    write_entries(new, &list);
}

/// Server-side apply of `applied` by `manager` onto `live` (none: the
/// object is made): the object to store, or the conflicts that refuse it.
pub fn apply(
    rt: &'static ResourceType,
    status: bool,
    live: &Value,
    applied: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let t = Table::get();
    let ty = t.root(rt);
    let sub = if status { "status" } else { "" };
    let applied_part = tracked(rt, status, applied);
    let applied_set = field_set(t, &ty, &applied_part);
    let mut list = entries(live);
    let mut new = live.clone();
    if status {
        if let Some(s) = applied.get("status") {
            let mut cur = new.get("status").cloned().unwrap_or(json!({}));
            merge(t, &t.field(&ty, "status"), &mut cur, s);
            new["status"] = cur;
        }
    } else {
        let mut a = applied.clone();
        if rt.status {
            if let Some(o) = a.as_object_mut() {
                o.remove("status");
            }
        }
        merge(t, &ty, &mut new, &a);
    }
    let mine = list.iter().find(|e| e.is(manager, "Apply", sub)).map(|e| e.fields.clone()).unwrap_or_default();
    let others =
        list.iter().filter(|e| !e.is(manager, "Apply", sub)).fold(Set::default(), |acc, e| acc.union(&e.fields));
    // What it applied before and no longer does, and nobody else owns, goes.
    let dropped = mine.difference(&applied_set).difference(&others);
    let mut paths = dropped.paths();
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in &paths {
        remove_at(t, &ty, &mut new, p);
    }
    let (lo, no) = (tracked(rt, status, live), tracked(rt, status, &new));
    let mut conflicts = Vec::new();
    // Owners are manager and operation: `kubectl scale`'s update is not
    // `kubectl apply --server-side`'s apply.
    for e in list.iter().filter(|e| !e.is(manager, "Apply", sub)) {
        for p in e.fields.intersection(&applied_set).paths() {
            if differs(t, &ty, &lo, &no, &p) {
                let using = (e.operation != "Apply").then(|| e.api_version.clone());
                conflicts.push(Conflict { manager: e.manager.clone(), using, path: p });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        // `kubectl` takes over what client-side apply last applied.
        let allowed = if manager == KUBECTL { last_applied_set(rt, live) } else { Set::default() };
        let refused: Vec<Conflict> = conflicts.iter().filter(|c| !allowed.contains(&c.path)).cloned().collect();
        if !refused.is_empty() {
            return Err(refused);
        }
    }
    let mut taken = Set::default();
    for c in &conflicts {
        taken.insert(&c.path);
    }
    for e in list.iter_mut().filter(|e| !e.is(manager, "Apply", sub)) {
        e.fields = e.fields.difference(&taken);
    }
    let time = match list.iter().find(|e| e.is(manager, "Apply", sub)) {
        Some(e) if e.fields == applied_set && e.api_version == rt.api_version() => e.time.clone(),
        _ => now(),
    };
    match list.iter_mut().find(|e| e.is(manager, "Apply", sub)) {
        Some(e) => {
            e.fields = applied_set;
            e.time = time;
            e.api_version = rt.api_version();
        }
        None => list.push(Entry {
            manager: manager.to_owned(),
            operation: "Apply".into(),
            api_version: rt.api_version(),
            time,
            subresource: sub.to_owned(),
            fields: applied_set,
        }),
    }
    write_entries(&mut new, &list);
    if manager == KUBECTL && !status && new.pointer("/metadata/annotations").and_then(|a| a.get(LAST_APPLIED)).is_some()
    {
        // Client-side apply's record follows what was applied.
        let mut record = applied.clone();
        if let Some(a) = record.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
            a.remove(LAST_APPLIED);
        }
        new["metadata"]["annotations"][LAST_APPLIED] = json!(format!("{record}\n"));
    }
    Ok(new)
}

/// The fields client-side apply last applied to `live`.
fn last_applied_set(rt: &'static ResourceType, live: &Value) -> Set {
    let Some(text) = live.pointer("/metadata/annotations").and_then(|a| a.get(LAST_APPLIED)).and_then(Value::as_str)
    else {
        return Set::default();
    };
    let Ok(v) = serde_json::from_str::<Value>(text) else { return Set::default() };
    let t = Table::get();
    field_set(t, &t.root(rt), &tracked(rt, false, &v))
}

#[cfg(test)]
mod tests;
