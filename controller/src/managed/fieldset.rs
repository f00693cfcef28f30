//! Sets of field paths, as structured-merge-diff keeps them and
//! `managedFields` writes them (`FieldsV1`): a tree whose edges are path
//! elements — `f:name` (a field or map key), `k:{"name":"app"}` (an item of
//! a list keyed by its fields), `v:"x"` (an item of a set), `i:3` (an
//! index) — and whose nodes are in the set or only on the way to ones
//! that are (`"."` marks a node that is in the set and has children).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    /// This node is itself in the set.
    pub member: bool,
    pub children: BTreeMap<String, Set>,
}

/// One path: the elements from the root.
pub type Path = Vec<String>;

impl Set {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(Set::is_empty)
    }

    /// Adds `path` to the set.
    pub fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((first, rest)) => self.children.get(first).is_some_and(|c| c.contains(rest)),
        }
    }

    /// Every path in the set, depth first.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.walk(&mut Vec::new(), &mut out);
        out
    }

    fn walk(&self, at: &mut Path, out: &mut Vec<Path>) {
        if self.member {
            out.push(at.clone());
        }
        for (k, c) in &self.children {
            at.push(k.clone());
            c.walk(at, out);
            at.pop();
        }
    }

    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.member |= other.member;
        for (k, c) in &other.children {
            let merged = match out.children.get(k) {
                Some(mine) => mine.union(c),
                None => c.clone(),
            };
            out.children.insert(k.clone(), merged);
        }
        out
    }

    /// The paths of `self` not in `other`.
    pub fn difference(&self, other: &Set) -> Set {
        let mut out = Set { member: self.member && !other.member, children: BTreeMap::new() };
        for (k, c) in &self.children {
            let d = match other.children.get(k) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    /// The paths in both.
    pub fn intersection(&self, other: &Set) -> Set {
        let mut out = Set { member: self.member && other.member, children: BTreeMap::new() };
        for (k, c) in &self.children {
            if let Some(o) = other.children.get(k) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    /// The `FieldsV1` form.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, c) in &self.children {
            if !c.is_empty() {
                m.insert(k.clone(), c.to_json());
            }
        }
        Value::Object(m)
    }

    /// Reads a `FieldsV1` value; `None` for one that is not.
    pub fn from_json(v: &Value) -> Option<Set> {
        let m = v.as_object()?;
        if m.is_empty() {
            return Some(Set { member: true, children: BTreeMap::new() });
        }
        let mut out = Set::default();
        for (k, c) in m {
            if k == "." {
                out.member = true;
                continue;
            }
            let valid = ["f:", "k:", "v:", "i:"].iter().any(|p| k.starts_with(p));
            if !valid {
                return None;
            }
            out.children.insert(k.clone(), Set::from_json(c)?);
        }
        Some(out)
    }
}

/// A path as Kubernetes writes it in conflict messages:
/// `.spec.containers[name="web"].image`.
pub fn display(path: &[String]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let parts: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_else(|_| vec![k.to_owned()]);
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = e.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn p(elems: &[&str]) -> Path {
        elems.iter().map(|e| (*e).to_owned()).collect()
    }

    #[test]
    fn sets_round_trip_through_fields_v1_and_combine() {
        let v = json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}}}});
        let s = Set::from_json(&v).expect("valid");
        assert_eq!(s.to_json(), v);
        assert!(s.contains(&p(&["f:metadata", "f:labels", "f:app"])));
        assert!(s.contains(&p(&["f:spec", "f:containers", "k:{\"name\":\"web\"}"])));
        assert!(!s.contains(&p(&["f:spec"])), "a node on the way is not in the set");
        let mut other = Set::default();
        other.insert(&p(&["f:metadata", "f:labels", "f:app"]));
        other.insert(&p(&["f:data", "f:x"]));
        let d = s.difference(&other);
        assert!(!d.contains(&p(&["f:metadata", "f:labels", "f:app"])));
        assert!(d.to_json().get("f:metadata").is_none(), "emptied branches go");
        assert_eq!(s.intersection(&other).paths(), vec![p(&["f:metadata", "f:labels", "f:app"])]);
        assert_eq!(s.union(&other).paths().len(), 5);
        assert!(Set::from_json(&json!({"x:bad": {}})).is_none());
        assert_eq!(
            display(&p(&["f:spec", "f:containers", "k:{\"name\":\"web\"}", "f:image"])),
            ".spec.containers[name=\"web\"].image"
        );
    }
}
