#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# A container engine on a machine without Docker: Debian's podman serving the Docker API,
# and local stand-ins for the images the compose files and docker/Dockerfile name.
# Run `scripts/containers.sh --help` for the interface.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd -- "$SCRIPT_DIR/.." && pwd -P)"
# shellcheck disable=SC2034 # read by lib.sh
FP_NAME="containers.sh"
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

PODMAN_CONF="$ROOT/docker/podman/containers.conf"
STAND_INS="$ROOT/docker/stand-ins"
IMAGE_CACHE="$(fp_cache_dir)/images"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=(podman runc debootstrap netavark aardvark-dns iptables uidmap curl)
STAND_IN_LABEL=org.flatpack.local-stand-in
RECIPE_LABEL=org.flatpack.stand-in.recipe

usage() {
  cat <<EOF
Usage: scripts/containers.sh <command> [options]

Runs containers on a machine with no Docker engine and no reachable image registry, for the
container tests of scripts/test.sh. Users with Docker need none of this.

Commands:
  install               apt-get install ${PACKAGES[*]} (what is missing).
  images                Build the local stand-in images, each once (kept in podman's storage;
                        rebuilt when its recipe changes), tagged with the names the compose
                        files and docker/Dockerfile use:
                          debian:bookworm-slim        debootstrap --variant=minbase
                          rust:<v>-bookworm           + build tools + this machine's Rust <v>
                          apache/kafka:<v>            Maven Central jars (scripts/kafka.sh) on Debian's JRE
                          axllent/mailpit:<v>         the Go build of scripts/mailpit.sh
                        Each has the label $STAND_IN_LABEL.
  serve [--data-dir D]  Install if needed and serve the Docker API (\`podman system service\`) on
                        D/podman.sock (D: default a new temp dir), with a runner of the
                        containers' healthchecks (podman leaves them to systemd, which is not
                        there), in the foreground until SIGTERM or Ctrl-C. It prints
                          CONTAINERS_CONF=$PODMAN_CONF
                          DOCKER_HOST=unix://<data-dir>/podman.sock
                        and serves once GET /_ping on that socket answers. Containers it
                        started keep running: \`docker compose down\` first.
  env                   Print CONTAINERS_CONF=... (for podman commands typed by hand).

podman is configured by $PODMAN_CONF (runc, cgroupfs, ulimits within the machine's hard
limits), passed as CONTAINERS_CONF: /etc is not edited. Export CONTAINERS_CONF for podman
commands by hand (\`eval "\$(scripts/containers.sh env)"\`).

Environment:
  FLATPACK_CACHE_DIR    cache root (default ~/.cache/flatpack); the Debian rootfs tarball
                        is kept in <cache>/images
  DEBIAN_MIRROR         mirror for debootstrap (default $DEBIAN_MIRROR)
EOF
}

export CONTAINERS_CONF="$PODMAN_CONF"

# ---------------------------------------------------------------- install

cmd_install() {
  local -a missing=()
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  fp_need_cmd apt-get
  fp_log "installing ${missing[*]} from Debian"
  apt-get update -qq >&2 || fp_die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
    fp_die "apt-get install ${missing[*]} failed"
}

# ---------------------------------------------------------------- images

# The image a compose file or the Dockerfile names: first `image:` line matching <prefix>.
compose_image() { # <file> <name-prefix>
  local img
  img="$(sed -n "s|^[[:space:]]*image:[[:space:]]*\($2[^[:space:]]*\).*|\1|p" "$ROOT/$1" | head -n1)"
  [[ -n "$img" ]] || fp_die "$1 names no $2 image"
  printf '%s\n' "$img"
}

dockerfile_arg() { # <name>
  local v
  v="$(sed -n "s/^ARG $1=\(.*\)$/\1/p" "$ROOT/docker/Dockerfile" | head -n1)"
  [[ -n "$v" ]] || fp_die "docker/Dockerfile has no ARG $1=..."
  printf '%s\n' "$v"
}

# Recipe label of a local image, empty when there is none.
image_recipe() { # <image>
  podman image inspect --format "{{index .Labels \"$RECIPE_LABEL\"}}" "$1" 2>/dev/null || true
}

image_id() { podman image inspect --format '{{.Id}}' "$1"; }

# A fingerprint of everything an image is made from: text, files, and the ids of its bases.
recipe_of() { # <text> [<file-or-dir>...]
  local text="$1"
  shift
  {
    printf '%s\n' "$text"
    local f
    for f in "$@"; do
      if [[ -d "$f" ]]; then
        find "$f" -type f -print0 | sort -z | xargs -0 sha256sum
      else
        sha256sum "$f"
      fi
    done
  } | sha256sum | cut -c1-16
}

# Is <image> there with <recipe>? Says so when it is.
image_current() { # <image> <recipe>
  if [[ "$(image_recipe "$1")" == "$2" ]]; then
    fp_log "$1: local stand-in is current (recipe $2)"
    return 0
  fi
  return 1
}

build_debian() { # <image>
  local image="$1" suite="${1##*:}" recipe tarball root
  suite="${suite%-slim}"
  local -a cas=()
  mapfile -t cas < <(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null | sort)
  recipe="$(recipe_of "debootstrap --variant=minbase $suite $DEBIAN_MIRROR v1" "${cas[@]}")"
  image_current "$image" "$recipe" && return 0
  mkdir -p -- "$IMAGE_CACHE"
  tarball="$IMAGE_CACHE/debian-$suite-minbase-$recipe.tar"
  if [[ ! -s "$tarball" ]]; then
    fp_log "$image: debootstrap --variant=minbase $suite (about 30 s)"
    root="$(fp_mktemp_dir flatpack-rootfs)"
    if ! debootstrap --variant=minbase "$suite" "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1; then
      tail -n 40 -- "$root.log" >&2
      rm -rf -- "$root"
      fp_die "debootstrap $suite failed"
    fi
    # The sources the official image has; no package lists or downloaded .debs kept.
    rm -f -- "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    # The machine's own certificate authorities, which it needs to reach crates.io and the
    # other registries (a TLS-inspecting proxy): images that install ca-certificates trust
    # them as the machine does.
    if ((${#cas[@]})); then
      mkdir -p -- "$root/usr/local/share/ca-certificates"
      cp -- "${cas[@]}" "$root/usr/local/share/ca-certificates/"
    fi
    rm -rf -- "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
      "$root"/var/log/* "$root.log"
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" . || fp_die "packing the rootfs failed"
    rm -rf -- "$root"
    mv -f -- "$tarball.tmp" "$tarball"
  fi
  fp_log "$image: podman import $tarball"
  podman import -q \
    --change "LABEL $STAND_IN_LABEL=\"$image from debootstrap --variant=minbase $suite by scripts/containers.sh; not the official image\"" \
    --change "LABEL $RECIPE_LABEL=$recipe" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    "$tarball" "docker.io/library/$image" >/dev/null || fp_die "podman import of $tarball failed"
}

podman_build() { # <image> <dir> <recipe> [podman build args...]
  local image="$1" dir="$2" recipe="$3" log
  shift 3
  log="$(mktemp "${TMPDIR:-/tmp}/flatpack-build.XXXXXX")"
  fp_log "$image: podman build $dir (log: $log)"
  if ! podman build --pull=never --layers=false --build-arg RECIPE="$recipe" \
    -t "docker.io/$image" -f "$dir/Containerfile" "$@" "$dir" >"$log" 2>&1; then
    tail -n 60 -- "$log" >&2
    fp_die "building the stand-in $image failed"
  fi
  rm -f -- "$log"
}

build_rust() { # <image> <debian-image>
  local image="$1" version="${1#*:}" recipe tc="" name sysroot
  version="${version%-bookworm}"
  fp_need_cmd rustup
  # The machine's own toolchain of that version (no download: rustup's servers are not reachable).
  while read -r name _; do
    [[ -n "$name" ]] || continue
    if rustup run "$name" rustc --version 2>/dev/null | grep -q "^rustc ${version}[. ]"; then
      tc="$name"
      break
    fi
  done < <(rustup toolchain list)
  [[ -n "$tc" ]] || fp_die "$image needs a Rust $version toolchain on this machine (rustup toolchain list has none)"
  sysroot="$(rustup run "$tc" rustc --print sysroot)"
  local full
  full="$(rustup run "$tc" rustc --version | awk '{ print $2 }')"
  recipe="$(recipe_of "$(image_id "$2") $full $(rustup run "$tc" rustc -vV | sha256sum)" "$STAND_INS/rust")"
  image_current "$image" "$recipe" && return 0
  podman_build "library/$image" "$STAND_INS/rust" "$recipe" \
    --build-arg RUST_VERSION="$version" --build-arg TOOLCHAIN="$full-x86_64-unknown-linux-gnu" \
    -v "$sysroot:/mnt/toolchain:ro" -v "$(command -v rustup):/mnt/rustup:ro"
}

build_kafka() { # <image> <debian-image>
  local image="$1" version="${1#*:}" recipe libs
  KAFKA_VERSION="$version" "$SCRIPT_DIR/kafka.sh" fetch >&2 || fp_die "fetching Kafka $version failed"
  libs="$(fp_cache_dir)/kafka-$version/libs"
  recipe="$(recipe_of "$(image_id "$2") $version $(find "$libs" -name '*.jar' -printf '%f %s\n' | sort | sha256sum)" \
    "$STAND_INS/kafka")"
  image_current "$image" "$recipe" && return 0
  podman_build "$image" "$STAND_INS/kafka" "$recipe" --build-arg KAFKA_VERSION="$version" \
    -v "$libs:/mnt/kafka-libs:ro"
}

# A stand-in whose one program is a binary built on this machine, copied into <dir>'s
# Containerfile (which gets the image's tag as VERSION).
build_from_binary() { # <image> <debian-image> <dir> <binary>
  local image="$1" version="${1##*:}" recipe ctx
  recipe="$(recipe_of "$(image_id "$2") $version" "$4" "$3")"
  image_current "$image" "$recipe" && return 0
  ctx="$(fp_mktemp_dir flatpack-image)"
  cp -- "$3/Containerfile" "$4" "$ctx/"
  podman_build "$image" "$ctx" "$recipe" --build-arg VERSION="$version"
  rm -rf -- "$ctx"
}

build_mailpit() { # <image> <debian-image>
  local version="${1##*:}" bin
  MAILPIT_VERSION="$version" "$SCRIPT_DIR/mailpit.sh" fetch >&2 || fp_die "building Mailpit $version failed"
  bin="$(fp_cache_dir)/bin/mailpit"
  [[ "$("$bin" version 2>/dev/null)" == *" $version "* ]] || fp_die "$bin is not Mailpit $version"
  build_from_binary "$1" "$2" "$STAND_INS/mailpit" "$bin"
}

# jaegertracing/jaeger:2.M.P and prom/prometheus:v3.M.P are built from Go modules versioned
# v1.(M+63).P and v0.3MM.P.
build_jaeger() { # <image> <debian-image>
  local version="${1##*:}" out
  [[ "$version" =~ ^2\.([0-9]+)\.([0-9]+)$ ]] || fp_die "no Go module version known for $1"
  out="$(JAEGER_VERSION="v1.$((BASH_REMATCH[1] + 63)).${BASH_REMATCH[2]}" "$SCRIPT_DIR/tool.sh" jaeger)" ||
    fp_die "building Jaeger for $1 failed"
  build_from_binary "$1" "$2" "$STAND_INS/jaeger" "${out#JAEGER=}"
}

build_prometheus() { # <image> <debian-image>
  local version="${1##*:}" out
  [[ "$version" =~ ^v3\.([0-9]+)\.([0-9]+)$ ]] || fp_die "no Go module version known for $1"
  out="$(PROMETHEUS_VERSION="$(printf 'v0.3%02d.%s' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}")" \
    "$SCRIPT_DIR/tool.sh" prometheus)" || fp_die "building Prometheus for $1 failed"
  build_from_binary "$1" "$2" "$STAND_INS/prometheus" "${out#PROMETHEUS=}"
}

cmd_images() {
  local start=$SECONDS debian rust kafka mailpit jaeger prometheus
  cmd_install
  debian="debian:$(dockerfile_arg DEBIAN_RELEASE)-slim"
  rust="rust:$(dockerfile_arg RUST_VERSION)-$(dockerfile_arg DEBIAN_RELEASE)"
  kafka="$(compose_image docker-compose-kafka.yml apache/kafka)"
  mailpit="$(compose_image docker-compose-services.yml axllent/mailpit)"
  jaeger="$(compose_image docker-compose-services.yml jaegertracing/jaeger)"
  prometheus="$(compose_image docker-compose-services.yml prom/prometheus)"
  build_debian "$debian"
  build_rust "$rust" "$debian"
  build_kafka "$kafka" "$debian"
  build_mailpit "$mailpit" "$debian"
  build_jaeger "$jaeger" "$debian"
  build_prometheus "$prometheus" "$debian"
  # Stand-ins replaced by a rebuild are left untagged: drop them.
  podman image prune -f --filter "label=$STAND_IN_LABEL" >/dev/null 2>&1 || true
  fp_log "stand-in images ready in $((SECONDS - start))s: $debian $rust $kafka $mailpit $jaeger $prometheus"
}

# ---------------------------------------------------------------- healthchecks

# Whole seconds of a Go duration as podman prints it ("10s", "1m30s", "500ms"); at least 1.
go_duration_secs() { # <duration>
  local d="$1" total=0 n unit
  while [[ "$d" =~ ^([0-9.]+)(h|ms|m|s|us|µs|ns)(.*)$ ]]; do
    n="${BASH_REMATCH[1]%%.*}" unit="${BASH_REMATCH[2]}" d="${BASH_REMATCH[3]}"
    case "$unit" in
      h) total=$((total + ${n:-0} * 3600)) ;;
      m) total=$((total + ${n:-0} * 60)) ;;
      s) total=$((total + ${n:-0})) ;;
    esac
  done
  ((total >= 1)) || total=1
  printf '%s\n' "$total"
}

# podman schedules each container's healthcheck with a systemd timer; with no systemd (as
# here) no check ever runs and every container stays "starting", so that compose's
# `condition: service_healthy` would wait forever. This loop is that timer: it runs
# `podman healthcheck run` for every running container that has a healthcheck, every
# interval of its own once healthy, and every 2 s while it is starting or unhealthy; never
# a second run of one container's check while its previous run is still going (a check that
# starts a JVM can take longer than its interval on a busy machine).
cmd_healthchecks() { # <pid of the API service>: runs as long as it does
  local -A last=() running=()
  local id status interval now
  while kill -0 "$1" 2>/dev/null; do
    now=$SECONDS
    while read -r id status; do
      [[ -n "$id" ]] || continue
      interval=2
      if [[ "$status" == healthy ]]; then
        interval="$(go_duration_secs "$(podman inspect --format '{{.Config.Healthcheck.Interval}}' "$id" 2>/dev/null || echo 10s)")"
      fi
      if [[ -n "${running[$id]:-}" ]] && kill -0 "${running[$id]}" 2>/dev/null; then
        continue
      fi
      if ((now - ${last[$id]:-0} >= interval)); then
        last[$id]=$now
        podman healthcheck run "$id" >/dev/null 2>&1 &
        running[$id]=$!
      fi
    done < <(podman ps --filter health=starting --filter health=healthy --filter health=unhealthy \
      --format '{{.ID}} {{.Status}}' 2>/dev/null | sed -n 's/^\([0-9a-f]*\) .*(\([a-z]*\))$/\1 \2/p')
    sleep 1
  done
}

# ---------------------------------------------------------------- service

# The Docker API on <data-dir>/podman.sock and the healthcheck runner, in the foreground
# until SIGTERM or SIGINT (which stop both); the API service also dies with this script.
cmd_serve() {
  local data_dir=""
  while (($#)); do
    case "$1" in
      --data-dir) fp_need_value "$1" $# "${2-}"; data_dir="$2"; shift 2 ;;
      -h | --help) usage; exit 0 ;;
      *) fp_die "serve: unknown option '$1' (see --help)" ;;
    esac
  done
  data_dir="$(fp_abs_dir "${data_dir:-$(fp_mktemp_dir flatpack-podman)}")"
  cmd_install
  local sock="$data_dir/podman.sock" api hc
  rm -f -- "$sock"
  setpriv --pdeathsig TERM -- podman system service --time=0 "unix://$sock" &
  api=$!
  cmd_healthchecks "$api" &
  hc=$!
  trap 'kill -TERM "$api" "$hc" 2>/dev/null; wait; exit 0' TERM INT
  fp_log "podman $(podman --version | awk '{ print $3 }') serves the Docker API on $sock"
  printf 'CONTAINERS_CONF=%s\nDOCKER_HOST=unix://%s\n' "$PODMAN_CONF" "$sock"
  wait
}

case "${1:-}" in
  install) cmd_install ;;
  images) cmd_images ;;
  serve) shift; cmd_serve "$@" ;;
  env) printf 'CONTAINERS_CONF=%s\n' "$PODMAN_CONF" ;;
  -h | --help | help) usage ;;
  "") usage >&2; exit 2 ;;
  *) fp_die "unknown command '$1' (see --help)" ;;
esac
