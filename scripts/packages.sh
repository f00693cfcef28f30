# Debian packages kedge needs, shared by scripts/quickstart.sh and .ci/run.
# Source it, then `ensure_packages NAME...` installs whichever are missing
# (as root, with apt-get), or says what to install.
#   protobuf-compiler  k8s-cri's build script runs protoc
#   libseccomp-dev     libcontainer's seccomp support links libseccomp
#   busybox-static     images/busybox/build.sh builds the example image from it
BUILD_PACKAGES=(protobuf-compiler libseccomp-dev busybox-static)
#   docker-registry, skopeo: the image pull tests run a private registry on 127.0.0.1
#   mosquitto, mosquitto-clients: the fleet tests use Mosquitto as the external broker and
#   mosquitto_sub/mosquitto_pub to read the dashboard topics and publish garbage
#   fdisk, dosfstools, mtools: the flashing test builds a disk image with a FAT boot partition;
#   fusefat mounts it where the kernel has no vfat
#   nftables, iproute2: the agent's Service rules are loaded with nft; agent/tests/net_nft.rs
#   and the network lab (tests/src/netlab.rs) build namespaces, bridges and veths with ip
#   dnsutils: dig asks the agent's cluster DNS in its tests (a client nobody here wrote)
#   curl: fetches a pod's page through kubectl port-forward in the fleet tests
#   g++: libfuzzer-sys builds libFuzzer (C++) for the fuzz targets (fuzz/), which the
#   workspace's clippy and tests build
TEST_PACKAGES=(docker-registry skopeo mosquitto mosquitto-clients fdisk dosfstools mtools fusefat nftables conntrack iproute2 dnsutils curl g++)
# The arm path (scripts/cross.sh, scripts/test-arm.sh): Debian's cross linkers and
# qemu-user to run the arm binaries and their tests on this machine.
CROSS_PACKAGES=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user-static)

# PyPI packages, pinned: the CRI interop test (tests/tests/cri_python.rs) drives the agent's CRI
# socket with Python's grpcio, a client nobody here wrote, and makes its stubs with grpcio-tools;
# the fleet tests drive logs, exec and port-forward with the official `kubernetes` client.
# `ensure_python_packages` installs them into target/python (the test adds it to PYTHONPATH),
# apart from the system's Python packages.
PYTHON_PACKAGES=(grpcio==1.85.1 grpcio-tools==1.85.1 protobuf==7.36.2 kubernetes==32.0.1 prometheus-client==0.26.0)
PYTHON_TARGET=target/python

ensure_packages() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
    return 1
  fi
  # A mirror mid-sync may fail one index; installing from the others usually works.
  apt-get update -qq || echo "warning: apt-get update reported errors; installing anyway" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

ensure_python_packages() {
  local have missing=() p
  have=$(python3 -m pip list --disable-pip-version-check --path "$PYTHON_TARGET" --format=freeze 2>/dev/null || true)
  for p in "${PYTHON_PACKAGES[@]}"; do grep -qixF "$p" <<<"$have" || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  python3 -m pip install --disable-pip-version-check --root-user-action=ignore --quiet --upgrade --target "$PYTHON_TARGET" "${PYTHON_PACKAGES[@]}"
}
