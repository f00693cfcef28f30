#!/usr/bin/env python3
"""Generates controller/src/api/proto_schema.rs: the protobuf field tables of
the Kubernetes messages kedge serves, for decoding the protobuf bodies typed
clients (kubectl's `create <generator>` subcommands, client-go's deletes and
evictions) send.

Field numbers and types come from the `k8s-pb` crate's prost structs, JSON
names from `k8s-openapi`'s deserializers; both crates are read from the cargo
registry. k8s-openapi is the workspace's (Cargo.lock; JSON names from its
v1_33 module, the oldest it has, which names every field the current tables
hold the same as its newest); k8s-pb is no dependency: list `k8s-pb = "=0.9.0"`
(Kubernetes 1.35, the newest release; 0.8.0 is 1.33 and lacks fields the
tables hold) in a scratch project and run `cargo fetch` there first.
Usage: scripts/gen-proto-schema.py K8S_PB_SRC K8S_OPENAPI_SRC > controller/src/api/proto_schema.rs
e.g.   R=$(echo ~/.cargo/registry/src/index.crates.io-*); scripts/gen-proto-schema.py $R/k8s-pb-0.9.0/src $R/k8s-openapi-0.29.0/src

ROOTS are (k8s-pb module path, message name); the module path is the proto
package below `k8s.io.` with dots as slashes, so the apimachinery messages
(`apimachinery/pkg/apis/meta/v1`) are named the same way as `api/<group>/<version>`.
"""
import os, re, sys

pb_src, openapi_src = sys.argv[1], sys.argv[2]
ROOTS = [
    ("api/core/v1", n) for n in ["Namespace", "Node", "Pod", "Service", "Endpoints", "ConfigMap", "Secret", "Event"]
] + [("api/apps/v1", n) for n in ["Deployment", "ReplicaSet", "DaemonSet"]] + [
    ("api/policy/v1", "Eviction"),
    ("api/policy/v1", "PodDisruptionBudget"),
    ("api/batch/v1", "Job"),
    ("api/batch/v1", "CronJob"),
    ("api/apps/v1", "StatefulSet"),
    ("api/apps/v1", "ControllerRevision"),
    ("api/core/v1", "PersistentVolumeClaim"),
    ("api/core/v1", "PersistentVolume"),
    ("api/storage/v1", "StorageClass"),
    ("api/coordination/v1", "Lease"),
    ("api/core/v1", "ServiceAccount"),
    ("api/rbac/v1", "Role"),
    ("api/rbac/v1", "ClusterRole"),
    ("api/rbac/v1", "RoleBinding"),
    ("api/rbac/v1", "ClusterRoleBinding"),
    # Asked, not stored: `kubectl auth can-i`/`whoami`, `kubectl create token`.
    ("api/authorization/v1", "SelfSubjectAccessReview"),
    ("api/authorization/v1", "SelfSubjectRulesReview"),
    ("api/authentication/v1", "SelfSubjectReview"),
    ("api/authentication/v1", "TokenRequest"),
    # Request bodies rather than stored kinds: DELETE's options (and Eviction's).
    ("apimachinery/pkg/apis/meta/v1", "DeleteOptions"),
]

# JSON names, by a normalised key (lower case, no underscores).
json_names = {}
for root, _, files in os.walk(os.path.join(openapi_src, "v1_33")):
    for f in files:
        if f.endswith(".rs"):
            for m in re.finditer(r'"([A-Za-z0-9]+)" => Field::Key_', open(os.path.join(root, f)).read()):
                json_names.setdefault(m.group(1).lower(), m.group(1))

def json_of(rust_field):
    f = rust_field.replace("r#", "")
    key = f.replace("_", "").lower()
    if key in json_names:
        return json_names[key]
    parts = f.split("_")
    return parts[0] + "".join(p.title() for p in parts[1:])

# Parse every prost struct: module path -> name -> fields.
structs = {}
def fields_of(body):
    """(prost attribute, field name, type text) for each field of a struct body."""
    out = []
    for chunk in body.split("#[prost(")[1:]:
        attr, rest = chunk.split(")]", 1)
        m = re.search(r'pub ([a-z0-9_#]+):', rest)
        if not m:
            continue
        typ, depth = "", 0
        for ch in rest[m.end():]:
            if ch == "<":
                depth += 1
            elif ch == ">":
                depth -= 1
            elif ch == "," and depth == 0:
                break
            typ += ch
        out.append((attr, m.group(1), " ".join(typ.split())))
    return out
for root, _, files in os.walk(pb_src):
    for f in files:
        if f != "mod.rs":
            continue
        mod = os.path.relpath(root, pb_src)
        text = open(os.path.join(root, f)).read()
        for sm in re.finditer(r'pub struct (\w+) \{(.*?)\n\}', text, re.S):
            structs[(mod, sm.group(1))] = fields_of(sm.group(2))

def resolve(mod, typ):
    """A Rust type path as prost writes it, relative to `mod`, to (mod, name)."""
    typ = re.sub(r'::core::option::Option<(.*)>', r'\1', typ)
    typ = re.sub(r'::prost::alloc::vec::Vec<(.*)>', r'\1', typ).strip().rstrip(",")
    parts = typ.split("::")
    cur = mod.split("/")
    for p in parts[:-1]:
        if p == "super":
            cur = cur[:-1]
        elif p:
            cur.append(p)
    return ("/".join(cur), parts[-1])

order, index = [], {}
def visit(key):
    if key in index:
        return
    if key not in structs:
        sys.exit(f"unknown message {key}")
    index[key] = len(order)
    order.append(key)
    mod, _ = key
    for attr, _, typ in structs[key]:
        if attr.startswith("message"):
            visit(resolve(mod, typ))
        elif 'btree_map = "string, message"' in attr:
            inner = re.search(r'BTreeMap<\s*::prost::alloc::string::String,\s*(.*?),?\s*>', typ).group(1)
            visit(resolve(mod, inner))
for r in ROOTS:
    visit(r)

def proto_name(key):
    mod, name = key
    return "k8s.io." + mod.replace("/", ".") + "." + name

out = ["// @generated by scripts/gen-proto-schema.py from the k8s-pb and k8s-openapi crates. Do not edit.",
       "//! Protobuf field tables of the served Kubernetes kinds, the DeleteOptions",
       "//! request body, and everything they contain.",
       "", "use super::proto::{Fld, Msg, Ty};", "",
       "pub static MESSAGES: &[Msg] = &["]
for key in order:
    mod, _ = key
    fields = []
    for attr, rust, typ in structs[key]:
        tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
        repeated = ", repeated" in attr
        if attr.startswith("message"):
            ty = f"Ty::Msg({index[resolve(mod, typ)]})"
        elif attr.startswith("string"):
            ty = "Ty::Str"
        elif attr.startswith("bool"):
            ty = "Ty::Bool"
        elif attr.startswith("int32"):
            ty = "Ty::I32"
        elif attr.startswith("int64"):
            ty = "Ty::I64"
        elif attr.startswith("bytes"):
            ty = "Ty::Bytes"
        elif 'btree_map = "string, string"' in attr:
            ty = "Ty::MapStr"
        elif 'btree_map = "string, bytes"' in attr:
            ty = "Ty::MapBytes"
        elif 'btree_map = "string, message"' in attr:
            inner = re.search(r'BTreeMap<\s*::prost::alloc::string::String,\s*(.*?),?\s*>', typ).group(1)
            ty = f"Ty::MapMsg({index[resolve(mod, inner)]})"
        else:
            sys.exit(f"unhandled prost attribute {attr} in {key}")
        fields.append(f'Fld {{ tag: {tag}, json: "{json_of(rust)}", ty: {ty}, repeated: {str(repeated).lower()} }}')
    out.append(f'    Msg {{ name: "{proto_name(key)}", fields: &[')
    out += [f"        {f}," for f in fields]
    out.append("    ] },")
out.append("];")
print("\n".join(out))
