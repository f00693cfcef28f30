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
TEST_PACKAGES=(docker-registry skopeo mosquitto mosquitto-clients)

ensure_packages() {
  local missing=() p
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
    return 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}
