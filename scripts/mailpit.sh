#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Mailpit (SMTP server with an HTTP API) for tests and local runs.
# Run `scripts/mailpit.sh --help` for the interface.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck disable=SC2034 # read by lib.sh
FP_NAME="mailpit.sh"
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

MAILPIT_VERSION="${MAILPIT_VERSION:-v1.27.11}"
MAILPIT_MODULE="github.com/axllent/mailpit"
MAILPIT_BIN_DIR="$(fp_cache_dir)/bin"
MAILPIT_BIN="$MAILPIT_BIN_DIR/mailpit"

usage() {
  cat <<EOF
Usage: scripts/mailpit.sh <command> [options]

Runs Mailpit $MAILPIT_VERSION with its web UI, built from the Go module's source
the way Mailpit's releases are (npm ci + npm run build for the UI, then go build,
CGO off, pure-Go SQLite) into \${FLATPACK_CACHE_DIR:-\$HOME/.cache/flatpack}/bin
and reused afterwards. Only KEY=VALUE lines go to stdout; logs go to stderr.

Commands:
  install               Build/install Mailpit into the cache (no-op if that
                        version is installed there with its web UI). If the
                        UI build fails (no node/npm/git, npm registry
                        unreachable, ...) it warns and installs the plain
                        'go install' build instead (SMTP and HTTP API work,
                        the UI page stays blank); start then uses that build
                        and the next install tries the UI again.
  start [options] [-- mailpit-args]
                        Install if needed, start Mailpit in the background
                        (SMTP accepts any or no AUTH, also without TLS),
                        wait until GET /livez answers and the SMTP port is open,
                        then print two lines:
                          MAILPIT_SMTP=127.0.0.1:<smtp-port>
                          MAILPIT_HTTP=http://127.0.0.1:<http-port>
                        If the data dir's Mailpit already runs, just prints them.
                        Words after -- go to mailpit as extra flags.
  fetch                 Install if needed, as start does (a plain build whose UI
                        build failed counts as installed; install retries the UI).
  run [options] [-- mailpit-args]
                        Like start, but run Mailpit in the foreground (it replaces
                        this script, keeping its pid), logging to stdout, until
                        it is stopped: for a process supervisor. Fails if the
                        data dir's Mailpit already runs. --owner-pid and
                        --timeout do not apply.
  stop --data-dir D [--timeout S]
                        SIGTERM Mailpit (and its watchdog), SIGKILL after S
                        (default 10) seconds. Exit 0 also when nothing runs.
  status --data-dir D   Print MAILPIT_STATUS=running|stopped, MAILPIT_PID=<pid>,
                        MAILPIT_SMTP=..., MAILPIT_HTTP=...; exit 0 running, 3 stopped.
  -h, --help            This help.

start options (environment variable in brackets; option wins over variable):
  --data-dir D          Holds pid file, log and the message database mailpit.db
                        [MAILPIT_DATA_DIR]; default: new \${TMPDIR:-/tmp}/flatpack-mailpit.XXXXXX
  --smtp-port P         SMTP port [MAILPIT_SMTP_PORT]; default: free port
                        (on a restart: the port used before)
  --http-port P         HTTP API/UI port [MAILPIT_HTTP_PORT]; default: free port
                        (on a restart: the port used before)
  --owner-pid PID       Stop Mailpit once PID exits (watchdog, checks every 2 s)
                        [FLATPACK_OWNER_PID]; 0 disables. Default as in kafka.sh:
                        the leader of mailpit.sh's process group (the job a
                        shell started), or the parent when mailpit.sh leads it.
  --timeout S           Readiness timeout in seconds [MAILPIT_START_TIMEOUT]; default 30

Other environment:
  MAILPIT_VERSION       Module version to install (default v1.27.11)
  MAILPIT_UI            0: skip the web UI build; any build of the version will do
  MAILPIT_STOP_TIMEOUT  Seconds between SIGTERM and SIGKILL (default 10)
  FLATPACK_CACHE_DIR    Cache root (default \$HOME/.cache/flatpack)
  Go's own GOMODCACHE/GOCACHE/GOPROXY/GOFLAGS and npm's own configuration
  (registry, cache) are honoured when building. The UI build needs node, npm
  (registry access or a warm npm cache) and git; it runs in
  \${FLATPACK_CACHE_DIR}/build (node_modules too) and cleans up after itself.

Pass --data-dir when you want to stop Mailpit later: the default temp dir is
only named on stderr.
Files in the data dir: mailpit.db, mailpit.log, mailpit.out, mailpit.pid,
mailpit.watchdog.pid, watchdog.log, flatpack-mailpit.env.
The HTTP API is Mailpit's (/api/v1/messages, /api/v1/search?query=...,
DELETE /api/v1/messages); the web UI is at MAILPIT_HTTP (its compiled assets
are not part of the Go module, hence the npm build above).
EOF
}

# ---------------------------------------------------------------- install

MAILPIT_BUILD_ROOT="$(fp_cache_dir)/build"
# What the installed binary was built with, as KEY=VALUE lines: VERSION, UI
# (1: with the web UI, 0: the UI build failed and this is the plain build)
# and CKSUM of the binary, so that the stamp only counts for that very file.
MAILPIT_STAMP="$MAILPIT_BIN_DIR/.mailpit.build"

# Version of the mailpit module the cached binary was built from, if any.
mailpit_installed_version() {
  [[ -x "$MAILPIT_BIN" ]] || return 1
  if command -v go >/dev/null 2>&1; then
    go version -m "$MAILPIT_BIN" 2>/dev/null |
      awk -v m="$MAILPIT_MODULE" '$1 == "mod" && $2 == m { print $3; found = 1 } END { exit !found }'
  else # the same build info is embedded as plain text
    grep -qaF "$(printf 'mod\t%s\t%s\t' "$MAILPIT_MODULE" "$MAILPIT_VERSION")" "$MAILPIT_BIN" &&
      printf '%s\n' "$MAILPIT_VERSION"
  fi
}

mailpit_cksum() { cksum <"$1" | awk '{ print $1 "-" $2 }'; }

# UI value (1 or 0) of the stamp, if the stamp is for MAILPIT_VERSION and for
# the binary that is installed now.
mailpit_stamp_ui() {
  local S_VERSION="" S_UI="" S_CKSUM=""
  [[ -f "$MAILPIT_STAMP" && -x "$MAILPIT_BIN" ]] || return 1
  fp_read_env_file "$MAILPIT_STAMP" S_
  [[ "$S_VERSION" == "$MAILPIT_VERSION" && -n "$S_UI" ]] || return 1
  [[ "$S_CKSUM" == "$(mailpit_cksum "$MAILPIT_BIN")" ]] || return 1
  printf '%s\n' "$S_UI"
}

mailpit_write_stamp() { # <ui: 1|0>
  printf 'VERSION=%s\nUI=%s\nCKSUM=%s\n' "$MAILPIT_VERSION" "$1" "$(mailpit_cksum "$MAILPIT_BIN")" \
    >"$MAILPIT_STAMP.tmp"
  mv -f -- "$MAILPIT_STAMP.tmp" "$MAILPIT_STAMP"
}

# Is the installed binary good enough? <mode> "ui": MAILPIT_VERSION built with
# the web UI; "any" (start): also the plain build once a UI build has failed
# for it. With MAILPIT_UI=0 the version alone counts.
mailpit_up_to_date() { # <mode>
  local have ui
  have="$(mailpit_installed_version)" || return 1
  [[ "$have" == "$MAILPIT_VERSION" ]] || return 1
  [[ "${MAILPIT_UI:-1}" != 0 ]] || return 0
  ui="$(mailpit_stamp_ui)" || return 1
  [[ "$ui" == 1 || "$1" == any ]]
}

# Run a build step with a time limit (npm waits minutes for a dead registry).
mailpit_limited() { # <seconds> <cmd...>
  if command -v timeout >/dev/null 2>&1; then timeout "$@"; else "${@:2}"; fi
}

# Build Mailpit with its web UI as Mailpit's release does, in a scratch copy
# of the module source under the cache, and move the binary into place.
# Runs in a subshell (own EXIT trap, own cwd); any failure: warning, exit 1.
mailpit_build_with_ui() (
  fail() {
    fp_log "WARNING: $*"
    exit 1
  }
  local c src dir="$MAILPIT_BUILD_ROOT/mailpit-$MAILPIT_VERSION" new="$MAILPIT_BIN_DIR/.mailpit.new.$$" have
  for c in node npm git; do
    command -v "$c" >/dev/null 2>&1 || fail "'$c' is not on PATH; it is needed to build Mailpit's web UI"
  done
  # Leftovers of interrupted builds (the install lock is ours, so none runs).
  rm -rf -- "${MAILPIT_BUILD_ROOT:?}"/mailpit-*
  mkdir -p -- "$MAILPIT_BUILD_ROOT" || fail "cannot create $MAILPIT_BUILD_ROOT"
  trap 'rm -rf -- "$dir" "$new"' EXIT

  # Module source (read-only in GOMODCACHE) -> writable build dir.
  src="$(cd -- "$MAILPIT_BUILD_ROOT" && go mod download -json "$MAILPIT_MODULE@$MAILPIT_VERSION" |
    sed -n 's/^[[:space:]]*"Dir":[[:space:]]*"\(.*\)",*[[:space:]]*$/\1/p')" || true
  [[ -n "$src" && -f "$src/package-lock.json" && -f "$src/go.mod" ]] ||
    fail "could not locate the source of $MAILPIT_MODULE@$MAILPIT_VERSION (go mod download)"
  { cp -R -- "$src" "$dir" && chmod -R u+w -- "$dir"; } || fail "copying $src to $dir failed"
  cd -- "$dir" || fail "cannot enter $dir"

  # The UI: server/ui/dist (app.js, app.css, fonts), embedded by server/embed.go.
  # --ignore-scripts: the build does not need any install script (esbuild's
  # binary comes as an optional package); they would only phone home
  # (@scarf/scarf) or compile tree-sitter with node-gyp, which downloads.
  fp_log "Mailpit UI: npm ci in $dir"
  mailpit_limited 900 npm ci --no-audit --no-fund --ignore-scripts --prefer-offline --update-notifier=false >&2 ||
    fail "npm ci for Mailpit's web UI failed (see above)"
  fp_log "Mailpit UI: npm run build"
  mailpit_limited 300 npm run build --update-notifier=false >&2 ||
    fail "npm run build for Mailpit's web UI failed (see above)"
  [[ -s server/ui/dist/app.js && -s server/ui/dist/app.css ]] ||
    fail "npm run build did not produce server/ui/dist/app.js and app.css"

  # A clean git checkout tagged with the version, like the release build's
  # checkout: go build then records the module as $MAILPIT_VERSION (not
  # "(devel)"), so the binary's build info says what 'go install' would.
  # node_modules and server/ui/dist are in the module's .gitignore.
  (
    export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1
    git init -q . && git add -A &&
      git -c user.name=flatpack -c user.email=flatpack@localhost -c commit.gpgsign=false \
        commit -q --no-verify -m "$MAILPIT_MODULE $MAILPIT_VERSION (module source)" &&
      git tag "$MAILPIT_VERSION"
  ) >&2 || fail "preparing the git checkout in $dir failed"

  fp_log "Mailpit: go build (CGO_ENABLED=0) in $dir"
  CGO_ENABLED=0 go build -trimpath -buildvcs=true -o "$new" \
    -ldflags="-s -w -X $MAILPIT_MODULE/config.Version=$MAILPIT_VERSION" . >&2 ||
    fail "go build of Mailpit in $dir failed (see above)"
  have="$(go version -m "$new" 2>/dev/null | awk -v m="$MAILPIT_MODULE" '$1 == "mod" && $2 == m { print $3 }')"
  [[ "$have" == "$MAILPIT_VERSION" ]] || fail "go build recorded module version '$have', not $MAILPIT_VERSION"
  grep -qaF 'ui/dist/app.js' "$new" || fail "the built binary does not embed ui/dist/app.js"
  mv -f -- "$new" "$MAILPIT_BIN" || fail "cannot move the binary to $MAILPIT_BIN"
)

# The plain build: go install of the module (no web UI assets in it).
mailpit_go_install() {
  # Build into a scratch GOBIN and move the binary in place, so a running
  # Mailpit or a failed build never sees a half-written file.
  local tmp
  tmp="$(mktemp -d "$MAILPIT_BIN_DIR/.gobin.XXXXXX")"
  if ! GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath" \
    go install -ldflags="-s -w -X $MAILPIT_MODULE/config.Version=$MAILPIT_VERSION" \
    "$MAILPIT_MODULE@$MAILPIT_VERSION" >&2; then
    rm -rf -- "$tmp"
    fp_die "go install $MAILPIT_MODULE@$MAILPIT_VERSION failed (see above)"
  fi
  mv -f -- "$tmp/mailpit" "$MAILPIT_BIN"
  rm -rf -- "$tmp"
}

mailpit_install_locked() { # <mode: ui|any>
  local have=""
  mailpit_up_to_date "$1" && return 0
  have="$(mailpit_installed_version)" || true
  if [[ "${MAILPIT_UI:-1}" != 0 ]]; then
    fp_log "building $MAILPIT_MODULE@$MAILPIT_VERSION with its web UI (npm, then go build, CGO_ENABLED=0) into $MAILPIT_BIN_DIR${have:+ (replacing the build of $have there)}"
    if mailpit_build_with_ui; then
      have="$(mailpit_installed_version)" || fp_die "installed $MAILPIT_BIN has no build info"
      [[ "$have" == "$MAILPIT_VERSION" ]] || fp_die "installed $MAILPIT_BIN is $have, wanted $MAILPIT_VERSION"
      mailpit_write_stamp 1
      fp_log "Mailpit $MAILPIT_VERSION with web UI installed as $MAILPIT_BIN"
      return 0
    fi
    fp_log "WARNING: Mailpit's web UI could not be built (see above). Falling back to the plain 'go install' build: SMTP and the HTTP API work, the web UI page stays blank. 'scripts/mailpit.sh install' tries the UI again."
  fi
  if [[ "$have" == "$MAILPIT_VERSION" ]]; then
    fp_log "keeping the installed build of Mailpit $MAILPIT_VERSION ($MAILPIT_BIN)"
  else
    fp_log "building $MAILPIT_MODULE@$MAILPIT_VERSION with go install (CGO_ENABLED=0) into $MAILPIT_BIN_DIR${have:+ (replacing $have)}"
    mailpit_go_install
    have="$(mailpit_installed_version)" || fp_die "installed $MAILPIT_BIN has no build info"
    [[ "$have" == "$MAILPIT_VERSION" ]] || fp_die "installed $MAILPIT_BIN is $have, wanted $MAILPIT_VERSION"
    fp_log "Mailpit $MAILPIT_VERSION installed as $MAILPIT_BIN"
  fi
  # Remember the failed UI build, so that start does not retry it every time.
  if [[ "${MAILPIT_UI:-1}" != 0 ]]; then mailpit_write_stamp 0; fi
}

# mailpit_install [--verbose] [<mode>]: mode "ui" (the install command) wants
# the web UI build; "any" (default, start) accepts the plain build once the
# UI build failed for this version (see mailpit_up_to_date).
mailpit_install() {
  local verbose="" mode=any
  if [[ "${1-}" == --verbose ]]; then verbose=1; shift; fi
  mode="${1:-any}"
  if mailpit_up_to_date "$mode"; then
    if [[ -n "$verbose" ]]; then
      if [[ "${MAILPIT_UI:-1}" != 0 && "$(mailpit_stamp_ui)" == 0 ]]; then
        fp_log "Mailpit $MAILPIT_VERSION: using cached $MAILPIT_BIN (plain build WITHOUT web UI: its UI build failed; 'scripts/mailpit.sh install' retries)"
      else
        fp_log "Mailpit $MAILPIT_VERSION: using cached $MAILPIT_BIN"
      fi
    fi
    return 0
  fi
  fp_need_cmd go
  mkdir -p -- "$MAILPIT_BIN_DIR"
  fp_with_lock "$MAILPIT_BIN_DIR/.mailpit.lock" mailpit_install_locked "$mode"
}

# ---------------------------------------------------------------- service

mailpit_pid_marker() { printf '%s\n' "$1/mailpit.db"; }

mailpit_running_pid() { # <data-dir>
  fp_pidfile_pid "$1/mailpit.pid" "$(mailpit_pid_marker "$1")"
}

mailpit_ready() { # <smtp-port> <http-port>
  fp_port_open "$1" && fp_http_ok "http://127.0.0.1:$2/livez"
}

mailpit_lines() { # <smtp-port> <http-port>
  printf 'MAILPIT_SMTP=127.0.0.1:%s\nMAILPIT_HTTP=http://127.0.0.1:%s\n' "$1" "$2"
}

cmd_start() { # <start|run> [options]
  local mode="$1"
  shift
  local data_dir="${MAILPIT_DATA_DIR:-}" smtp="${MAILPIT_SMTP_PORT:-}" http="${MAILPIT_HTTP_PORT:-}"
  local owner="${FLATPACK_OWNER_PID:-}" timeout="${MAILPIT_START_TIMEOUT:-30}"
  local -a passthrough=()
  while (($#)); do
    case "$1" in
      --data-dir) fp_need_value "$1" $# "${2-}"; data_dir="$2"; shift 2 ;;
      --smtp-port) fp_need_value "$1" $# "${2-}"; smtp="$2"; shift 2 ;;
      --http-port) fp_need_value "$1" $# "${2-}"; http="$2"; shift 2 ;;
      --owner-pid) fp_need_value "$1" $# "${2-}"; owner="$2"; shift 2 ;;
      --timeout) fp_need_value "$1" $# "${2-}"; timeout="$2"; shift 2 ;;
      --) shift; passthrough=("$@"); break ;;
      -h | --help) usage; exit 0 ;;
      *) fp_die "start: unknown option '$1' (see --help)" ;;
    esac
  done
  fp_is_uint "$timeout" || fp_die "--timeout must be a number of seconds"
  [[ -n "$owner" || "$mode" == run ]] || owner="$(fp_default_owner)"
  fp_is_uint "${owner:-0}" || fp_die "--owner-pid must be a pid (or 0), got '$owner'"

  [[ -n "$data_dir" ]] || data_dir="$(fp_mktemp_dir flatpack-mailpit)"
  data_dir="$(fp_abs_dir "$data_dir")"

  local PREV_SMTP_PORT="" PREV_HTTP_PORT="" pid
  fp_read_env_file "$data_dir/flatpack-mailpit.env" PREV_
  if pid="$(mailpit_running_pid "$data_dir")"; then
    fp_log "Mailpit of $data_dir already runs (pid $pid)"
    [[ "$mode" == start ]] || fp_die "stop it first: scripts/mailpit.sh stop --data-dir $data_dir"
    mailpit_lines "$PREV_SMTP_PORT" "$PREV_HTTP_PORT"
    return 0
  fi

  smtp="${smtp:-$PREV_SMTP_PORT}"
  http="${http:-$PREV_HTTP_PORT}"
  fp_fill_free_ports smtp http
  fp_require_port "--smtp-port" "$smtp"
  fp_require_port "--http-port" "$http"
  [[ "$smtp" != "$http" ]] || fp_die "SMTP and HTTP port are both $smtp"
  fp_port_open "$smtp" && fp_die "SMTP port $smtp is already in use"
  fp_port_open "$http" && fp_die "HTTP port $http is already in use"

  mailpit_install --verbose
  printf 'SMTP_PORT=%s\nHTTP_PORT=%s\n' "$smtp" "$http" >"$data_dir/flatpack-mailpit.env"

  local -a mailpit=("$MAILPIT_BIN" --smtp "127.0.0.1:$smtp" --listen "127.0.0.1:$http"
    --database "$data_dir/mailpit.db" --smtp-auth-accept-any --smtp-auth-allow-insecure
    --smtp-disable-rdns --disable-version-check)
  fp_log "starting Mailpit $MAILPIT_VERSION: SMTP 127.0.0.1:$smtp, HTTP 127.0.0.1:$http, data dir $data_dir"
  [[ "$mode" == start ]] || fp_exec "$data_dir" mailpit "${mailpit[@]}" "${passthrough[@]}"
  if [[ -f "$data_dir/mailpit.log" ]]; then mv -f -- "$data_dir/mailpit.log" "$data_dir/mailpit.log.prev"; fi
  fp_launch "$data_dir" mailpit "$owner" "${MAILPIT_STOP_TIMEOUT:-10}" "Mailpit" \
    "${mailpit[@]}" --log-file "$data_dir/mailpit.log" "${passthrough[@]}"
  pid="$FP_PID"
  fp_await_ready "$data_dir" mailpit "$(mailpit_pid_marker "$data_dir")" "Mailpit" "$timeout" \
    "SMTP port $smtp open and http://127.0.0.1:$http/livez answering" \
    "$data_dir/mailpit.log:$data_dir/mailpit.out" mailpit_ready "$smtp" "$http"
  fp_log "Mailpit ready (pid $pid): SMTP 127.0.0.1:$smtp, http://127.0.0.1:$http"
  mailpit_lines "$smtp" "$http"
}

cmd_stop() {
  fp_parse_data_dir_args stop "${MAILPIT_DATA_DIR:-}" "$@"
  fp_stop_service "$FP_DATA_DIR" mailpit "$(mailpit_pid_marker "$FP_DATA_DIR")" \
    "${FP_TIMEOUT:-${MAILPIT_STOP_TIMEOUT:-10}}" "Mailpit"
}

cmd_status() {
  local dir pid PREV_SMTP_PORT="" PREV_HTTP_PORT=""
  fp_parse_data_dir_args status "${MAILPIT_DATA_DIR:-}" "$@"
  dir="$FP_DATA_DIR"
  fp_read_env_file "$dir/flatpack-mailpit.env" PREV_
  if pid="$(mailpit_running_pid "$dir")"; then
    printf 'MAILPIT_STATUS=running\nMAILPIT_PID=%s\n' "$pid"
    [[ -z "$PREV_SMTP_PORT" ]] || mailpit_lines "$PREV_SMTP_PORT" "$PREV_HTTP_PORT"
    if [[ -n "$PREV_SMTP_PORT" ]] && mailpit_ready "$PREV_SMTP_PORT" "$PREV_HTTP_PORT"; then
      fp_log "Mailpit pid $pid serves (data dir $dir)"
    else
      fp_log "Mailpit pid $pid runs but does not answer yet (data dir $dir)"
    fi
    return 0
  fi
  printf 'MAILPIT_STATUS=stopped\n'
  [[ -z "$PREV_SMTP_PORT" ]] || mailpit_lines "$PREV_SMTP_PORT" "$PREV_HTTP_PORT"
  fp_log "no Mailpit runs for data dir $dir"
  return 3
}

main() {
  local cmd="${1:-}"
  (($#)) && shift
  case "$cmd" in
    install) mailpit_install --verbose ui ;;
    fetch) mailpit_install --verbose any ;;
    start | run) cmd_start "$cmd" "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    -h | --help | help) usage ;;
    "") usage >&2; exit 2 ;;
    *) fp_die "unknown command '$cmd' (see --help)" ;;
  esac
}

main "$@"
