//! Strict decoding support: a JSON parser that notes duplicated keys (serde
//! keeps the last silently) and a comparison that finds fields the typed
//! Kubernetes structs do not know.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses JSON into a value, recording the path of every duplicated key.
pub fn parse(bytes: &[u8]) -> Result<(Value, Vec<String>), serde_json::Error> {
    let mut dups = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Seed { path: String::new(), dups: &mut dups }.deserialize(&mut de)?;
    de.end()?;
    Ok((v, dups))
}

struct Seed<'a> {
    path: String,
    dups: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, out.len());
            match seq.next_element_seed(Seed { path, dups: &mut *self.dups })? {
                Some(v) => out.push(v),
                None => break,
            }
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            let path = if self.path.is_empty() { k.clone() } else { format!("{}.{k}", self.path) };
            let v = map.next_value_seed(Seed { path: path.clone(), dups: &mut *self.dups })?;
            if out.insert(k, v).is_some() {
                self.dups.push(path);
            }
        }
        Ok(Value::Object(out))
    }
}

/// Paths present in `original` but lost by a typed round trip (`typed`):
/// the fields the schema does not know. Nulls and empty values are ignored
/// (they carry nothing a round trip could drop meaningfully).
pub fn unknown_fields(original: &Value, typed: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(original, typed, "", &mut out);
    out
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn walk(orig: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match t.get(k) {
                    Some(tv) => walk(v, tv, &p, out),
                    None if is_empty(v) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            for (i, (ov, tv)) in o.iter().zip(t).enumerate() {
                walk(ov, tv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_duplicates_with_paths() {
        let (v, d) = parse(br#"{"a":1,"b":{"c":1,"c":2},"l":[{"x":1,"x":2}],"a":3}"#).expect("parse");
        assert_eq!(v["a"], 3);
        assert_eq!(d, vec!["b.c".to_owned(), "l[0].x".to_owned(), "a".to_owned()]);
        assert!(parse(b"{\"a\":1} trailing").is_err());
        assert!(parse(b"{\"a\":").is_err());
    }

    #[test]
    fn numbers_read_back_exactly_as_they_were_written() {
        // Found by fuzz/fuzz_targets/patch.rs: without serde_json's
        // float_roundtrip a stored 8.88888888888889e54 read back one ulp
        // off, so every write of an object could change its numbers.
        for text in ["8.88888888888889e54", "888888888888888888888888888888888888888888888888888888888", "0.1", "1e-7"]
        {
            let (v, _) = parse(text.as_bytes()).expect("parse");
            let again = serde_json::to_vec(&v).expect("write");
            let (back, _) = parse(&again).expect("read back");
            assert_eq!(back, v, "{text}");
        }
    }

    #[test]
    fn finds_unknown_fields() {
        let orig = json!({"spec": {"replicaz": 3, "replicas": 1, "t": [{"a": 1, "zz": 2}], "e": {}}});
        let typed = json!({"spec": {"replicas": 1, "t": [{"a": 1}]}});
        assert_eq!(unknown_fields(&orig, &typed), vec!["spec.replicaz".to_owned(), "spec.t[0].zz".to_owned()]);
    }
}
