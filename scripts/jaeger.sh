#!/usr/bin/env bash
# Builds Jaeger (the trace viewer, all in one: OTLP in, UI and HTTP API out) from its Go
# module, the one the official image is built from, into the cache, and prints where it is:
#
#   JAEGER=$HOME/.cache/flatpack/bin/jaeger
#
# Idempotent: builds only when the cached binary is not JAEGER_VERSION. The binary's UI
# assets are not part of the Go module (the search page stays blank); its HTTP API
# (/api/traces, /api/services), which the tests and the links of scripts/run.sh use, works.
# Start it with the repo's config: jaeger --config scripts/jaeger/local.yaml
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
FP_NAME=jaeger.sh
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

JAEGER_VERSION="${JAEGER_VERSION:-v1.76.0}"
module=github.com/jaegertracing/jaeger
bin="$(fp_cache_dir)/bin/jaeger"

installed() { go version -m "$bin" 2>/dev/null | awk -v m="$module" '$1 == "mod" && $2 == m { print $3 }'; }

build() {
  [[ "$(installed)" != "$JAEGER_VERSION" ]] || return 0
  local work
  work="$(fp_mktemp_dir flatpack-jaeger)"
  fp_log "building $module/cmd/jaeger@$JAEGER_VERSION (CGO off; a few minutes the first time)"
  # Its go.mod has replace directives, so `go install module@version` refuses it: build it
  # as a tool of a throwaway module instead.
  if ! (cd "$work" && go mod init flatpack.local/jaeger >/dev/null 2>&1 &&
    go get -tool "$module/cmd/jaeger@$JAEGER_VERSION" >&2 &&
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$bin.new" "$module/cmd/jaeger" >&2); then
    rm -rf -- "$work" "$bin.new"
    fp_die "building Jaeger $JAEGER_VERSION failed (see above)"
  fi
  rm -rf -- "$work"
  mv -f -- "$bin.new" "$bin"
  [[ "$(installed)" == "$JAEGER_VERSION" ]] || fp_die "$bin is not Jaeger $JAEGER_VERSION after the build"
}

fp_need_cmd go
mkdir -p -- "$(dirname -- "$bin")"
fp_with_lock "$bin.lock" build
fp_log "Jaeger $JAEGER_VERSION: $bin"
printf 'JAEGER=%s\n' "$bin"
