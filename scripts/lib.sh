# shellcheck shell=bash
# Shared helpers for the scripts in this folder. Source it; it defines fp_* functions and
# runs nothing. Everything here logs to stderr: the callers keep stdout for their
# machine-readable KEY=VALUE lines.
#
# One way to run a long-lived program (a broker, Mailpit, the podman API): its script runs it
# in the foreground (`kafka.sh run`, `mailpit.sh run`, `containers.py serve`), and whoever
# needs it owns the process: supervisord (run.sh), or a script with fp_spawn, fp_await and
# fp_stop, or a test holding the child. Nothing keeps pid files or polls for its owner.

FP_NAME="${FP_NAME:-flatpack}" # prefix of log lines; callers set it before sourcing

fp_log() { printf '%s: %s\n' "$FP_NAME" "$*" >&2; }
fp_die() { printf '%s: error: %s\n' "$FP_NAME" "$*" >&2; exit 1; }

# Exports each KEY=VALUE line of <text> (what the install scripts print).
fp_export_lines() { # <text>
  local line
  while IFS= read -r line; do
    [[ "$line" == *=* ]] && export "${line?}"
  done <<<"$1"
}

# Root of everything downloaded or built; never inside the git tree.
fp_cache_dir() { printf '%s\n' "${FLATPACK_CACHE_DIR:-${HOME:?HOME is not set}/.cache/flatpack}"; }

fp_is_uint() { [[ "${1-}" =~ ^[0-9]+$ ]]; }

fp_need_cmd() { # <cmd>...
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || fp_die "'$c' is required but not on PATH"
  done
}

# Fail unless an option that takes a value has a non-empty one.
fp_need_value() { # <option> <remaining-arg-count> <next-arg>
  (($2 >= 2)) || fp_die "option $1 needs a value"
  [[ -n "$3" ]] || fp_die "option $1 needs a non-empty value"
}

# Absolute, symlink-free path of a directory, creating it if needed.
fp_abs_dir() {
  mkdir -p -- "$1" || fp_die "cannot create directory $1"
  (cd -- "$1" && pwd -P)
}

fp_mktemp_dir() { mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX" || fp_die "mktemp failed"; }

# Is something accepting TCP connections on 127.0.0.1:<port>?
fp_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Fail unless <value> is a TCP port number nothing listens on yet.
fp_free_port_arg() { # <option> <value>
  if ! fp_is_uint "$2" || (($2 == 0 || $2 > 65535)); then
    fp_die "$1 must be a TCP port number, got '$2'"
  fi
  ! fp_port_open "$2" || fp_die "$1: port $2 is already in use"
}

# Print <n> distinct free TCP ports on 127.0.0.1, one per line (all held open together, so
# that they differ).
fp_free_ports() {
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))' "${1:-1}"
}

# Run "$@" under an exclusive lock on <lockfile> (serialises installs into the cache).
fp_with_lock() { # <lockfile> <cmd...>
  local lock="$1"
  shift
  mkdir -p -- "$(dirname -- "$lock")"
  (
    flock -x 9 || exit 1
    "$@"
  ) 9>"$lock"
}

# The version of Go module <module> that <binary> was built from (its embedded build info).
fp_go_version_of() { go version -m "$1" 2>/dev/null | awk -v m="$2" '$1 == "mod" && $2 == m { print $3 }'; }

# HTTP GET <url> answers 2xx?
fp_http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }

# ---------------------------------------------------------------- processes

# Start "<cmd...>" in the background, in a session of its own (the terminal's Ctrl-C reaches
# the caller, which then stops it in order), output appended to <log>. The kernel sends it
# SIGTERM when the calling shell dies, SIGKILLed or not. Sets FP_PID.
fp_spawn() { # <log> <cmd...>
  local log="$1"
  shift
  setsid setpriv --pdeathsig TERM -- "$@" </dev/null >>"$log" 2>&1 &
  FP_PID=$!
}

# Wait until <probe...> succeeds. When <pid> exits first or <timeout> s pass, show the end of
# <log>, stop <pid> and fail, naming <what> was awaited.
fp_await() { # <pid> <timeout> <what> <log> <probe...>
  local pid="$1" timeout="$2" what="$3" log="$4" deadline
  shift 4
  deadline=$((SECONDS + timeout))
  until "$@"; do
    if ! fp_alive "$pid" || ((SECONDS >= deadline)); then
      fp_log "----- last lines of $log -----"
      tail -n 40 -- "$log" >&2 || true
      fp_alive "$pid" || fp_die "pid $pid exited while waiting for $what"
      fp_stop "$pid" 10
      fp_die "no $what within ${timeout}s"
    fi
    sleep 0.25
  done
}

# Runs <pid>, and is not a zombie waiting for its parent?
fp_alive() { kill -0 "$1" 2>/dev/null && [[ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

# SIGTERM the session (process group) <pid> leads, SIGKILL after <timeout> s.
fp_stop() { # <pid> <timeout>
  local deadline=$((SECONDS + $2))
  kill -TERM -- "-$1" 2>/dev/null || return 0
  while fp_alive "$1" && ((SECONDS < deadline)); do sleep 0.2; done
  kill -KILL -- "-$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
