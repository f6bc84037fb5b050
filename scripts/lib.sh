# shellcheck shell=bash
# Shared helpers for the scripts in this folder.
#
# Source it; it defines fp_* functions and nothing runs at source time except
# variable defaults. Everything here logs to stderr: the callers keep stdout
# for their machine-readable KEY=VALUE lines.
#
# Conventions for a background service managed here:
#   <data-dir>/<name>.pid           pid of the service process
#   <data-dir>/<name>.watchdog.pid  pid of its watchdog (see fp_spawn_watchdog)
# A pid is only trusted when /proc/<pid>/cmdline still contains a marker
# string (a path inside the data dir), so a recycled pid is never killed.

# Name used as prefix in log lines; callers set it before sourcing.
FP_NAME="${FP_NAME:-flatpack}"

fp_log() { printf '%s: %s\n' "$FP_NAME" "$*" >&2; }
fp_die() { printf '%s: error: %s\n' "$FP_NAME" "$*" >&2; exit 1; }

# Root of everything downloaded or built; never inside the git tree.
# Exports each KEY=VALUE line of <text> (what kafka.sh and mailpit.sh print).
fp_export_lines() { # <text>
  local line
  while IFS= read -r line; do
    [[ "$line" == *=* ]] && export "${line?}"
  done <<<"$1"
}

fp_cache_dir() { printf '%s\n' "${FLATPACK_CACHE_DIR:-${HOME:?HOME is not set}/.cache/flatpack}"; }

fp_is_uint() { [[ "${1-}" =~ ^[0-9]+$ ]]; }

fp_require_port() { # <what> <value>
  if ! fp_is_uint "$2" || (($2 == 0 || $2 > 65535)); then
    fp_die "$1 must be a TCP port number, got '$2'"
  fi
}

fp_need_cmd() { # <cmd>...
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || fp_die "'$c' is required but not on PATH"
  done
}

# Absolute, symlink-free path of a directory, creating it if needed.
fp_abs_dir() {
  mkdir -p -- "$1" || fp_die "cannot create directory $1"
  (cd -- "$1" && pwd -P)
}

# New private temporary directory: fp_mktemp_dir <prefix>
fp_mktemp_dir() {
  mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX" || fp_die "mktemp failed"
}

# Is something accepting TCP connections on 127.0.0.1:<port>?
fp_port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Print <n> distinct free TCP ports on 127.0.0.1, one per line. All sockets
# are held open together so the n ports differ; the kernel does not hand a
# just-released ephemeral port out again right away.
fp_free_ports() {
  local n="${1:-1}"
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$n" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
    return
  fi
  # Fallback without python3: random ports above the ephemeral range
  # (32768-60999 on Linux) that nothing listens on.
  local -a got=()
  local p tries=0
  while ((${#got[@]} < n)); do
    ((tries++ < 1000)) || fp_die "could not find $n free ports"
    p=$((61000 + RANDOM % 4500))
    [[ " ${got[*]} " == *" $p "* ]] && continue
    fp_port_open "$p" || got+=("$p")
  done
  printf '%s\n' "${got[@]}"
}

# Does <pid> run and does its command line contain <marker>?
fp_pid_matches() { # <pid> <marker>
  local pid="$1" marker="$2" cmd
  fp_is_uint "$pid" && ((pid > 1)) || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ -n "$cmd" && "$cmd" == *"$marker"* ]]
}

# Pid recorded in <pidfile> if that process runs and matches <marker>.
fp_pidfile_pid() { # <pidfile> <marker>
  local pid
  [[ -f "$1" ]] || return 1
  pid="$(head -n1 -- "$1" 2>/dev/null)" || return 1
  fp_pid_matches "$pid" "$2" || return 1
  printf '%s\n' "$pid"
}

# SIGTERM <pid>, wait up to <timeout> s, then SIGKILL and wait for it to go.
fp_terminate() { # <pid> <timeout-seconds> [<label>]
  local pid="$1" timeout="$2" label="${3:-process}" deadline
  kill -0 "$pid" 2>/dev/null || return 0
  fp_log "stopping $label (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
    # A zombie child of ours counts as gone.
    [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" == Z ]] && return 0
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    fp_log "$label (pid $pid) still running after ${timeout}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" == Z ]] && return 0
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && fp_die "could not kill $label (pid $pid)"
  fi
  return 0
}

# Stop the service of a data dir: its watchdog first, then the service.
# Returns 0 also when nothing was running.
fp_stop_service() { # <data-dir> <name> <marker> <timeout> <label>
  local dir="$1" name="$2" marker="$3" timeout="$4" label="$5" pid wd
  local pidfile="$dir/$name.pid" wdfile="$dir/$name.watchdog.pid"
  if wd="$(fp_pidfile_pid "$wdfile" "$wdfile")"; then
    kill -TERM "$wd" 2>/dev/null || true
  fi
  rm -f -- "$wdfile"
  if pid="$(fp_pidfile_pid "$pidfile" "$marker")"; then
    fp_terminate "$pid" "$timeout" "$label"
    fp_log "$label stopped"
  else
    fp_log "$label is not running (data dir $dir)"
  fi
  rm -f -- "$pidfile"
}

# Default owner of a service started by the calling script: the leader of
# its process group (the job a shell started: a test runner, make, cargo, an
# interactive shell for command substitutions), so that subshells and
# pipelines in between do not count; the parent when the script leads its
# own group (typed at an interactive prompt) or the leader is gone.
fp_default_owner() {
  local stat pgid
  stat="$(cat "/proc/$$/stat" 2>/dev/null)" || {
    printf '%s\n' "$PPID"
    return 0
  }
  stat="${stat##*) }" # fields after "pid (comm) ": state ppid pgrp ...
  read -r _ _ pgid _ <<<"$stat"
  if fp_is_uint "$pgid" && ((pgid > 1 && pgid != $$)) && kill -0 "$pgid" 2>/dev/null; then
    printf '%s\n' "$pgid"
  else
    printf '%s\n' "$PPID"
  fi
}

# Start a watchdog that stops <pid> (SIGTERM, then SIGKILL after <timeout> s)
# once <owner-pid> has exited, so a service does not outlive a caller that
# forgot to stop it, and then removes <pidfile>. Owner 0 (or 1) means: no
# watchdog. The watchdog's own pid goes to <wdfile>; its command line
# contains <wdfile> as marker.
fp_spawn_watchdog() { # <owner-pid> <pid> <pidfile> <wdfile> <timeout> <label> <logfile>
  local owner="$1" pid="$2" pidfile="$3" wdfile="$4" timeout="$5" label="$6" logfile="$7"
  fp_is_uint "$owner" || fp_die "owner pid must be a number, got '$owner'"
  if ((owner <= 1)); then
    rm -f -- "$wdfile"
    return 0
  fi
  if ! kill -0 "$owner" 2>/dev/null; then
    # Nobody would ever stop it: do not leave it running.
    fp_terminate "$pid" "$timeout" "$label"
    rm -f -- "$pidfile"
    fp_die "owner pid $owner does not run; $label stopped again"
  fi
  fp_log "$label stops when pid $owner ($(tr '\0' ' ' <"/proc/$owner/cmdline" 2>/dev/null | cut -c1-60)) exits (--owner-pid 0: never)"
  # bash -c with the arguments spelled out, so the marker is in its cmdline.
  # shellcheck disable=SC2016
  FP_NAME="$FP_NAME" bash -c '
    source "$1"
    owner="$2" pid="$3" pidfile="$4" wdfile="$5" timeout="$6" label="$7"
    while kill -0 "$pid" 2>/dev/null; do
      if ! kill -0 "$owner" 2>/dev/null; then
        fp_log "$(date "+%F %T") owner pid $owner exited; stopping $label"
        fp_terminate "$pid" "$timeout" "$label"
        rm -f -- "$pidfile" "$wdfile"
        fp_log "$(date "+%F %T") $label stopped"
        break
      fi
      sleep 2
    done
  ' fp-watchdog "${BASH_SOURCE[0]}" "$owner" "$pid" "$pidfile" "$wdfile" "$timeout" "$label" \
    </dev/null >>"$logfile" 2>&1 &
  printf '%s\n' "$!" >"$wdfile"
}

# Wait until <check-cmd...> succeeds, <pid> dies, or <timeout> s pass.
# Returns 0 ready, 1 timed out, 2 process died.
fp_wait_until() { # <pid> <timeout> <check-cmd...>
  local pid="$1" timeout="$2" deadline
  shift 2
  deadline=$((SECONDS + timeout))
  while :; do
    "$@" && return 0
    kill -0 "$pid" 2>/dev/null || return 2
    [[ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" == Z ]] && return 2
    ((SECONDS < deadline)) || return 1
    sleep 0.25
  done
}

# Run "$@" under an exclusive lock on <lockfile> (serialises concurrent
# fetches into the same cache). Without flock(1) it just runs.
fp_with_lock() { # <lockfile> <cmd...>
  local lock="$1"
  shift
  mkdir -p -- "$(dirname -- "$lock")"
  if command -v flock >/dev/null 2>&1; then
    (
      flock -x 9 || exit 1
      "$@"
    ) 9>"$lock"
  else
    "$@"
  fi
}

# HTTP GET <url> answers 2xx?
fp_http_ok() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
  fi
}

# Print the last lines of a log file to stderr (for start failures).
fp_tail_log() { # <file> [<lines>]
  if [[ -s "$1" ]]; then
    fp_log "----- last ${2:-40} lines of $1 -----"
    tail -n "${2:-40}" -- "$1" >&2 || true
    fp_log "----- end of $1 -----"
  fi
}

# Read KEY=VALUE lines (no quoting, no spaces around =) from a file into
# variables named <prefix>KEY. Unknown content is ignored.
fp_read_env_file() { # <file> <prefix>
  local k v
  [[ -f "$1" ]] || return 0
  while IFS='=' read -r k v; do
    [[ "$k" =~ ^[A-Z_][A-Z0-9_]*$ ]] || continue
    printf -v "$2$k" '%s' "$v"
  done <"$1"
}

# Fail unless an option that takes a value has a non-empty one.
fp_need_value() { # <option> <remaining-arg-count> <next-arg>
  (($2 >= 2)) || fp_die "option $1 needs a value"
  [[ -n "$3" ]] || fp_die "option $1 needs a non-empty value"
}

# Options of the data-dir commands (stop, status, wait): --data-dir D and
# --timeout S. Sets FP_DATA_DIR (absolute) and FP_TIMEOUT (empty if not
# given). -h/--help calls the sourcing script's usage function.
fp_parse_data_dir_args() { # <command> <default-data-dir> <args...>
  local cmd="$1"
  FP_DATA_DIR="$2" FP_TIMEOUT=""
  shift 2
  while (($#)); do
    case "$1" in
      --data-dir) fp_need_value "$1" $# "${2-}"; FP_DATA_DIR="$2"; shift 2 ;;
      --timeout) fp_need_value "$1" $# "${2-}"; FP_TIMEOUT="$2"; shift 2 ;;
      -h | --help) usage; exit 0 ;;
      *) fp_die "$cmd: unknown option '$1' (see --help)" ;;
    esac
  done
  [[ -n "$FP_DATA_DIR" ]] || fp_die "$cmd needs --data-dir D"
  [[ -d "$FP_DATA_DIR" ]] || fp_die "$cmd: no such data dir: $FP_DATA_DIR"
  FP_DATA_DIR="$(cd -- "$FP_DATA_DIR" && pwd -P)"
  if [[ -n "$FP_TIMEOUT" ]] && ! fp_is_uint "$FP_TIMEOUT"; then
    fp_die "--timeout must be a number of seconds"
  fi
}

# Give each named variable that is empty a free port; all ports distinct.
fp_fill_free_ports() { # <var-name>...
  local -a empty=() ports=()
  local v i
  for v in "$@"; do [[ -n "${!v}" ]] || empty+=("$v"); done
  ((${#empty[@]})) || return 0
  mapfile -t ports < <(fp_free_ports "${#empty[@]}")
  ((${#ports[@]} == ${#empty[@]})) || fp_die "could not pick free ports"
  for i in "${!empty[@]}"; do printf -v "${empty[$i]}" '%s' "${ports[$i]}"; done
}

# Start "<cmd...>" in the background inside <data-dir>, stdin from /dev/null,
# stdout+stderr appended to <data-dir>/<name>.out; write <name>.pid and spawn
# the watchdog for <owner-pid>. Sets FP_PID.
fp_launch() { # <data-dir> <name> <owner-pid> <stop-timeout> <label> <cmd...>
  local dir="$1" name="$2" owner="$3" timeout="$4" label="$5"
  shift 5
  # A session of its own: Ctrl-C at the terminal reaches the caller (which then stops
  # things in order), not the server behind its back.
  (
    cd -- "$dir" || exit 1
    if command -v setsid >/dev/null; then exec setsid "$@"; else exec "$@"; fi
  ) </dev/null >>"$dir/$name.out" 2>&1 &
  FP_PID=$!
  printf '%s\n' "$FP_PID" >"$dir/$name.pid"
  fp_spawn_watchdog "$owner" "$FP_PID" "$dir/$name.pid" "$dir/$name.watchdog.pid" \
    "$timeout" "$label" "$dir/watchdog.log"
}

# Run "<cmd...>" in the foreground inside <data-dir>, in place of the calling script (for a
# process supervisor): same pid, recorded in <data-dir>/<name>.pid so that the script's
# stop and status commands work as for a started service. Does not return.
fp_exec() { # <data-dir> <name> <cmd...>
  local dir="$1" name="$2"
  shift 2
  rm -f -- "$dir/$name.watchdog.pid"
  printf '%s\n' "$$" >"$dir/$name.pid"
  cd -- "$dir" || fp_die "cannot enter $dir"
  exec "$@"
}

# Wait for <check-cmd...>; when it does not succeed in time or the process
# dies, show <logs> (colon-separated files), stop the service and fail with a
# message that says what was awaited (<what>).
fp_await_ready() { # <data-dir> <name> <marker> <label> <timeout> <what> <logs> <check-cmd...>
  local dir="$1" name="$2" marker="$3" label="$4" timeout="$5" what="$6" logs="$7" rc=0 f pid
  shift 7
  pid="$(head -n1 -- "$dir/$name.pid" 2>/dev/null)" || fp_die "no pid file in $dir"
  fp_wait_until "$pid" "$timeout" "$@" || rc=$?
  ((rc == 0)) && return 0
  local -a files=()
  IFS=':' read -r -a files <<<"$logs"
  for f in "${files[@]}"; do fp_tail_log "$f"; done
  fp_stop_service "$dir" "$name" "$marker" 10 "$label" 2>/dev/null
  if ((rc == 1)); then
    fp_die "$label did not become ready within ${timeout}s (waited for: $what); logs: ${logs//:/ }"
  fi
  fp_die "$label (pid $pid) exited during start-up; see above and $dir"
}
