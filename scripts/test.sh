#!/usr/bin/env bash
# Runs every flatpack check and test: formatting, lints, unit tests, and the system tests
# against a real Apache Kafka broker, a real Mailpit SMTP server and a real headless Chromium.
#
# Kafka is started here from the Apache Kafka jars (scripts/kafka.sh) unless
# KAFKA_BOOTSTRAP_SERVERS names a broker; Mailpit likewise (scripts/mailpit.sh) unless
# MAILPIT_SMTP and MAILPIT_HTTP name one. Both are stopped again on exit. Chromium, Jaeger,
# schemathesis, the compose CLI and hadolint come from scripts/tool.sh.
# Then the containers (scripts/containers.py: podman serving the Docker API, local stand-in
# images where no registry can be reached): the system tests' testcontainers path once, and
# the compose files run for real (tests/containers). FLATPACK_SKIP_CONTAINERS=1 leaves them
# out (not allowed under CI=true).
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh transactions`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cd "$root"
FP_NAME=test.sh
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/flatpack-test.XXXXXX")
# What this script started, stopped in reverse order on exit (and by the kernel when this
# script is killed: see fp_spawn).
spawned=()
cleanup() {
  local status=$? i
  for ((i = ${#spawned[@]} - 1; i >= 0; i--)); do fp_stop "${spawned[i]}" 30; done
  if [ "$status" -ne 0 ]; then
    echo "test.sh: failed; broker, Mailpit and podman logs kept in $work" >&2
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n== %s\n' "$*" >&2; }

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  step "installing rustfmt and clippy"
  rustup component add rustfmt clippy
fi

step "formatting"
cargo fmt --all --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "API docs (broken intra-doc links fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "rust-version: the workspace's is what its code and every dependency need"
# The code uses let-chains (1.88); cargo checks dependencies' rust-version against the
# toolchain that builds, not against ours, so this keeps ours honest.
cargo metadata --format-version 1 --locked | python3 -c '
import json, sys
meta = json.load(sys.stdin)
version = lambda v: tuple(int(x) for x in v.split("."))
members = set(meta["workspace_members"])
ours = {version(p["rust_version"]) for p in meta["packages"] if p["id"] in members}
need = max((version(p["rust_version"] or "0"), p["name"]) for p in meta["packages"])
if len(ours) != 1 or min(ours) < max(need[0], (1, 88)):
    sys.exit(f"rust-version {sorted(ours)} is below what {need[1]} needs ({need[0]}) or let-chains (1.88)")
'

step "unused dependencies (cargo-machete per crate; workspace entries no member names)"
machete_version=0.9.2
machete="$(fp_cache_dir)/bin/cargo-machete"
if ! "$machete" --version 2>/dev/null | grep -qF "$machete_version"; then
  cargo install --locked --quiet --root "$(fp_cache_dir)" "cargo-machete@$machete_version"
fi
"$machete" --skip-target-dir
unused=""
for dep in $(sed -n '/^\[workspace.dependencies\]/,/^\[/{s/^\([A-Za-z0-9_-]*\) *=.*/\1/p}' Cargo.toml); do
  grep -qE "^$dep\.workspace" Cargo.toml crates/*/Cargo.toml || unused="$unused $dep"
done
[ -z "$unused" ] || fp_die "declared in [workspace.dependencies] but used by no crate:$unused"

step "tools the tests drive (scripts/tool.sh: each built or installed once, then cached)"
tools=() # those whose variable (CHROMIUM, JAEGER, ...) does not name one already
for tool in chromium jaeger schemathesis docker-compose hadolint; do
  var=${tool^^} && var=${var//-/_}
  [ -n "${!var:-}" ] || tools+=("$tool")
done
[ ${#tools[@]} -eq 0 ] || fp_export_lines "$("$here/tool.sh" "${tools[@]}")"

kafka_ready() { fp_port_open "$1" && grep -qs 'Kafka Server started' "$work/kafka/server.log"; }
mailpit_ready() { fp_port_open "$1" && fp_http_ok "http://127.0.0.1:$2/livez"; }
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  step "starting Apache Kafka from the Maven Central jars"
  "$here/kafka.sh" fetch
  mapfile -t ports < <(fp_free_ports 2)
  fp_spawn "$work/kafka.out" "$here/kafka.sh" run --data-dir "$work/kafka" \
    --port "${ports[0]}" --controller-port "${ports[1]}"
  spawned+=("$FP_PID")
  fp_await "$FP_PID" 120 "Kafka broker on port ${ports[0]}" "$work/kafka.out" kafka_ready "${ports[0]}"
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${ports[0]}"
fi
echo "Kafka: $KAFKA_BOOTSTRAP_SERVERS" >&2

if [ -z "${MAILPIT_SMTP:-}" ] || [ -z "${MAILPIT_HTTP:-}" ]; then
  step "starting Mailpit"
  "$here/mailpit.sh" fetch
  mapfile -t ports < <(fp_free_ports 2)
  # --max 0: keep every message (Mailpit keeps the newest 500 by default), since tests
  # count the e-mails of thousands of orders.
  fp_spawn "$work/mailpit.out" "$here/mailpit.sh" run --data-dir "$work/mailpit" \
    --smtp-port "${ports[0]}" --http-port "${ports[1]}" -- --max 0
  spawned+=("$FP_PID")
  fp_await "$FP_PID" 60 "Mailpit on ports ${ports[*]}" "$work/mailpit.out" mailpit_ready "${ports[@]}"
  export MAILPIT_SMTP="127.0.0.1:${ports[0]}" MAILPIT_HTTP="http://127.0.0.1:${ports[1]}"
fi
echo "Mailpit: SMTP $MAILPIT_SMTP, HTTP $MAILPIT_HTTP" >&2

step "building the service binaries (the system tests start them as processes)"
cargo build --workspace --bins --locked

step "tests"
cargo test --workspace --locked "$@"

if [ -n "${FLATPACK_SKIP_CONTAINERS:-}" ]; then
  [ "${CI:-}" != true ] || fp_die "FLATPACK_SKIP_CONTAINERS is not allowed under CI=true"
  echo "test.sh: *** container tests SKIPPED (FLATPACK_SKIP_CONTAINERS is set)" >&2
  exit 0
fi

containers_start=$SECONDS
step "container engine: podman serving the Docker API"
fp_spawn "$work/podman.out" "$here/containers.py" serve --data-dir "$work/podman"
spawned+=("$FP_PID")
api_ready() { curl -fsS --max-time 2 --unix-socket "$work/podman/podman.sock" http://d/_ping >/dev/null 2>&1; }
fp_await "$FP_PID" 120 "the Docker API on $work/podman/podman.sock" "$work/podman.out" api_ready
fp_export_lines "$(grep -E '^[A-Z_]+=' "$work/podman.out")"
echo "Docker API: $DOCKER_HOST" >&2

step "local stand-in images (built once, then cached)"
"$here/containers.py" images

# The system tests' own way to a broker when KAFKA_BOOTSTRAP_SERVERS is not set: an
# apache/kafka container started by testcontainers. testcontainers leaves it running when the
# test process exits (nothing in the process can remove it then): it is removed here, and
# the step fails unless exactly one such container was started.
step "system tests through testcontainers (apache/kafka container, no KAFKA_BOOTSTRAP_SERVERS)"
tc_filter='label=org.testcontainers.managed-by=testcontainers'
tc_containers() { podman ps -a -q --filter "$tc_filter" --filter ancestor=docker.io/apache/kafka:4.1.1; }
tc_containers | xargs -r podman rm -f >/dev/null
tc_status=0
env -u KAFKA_BOOTSTRAP_SERVERS cargo test --locked --test system -- --exact \
  orders_api::post_order_answers_the_accepted_order_after_it_is_on_order_details \
  transactions::posted_orders_get_exactly_one_decision_each_with_the_seed_fields || tc_status=$?
started=$(tc_containers)
[ -z "$started" ] || printf '%s\n' "$started" | xargs podman rm -f >/dev/null
[ "$tc_status" -eq 0 ] || fp_die "the system tests failed against the testcontainers broker"
[ "$(printf '%s\n' "$started" | grep -c .)" -eq 1 ] ||
  fp_die "expected the tests to start exactly one apache/kafka container, found: ${started:-none}"
[ -z "$(tc_containers)" ] || fp_die "the testcontainers broker could not be removed"
echo "test.sh: testcontainers started apache/kafka container $started, now removed" >&2

step "container tests: docker compose up --build, the three-broker cluster losing a broker"
cargo test --locked --test containers -- --test-threads=1
echo "test.sh: container part took $((SECONDS - containers_start))s" >&2
