//! The OpenAPI v2 document in protobuf, as kubectl 1.27 and 1.28 (and
//! client-go's `OpenAPISchema()`) ask for it with `Accept:
//! application/com.github.proto-openapi.spec.v2@v1.0+protobuf`: gnostic's
//! `openapi.v2.Document` message (`openapiv2/OpenAPIv2.proto`, field
//! numbers below), written from the JSON document field by field.
//!
//! Only what the JSON document uses is written. Vendor extensions
//! (`x-kubernetes-…`) are `NamedAny`s whose `Any` carries the value as
//! YAML; JSON is YAML, so the value's JSON text goes there, which is what
//! kubectl's group-version-kind lookup parses.

use prost::encoding::{WireType, encode_key, encode_varint};
use serde_json::{Map, Value};

/// What the answer is labelled: clients ask with `…spec.v2@v1.0+protobuf`,
/// but `@` is not allowed in a media type, and client-go refuses an answer
/// labelled so; Kubernetes answers with this spelling.
pub const CONTENT_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// A message being written.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn bytes(&mut self, tag: u32, b: &[u8]) {
        encode_key(tag, WireType::LengthDelimited, &mut self.0);
        encode_varint(b.len() as u64, &mut self.0);
        self.0.extend_from_slice(b);
    }

    /// A string field; proto3 leaves an empty one out.
    fn str(&mut self, tag: u32, v: Option<&Value>) {
        if let Some(s) = v.and_then(Value::as_str).filter(|s| !s.is_empty()) {
            self.bytes(tag, s.as_bytes());
        }
    }

    fn strs(&mut self, tag: u32, v: Option<&Value>) {
        for s in v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            self.bytes(tag, s.as_bytes());
        }
    }

    /// A sub-message, written even when empty (a set oneof must show).
    fn msg(&mut self, tag: u32, m: Pb) {
        self.bytes(tag, &m.0);
    }

    fn bool(&mut self, tag: u32, v: Option<&Value>) {
        if v.and_then(Value::as_bool) == Some(true) {
            encode_key(tag, WireType::Varint, &mut self.0);
            encode_varint(1, &mut self.0);
        }
    }

    fn int(&mut self, tag: u32, v: Option<&Value>) {
        if let Some(n) = v.and_then(Value::as_i64).filter(|n| *n != 0) {
            encode_key(tag, WireType::Varint, &mut self.0);
            // int64 on the wire: two's complement as a varint.
            encode_varint(n as u64, &mut self.0);
        }
    }

    fn double(&mut self, tag: u32, v: Option<&Value>) {
        if let Some(x) = v.and_then(Value::as_f64).filter(|x| *x != 0.0) {
            encode_key(tag, WireType::SixtyFourBit, &mut self.0);
            self.0.extend_from_slice(&x.to_le_bytes());
        }
    }

    /// `Any { yaml = 2 }`.
    fn any(&mut self, tag: u32, v: &Value) {
        let mut a = Pb::default();
        a.bytes(2, v.to_string().as_bytes());
        self.msg(tag, a);
    }

    /// `repeated NamedAny vendor_extension = tag`: every `x-` key.
    fn extensions(&mut self, tag: u32, m: &Map<String, Value>) {
        for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
            let mut named = Pb::default();
            named.bytes(1, k.as_bytes());
            named.any(2, v);
            self.msg(tag, named);
        }
    }
}

fn obj(v: Option<&Value>) -> Option<&Map<String, Value>> {
    v.and_then(Value::as_object)
}

/// The `Document` message of a Swagger 2.0 JSON document.
pub fn document(doc: &Value) -> Vec<u8> {
    let mut d = Pb::default();
    d.str(1, doc.get("swagger"));
    if let Some(info) = obj(doc.get("info")) {
        let mut i = Pb::default();
        i.str(1, info.get("title"));
        i.str(2, info.get("version"));
        i.str(3, info.get("description"));
        d.msg(2, i);
    }
    d.str(3, doc.get("host"));
    d.str(4, doc.get("basePath"));
    d.strs(5, doc.get("schemes"));
    d.strs(6, doc.get("consumes"));
    d.strs(7, doc.get("produces"));
    if let Some(paths) = obj(doc.get("paths")) {
        let mut p = Pb::default();
        for (name, item) in paths {
            let mut named = Pb::default();
            named.bytes(1, name.as_bytes());
            named.msg(2, path_item(item));
            p.msg(2, named);
        }
        d.msg(8, p);
    }
    if let Some(defs) = obj(doc.get("definitions")) {
        let mut p = Pb::default();
        for (name, s) in defs {
            p.msg(1, named_schema(name, s));
        }
        d.msg(9, p);
    }
    for req in doc.get("security").and_then(Value::as_array).into_iter().flatten() {
        // SecurityRequirement { repeated NamedStringArray additional_properties = 1 }
        let mut r = Pb::default();
        for (name, scopes) in req.as_object().into_iter().flatten() {
            let mut named = Pb::default();
            named.bytes(1, name.as_bytes());
            let mut arr = Pb::default();
            arr.strs(1, Some(scopes));
            named.msg(2, arr);
            r.msg(1, named);
        }
        d.msg(12, r);
    }
    if let Some(defs) = obj(doc.get("securityDefinitions")) {
        let mut sd = Pb::default();
        for (name, def) in defs.iter().filter(|(_, d)| d.get("type").and_then(Value::as_str) == Some("apiKey")) {
            // SecurityDefinitionsItem { ApiKeySecurity api_key_security = 2 }
            let mut key = Pb::default();
            key.str(1, def.get("type"));
            key.str(2, def.get("name"));
            key.str(3, def.get("in"));
            key.str(4, def.get("description"));
            let mut item = Pb::default();
            item.msg(2, key);
            let mut named = Pb::default();
            named.bytes(1, name.as_bytes());
            named.msg(2, item);
            sd.msg(1, named);
        }
        d.msg(13, sd);
    }
    if let Some(m) = doc.as_object() {
        d.extensions(16, m);
    }
    d.0
}

fn path_item(item: &Value) -> Pb {
    let mut p = Pb::default();
    for (method, tag) in [("get", 2), ("put", 3), ("post", 4), ("delete", 5), ("options", 6), ("head", 7), ("patch", 8)]
    {
        if let Some(op) = obj(item.get(method)) {
            p.msg(tag, operation(op));
        }
    }
    for param in item.get("parameters").and_then(Value::as_array).into_iter().flatten() {
        p.msg(9, parameters_item(param));
    }
    if let Some(m) = item.as_object() {
        p.extensions(10, m);
    }
    p
}

fn operation(op: &Map<String, Value>) -> Pb {
    let mut o = Pb::default();
    o.strs(1, op.get("tags"));
    o.str(2, op.get("summary"));
    o.str(3, op.get("description"));
    o.str(5, op.get("operationId"));
    o.strs(6, op.get("produces"));
    o.strs(7, op.get("consumes"));
    for param in op.get("parameters").and_then(Value::as_array).into_iter().flatten() {
        o.msg(8, parameters_item(param));
    }
    if let Some(responses) = obj(op.get("responses")) {
        // Responses { repeated NamedResponseValue response_code = 1 }
        let mut rs = Pb::default();
        for (code, resp) in responses {
            let mut r = Pb::default();
            r.str(1, resp.get("description"));
            if let Some(s) = resp.get("schema") {
                // SchemaItem { Schema schema = 1 }
                let mut item = Pb::default();
                item.msg(1, schema(s));
                r.msg(2, item);
            }
            // ResponseValue { Response response = 1 }
            let mut value = Pb::default();
            value.msg(1, r);
            let mut named = Pb::default();
            named.bytes(1, code.as_bytes());
            named.msg(2, value);
            rs.msg(1, named);
        }
        o.msg(9, rs);
    }
    o.strs(10, op.get("schemes"));
    o.bool(11, op.get("deprecated"));
    o.extensions(13, op);
    o
}

/// `ParametersItem { Parameter parameter = 1 }`, the parameter being a
/// body parameter or a query/path one.
fn parameters_item(param: &Value) -> Pb {
    let mut parameter = Pb::default();
    match param.get("in").and_then(Value::as_str) {
        Some("body") => {
            let mut b = Pb::default();
            b.str(1, param.get("description"));
            b.str(2, param.get("name"));
            b.str(3, param.get("in"));
            b.bool(4, param.get("required"));
            if let Some(s) = param.get("schema") {
                b.msg(5, schema(s));
            }
            parameter.msg(1, b);
        }
        where_ => {
            // QueryParameterSubSchema and PathParameterSubSchema differ in
            // their numbers from `type` on (query has allow_empty_value = 5).
            let (oneof, shift) = if where_ == Some("path") { (4, 0) } else { (3, 1) };
            let mut s = Pb::default();
            s.bool(1, param.get("required"));
            s.str(2, param.get("in"));
            s.str(3, param.get("description"));
            s.str(4, param.get("name"));
            s.str(5 + shift, param.get("type"));
            s.str(6 + shift, param.get("format"));
            s.bool(19 + shift, param.get("uniqueItems"));
            let mut non_body = Pb::default();
            non_body.msg(oneof, s);
            parameter.msg(2, non_body);
        }
    }
    let mut item = Pb::default();
    item.msg(1, parameter);
    item
}

fn named_schema(name: &str, s: &Value) -> Pb {
    let mut named = Pb::default();
    named.bytes(1, name.as_bytes());
    named.msg(2, schema(s));
    named
}

fn schema(s: &Value) -> Pb {
    let mut p = Pb::default();
    let Some(m) = s.as_object() else {
        return p;
    };
    p.str(1, m.get("$ref"));
    p.str(2, m.get("format"));
    p.str(3, m.get("title"));
    p.str(4, m.get("description"));
    if let Some(d) = m.get("default") {
        p.any(5, d);
    }
    p.double(6, m.get("multipleOf"));
    p.double(7, m.get("maximum"));
    p.bool(8, m.get("exclusiveMaximum"));
    p.double(9, m.get("minimum"));
    p.bool(10, m.get("exclusiveMinimum"));
    p.int(11, m.get("maxLength"));
    p.int(12, m.get("minLength"));
    p.str(13, m.get("pattern"));
    p.int(14, m.get("maxItems"));
    p.int(15, m.get("minItems"));
    p.bool(16, m.get("uniqueItems"));
    p.int(17, m.get("maxProperties"));
    p.int(18, m.get("minProperties"));
    p.strs(19, m.get("required"));
    for e in m.get("enum").and_then(Value::as_array).into_iter().flatten() {
        p.any(20, e);
    }
    match m.get("additionalProperties") {
        // AdditionalPropertiesItem { Schema schema = 1; bool boolean = 2 }
        Some(Value::Bool(b)) => {
            let mut a = Pb::default();
            encode_key(2, WireType::Varint, &mut a.0);
            encode_varint(u64::from(*b), &mut a.0);
            p.msg(21, a);
        }
        Some(sub @ Value::Object(_)) => {
            let mut a = Pb::default();
            a.msg(1, schema(sub));
            p.msg(21, a);
        }
        _ => {}
    }
    match m.get("type") {
        // TypeItem { repeated string value = 1 }
        Some(t @ Value::String(_)) => {
            let mut ti = Pb::default();
            ti.str(1, Some(t));
            p.msg(22, ti);
        }
        Some(t @ Value::Array(_)) => {
            let mut ti = Pb::default();
            ti.strs(1, Some(t));
            p.msg(22, ti);
        }
        _ => {}
    }
    match m.get("items") {
        // ItemsItem { repeated Schema schema = 1 }
        Some(Value::Array(all)) => {
            let mut ii = Pb::default();
            all.iter().for_each(|i| ii.msg(1, schema(i)));
            p.msg(23, ii);
        }
        Some(one @ Value::Object(_)) => {
            let mut ii = Pb::default();
            ii.msg(1, schema(one));
            p.msg(23, ii);
        }
        _ => {}
    }
    for sub in m.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        p.msg(24, schema(sub));
    }
    if let Some(props) = obj(m.get("properties")) {
        let mut pp = Pb::default();
        for (name, sub) in props {
            pp.msg(1, named_schema(name, sub));
        }
        p.msg(25, pp);
    }
    p.str(26, m.get("discriminator"));
    p.bool(27, m.get("readOnly"));
    if let Some(e) = m.get("example") {
        p.any(30, e);
    }
    p.extensions(31, m);
    p
}

#[cfg(test)]
mod tests {
    use prost::encoding::decode_varint;

    use super::*;

    /// The fields of one message: (tag, bytes of a length-delimited value).
    fn fields(mut b: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (tag, wt) = prost::encoding::decode_key(&mut b).expect("key");
            match wt {
                WireType::LengthDelimited => {
                    let n = decode_varint(&mut b).expect("len") as usize;
                    out.push((tag, b[..n].to_vec()));
                    b = &b[n..];
                }
                WireType::Varint => {
                    let v = decode_varint(&mut b).expect("varint");
                    out.push((tag, v.to_le_bytes().to_vec()));
                }
                WireType::SixtyFourBit => {
                    out.push((tag, b[..8].to_vec()));
                    b = &b[8..];
                }
                other => panic!("unexpected wire type {other:?}"),
            }
        }
        out
    }

    fn field(b: &[u8], tag: u32) -> Vec<u8> {
        fields(b).into_iter().find(|(t, _)| *t == tag).map(|(_, v)| v).unwrap_or_else(|| panic!("no field {tag}"))
    }

    #[test]
    fn a_patch_operation_carries_its_kind_and_parameters_as_kubectl_reads_them() {
        let doc = serde_json::json!({
            "swagger": "2.0",
            "paths": {"/api/v1/namespaces/{namespace}/pods/{name}": {
                "patch": {
                    "operationId": "patchCoreV1NamespacedPod",
                    "parameters": [{"name": "fieldValidation", "in": "query", "type": "string", "uniqueItems": true}],
                    "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": "Pod"},
                },
            }},
            "definitions": {"io.k8s.api.core.v1.Pod": {"type": "object", "properties": {"spec": {"$ref": "#/definitions/io.k8s.api.core.v1.PodSpec"}}}},
        });
        let pb = document(&doc);
        assert_eq!(field(&pb, 1), b"2.0");
        // Document.paths(8).path(2) = NamedPathItem { name 1, value 2 }
        let named = field(&field(&pb, 8), 2);
        assert_eq!(field(&named, 1), b"/api/v1/namespaces/{namespace}/pods/{name}");
        let op = field(&field(&named, 2), 8);
        assert_eq!(field(&op, 5), b"patchCoreV1NamespacedPod");
        // vendor_extension(13) = NamedAny { name, Any { yaml = 2 } }
        let ext = field(&op, 13);
        assert_eq!(field(&ext, 1), b"x-kubernetes-group-version-kind");
        let yaml: Value = serde_json::from_slice(&field(&field(&ext, 2), 2)).expect("JSON is YAML");
        assert_eq!(yaml["kind"], "Pod");
        // parameters(8) → Parameter(1) → NonBodyParameter(2) → query(3) → name(4)
        let q = field(&field(&field(&field(&op, 8), 1), 2), 3);
        assert_eq!(field(&q, 4), b"fieldValidation");
        assert_eq!(field(&q, 2), b"query");
        // definitions(9) → NamedSchema(1) → Schema(2) → properties(25) → NamedSchema(1) → Schema(2) → _ref(1)
        let pod = field(&field(&field(&pb, 9), 1), 2);
        assert_eq!(field(&field(&pod, 22), 1), b"object");
        let spec = field(&field(&field(&pod, 25), 1), 2);
        assert_eq!(field(&spec, 1), b"#/definitions/io.k8s.api.core.v1.PodSpec");
    }
}
