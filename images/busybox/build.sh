#!/usr/bin/env bash
# Builds, offline, a tiny busybox OCI image from Debian's busybox-static
# package and writes it as an OCI image-layout tar (oci-layout, index.json,
# blobs/sha256/...) tagged kedge.local/busybox:latest (or $NAME).
#
# Usage: images/busybox/build.sh            (from any directory)
#        images/busybox/build.sh --multiarch
#               a multi-platform image (OCI index of linux/amd64, linux/arm64
#               and linux/arm/v7), default OUT target/images/busybox-multiarch.tar;
#               the foreign busybox-static packages are fetched with
#               `apt-get download busybox-static:ARCH` (no multiarch install;
#               needs `dpkg --add-architecture ARCH && apt-get update` once,
#               which this does as root)
# Env:   OUT=path       output archive (default <repo>/target/images/busybox.tar)
#        ARCH=arm64     Debian architecture of the image (default: host's);
#                       several, space-separated, make an index (ARCH="amd64 arm64 armhf")
#        BUSYBOX=path   static busybox binary to ship (default: /bin/busybox; single ARCH only)
#        SOURCE_DATE_EPOCH=n  timestamp of every file and of the config (default 0)
#        NAME=ref      image name (default kedge.local/busybox:latest)
#        CMD=json      the image's Cmd as a JSON array (default ["sh"])
# A pause image for a CRI runtime:
#   NAME=kedge.local/pause:latest CMD='["sleep","2147483647"]' \
#   OUT=target/images/pause.tar images/busybox/build.sh
# The output is reproducible: the same inputs give byte-identical archives.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
host_arch=$(dpkg --print-architecture)
if [[ ${1:-} == --multiarch ]]; then
    ARCH=${ARCH:-amd64 arm64 armhf}
    OUT=${OUT:-$repo/target/images/busybox-multiarch.tar}
elif [[ -n ${1:-} ]]; then
    echo "error: unknown argument $1 (--multiarch or none)" >&2; exit 2
fi
OUT=${OUT:-$repo/target/images/busybox.tar}
ARCH=${ARCH:-$host_arch}
read -r -a arches <<<"$ARCH"
if [[ ${#arches[@]} -gt 1 && -n ${BUSYBOX:-} ]]; then
    echo "error: BUSYBOX names one binary; it cannot serve ARCH=\"$ARCH\"" >&2; exit 2
fi
if [[ ${#arches[@]} -eq 1 && ${arches[0]} == "$host_arch" ]]; then
    BUSYBOX=${BUSYBOX:-/bin/busybox}
fi

# busybox of a foreign architecture: Debian's busybox-static for it, unpacked
# into target/images/debs/ (no multiarch install).
foreign_busybox() {
    local arch=$1 dir=$repo/target/images/debs/busybox-static-$1
    if [[ ! -x $dir/bin/busybox ]]; then
        if ! dpkg --print-foreign-architectures | grep -x "$arch" >/dev/null; then
            [[ $(id -u) -eq 0 ]] || { echo "error: run once as root: dpkg --add-architecture $arch && apt-get update" >&2; return 1; }
            dpkg --add-architecture "$arch"
            # A mirror mid-sync may fail one index (e.g. security); the main one suffices.
            apt-get update -qq || echo "warning: apt-get update reported errors; trying the download anyway" >&2
        fi
        local dl; dl=$(mktemp -d)
        chmod 0777 "$dl"   # apt's _apt user downloads into it
        (cd "$dl" && apt-get download -q "busybox-static:$arch" >/dev/null) \
            || { echo "error: apt-get download busybox-static:$arch failed" >&2; rm -rf "$dl"; return 1; }
        mkdir -p "$dir"
        dpkg-deb -x "$dl"/busybox-static_*.deb "$dir"
        rm -rf "$dl"
    fi
    echo "$dir/bin/busybox"
}
binaries=()
for a in "${arches[@]}"; do
    if [[ -n ${BUSYBOX:-} ]]; then binaries+=("$BUSYBOX")
    elif [[ $a == "$host_arch" ]]; then binaries+=(/bin/busybox)
    else binaries+=("$(foreign_busybox "$a")")
    fi
done
BUSYBOX=${binaries[0]}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-0}
NAME=${NAME:-kedge.local/busybox:latest}
CMD=${CMD:-'["sh"]'}
python3 -c 'import json,sys; c=json.loads(sys.argv[1]); assert isinstance(c,list) and c and all(isinstance(x,str) for x in c)' "$CMD" 2>/dev/null \
    || { echo "error: CMD must be a non-empty JSON array of strings: $CMD" >&2; exit 1; }

if [[ " ${binaries[*]} " == *" /bin/busybox "* ]] && ! dpkg -s busybox-static >/dev/null 2>&1; then
    echo "error: Debian package busybox-static is not installed;" \
         "run: apt-get install busybox-static" >&2
    exit 1
fi
for b in "${binaries[@]}"; do
    [[ -x $b ]] || { echo "error: $b is not an executable file" >&2; exit 1; }
done

# The applets to link. A foreign-arch BUSYBOX cannot run here, so its list is
# taken from the host's /bin/busybox instead (same Debian version and config
# give the same applets; a mismatch only yields a few dangling links).
if ! applets=$("$BUSYBOX" --list 2>/dev/null); then
    echo "note: cannot run $BUSYBOX (foreign arch?); using /bin/busybox --list" >&2
    applets=$(/bin/busybox --list)
fi

# Debian architecture -> OCI architecture[/variant], one per image.
platforms=()
for a in "${arches[@]}"; do
    case $a in
        amd64|arm64|riscv64|s390x) platforms+=("$a") ;;
        armhf)   platforms+=(arm/v7) ;;
        armel)   platforms+=(arm/v5) ;;
        i386)    platforms+=(386) ;;
        ppc64el) platforms+=(ppc64le) ;;
        *) echo "error: unsupported ARCH $a" >&2; exit 1 ;;
    esac
done

mkdir -p "$(dirname "$OUT")"
OUT=$OUT PLATFORMS="${platforms[*]}" BINARIES="${binaries[*]}" APPLETS=$applets \
SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH NAME=$NAME CMD=$CMD python3 - <<'EOF'
import gzip, hashlib, io, json, os, tarfile, time

env = os.environ
mtime = int(env["SOURCE_DATE_EPOCH"])
applets = sorted(set(env["APPLETS"].split()) - {"busybox"})
stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
ref = env["NAME"]

def entry(name, type=tarfile.DIRTYPE, mode=0o755, **kw):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = type, mode, mtime
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti

def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()

def blob(b):
    return json.dumps(b, sort_keys=True, separators=(",", ":")).encode()

def image(busybox_path, plat):
    """Config, layer and manifest blobs of one platform's image."""
    with open(busybox_path, "rb") as f:
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
    config = blob({
        **plat,
        "created": stamp,
        "config": {"Cmd": json.loads(env["CMD"]), "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(layer_tar)]},
        "history": [{"created_by": "kedge images/busybox/build.sh", "created": stamp}],
    })
    manifest = blob({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(layer_gz), "size": len(layer_gz)}],
    })
    return [config, layer_gz], manifest

blobs, entries = [], []
for busybox_path, p in zip(env["BINARIES"].split(), env["PLATFORMS"].split()):
    arch, _, variant = p.partition("/")
    plat = {"architecture": arch, "os": "linux", **({"variant": variant} if variant else {})}
    parts, manifest = image(busybox_path, plat)
    blobs += parts + [manifest]
    entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": sha(manifest), "size": len(manifest), "platform": plat})
names = {"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": ref}
if len(entries) == 1:
    # One platform: index.json names its manifest directly.
    top = {**entries[0], "annotations": names}
else:
    # Several: index.json names a nested index of the per-platform manifests,
    # as `skopeo copy --all` and buildx lay out a multi-platform image.
    nested = blob({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": entries})
    blobs.append(nested)
    top = {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha(nested),
           "size": len(nested), "annotations": names}
index = blob({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [top]})

# The OCI image-layout archive itself, equally deterministic.
out_entries = [("blobs", None), ("blobs/sha256", None)]
out_entries += sorted({"blobs/sha256/" + sha(b)[7:]: b for b in blobs}.items())
out_entries += [("index.json", index), ("oci-layout", blob({"imageLayoutVersion": "1.0.0"}))]
tmp = env["OUT"] + ".tmp"
with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for name, data in out_entries:
        if data is None:
            tar.addfile(entry(name))
        else:
            tar.addfile(entry(name, tarfile.REGTYPE, mode=0o644, size=len(data)), io.BytesIO(data))
os.replace(tmp, env["OUT"])
print(f"wrote {env['OUT']} ({', '.join('linux/' + p for p in env['PLATFORMS'].split())}, {len(applets)} applets)")
for e in entries:
    p = e["platform"]
    print(f"manifest digest linux/{p['architecture']}{'/' + p['variant'] if 'variant' in p else ''}: {e['digest']}")
EOF
