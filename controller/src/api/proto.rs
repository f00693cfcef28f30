//! Decoding Kubernetes' protobuf request bodies into the JSON form the rest
//! of the server works on. Typed clients send them: kubectl's `create
//! deployment|configmap|secret|namespace|service …` subcommands post
//! `application/vnd.kubernetes.protobuf`, and client-go's deletes and
//! evictions (`kubectl drain`) send their `DeleteOptions` so.
//!
//! The wire is `k8s\0` + a `runtime.Unknown` message (type meta + the object
//! bytes). Objects are decoded field by field from the tables in
//! `proto_schema.rs` (generated from the `k8s-pb` field numbers and the
//! `k8s-openapi` JSON names by `scripts/gen-proto-schema.py`); the few
//! messages JSON writes differently (IntOrString, Quantity, Time, …) are
//! special-cased. Answers stay JSON, which these clients accept.

use base64::Engine;
use bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};
use serde_json::{Map, Value, json};

use super::proto_schema::MESSAGES;

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\x00";
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy)]
pub enum Ty {
    Str,
    Bool,
    I32,
    I64,
    Bytes,
    Msg(u16),
    MapStr,
    MapBytes,
    MapMsg(u16),
}

pub struct Fld {
    pub tag: u32,
    pub json: &'static str,
    pub ty: Ty,
    pub repeated: bool,
}

pub struct Msg {
    pub name: &'static str,
    pub fields: &'static [Fld],
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("protobuf body does not start with the Kubernetes magic bytes")]
    Magic,
    #[error("malformed protobuf: {0}")]
    Wire(&'static str),
    #[error("malformed protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("protobuf body for {0} is not a kind this server decodes")]
    Kind(String),
    #[error("protobuf body nests deeper than {MAX_DEPTH} messages")]
    Depth,
}

fn take_len<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], ProtoError> {
    let len = usize::try_from(decode_varint(buf)?).map_err(|_| ProtoError::Wire("length overflows"))?;
    if len > buf.len() {
        return Err(ProtoError::Wire("length runs past the end"));
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

fn skip(buf: &mut &[u8], wt: WireType) -> Result<(), ProtoError> {
    let n = match wt {
        WireType::Varint => {
            decode_varint(buf)?;
            return Ok(());
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => {
            take_len(buf)?;
            return Ok(());
        }
        _ => return Err(ProtoError::Wire("groups are not used by Kubernetes")),
    };
    if buf.len() < n {
        return Err(ProtoError::Wire("fixed-width field runs past the end"));
    }
    buf.advance(n);
    Ok(())
}

fn utf8(b: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtoError::Wire("string field is not UTF-8"))
}

/// The scalar (or message) value of one field occurrence.
fn value(ty: Ty, wt: WireType, buf: &mut &[u8], depth: usize) -> Result<Value, ProtoError> {
    Ok(match ty {
        Ty::Str => json!(utf8(take_len(buf)?)?),
        Ty::Bytes => json!(base64::engine::general_purpose::STANDARD.encode(take_len(buf)?)),
        Ty::Bool => json!(decode_varint(buf)? != 0),
        // int32 travels sign-extended to 64 bits.
        Ty::I32 => json!(decode_varint(buf)? as i64 as i32),
        Ty::I64 => json!(decode_varint(buf)? as i64),
        Ty::Msg(i) => message(i, take_len(buf)?, depth + 1)?,
        Ty::MapStr | Ty::MapBytes | Ty::MapMsg(_) => {
            let _ = wt;
            return Err(ProtoError::Wire("map entry decoded as a value"));
        }
    })
}

/// One map entry (`key = 1`, `value = 2`).
fn map_entry(ty: Ty, mut entry: &[u8], depth: usize) -> Result<(String, Value), ProtoError> {
    let value_ty = match ty {
        Ty::MapBytes => Ty::Bytes,
        Ty::MapMsg(i) => Ty::Msg(i),
        _ => Ty::Str,
    };
    let (mut k, mut v) = (String::new(), Value::Null);
    while !entry.is_empty() {
        let (tag, wt) = decode_key(&mut entry)?;
        match tag {
            1 => k = utf8(take_len(&mut entry)?)?,
            2 => v = value(value_ty, wt, &mut entry, depth)?,
            _ => skip(&mut entry, wt)?,
        }
    }
    if v.is_null() {
        v = match value_ty {
            Ty::Msg(_) => json!({}),
            _ => json!(""),
        };
    }
    Ok((k, v))
}

fn rfc3339(seconds: i64, nanos: i64, micro: bool) -> Value {
    match jiff::Timestamp::new(seconds, if micro { (nanos / 1000 * 1000) as i32 } else { 0 }) {
        Ok(t) if micro => json!(t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
        Ok(t) => json!(t.to_string()),
        Err(_) => Value::Null,
    }
}

/// Decodes message `idx` from `buf` into its JSON form.
fn message(idx: u16, mut buf: &[u8], depth: usize) -> Result<Value, ProtoError> {
    if depth > MAX_DEPTH {
        return Err(ProtoError::Depth);
    }
    let msg = MESSAGES.get(usize::from(idx)).ok_or(ProtoError::Wire("schema index out of range"))?;
    let mut obj = Map::new();
    while !buf.is_empty() {
        let (tag, wt) = decode_key(&mut buf)?;
        let Some(f) = msg.fields.iter().find(|f| f.tag == tag) else {
            skip(&mut buf, wt)?;
            continue;
        };
        match f.ty {
            Ty::MapStr | Ty::MapBytes | Ty::MapMsg(_) => {
                let (k, v) = map_entry(f.ty, take_len(&mut buf)?, depth)?;
                let m = obj.entry(f.json).or_insert_with(|| json!({}));
                if let Some(m) = m.as_object_mut() {
                    m.insert(k, v);
                }
            }
            // Packed repeated scalars (Kubernetes does not pack, but accept it).
            Ty::Bool | Ty::I32 | Ty::I64 if f.repeated && wt == WireType::LengthDelimited => {
                let mut packed = take_len(&mut buf)?;
                while !packed.is_empty() {
                    let v = value(f.ty, WireType::Varint, &mut packed, depth)?;
                    push(&mut obj, f.json, v);
                }
            }
            _ => {
                let v = value(f.ty, wt, &mut buf, depth)?;
                if f.repeated {
                    push(&mut obj, f.json, v);
                } else if keep(f, &v) {
                    obj.insert(f.json.to_owned(), v);
                }
            }
        }
    }
    inline(&mut obj);
    Ok(special(msg.name, obj))
}

/// Go structs embedded in others: a field of their own in protobuf, their
/// fields among the parent's in JSON (`Volume.volumeSource` holds the
/// `hostPath`/`emptyDir`/… that JSON writes beside `name`).
fn inline(obj: &mut Map<String, Value>) {
    for field in ["volumeSource", "persistentVolumeSource", "ephemeralContainerCommon"] {
        if let Some(Value::Object(inner)) = obj.remove(field) {
            for (k, v) in inner {
                obj.entry(k).or_insert(v);
            }
        }
    }
}

/// Whether a decoded singular field goes into the JSON: nulls (Go's zero
/// time) never do; zero scalars only where zero means something. A message
/// on the wire is a set pointer, whatever its value (an IntOrString 0).
fn keep(f: &Fld, v: &Value) -> bool {
    let scalar = matches!(f.ty, Ty::Str | Ty::Bool | Ty::I32 | Ty::I64 | Ty::Bytes);
    if v.is_null() {
        return false;
    }
    !(scalar && unset(f.json, v))
}

/// Go writes every non-pointer scalar to protobuf, zero or not, where its
/// JSON omits the zero; a pointer scalar only when set. Kubernetes' protos
/// are proto2 with every field `optional`, so the wire (and the k8s-pb
/// tables) cannot tell the two apart: zero scalars are read as "not set" —
/// except for the pointer fields, listed by JSON name, whose zero means
/// something. A name shared with a non-pointer field elsewhere costs that
/// field a redundant zero in the JSON (PersistentVolumeSpec's
/// `storageClassName: ""`, the replica counts in status), never a meaning.
fn unset(field: &str, v: &Value) -> bool {
    const ZERO_MEANS_SOMETHING: &[&str] = &[
        "replicas",
        "revisionHistoryLimit",
        "terminationGracePeriodSeconds",
        "tolerationSeconds",
        "activeDeadlineSeconds",
        "progressDeadlineSeconds",
        "defaultMode",
        "mode",
        "runAsUser",
        "runAsGroup",
        "fsGroup",
        "enableServiceLinks",
        "automountServiceAccountToken",
        "allowPrivilegeEscalation",
        "hostUsers",
        // DeleteOptions (also inside Eviction): 0 is "delete now".
        "gracePeriodSeconds",
        "orphanDependents",
        // Job and CronJob.
        "parallelism",
        "completions",
        "backoffLimit",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
        "ttlSecondsAfterFinished",
        "suspend",
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
        // PersistentVolumeClaimSpec: "" is "no class", unset the default class.
        "storageClassName",
        // Lease.
        "leaseDurationSeconds",
        "leaseTransitions",
    ];
    let zero = match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        _ => false,
    };
    zero && !ZERO_MEANS_SOMETHING.contains(&field)
}

fn push(obj: &mut Map<String, Value>, k: &str, v: Value) {
    if let Some(a) = obj.entry(k).or_insert_with(|| json!([])).as_array_mut() {
        a.push(v);
    }
}

/// Messages whose JSON form is not an object of their fields.
fn special(name: &str, obj: Map<String, Value>) -> Value {
    let int = |k: &str| obj.get(k).and_then(Value::as_i64).unwrap_or(0);
    match name.rsplit('.').next().unwrap_or_default() {
        "IntOrString" if name.ends_with("intstr.IntOrString") => {
            if int("type") == 1 {
                obj.get("strVal").cloned().unwrap_or(json!(""))
            } else {
                json!(int("intVal"))
            }
        }
        "Quantity" if name.contains("api.resource") => obj.get("string").cloned().unwrap_or(json!("0")),
        // Go's zero time is written as a message too; JSON has it as null.
        "Time" | "MicroTime" if name.contains("meta.v1") && int("seconds") == 0 && int("nanos") == 0 => Value::Null,
        "Time" if name.contains("meta.v1") => rfc3339(int("seconds"), 0, false),
        "MicroTime" if name.contains("meta.v1") => rfc3339(int("seconds"), int("nanos"), true),
        "Duration" if name.contains("meta.v1") => json!(format!("{}s", int("duration") / 1_000_000_000)),
        "RawExtension" | "FieldsV1" => {
            let raw = obj.get("raw").or_else(|| obj.get("Raw")).and_then(Value::as_str).unwrap_or_default();
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null)
        }
        _ => Value::Object(obj),
    }
}

/// The protobuf message of an envelope's type meta. A group's proto package
/// is its first label (`coordination.k8s.io/v1` is `k8s.io.api.coordination.v1`);
/// the core group's is `core`. `DeleteOptions` travels under the request's
/// group version (`v1`, `policy/v1`, …) but is always the meta/v1 message.
fn message_name(api_version: &str, kind: &str) -> String {
    if kind == "DeleteOptions" {
        return "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions".to_owned();
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("core", api_version));
    let package = group.split('.').next().unwrap_or(group);
    format!("k8s.io.api.{package}.{version}.{kind}")
}

/// Decodes a whole request body into the object's JSON, with `apiVersion`
/// and `kind` from the envelope.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let mut buf = body.strip_prefix(MAGIC).ok_or(ProtoError::Magic)?;
    let (mut api_version, mut kind, mut raw): (String, String, &[u8]) = (String::new(), String::new(), &[]);
    while !buf.is_empty() {
        let (tag, wt) = decode_key(&mut buf)?;
        match tag {
            1 => {
                let mut tm = take_len(&mut buf)?;
                while !tm.is_empty() {
                    let (t, w) = decode_key(&mut tm)?;
                    match t {
                        1 => api_version = utf8(take_len(&mut tm)?)?,
                        2 => kind = utf8(take_len(&mut tm)?)?,
                        _ => skip(&mut tm, w)?,
                    }
                }
            }
            2 => raw = take_len(&mut buf)?,
            _ => skip(&mut buf, wt)?,
        }
    }
    let name = message_name(&api_version, &kind);
    let idx = MESSAGES
        .iter()
        .position(|m| m.name == name)
        .ok_or_else(|| ProtoError::Kind(format!("{api_version} {kind}")))?;
    let mut v = message(u16::try_from(idx).map_err(|_| ProtoError::Kind(name.clone()))?, raw, 0)?;
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(tag: u32, wt: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from((tag << 3) | u32::from(wt)).expect("small tag")];
        if wt == 2 {
            out.push(u8::try_from(payload.len()).expect("short"));
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        // ObjectMeta{name: "c"}; data {"k": "v"}.
        let meta = field(1, 2, b"c");
        let entry = [field(1, 2, b"k"), field(2, 2, b"v")].concat();
        let cm = [field(1, 2, &meta), field(2, 2, &entry)].concat();
        let type_meta = [field(1, 2, b"v1"), field(2, 2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, 2, &type_meta), field(2, 2, &cm)].concat();
        let v = decode(&body).expect("decode");
        assert_eq!(v, json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}));
    }

    #[test]
    fn an_int_or_string_zero_is_kept() {
        let idx = MESSAGES.iter().position(|m| m.name == "k8s.io.api.apps.v1.RollingUpdateDeployment").expect("schema");
        // maxUnavailable (1) = IntOrString{type: 0, intVal: 0}; maxSurge (2) = IntOrString{type: 0, intVal: 1}.
        let zero = [vec![0x08, 0x00], vec![0x10, 0x00]].concat();
        let one = [vec![0x08, 0x00], vec![0x10, 0x01]].concat();
        let body = [field(1, 2, &zero), field(2, 2, &one)].concat();
        let v = message(u16::try_from(idx).expect("index"), &body, 0).expect("decode");
        assert_eq!(v, json!({"maxUnavailable": 0, "maxSurge": 1}));
    }

    fn envelope(api_version: &[u8], kind: &[u8], object: &[u8]) -> Vec<u8> {
        let type_meta = [field(1, 2, api_version), field(2, 2, kind)].concat();
        [MAGIC.to_vec(), field(1, 2, &type_meta), field(2, 2, object)].concat()
    }

    #[test]
    fn decodes_delete_options_under_any_group_version() {
        // gracePeriodSeconds (1) = 0, preconditions (2) = {uid (1)}, propagationPolicy (4).
        let preconditions = field(1, 2, b"6a1f0c1e-uid");
        let opts = [field(1, 0, &[0]), field(2, 2, &preconditions), field(4, 2, b"Background")].concat();
        for api_version in ["v1", "policy/v1", "apps/v1"] {
            let v = decode(&envelope(api_version.as_bytes(), b"DeleteOptions", &opts)).expect("decode");
            assert_eq!(
                v,
                json!({
                    "apiVersion": api_version,
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "propagationPolicy": "Background",
                    "preconditions": {"uid": "6a1f0c1e-uid"},
                })
            );
        }
        // Unset pointers are not on the wire and stay out of the JSON.
        let v = decode(&envelope(b"v1", b"DeleteOptions", &[])).expect("decode");
        assert_eq!(v, json!({"apiVersion": "v1", "kind": "DeleteOptions"}));
    }

    #[test]
    fn decodes_an_eviction() {
        // metadata (1) = {name (1), namespace (3)}; deleteOptions (2) = {gracePeriodSeconds (1) = 0, dryRun (5)}.
        let meta = [field(1, 2, b"web-0"), field(3, 2, b"default")].concat();
        let opts = [field(1, 0, &[0]), field(5, 2, b"All")].concat();
        let eviction = [field(1, 2, &meta), field(2, 2, &opts)].concat();
        let v = decode(&envelope(b"policy/v1", b"Eviction", &eviction)).expect("decode");
        assert_eq!(
            v,
            json!({
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": "web-0", "namespace": "default"},
                "deleteOptions": {"gracePeriodSeconds": 0, "dryRun": ["All"]},
            })
        );
    }

    #[test]
    fn a_group_maps_to_its_proto_package() {
        for (api_version, kind, name) in [
            ("v1", "PersistentVolumeClaim", "k8s.io.api.core.v1.PersistentVolumeClaim"),
            ("v1", "PersistentVolume", "k8s.io.api.core.v1.PersistentVolume"),
            ("apps/v1", "StatefulSet", "k8s.io.api.apps.v1.StatefulSet"),
            ("apps/v1", "ControllerRevision", "k8s.io.api.apps.v1.ControllerRevision"),
            ("batch/v1", "Job", "k8s.io.api.batch.v1.Job"),
            ("batch/v1", "CronJob", "k8s.io.api.batch.v1.CronJob"),
            ("policy/v1", "PodDisruptionBudget", "k8s.io.api.policy.v1.PodDisruptionBudget"),
            ("policy/v1", "Eviction", "k8s.io.api.policy.v1.Eviction"),
            ("storage.k8s.io/v1", "StorageClass", "k8s.io.api.storage.v1.StorageClass"),
            ("coordination.k8s.io/v1", "Lease", "k8s.io.api.coordination.v1.Lease"),
            ("policy/v1", "DeleteOptions", "k8s.io.apimachinery.pkg.apis.meta.v1.DeleteOptions"),
        ] {
            assert_eq!(message_name(api_version, kind), name);
            assert!(MESSAGES.iter().any(|m| m.name == name), "{name} is not in the schema");
        }
        // spec (2) = {holderIdentity (1), leaseDurationSeconds (2) = 15, leaseTransitions (5) = 0}.
        let spec = [field(1, 2, b"kedge-1"), field(2, 0, &[15]), field(5, 0, &[0])].concat();
        let lease = [field(1, 2, &field(1, 2, b"l")), field(2, 2, &spec)].concat();
        let v = decode(&envelope(b"coordination.k8s.io/v1", b"Lease", &lease)).expect("decode");
        assert_eq!(
            v,
            json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": "l"},
                "spec": {"holderIdentity": "kedge-1", "leaseDurationSeconds": 15, "leaseTransitions": 0},
            })
        );
    }

    #[test]
    fn a_volume_source_is_flattened_into_the_volume() {
        // What `kubectl debug node/…` posts: Volume { name (1), volumeSource (2) = { hostPath (1) = { path (1) } } }.
        let idx = MESSAGES.iter().position(|m| m.name == "k8s.io.api.core.v1.Volume").expect("schema");
        let source = field(1, 2, &field(1, 2, b"/"));
        let body = [field(1, 2, b"host-root"), field(2, 2, &source)].concat();
        let v = message(u16::try_from(idx).expect("index"), &body, 0).expect("decode");
        assert_eq!(v, json!({"name": "host-root", "hostPath": {"path": "/"}}));
    }

    #[test]
    fn refuses_garbage_and_unknown_kinds() {
        assert!(matches!(decode(b"{\"json\":1}"), Err(ProtoError::Magic)));
        assert!(matches!(decode(&[MAGIC, &[0x0a, 0x50]].concat()), Err(ProtoError::Wire(_))));
        let type_meta = [field(1, 2, b"networking.k8s.io/v1"), field(2, 2, b"Ingress")].concat();
        let body = [MAGIC.to_vec(), field(1, 2, &type_meta)].concat();
        assert!(matches!(decode(&body), Err(ProtoError::Kind(_))));
    }
}
