//! Small helpers over the `metadata` of JSON objects.

use serde_json::{Map, Value};

pub fn get<'a>(obj: &'a Value, field: &str) -> Option<&'a Value> {
    obj.get("metadata").and_then(|m| m.get(field))
}

pub fn get_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    get(obj, field).and_then(Value::as_str).filter(|s| !s.is_empty())
}

pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Value::Object(o) = obj else { unreachable!("replaced by an object above") };
    let m = o.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !m.is_object() {
        *m = Value::Object(Map::new());
    }
    let Value::Object(m) = m else { unreachable!("replaced by an object above") };
    m
}

pub fn set(obj: &mut Value, field: &str, v: Value) {
    meta_mut(obj).insert(field.to_owned(), v);
}

pub fn remove(obj: &mut Value, field: &str) {
    meta_mut(obj).remove(field);
}

/// RFC 3339 with whole seconds, as Kubernetes timestamps are.
pub fn now() -> String {
    seconds_from_now(0)
}

/// RFC 3339 time `secs` seconds from now, to the second.
pub fn seconds_from_now(secs: i64) -> String {
    let at = jiff::Timestamp::now().as_second().saturating_add(secs);
    // Past jiff's range (a grace period of millennia): its last second.
    let max = jiff::Timestamp::MAX.as_second();
    let min = jiff::Timestamp::MIN.as_second();
    jiff::Timestamp::from_second(at.clamp(min, max)).map(|t| t.to_string()).unwrap_or_default()
}

pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The object with `resourceVersion` and `managedFields` removed, for
/// "did anything change" comparisons.
pub fn without_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    o
}

/// A random suffix for `generateName`, from Kubernetes' alphabet.
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes.iter().take(5).map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}
