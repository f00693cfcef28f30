//! Custom resources against their CRD's structural schema, in the order the
//! API server takes: unknown fields are pruned (and reported for
//! `fieldValidation`), `null`s of non-nullable fields dropped, defaults
//! filled in, then the value is checked against the schema with
//! kube-openapi's messages (`spec.size in body must be of type integer:
//! "string"`).
//!
//! Supported: `type`, `nullable`, `properties`, `additionalProperties`,
//! `items`, `required`, `enum`, `minimum`/`maximum` (and exclusive),
//! `multipleOf`, `minLength`/`maxLength`, `pattern`, `minItems`/`maxItems`,
//! `uniqueItems`, `minProperties`/`maxProperties`, `allOf`/`anyOf`/`oneOf`/
//! `not`, `default`, and the extensions `x-kubernetes-preserve-unknown-fields`,
//! `x-kubernetes-int-or-string`, `x-kubernetes-embedded-resource` and
//! `x-kubernetes-list-type` (`set`, `map` with `x-kubernetes-list-map-keys`).
//! Not supported: CEL rules (`x-kubernetes-validations`) and `format` checks.

use serde_json::{Map, Value};

use super::FieldError;

/// Prunes `v` to what `schema` knows (the root's `apiVersion`, `kind` and
/// `metadata` always stay), drops `null`s the schema does not allow and
/// fills in defaults. Returns the paths of the fields pruned.
pub fn normalize(schema: &Value, v: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    walk(schema, v, "", true, &mut pruned);
    pruned
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool).unwrap_or(false)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// The schema `schema` gives its property `key`, if it names one.
/// (Properties named only inside `allOf`/`anyOf`/`oneOf` are not looked at:
/// those are pruned as unknown unless the node preserves unknown fields.)
fn properties_of<'a>(schema: &'a Value, key: &str) -> Option<&'a Value> {
    schema.get("properties").and_then(|p| p.get(key))
}

fn walk(schema: &Value, v: &mut Value, path: &str, root: bool, pruned: &mut Vec<String>) {
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let embedded = flag(schema, "x-kubernetes-embedded-resource");
    match v {
        Value::Object(map) => {
            let additional = schema.get("additionalProperties");
            let has_props = schema.get("properties").is_some();
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let kept_meta = (root || embedded) && matches!(k.as_str(), "apiVersion" | "kind" | "metadata");
                let sub = properties_of(schema, &k).or(additional.filter(|a| a.is_object()));
                match sub {
                    Some(s) if !kept_meta => {
                        let child = join(path, &k);
                        let null_dropped = map.get(&k).is_some_and(Value::is_null) && !flag(s, "nullable");
                        if null_dropped {
                            map.remove(&k);
                        } else if let Some(c) = map.get_mut(&k) {
                            walk(s, c, &child, false, pruned);
                        }
                    }
                    _ if kept_meta => {}
                    _ if preserve || additional.is_some_and(|a| a == &Value::Bool(true)) => {}
                    _ if !has_props && additional.is_none() && schema.get("type").is_none() => {}
                    _ => {
                        map.remove(&k);
                        pruned.push(join(path, &k));
                    }
                }
            }
            // Defaults for the properties not given.
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    if map.contains_key(k) {
                        continue;
                    }
                    if let Some(d) = s.get("default") {
                        let mut d = d.clone();
                        walk(s, &mut d, &join(path, k), false, pruned);
                        map.insert(k.clone(), d);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(s, item, &format!("{path}[{i}]"), false, pruned);
                }
            }
        }
        _ => {}
    }
}

/// The schema's problems with `v`, as field errors.
pub fn validate(schema: &Value, v: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    check(schema, v, "", true, &mut errs);
    errs
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A value as Go's `%v` shows it in these messages.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn invalid(path: &str, v: &Value, detail: String) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        message: format!("{path}: Invalid value: {}: {detail}", show(v)),
        field: path.to_owned(),
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn check(schema: &Value, v: &Value, path: &str, root: bool, errs: &mut Vec<FieldError>) {
    let at = if path.is_empty() { "body".to_owned() } else { path.to_owned() };
    if v.is_null() {
        if flag(schema, "nullable") {
            return;
        }
        if let Some(t) = schema.get("type").and_then(Value::as_str) {
            errs.push(FieldError {
                reason: "FieldValueTypeInvalid",
                message: format!("{at}: Invalid value: \"null\": {at} in body must be of type {t}: \"null\""),
                field: at.clone(),
            });
        }
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !matches!(v, Value::String(_)) && type_of(v) != "integer" {
            let t = type_of(v);
            errs.push(FieldError {
                reason: "FieldValueTypeInvalid",
                message: format!("{at}: Invalid value: \"{t}\": {at} in body must be of type integer,string: \"{t}\""),
                field: at.clone(),
            });
            return;
        }
    } else if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let have = type_of(v);
        let ok = have == want || (want == "number" && have == "integer");
        if !ok {
            errs.push(FieldError {
                reason: "FieldValueTypeInvalid",
                message: format!("{at}: Invalid value: \"{have}\": {at} in body must be of type {want}: \"{have}\""),
                field: at.clone(),
            });
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            let list: Vec<String> = options.iter().map(show).collect();
            errs.push(FieldError {
                reason: "FieldValueNotSupported",
                message: format!("{at}: Unsupported value: {}: supported values: {}", show(v), list.join(", ")),
                field: at.clone(),
            });
        }
    }
    match v {
        Value::Number(_) => check_number(schema, v, &at, errs),
        Value::String(s) => check_string(schema, v, s, &at, errs),
        Value::Array(items) => check_array(schema, v, items, &at, path, errs),
        Value::Object(map) => check_object(schema, map, &at, path, root, errs),
        _ => {}
    }
    for sub in schema.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        check(sub, v, path, root, errs);
    }
    let passes = |s: &Value| {
        let mut e = Vec::new();
        check(s, v, path, root, &mut e);
        e.is_empty()
    };
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        if !any.iter().any(passes) {
            errs.push(invalid(&at, v, format!("{at} in body must validate at least one schema (anyOf)")));
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        if one.iter().filter(|s| passes(s)).count() != 1 {
            errs.push(invalid(&at, v, format!("{at} in body must validate one and only one schema (oneOf)")));
        }
    }
    if let Some(not) = schema.get("not") {
        if passes(not) {
            errs.push(invalid(&at, v, format!("{at} in body must not validate the schema (not)")));
        }
    }
}

fn check_number(schema: &Value, v: &Value, at: &str, errs: &mut Vec<FieldError>) {
    let Some(x) = number(v) else { return };
    if let Some(min) = schema.get("minimum") {
        let m = number(min).unwrap_or(f64::MIN);
        if flag(schema, "exclusiveMinimum") && x <= m {
            errs.push(invalid(at, v, format!("{at} in body should be greater than {min}")));
        } else if x < m {
            errs.push(invalid(at, v, format!("{at} in body should be greater than or equal to {min}")));
        }
    }
    if let Some(max) = schema.get("maximum") {
        let m = number(max).unwrap_or(f64::MAX);
        if flag(schema, "exclusiveMaximum") && x >= m {
            errs.push(invalid(at, v, format!("{at} in body should be less than {max}")));
        } else if x > m {
            errs.push(invalid(at, v, format!("{at} in body should be less than or equal to {max}")));
        }
    }
    if let Some(of) = schema.get("multipleOf").and_then(number).filter(|m| *m > 0.0) {
        let q = x / of;
        if (q - q.round()).abs() > 1e-9 {
            errs.push(invalid(at, v, format!("{at} in body should be a multiple of {}", schema["multipleOf"])));
        }
    }
}

fn check_string(schema: &Value, v: &Value, s: &str, at: &str, errs: &mut Vec<FieldError>) {
    let chars = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if chars > max {
            errs.push(FieldError {
                reason: "FieldValueTooLong",
                message: format!("{at}: Too long: may not be more than {max} bytes"),
                field: at.to_owned(),
            });
        }
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if chars < min {
            errs.push(invalid(at, v, format!("{at} in body should be at least {min} chars long")));
        }
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        // (The CRD's own validation refused patterns that do not compile.)
        if regex::Regex::new(p).is_ok_and(|re| !re.is_match(s)) {
            errs.push(invalid(at, v, format!("{at} in body should match '{p}'")));
        }
    }
}

/// Kubernetes' `TooMany` for a list or object over the schema's `limit`.
fn too_many(schema: &Value, limit: &str, n: u64, at: &str, errs: &mut Vec<FieldError>) {
    if let Some(max) = schema.get(limit).and_then(Value::as_u64).filter(|max| n > *max) {
        errs.push(FieldError {
            reason: "FieldValueTooMany",
            message: format!("{at}: Too many: {n}: must have at most {max} items"),
            field: at.to_owned(),
        });
    }
}

fn check_array(schema: &Value, v: &Value, items: &[Value], at: &str, path: &str, errs: &mut Vec<FieldError>) {
    let n = items.len() as u64;
    too_many(schema, "maxItems", n, at, errs);
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
        if n < min {
            errs.push(invalid(at, v, format!("{at} in body should have at least {min} items")));
        }
    }
    let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
    // (Seen sets, not pairwise comparisons: a list near the body cap must
    // not stall the store's write transaction.)
    if flag(schema, "uniqueItems") || list_type == Some("set") {
        let mut seen = std::collections::HashSet::new();
        for (i, item) in items.iter().enumerate() {
            if !seen.insert(item.to_string()) {
                errs.push(FieldError {
                    reason: "FieldValueDuplicate",
                    message: format!("{path}[{i}]: Duplicate value: {}", show(item)),
                    field: format!("{path}[{i}]"),
                });
            }
        }
    }
    if list_type == Some("map") {
        let keys: Vec<&str> = schema
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|k| k.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let key_of =
            |item: &Value| -> Vec<Value> { keys.iter().map(|k| item.get(*k).cloned().unwrap_or_default()).collect() };
        let mut seen = std::collections::HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let k = key_of(item);
            if !seen.insert(serde_json::to_string(&k).unwrap_or_default()) {
                let shown: Vec<String> = keys.iter().zip(&k).map(|(n, v)| format!("\"{n}\":{}", show(v))).collect();
                errs.push(FieldError {
                    reason: "FieldValueDuplicate",
                    message: format!("{path}[{i}]: Duplicate value: map[string]interface {{}}{{{}}}", shown.join(", ")),
                    field: format!("{path}[{i}]"),
                });
            }
        }
    }
    if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
        for (i, item) in items.iter().enumerate() {
            check(s, item, &format!("{path}[{i}]"), false, errs);
        }
    }
}

fn check_object(
    schema: &Value,
    map: &Map<String, Value>,
    at: &str,
    path: &str,
    root: bool,
    errs: &mut Vec<FieldError>,
) {
    let n = map.len() as u64;
    too_many(schema, "maxProperties", n, at, errs);
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64) {
        if n < min {
            errs.push(FieldError {
                reason: "FieldValueInvalid",
                message: format!("{at}: Invalid value: {n}: {at} in body should have at least {min} properties"),
                field: at.to_owned(),
            });
        }
    }
    for r in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if !map.contains_key(r) {
            errs.push(FieldError::required(join(path, r)));
        }
    }
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (k, val) in map {
        if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(s) = properties_of(schema, k).or(additional) {
            check(s, val, &join(path, k), false, errs);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn widget_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["color"],
                    "properties": {
                        "color": {"type": "string", "enum": ["red", "blue"]},
                        "size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
                        "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"},
                        "port": {"x-kubernetes-int-or-string": true},
                        "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "note": {"type": "string", "nullable": true},
                    },
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
            },
        })
    }

    #[test]
    fn unknown_fields_are_pruned_and_defaults_filled() {
        let mut v = json!({
            "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "whatever": 1},
            "spec": {"color": "red", "colour": "x", "extra": {"any": {"thing": 1}}, "labels": {"a": "b"}, "note": null,
                     "name": null},
            "junk": true,
        });
        let pruned = normalize(&widget_schema(), &mut v);
        assert_eq!(pruned, ["junk", "spec.colour"]);
        assert_eq!(v["spec"]["size"], 3, "defaulted");
        assert_eq!(v["spec"]["extra"]["any"]["thing"], 1, "preserved");
        assert_eq!(v["spec"]["note"], Value::Null, "nullable kept");
        assert!(v["spec"].get("name").is_none(), "a null of a non-nullable field is dropped");
        assert_eq!(v["metadata"]["whatever"], 1, "metadata is not the schema's");
        assert!(validate(&widget_schema(), &v).is_empty(), "{:?}", validate(&widget_schema(), &v));
    }

    #[test]
    fn problems_are_reported_with_kubernetes_messages() {
        let v = json!({"spec": {"size": "big", "name": "TOOLONG", "color": "green", "port": 1.5,
                       "tags": ["a", "a"], "labels": {"x": 1}}});
        let msgs: Vec<String> = validate(&widget_schema(), &v).into_iter().map(|e| e.message).collect();
        assert_eq!(
            msgs,
            [
                r#"spec.color: Unsupported value: "green": supported values: "red", "blue""#,
                r#"spec.labels.x: Invalid value: "integer": spec.labels.x in body must be of type string: "integer""#,
                "spec.name: Too long: may not be more than 5 bytes",
                r#"spec.name: Invalid value: "TOOLONG": spec.name in body should match '^[a-z]+$'"#,
                r#"spec.port: Invalid value: "number": spec.port in body must be of type integer,string: "number""#,
                r#"spec.size: Invalid value: "string": spec.size in body must be of type integer: "string""#,
                r#"spec.tags[1]: Duplicate value: "a""#,
            ]
        );
        let v = json!({"spec": {"size": 11}});
        let msgs: Vec<String> = validate(&widget_schema(), &v).into_iter().map(|e| e.message).collect();
        assert_eq!(
            msgs,
            [
                "spec.color: Required value",
                "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10",
            ]
        );
    }
}
