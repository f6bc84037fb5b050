#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Mailpit (an SMTP server with an HTTP API and a web UI) for tests and local runs, built from
# its Go module. Run `scripts/mailpit.sh --help` for the interface.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck disable=SC2034 # read by lib.sh
FP_NAME="mailpit.sh"
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

MAILPIT_VERSION="${MAILPIT_VERSION:-v1.27.11}"
MAILPIT_MODULE="github.com/axllent/mailpit"
MAILPIT_BIN="$(fp_cache_dir)/bin/mailpit"

usage() {
  cat <<EOF
Usage: scripts/mailpit.sh <command> [options]

Commands:
  fetch                 Build Mailpit $MAILPIT_VERSION into \${FLATPACK_CACHE_DIR:-\$HOME/.cache/flatpack}/bin
                        once, the way its releases are built: its web UI with npm, then go
                        build (CGO off, pure-Go SQLite). When the UI cannot be built (no
                        npm, no registry) it warns and installs the plain 'go install'
                        build, whose SMTP and HTTP API work and whose UI page is blank.
  run [options] [-- mailpit-args]
                        Fetch if needed and run Mailpit in the foreground (it replaces this
                        script) until it is stopped; SMTP accepts any or no AUTH, also without
                        TLS. It serves once the SMTP port accepts and GET /livez answers.
                        Whoever starts it owns it: supervisord (run.sh), test.sh, or a
                        terminal (Ctrl-C stops it).

Options of run (environment variable in brackets):
  --data-dir D          Holds the message database mailpit.db [MAILPIT_DATA_DIR]; default:
                        a new temp dir
  --smtp-port P         SMTP port [MAILPIT_SMTP_PORT]; default 1025
  --http-port P         HTTP API and UI port [MAILPIT_HTTP_PORT]; default 8025

Environment: MAILPIT_VERSION (default $MAILPIT_VERSION), MAILPIT_UI=0 (the plain build only),
FLATPACK_CACHE_DIR; Go's and npm's own settings apply to the build.
EOF
}

# Mailpit with its web UI, as its release is built: the module source copied to a scratch
# dir, npm ci and npm run build for the UI (server/ui/dist, embedded by go build), then a
# git checkout tagged with the version, so that go build records the module version.
# Any failure: a warning, and status 1.
mailpit_build_with_ui() ( # <output-binary>
  fail() { fp_log "WARNING: $*"; exit 1; }
  local c src dir
  fp_log "building Mailpit $MAILPIT_VERSION with its web UI"
  for c in node npm git; do
    command -v "$c" >/dev/null 2>&1 || fail "'$c' is needed to build Mailpit's web UI"
  done
  dir="$(fp_mktemp_dir flatpack-mailpit-build)"
  trap 'rm -rf -- "$dir"' EXIT
  src="$(cd -- "$dir" && go mod download -json "$MAILPIT_MODULE@$MAILPIT_VERSION" |
    sed -n 's/^[[:space:]]*"Dir":[[:space:]]*"\(.*\)",*[[:space:]]*$/\1/p')" || true
  [[ -n "$src" && -f "$src/package-lock.json" ]] || fail "no source of $MAILPIT_MODULE@$MAILPIT_VERSION"
  cp -R -- "$src/." "$dir/" && chmod -R u+w -- "$dir" && cd -- "$dir" || fail "cannot copy $src"
  # --ignore-scripts: the build needs no install script (esbuild's binary comes as an
  # optional package); they would only phone home or compile with node-gyp.
  timeout 900 npm ci --no-audit --no-fund --ignore-scripts --prefer-offline --update-notifier=false >&2 ||
    fail "npm ci for Mailpit's web UI failed"
  timeout 300 npm run build --update-notifier=false >&2 || fail "npm run build for Mailpit's web UI failed"
  (
    export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
    git init -q . && git add -A && git -c user.name=flatpack -c user.email=flatpack@localhost \
      commit -q --no-verify -m "$MAILPIT_VERSION" && git tag "$MAILPIT_VERSION"
  ) >&2 || fail "preparing the git checkout in $dir failed"
  CGO_ENABLED=0 go build -trimpath -buildvcs=true -o "$1" \
    -ldflags="-s -w -X $MAILPIT_MODULE/config.Version=$MAILPIT_VERSION" . >&2 || fail "go build of Mailpit failed"
  grep -qaF 'ui/dist/app.js' "$1" || fail "the built binary does not embed ui/dist/app.js"
)

mailpit_fetch_locked() {
  [[ "$(fp_go_version_of "$MAILPIT_BIN" "$MAILPIT_MODULE")" != "$MAILPIT_VERSION" ]] || return 0
  local new="$MAILPIT_BIN.new.$$" gobin
  if [[ "${MAILPIT_UI:-1}" == 0 ]] || ! mailpit_build_with_ui "$new"; then
    fp_log "building Mailpit $MAILPIT_VERSION without its web UI (go install)"
    gobin="$(fp_mktemp_dir flatpack-mailpit-gobin)"
    GOBIN="$gobin" CGO_ENABLED=0 go install -trimpath \
      -ldflags="-s -w -X $MAILPIT_MODULE/config.Version=$MAILPIT_VERSION" "$MAILPIT_MODULE@$MAILPIT_VERSION" >&2 ||
      fp_die "go install $MAILPIT_MODULE@$MAILPIT_VERSION failed (see above)"
    mv -f -- "$gobin/mailpit" "$new" && rm -rf -- "$gobin"
  fi
  [[ "$(fp_go_version_of "$new" "$MAILPIT_MODULE")" == "$MAILPIT_VERSION" ]] || fp_die "the build is not Mailpit $MAILPIT_VERSION"
  mv -f -- "$new" "$MAILPIT_BIN"
  fp_log "Mailpit $MAILPIT_VERSION installed as $MAILPIT_BIN"
}

mailpit_fetch() {
  fp_need_cmd go
  fp_with_lock "$MAILPIT_BIN.lock" mailpit_fetch_locked
}

cmd_run() {
  local data_dir="${MAILPIT_DATA_DIR:-}" smtp="${MAILPIT_SMTP_PORT:-1025}" http="${MAILPIT_HTTP_PORT:-8025}"
  while (($#)); do
    case "$1" in
      --data-dir) fp_need_value "$1" $# "${2-}"; data_dir="$2"; shift 2 ;;
      --smtp-port) fp_need_value "$1" $# "${2-}"; smtp="$2"; shift 2 ;;
      --http-port) fp_need_value "$1" $# "${2-}"; http="$2"; shift 2 ;;
      --) shift; break ;;
      -h | --help) usage; exit 0 ;;
      *) fp_die "run: unknown option '$1' (see --help)" ;;
    esac
  done
  fp_free_port_arg --smtp-port "$smtp"
  fp_free_port_arg --http-port "$http"
  [[ "$smtp" != "$http" ]] || fp_die "SMTP and HTTP port are both $smtp"
  data_dir="$(fp_abs_dir "${data_dir:-$(fp_mktemp_dir flatpack-mailpit)}")"
  mailpit_fetch
  fp_log "Mailpit $MAILPIT_VERSION: SMTP 127.0.0.1:$smtp, HTTP http://127.0.0.1:$http, data dir $data_dir"
  exec "$MAILPIT_BIN" --smtp "127.0.0.1:$smtp" --listen "127.0.0.1:$http" \
    --database "$data_dir/mailpit.db" --smtp-auth-accept-any --smtp-auth-allow-insecure \
    --smtp-disable-rdns --disable-version-check "$@"
}

case "${1:-}" in
  fetch) mailpit_fetch ;;
  run) shift; cmd_run "$@" ;;
  -h | --help | help) usage ;;
  "") usage >&2; exit 2 ;;
  *) fp_die "unknown command '$1' (see --help)" ;;
esac
