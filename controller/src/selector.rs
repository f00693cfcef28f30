//! Label selectors (equality- and set-based, as `kubectl -l` sends them) and
//! field selectors (`metadata.name=x,spec.nodeName!=y`).

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error("unable to parse requirement: {0}")]
    Parse(String),
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    reqs: Vec<Requirement>,
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_set(s: &str, whole: &str) -> Result<Vec<String>, SelectorError> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError::Parse(format!("{whole}: expected a (value, …) set")))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let err = || SelectorError::Parse(p.to_owned());
            let (key, op) = if let Some(k) = p.strip_prefix('!') {
                (k.trim(), Op::NotExists)
            } else if let Some((k, v)) = p.split_once("!=") {
                (k.trim(), Op::NotEq(v.trim().to_owned()))
            } else if let Some((k, v)) = p.split_once("==") {
                (k.trim(), Op::Eq(v.trim().to_owned()))
            } else if let Some((k, v)) = p.split_once('=') {
                (k.trim(), Op::Eq(v.trim().to_owned()))
            } else if let Some(idx) = p.find(" notin ") {
                (p[..idx].trim(), Op::NotIn(parse_set(&p[idx + 7..], p)?))
            } else if let Some(idx) = p.find(" in ") {
                (p[..idx].trim(), Op::In(parse_set(&p[idx + 4..], p)?))
            } else {
                (p, Op::Exists)
            };
            if !valid_key(key) {
                return Err(err());
            }
            reqs.push(Requirement { key: key.to_owned(), op });
        }
        Ok(LabelSelector { reqs })
    }

    /// Converts a Kubernetes `LabelSelector` (`matchLabels` and
    /// `matchExpressions`). An empty one matches everything, as in Kubernetes.
    pub fn from_k8s(s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector) -> Result<Self, String> {
        let mut reqs: Vec<Requirement> = s
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Requirement { key: k.clone(), op: Op::Eq(v.clone()) })
            .collect();
        for e in s.match_expressions.iter().flatten() {
            let vals = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" => Op::In(vals),
                "NotIn" => Op::NotIn(vals),
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::NotExists,
                other => return Err(format!("{other:?} is not a valid label selector operator")),
            };
            reqs.push(Requirement { key: e.key.clone(), op });
        }
        Ok(LabelSelector { reqs })
    }

    /// Builds a selector from a `matchLabels`-style map.
    pub fn from_map(m: &BTreeMap<String, String>) -> Self {
        LabelSelector { reqs: m.iter().map(|(k, v)| Requirement { key: k.clone(), op: Op::Eq(v.clone()) }).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Matches the labels of a JSON object (`metadata.labels`).
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    /// Matches a label map.
    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.reqs.iter().all(|r| match &r.op {
            Op::Eq(v) => get(&r.key) == Some(v.as_str()),
            Op::NotEq(v) => get(&r.key) != Some(v.as_str()),
            Op::In(vs) => get(&r.key).is_some_and(|l| vs.iter().any(|v| v == l)),
            Op::NotIn(vs) => get(&r.key).is_none_or(|l| !vs.iter().any(|v| v == l)),
            Op::Exists => get(&r.key).is_some(),
            Op::NotExists => get(&r.key).is_none(),
        })
    }
}

/// A parsed field selector: `path=value` / `path!=value` terms, all ANDed.
#[derive(Debug, Clone, Default)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    /// Parses `s`, accepting `metadata.name`, `metadata.namespace` and the
    /// resource's own field labels (`allowed`).
    pub fn parse(s: &str, allowed: &[&str]) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for part in s.split(',') {
            let p = part.trim();
            if p.is_empty() {
                continue;
            }
            let (field, eq, value) = if let Some((f, v)) = p.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = p.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = p.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError::Parse(p.to_owned()));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" && !allowed.contains(&field) {
                return Err(SelectorError::UnsupportedField(field.to_owned()));
            }
            terms.push((field.to_owned(), eq, value.trim().to_owned()));
        }
        Ok(FieldSelector { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(field, eq, want)| {
            // Field labels that are not plain paths, and the value an absent
            // field has (Kubernetes compares the typed zero value).
            let (path, absent) = match field.as_str() {
                "source" => ("source.component", ""),
                "spec.hostNetwork" | "spec.unschedulable" => (field.as_str(), "false"),
                "status.replicas" => (field.as_str(), "0"),
                f => (f, ""),
            };
            let mut cur = Some(obj);
            for seg in path.split('.') {
                cur = cur.and_then(|c| c.get(seg));
            }
            let have = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                // `spec.nodeName=` selects unscheduled pods.
                _ => absent.to_owned(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "labels": labels}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn equality_and_set_selectors() {
        let p = pod(json!({"app": "web", "tier": "front"}));
        let m = |s: &str| LabelSelector::parse(s).expect("parse").matches(&p);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web,tier=front"));
        assert!(!m("app=db"));
        assert!(m("app!=db"));
        assert!(m("app in (web, db)"));
        assert!(!m("app notin (web)"));
        assert!(m("tier"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("app in (web),tier notin (back)"));
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn field_selectors() {
        let p = pod(json!({}));
        let f = |s: &str| FieldSelector::parse(s, &["spec.nodeName", "status.phase"]).expect("parse").matches(&p);
        assert!(f("metadata.name=p"));
        assert!(f("spec.nodeName=n1,status.phase!=Failed,status.phase!=Succeeded"));
        assert!(!f("spec.nodeName=n2"));
        assert!(!f("spec.nodeName="));
        let node = json!({"metadata": {"name": "n"}, "spec": {}});
        assert!(
            FieldSelector::parse("spec.unschedulable=false", &["spec.unschedulable"]).expect("parse").matches(&node)
        );
        let ev = json!({"source": {"component": "kubelet"}});
        assert!(FieldSelector::parse("source=kubelet", &["source"]).expect("parse").matches(&ev));
        assert_eq!(
            FieldSelector::parse("spec.foo=x", &[]).err(),
            Some(SelectorError::UnsupportedField("spec.foo".into()))
        );
    }
}
