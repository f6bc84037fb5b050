#!/usr/bin/env bash
# Runs every flatpack check and test: formatting, lints, unit tests, and the system tests
# against a real Apache Kafka broker, a real Mailpit SMTP server and a real headless Chromium.
#
# Kafka is started here from the Apache Kafka jars (scripts/kafka.sh) unless
# KAFKA_BOOTSTRAP_SERVERS names a broker; Mailpit likewise (scripts/mailpit.sh) unless
# MAILPIT_SMTP and MAILPIT_HTTP name one. Both are stopped again on exit. Debian's chromium
# is installed (scripts/chromium.sh) unless CHROMIUM names a browser.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh transactions`).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cd "$root"
FP_NAME=test.sh
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/flatpack-test.XXXXXX")
started_kafka=""
started_mailpit=""
cleanup() {
  local status=$?
  if [ -n "$started_kafka" ]; then
    "$here/kafka.sh" stop --data-dir "$work/kafka" || true
  fi
  if [ -n "$started_mailpit" ]; then
    "$here/mailpit.sh" stop --data-dir "$work/mailpit" || true
  fi
  if [ "$status" -ne 0 ]; then
    echo "test.sh: failed; broker and Mailpit logs kept in $work" >&2
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

step "container files (compose config with the real compose CLI, hadolint)"
"$here/check-containers.sh"

if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  step "starting Apache Kafka from the Maven Central jars"
  started_kafka=1 # before the start, so that a start failing half-way is stopped too
  out=$("$here/kafka.sh" start --data-dir "$work/kafka" --owner-pid $$)
  fp_export_lines "$out"
fi
echo "Kafka: $KAFKA_BOOTSTRAP_SERVERS" >&2

if [ -z "${MAILPIT_SMTP:-}" ] || [ -z "${MAILPIT_HTTP:-}" ]; then
  step "starting Mailpit"
  started_mailpit=1
  # --max 0: keep every message (Mailpit keeps the newest 500 by default), since tests
  # count the e-mails of thousands of orders.
  out=$("$here/mailpit.sh" start --data-dir "$work/mailpit" --owner-pid $$ -- --max 0)
  fp_export_lines "$out"
fi
echo "Mailpit: SMTP $MAILPIT_SMTP, HTTP $MAILPIT_HTTP" >&2

if [ -z "${CHROMIUM:-}" ]; then
  step "Chromium for the dashboard's browser test"
  out=$("$here/chromium.sh")
  fp_export_lines "$out"
fi
echo "Chromium: $CHROMIUM" >&2

step "building the service binaries (the system tests start them as processes)"
cargo build --workspace --bins --locked

step "tests"
cargo test --workspace --locked "$@"
