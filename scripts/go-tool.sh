#!/usr/bin/env bash
# Builds a program from its Go module, the source its official image is built from, into
# the cache (once per version), and prints where it is:
#
#   scripts/go-tool.sh jaeger       JAEGER=$HOME/.cache/flatpack/bin/jaeger
#   scripts/go-tool.sh prometheus   PROMETHEUS=$HOME/.cache/flatpack/bin/prometheus
#
# jaeger: the trace viewer, all in one (OTLP in; UI and HTTP API out), for the local run and
# the tests: `jaeger --config scripts/jaeger/local.yaml`. prometheus: for the container
# stand-in of prom/prometheus (scripts/containers.sh). Neither module carries its web UI's
# compiled assets, so their UI pages stay blank; their HTTP APIs (Jaeger's /api/traces,
# Prometheus' /api/v1/...), which the tests and the links of scripts/run.sh use, work.
# Versions: JAEGER_VERSION (v1.76.0, the module of image 2.13.0), PROMETHEUS_VERSION
# (v0.316.0, the module of image v3.16.0). Go's own GOPROXY, GOFLAGS, ... apply.
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
FP_NAME=go-tool.sh
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

case "${1:-}" in
  jaeger) module=github.com/jaegertracing/jaeger version="${JAEGER_VERSION:-v1.76.0}" ;;
  prometheus) module=github.com/prometheus/prometheus version="${PROMETHEUS_VERSION:-v0.316.0}" ;;
  *) fp_die "usage: scripts/go-tool.sh jaeger|prometheus" ;;
esac
name="$1"
bin="$(fp_cache_dir)/bin/$name"

installed() { go version -m "$bin" 2>/dev/null | awk -v m="$module" '$1 == "mod" && $2 == m { print $3 }'; }

build() {
  [[ "$(installed)" != "$version" ]] || return 0
  local work
  work="$(fp_mktemp_dir "flatpack-$name")"
  fp_log "building $module/cmd/$name@$version (CGO off; minutes the first time)"
  # Such modules have replace directives, which `go install module@version` refuses: build
  # the program as a tool of a throwaway module instead.
  if ! (cd "$work" && go mod init "flatpack.local/$name" >/dev/null 2>&1 &&
    go get -tool "$module/cmd/$name@$version" >&2 &&
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$bin.new" "$module/cmd/$name" >&2); then
    rm -rf -- "$work" "$bin.new"
    fp_die "building $name $version failed (see above)"
  fi
  rm -rf -- "$work"
  mv -f -- "$bin.new" "$bin"
  [[ "$(installed)" == "$version" ]] || fp_die "$bin is not $module $version after the build"
}

fp_need_cmd go
mkdir -p -- "$(dirname -- "$bin")"
fp_with_lock "$bin.lock" build
fp_log "$name $version: $bin"
printf '%s=%s\n' "${name^^}" "$bin"
