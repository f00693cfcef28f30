#!/usr/bin/env bash
# Builds, offline, a tiny busybox OCI image from Debian's busybox-static
# package and writes it as an OCI image-layout tar (oci-layout, index.json,
# blobs/sha256/...) tagged kedge.local/busybox:latest (or $NAME).
#
# Usage: images/busybox/build.sh            (from any directory)
# Env:   OUT=path       output archive (default <repo>/target/images/busybox.tar)
#        ARCH=arm64     Debian architecture of the image (default: host's)
#        BUSYBOX=path   static busybox binary to ship (default: /bin/busybox)
#        SOURCE_DATE_EPOCH=n  timestamp of every file and of the config (default 0)
#        NAME=ref      image name (default kedge.local/busybox:latest)
#        CMD=json      the image's Cmd as a JSON array (default ["sh"])
# A pause image for a CRI runtime:
#   NAME=kedge.local/pause:latest CMD='["sleep","2147483647"]' \
#   OUT=target/images/pause.tar images/busybox/build.sh
# The output is reproducible: the same inputs give byte-identical archives.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${OUT:-$repo/target/images/busybox.tar}
ARCH=${ARCH:-$(dpkg --print-architecture)}
BUSYBOX=${BUSYBOX:-/bin/busybox}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
NAME=${NAME:-kedge.local/busybox:latest}
CMD=${CMD:-'["sh"]'}
python3 -c 'import json,sys; c=json.loads(sys.argv[1]); assert isinstance(c,list) and c and all(isinstance(x,str) for x in c)' "$CMD" 2>/dev/null \
    || { echo "error: CMD must be a non-empty JSON array of strings: $CMD" >&2; exit 1; }

if [[ $BUSYBOX == /bin/busybox ]] && ! dpkg -s busybox-static >/dev/null 2>&1; then
    echo "error: Debian package busybox-static is not installed;" \
         "run: apt-get install busybox-static" >&2
    exit 1
fi
[[ -x $BUSYBOX ]] || { echo "error: $BUSYBOX is not an executable file" >&2; exit 1; }

# The applets to link. A foreign-arch BUSYBOX cannot run here, so its list is
# taken from the host's /bin/busybox instead (same Debian version and config
# give the same applets; a mismatch only yields a few dangling links).
if ! applets=$("$BUSYBOX" --list 2>/dev/null); then
    echo "note: cannot run $BUSYBOX (foreign arch?); using /bin/busybox --list" >&2
    applets=$(/bin/busybox --list)
fi

# Debian architecture -> OCI architecture [+ variant].
case $ARCH in
    amd64|arm64|riscv64|s390x) oci_arch=$ARCH variant= ;;
    armhf)   oci_arch=arm variant=v7 ;;
    armel)   oci_arch=arm variant=v5 ;;
    i386)    oci_arch=386 variant= ;;
    ppc64el) oci_arch=ppc64le variant= ;;
    *) echo "error: unsupported ARCH $ARCH" >&2; exit 1 ;;
esac

mkdir -p "$(dirname "$OUT")"
OUT=$OUT OCI_ARCH=$oci_arch VARIANT=$variant BUSYBOX=$BUSYBOX APPLETS=$applets \
SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH NAME=$NAME CMD=$CMD python3 - <<'EOF'
import gzip, hashlib, io, json, os, tarfile, time

env = os.environ
mtime = int(env["SOURCE_DATE_EPOCH"])
applets = sorted(set(env["APPLETS"].split()) - {"busybox"})

def entry(name, type=tarfile.DIRTYPE, mode=0o755, **kw):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = type, mode, mtime
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti

with open(env["BUSYBOX"], "rb") as f:
    busybox = f.read()
files = {  # path -> (TarInfo, data or None)
    "bin/busybox": (entry("bin/busybox", tarfile.REGTYPE, size=len(busybox)), busybox),
}
for d, mode in [("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555),
                ("root", 0o700), ("sys", 0o555), ("tmp", 0o1777), ("usr", 0o755),
                ("usr/bin", 0o755), ("usr/sbin", 0o755), ("sbin", 0o755),
                ("var", 0o755), ("var/tmp", 0o1777)]:
    files[d] = (entry(d, mode=mode), None)
for name, body in [
    ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
    ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
]:
    files[name] = (entry(name, tarfile.REGTYPE, mode=0o644, size=len(body)), body.encode())
for a in applets:
    files["bin/" + a] = (entry("bin/" + a, tarfile.SYMTYPE, mode=0o777, linkname="busybox"), None)

# Uncompressed layer tar (its digest is the diff_id), then gzip -n equivalent.
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for name in sorted(files):
        ti, data = files[name]
        tar.addfile(ti, io.BytesIO(data) if data is not None else None)
layer_tar = raw.getvalue()
layer_gz = gzip.compress(layer_tar, compresslevel=9, mtime=0)  # no name, mtime 0

def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()

def blob(b):
    return json.dumps(b, sort_keys=True, separators=(",", ":")).encode()

platform = {"architecture": env["OCI_ARCH"], "os": "linux"}
if env["VARIANT"]:
    platform["variant"] = env["VARIANT"]
config = blob({
    **platform,
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime)),
    "config": {"Cmd": json.loads(env["CMD"]), "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
    "rootfs": {"type": "layers", "diff_ids": [sha(layer_tar)]},
    "history": [{"created_by": "kedge images/busybox/build.sh",
                 "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))}],
})
manifest = blob({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               "digest": sha(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha(layer_gz), "size": len(layer_gz)}],
})
ref = env["NAME"]
index = blob({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": sha(manifest), "size": len(manifest), "platform": platform,
                   "annotations": {"org.opencontainers.image.ref.name": ref,
                                   "io.containerd.image.name": ref}}],
})

# The OCI image-layout archive itself, equally deterministic.
out_entries = [("blobs", None), ("blobs/sha256", None)]
out_entries += sorted(("blobs/sha256/" + sha(b)[7:], b) for b in (config, layer_gz, manifest))
out_entries += [("index.json", index), ("oci-layout", blob({"imageLayoutVersion": "1.0.0"}))]
tmp = env["OUT"] + ".tmp"
with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for name, data in out_entries:
        if data is None:
            tar.addfile(entry(name))
        else:
            tar.addfile(entry(name, tarfile.REGTYPE, mode=0o644, size=len(data)), io.BytesIO(data))
os.replace(tmp, env["OUT"])
print(f"wrote {env['OUT']} ({platform['architecture']}{'/' + env['VARIANT'] if env['VARIANT'] else ''}, {len(applets)} applets)")
print(f"manifest digest: {sha(manifest)}")
EOF
