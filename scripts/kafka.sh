#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Real Apache Kafka 4.x (KRaft) as a plain JVM process, no Docker.
# Run `scripts/kafka.sh --help` for the interface.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck disable=SC2034 # read by lib.sh
FP_NAME="kafka.sh"
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_POM="$SCRIPT_DIR/kafka/pom.xml"
KAFKA_HOME_DIR="$(fp_cache_dir)/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME_DIR/libs"
KAFKA_STAMP="$KAFKA_HOME_DIR/.complete"
# Maven's local repository lives in the cache too, so deleting the cache dir
# really means starting from nothing.
KAFKA_MAVEN_REPO="${KAFKA_MAVEN_REPO:-$(fp_cache_dir)/maven-repo}"

usage() {
  cat <<EOF
Usage: scripts/kafka.sh <command> [options]

Runs Apache Kafka $KAFKA_VERSION (KRaft, combined broker+controller) as a JVM
process. Jars are fetched from Maven Central with mvn into
  \${FLATPACK_CACHE_DIR:-\$HOME/.cache/flatpack}/kafka-<version>/libs
and reused afterwards. Only KEY=VALUE lines go to stdout; logs go to stderr.

Commands:
  fetch                 Download Kafka + dependencies into the cache (no-op if cached).
  start [options]       Fetch if needed, write <data-dir>/server.properties, format
                        KRaft storage unless already formatted, start the broker
                        in the background, wait until it serves, then print
                          KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port>
                        If the data dir's broker already runs, just prints that line.
  run [options]         Like start, but run the broker in the foreground (the JVM
                        replaces this script, keeping its pid) until it is
                        stopped, logging its output to stdout: for a process
                        supervisor. Fails if the data dir's broker already runs.
                        --owner-pid, --no-wait and --timeout do not apply.
  wait --data-dir D [--timeout S]
                        Wait until the broker of D serves (after start --no-wait),
                        then print the KAFKA_BOOTSTRAP_SERVERS line.
  stop --data-dir D [--timeout S]
                        SIGTERM the broker (and its watchdog), SIGKILL after S
                        (default 30) seconds. Exit 0 also when nothing runs.
  status --data-dir D   Print KAFKA_STATUS=running|stopped, KAFKA_PID=<pid> and
                        KAFKA_BOOTSTRAP_SERVERS=...; exit 0 running, 3 stopped.
  cluster-id            Print a new random cluster id (for multi-node --cluster-id).
  classpath             Print the class path ("<libs>/*"), fetching if needed.
  cli <class> [args]    Run a Kafka CLI main class from the same class path, e.g.
                          scripts/kafka.sh cli org.apache.kafka.tools.TopicCommand \\
                            --bootstrap-server 127.0.0.1:PORT --list
  -h, --help            This help.

start options (environment variable in brackets; option wins over variable):
  --data-dir D          Data dir holding config, pid, logs and Kafka data
                        [KAFKA_DATA_DIR]; default: new \${TMPDIR:-/tmp}/flatpack-kafka.XXXXXX
  --node-id N           KRaft node id [KAFKA_NODE_ID]; default 1
  --port P              Client (PLAINTEXT) listener port [KAFKA_PORT]; default: free port
  --controller-port P   Controller listener port [KAFKA_CONTROLLER_PORT]; default:
                        this node's port in --voters, else a free port
  --voters LIST         Static controller quorum, "1@127.0.0.1:9093,2@127.0.0.1:9094,..."
                        [KAFKA_VOTERS]; default: this node alone. Replication
                        factors follow the voter count: RF=min(voters,3),
                        min ISR 2 when RF is 3, else 1.
  --cluster-id ID       Cluster id used when formatting [KAFKA_CLUSTER_ID];
                        required with more than one voter (see cluster-id);
                        default for one node: a random one.
  --partitions N        num.partitions [KAFKA_PARTITIONS]; default 3
  --owner-pid PID       Stop the broker once PID exits (a watchdog checks every 2 s)
                        [FLATPACK_OWNER_PID]; 0 disables. Default: the leader of
                        kafka.sh's process group, i.e. the job a shell started
                        (test runner script, make, cargo; subshells and pipelines
                        in between don't count), or kafka.sh's parent (an
                        interactive shell) when kafka.sh leads its own group.
  --no-wait             Do not wait for readiness (needed for multi-node: start
                        every node with --no-wait, then 'wait' for each).
  --timeout S           Readiness timeout in seconds [KAFKA_START_TIMEOUT]; default 90

Pass --data-dir when you want to stop the broker later: the default temp dir
is only named on stderr. A restart on an existing data dir reuses its node id,
ports, voters and data (storage is formatted only once).
auto.create.topics.enable=false: create topics yourself.

Other environment:
  KAFKA_VERSION         Kafka version (default 4.1.1; 4.1.x and 4.2.x are on Maven Central)
  KAFKA_HEAP_OPTS       Broker heap (default "-Xms256m -Xmx1g")
  KAFKA_JVM_PERFORMANCE_OPTS  GC flags (default as Kafka's kafka-run-class.sh)
  KAFKA_OPTS            Extra JVM options for the broker
  KAFKA_STOP_TIMEOUT    Seconds between SIGTERM and SIGKILL (default 30)
  FLATPACK_CACHE_DIR    Cache root (default \$HOME/.cache/flatpack)
  KAFKA_MAVEN_REPO      Maven local repository (default \$FLATPACK_CACHE_DIR/maven-repo)

Files in the data dir: server.properties, kafka.pid, kafka.watchdog.pid,
server.log (broker log, INFO; previous start's log in server.log.prev),
kafka.out (JVM stdout/stderr), watchdog.log, kraft-data/ (log.dirs).

Three nodes on one machine:
  id=\$(scripts/kafka.sh cluster-id)
  v=1@127.0.0.1:19093,2@127.0.0.1:19094,3@127.0.0.1:19095
  for n in 1 2 3; do
    scripts/kafka.sh start --no-wait --node-id \$n --port \$((19190+n)) \\
      --voters "\$v" --cluster-id "\$id" --data-dir /tmp/k\$n
  done
  for n in 1 2 3; do scripts/kafka.sh wait --data-dir /tmp/k\$n; done
  # later: the last nodes can't shut down cleanly without a controller
  # majority and get SIGKILLed after KAFKA_STOP_TIMEOUT; lower it to stop fast:
  for n in 3 2 1; do KAFKA_STOP_TIMEOUT=5 scripts/kafka.sh stop --data-dir /tmp/k\$n; done
EOF
}

# ---------------------------------------------------------------- fetching

kafka_fingerprint() {
  local pom_sum
  pom_sum="$(sha256sum <"$KAFKA_POM" | cut -d' ' -f1)"
  printf 'kafka=%s pom=%s\n' "$KAFKA_VERSION" "$pom_sum"
}

kafka_cached() {
  [[ -f "$KAFKA_STAMP" && -d "$KAFKA_LIBS" ]] &&
    [[ "$(cat -- "$KAFKA_STAMP")" == "$(kafka_fingerprint)" ]]
}

# log4j2 version to pair with a Kafka version: what its kafka-server pom in
# the local Maven repository declares, else a known default.
kafka_log4j_version() {
  local pom="$KAFKA_MAVEN_REPO/org/apache/kafka/kafka-server/$KAFKA_VERSION/kafka-server-$KAFKA_VERSION.pom" v=""
  if [[ -f "$pom" ]]; then
    v="$(grep -A1 '<artifactId>log4j-core</artifactId>' "$pom" |
      sed -n 's:.*<version>\([^<]*\)</version>.*:\1:p' | head -n1)" || true
  fi
  if [[ -z "$v" ]]; then
    case "$KAFKA_VERSION" in
      4.0.* | 4.1.*) v=2.24.3 ;;
      *) v=2.25.3 ;;
    esac
  fi
  printf '%s\n' "$v"
}

kafka_mvn_copy() { # <output-dir> <log4j-version>
  rm -rf -- "$1"
  fp_log "mvn: resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION (log4j $2) into $1"
  mvn -q -B -Dstyle.color=never -f "$KAFKA_POM" \
    -Dmaven.repo.local="$KAFKA_MAVEN_REPO" \
    -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$2" \
    dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$1" 2>&1 |
    sed -e $'s/\e\\[0m//g' -e '/^$/d' >&2 || { # Debian's mvn 3.8 prints stray colour resets
    rm -rf -- "$1"
    fp_die "mvn could not fetch Kafka $KAFKA_VERSION (is that version on Maven Central?)"
  }
}

kafka_fetch_locked() {
  if kafka_cached; then return 0; fi # another process finished it meanwhile
  fp_need_cmd mvn java
  local tmp="$KAFKA_HOME_DIR/libs.tmp.$$" guess want
  guess="$(kafka_log4j_version)"
  kafka_mvn_copy "$tmp" "$guess"
  want="$(kafka_log4j_version)" # now read from the downloaded kafka-server pom
  if [[ "$want" != "$guess" ]]; then
    fp_log "Kafka $KAFKA_VERSION declares log4j $want, fetching again with it"
    kafka_mvn_copy "$tmp" "$want"
  fi
  local jar
  for jar in "kafka_2.13-$KAFKA_VERSION.jar" "kafka-tools-$KAFKA_VERSION.jar" \
    "kafka-clients-$KAFKA_VERSION.jar" "log4j-core-$want.jar" "log4j-slf4j-impl-$want.jar"; do
    [[ -f "$tmp/$jar" ]] || fp_die "fetched class path lacks $jar"
  done
  rm -rf -- "$KAFKA_LIBS"
  mv -- "$tmp" "$KAFKA_LIBS"
  kafka_fingerprint >"$KAFKA_STAMP" # written last: marks the cache complete
  fp_log "Kafka $KAFKA_VERSION cached in $KAFKA_LIBS ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars)"
}

kafka_fetch() {
  if kafka_cached; then
    [[ "${1-}" != --verbose ]] || fp_log "Kafka $KAFKA_VERSION: using cached $KAFKA_LIBS"
    return 0
  fi
  [[ -f "$KAFKA_POM" ]] || fp_die "missing $KAFKA_POM"
  mkdir -p -- "$KAFKA_HOME_DIR"
  fp_with_lock "$KAFKA_HOME_DIR/.lock" kafka_fetch_locked
  kafka_cached || fp_die "fetching Kafka $KAFKA_VERSION failed"
}

# Run a Kafka main class (short-lived tool) on the cached class path.
# Its stdout is the caller's; logging goes to stderr at WARN.
kafka_run_tool() { # <main-class> [args...]
  local -a heap
  read -r -a heap <<<"${KAFKA_CLI_HEAP_OPTS:--Xmx512m}"
  java "${heap[@]}" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SCRIPT_DIR/kafka/tools-log4j2.xml" \
    -cp "$KAFKA_LIBS/*" "$@"
}

kafka_new_cluster_id() {
  kafka_run_tool kafka.tools.StorageTool random-uuid | tail -n1
}

# ---------------------------------------------------------------- data dir

kafka_pid_marker() { printf '%s\n' "$1/server.properties"; }

kafka_running_pid() { # <data-dir>
  fp_pidfile_pid "$1/kafka.pid" "$(kafka_pid_marker "$1")"
}

kafka_ready() { # <data-dir> <port>
  fp_port_open "$2" && grep -q 'Kafka Server started' "$1/server.log" 2>/dev/null
}

kafka_bootstrap_line() { printf 'KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:%s\n' "$1"; }

# Wait for readiness; on failure show the log, stop the JVM and fail.
kafka_wait_ready() { # <data-dir> <port> <timeout>
  local dir="$1" port="$2" timeout="$3"
  fp_log "waiting up to ${timeout}s for the broker on 127.0.0.1:$port (log: $dir/server.log)"
  fp_await_ready "$dir" kafka "$(kafka_pid_marker "$dir")" "Kafka broker" "$timeout" \
    "port $port open and 'Kafka Server started' in server.log" \
    "$dir/server.log:$dir/kafka.out" kafka_ready "$dir" "$port"
  fp_log "Kafka $KAFKA_VERSION ready on 127.0.0.1:$port (data dir $dir)"
}

# ---------------------------------------------------------------- commands

cmd_start() { # <start|run> [options]
  local mode="$1"
  shift
  local data_dir="${KAFKA_DATA_DIR:-}" node_id="${KAFKA_NODE_ID:-}" port="${KAFKA_PORT:-}"
  local cport="${KAFKA_CONTROLLER_PORT:-}" voters="${KAFKA_VOTERS:-}"
  local cluster_id="${KAFKA_CLUSTER_ID:-}" partitions="${KAFKA_PARTITIONS:-}"
  local owner="${FLATPACK_OWNER_PID:-}" wait=1 timeout="${KAFKA_START_TIMEOUT:-90}"
  while (($#)); do
    case "$1" in
      --data-dir) fp_need_value "$1" $# "${2-}"; data_dir="$2"; shift 2 ;;
      --node-id) fp_need_value "$1" $# "${2-}"; node_id="$2"; shift 2 ;;
      --port) fp_need_value "$1" $# "${2-}"; port="$2"; shift 2 ;;
      --controller-port) fp_need_value "$1" $# "${2-}"; cport="$2"; shift 2 ;;
      --voters) fp_need_value "$1" $# "${2-}"; voters="$2"; shift 2 ;;
      --cluster-id) fp_need_value "$1" $# "${2-}"; cluster_id="$2"; shift 2 ;;
      --partitions) fp_need_value "$1" $# "${2-}"; partitions="$2"; shift 2 ;;
      --owner-pid) fp_need_value "$1" $# "${2-}"; owner="$2"; shift 2 ;;
      --timeout) fp_need_value "$1" $# "${2-}"; timeout="$2"; shift 2 ;;
      --no-wait) wait=0; shift ;;
      -h | --help) usage; exit 0 ;;
      *) fp_die "start: unknown option '$1' (see --help)" ;;
    esac
  done
  fp_is_uint "$timeout" || fp_die "--timeout must be a number of seconds"
  [[ -n "$owner" || "$mode" == run ]] || owner="$(fp_default_owner)"
  fp_is_uint "${owner:-0}" || fp_die "--owner-pid must be a pid (or 0), got '$owner'"

  [[ -n "$data_dir" ]] || data_dir="$(fp_mktemp_dir flatpack-kafka)"
  data_dir="$(fp_abs_dir "$data_dir")"
  local props="$data_dir/server.properties" log_dirs="$data_dir/kraft-data"

  # Settings of an earlier start on this data dir are the defaults now.
  local PREV_NODE_ID="" PREV_PORT="" PREV_CONTROLLER_PORT="" PREV_VOTERS="" PREV_PARTITIONS=""
  fp_read_env_file "$data_dir/flatpack-kafka.env" PREV_

  local pid
  if pid="$(kafka_running_pid "$data_dir")"; then
    fp_log "broker of $data_dir already runs (pid $pid)"
    [[ "$mode" == start ]] || fp_die "stop it first: scripts/kafka.sh stop --data-dir $data_dir"
    [[ -n "$PREV_PORT" ]] || fp_die "no port recorded in $data_dir/flatpack-kafka.env"
    if ((wait)); then kafka_wait_ready "$data_dir" "$PREV_PORT" "$timeout"; fi
    kafka_bootstrap_line "$PREV_PORT"
    return 0
  fi
  local voters_explicit="$voters"
  node_id="${node_id:-${PREV_NODE_ID:-1}}"
  port="${port:-$PREV_PORT}"
  voters="${voters:-$PREV_VOTERS}"
  partitions="${partitions:-${PREV_PARTITIONS:-3}}"
  [[ -n "$voters_explicit" ]] || voters_explicit="$PREV_VOTERS"
  fp_is_uint "$node_id" || fp_die "--node-id must be a number, got '$node_id'"
  if ! fp_is_uint "$partitions" || ((partitions == 0)); then fp_die "--partitions must be a positive number"; fi

  # Controller quorum: from --voters, this node's entry gives its controller port.
  local -a entries=()
  local n_voters=0 entry my_voter_port=""
  if [[ -n "$voters" ]]; then
    IFS=',' read -r -a entries <<<"$voters"
    for entry in "${entries[@]}"; do
      [[ "$entry" =~ ^([0-9]+)@([^:@,]+):([0-9]+)$ ]] ||
        fp_die "bad --voters entry '$entry' (want ID@HOST:PORT)"
      n_voters=$((n_voters + 1))
      if ((BASH_REMATCH[1] == node_id)); then my_voter_port="${BASH_REMATCH[3]}"; fi
    done
    [[ -n "$my_voter_port" ]] || fp_die "node id $node_id is not among the voters '$voters'"
    if [[ -n "$cport" && "$cport" != "$my_voter_port" ]]; then
      fp_die "--controller-port $cport differs from node $node_id's port $my_voter_port in --voters"
    fi
    cport="$my_voter_port"
  else
    cport="${cport:-$PREV_CONTROLLER_PORT}"
    n_voters=1
  fi

  fp_fill_free_ports port cport
  fp_require_port "--port" "$port"
  fp_require_port "--controller-port" "$cport"
  [[ "$port" != "$cport" ]] || fp_die "client and controller port are both $port"
  [[ -n "$voters" ]] || voters="$node_id@127.0.0.1:$cport"
  fp_port_open "$port" && fp_die "port $port is already in use"
  fp_port_open "$cport" && fp_die "controller port $cport is already in use"

  local formatted=0
  [[ -f "$log_dirs/meta.properties" ]] && formatted=1
  if ((!formatted && n_voters > 1)) && [[ -z "$cluster_id" ]]; then
    fp_die "with $n_voters voters every node needs the same --cluster-id (make one with: scripts/kafka.sh cluster-id)"
  fi

  local rf min_isr
  rf=$((n_voters < 3 ? n_voters : 3))
  min_isr=$((rf >= 3 ? 2 : 1))

  kafka_fetch --verbose
  fp_need_cmd java

  cat >"$props" <<EOF
# Written by scripts/kafka.sh at each start; edits are overwritten.
process.roles=broker,controller
node.id=$node_id
controller.quorum.voters=$voters
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$log_dirs
num.partitions=$partitions
auto.create.topics.enable=false
delete.topic.enable=true
group.initial.rebalance.delay.ms=0
# replication follows the number of voters ($n_voters)
default.replication.factor=$rf
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$min_isr
# small machine: fewer threads than the defaults
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
  cat >"$data_dir/flatpack-kafka.env" <<EOF
NODE_ID=$node_id
PORT=$port
CONTROLLER_PORT=$cport
VOTERS=$voters_explicit
PARTITIONS=$partitions
KAFKA_VERSION=$KAFKA_VERSION
EOF

  # Format once; a formatted data dir keeps its data across restarts.
  if ((formatted)); then
    local have_id
    have_id="$(sed -n 's/^cluster\.id=//p' "$log_dirs/meta.properties")"
    if [[ -n "$cluster_id" && "$cluster_id" != "$have_id" ]]; then
      fp_die "$log_dirs is formatted for cluster $have_id, not $cluster_id"
    fi
    fp_log "storage already formatted (cluster id $have_id), keeping data"
  else
    [[ -n "$cluster_id" ]] || cluster_id="$(kafka_new_cluster_id)"
    fp_log "formatting $log_dirs for cluster $cluster_id"
    kafka_run_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$props" >&2 ||
      fp_die "formatting KRaft storage failed"
  fi

  # Fresh log per start (the previous one kept), so readiness is judged on
  # this start's lines only.
  if [[ -f "$data_dir/server.log" ]]; then mv -f -- "$data_dir/server.log" "$data_dir/server.log.prev"; fi
  cp -- "$SCRIPT_DIR/kafka/log4j2.xml" "$data_dir/log4j2.xml"

  local -a heap perf extra
  read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
  read -r -a perf <<<"${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
  read -r -a extra <<<"${KAFKA_OPTS:-}"
  local -a java=(java "${heap[@]}" "${perf[@]}" -Dkafka.logs.dir="$data_dir"
    -Dlog4j2.configurationFile="$data_dir/log4j2.xml" "${extra[@]}" -cp "$KAFKA_LIBS/*" kafka.Kafka "$props")
  fp_log "starting Kafka $KAFKA_VERSION node $node_id: client 127.0.0.1:$port, controller 127.0.0.1:$cport, voters $voters"
  [[ "$mode" == start ]] || fp_exec "$data_dir" kafka "${java[@]}"
  fp_launch "$data_dir" kafka "$owner" "${KAFKA_STOP_TIMEOUT:-30}" "Kafka broker" "${java[@]}"

  if ((wait)); then
    kafka_wait_ready "$data_dir" "$port" "$timeout"
  else
    fp_log "started pid $FP_PID without waiting (data dir $data_dir); use: scripts/kafka.sh wait --data-dir $data_dir"
  fi
  kafka_bootstrap_line "$port"
}

cmd_stop() {
  fp_parse_data_dir_args stop "${KAFKA_DATA_DIR:-}" "$@"
  fp_stop_service "$FP_DATA_DIR" kafka "$(kafka_pid_marker "$FP_DATA_DIR")" \
    "${FP_TIMEOUT:-${KAFKA_STOP_TIMEOUT:-30}}" "Kafka broker"
}

cmd_status() {
  local dir pid PREV_PORT=""
  fp_parse_data_dir_args status "${KAFKA_DATA_DIR:-}" "$@"
  dir="$FP_DATA_DIR"
  fp_read_env_file "$dir/flatpack-kafka.env" PREV_
  if pid="$(kafka_running_pid "$dir")"; then
    printf 'KAFKA_STATUS=running\nKAFKA_PID=%s\n' "$pid"
    [[ -z "$PREV_PORT" ]] || kafka_bootstrap_line "$PREV_PORT"
    if [[ -n "$PREV_PORT" ]] && kafka_ready "$dir" "$PREV_PORT"; then
      fp_log "broker pid $pid serves on 127.0.0.1:$PREV_PORT (data dir $dir)"
    else
      fp_log "broker pid $pid runs but does not serve yet (data dir $dir)"
    fi
    return 0
  fi
  printf 'KAFKA_STATUS=stopped\n'
  [[ -z "$PREV_PORT" ]] || kafka_bootstrap_line "$PREV_PORT"
  fp_log "no broker runs for data dir $dir"
  return 3
}

cmd_wait() {
  local dir PREV_PORT=""
  fp_parse_data_dir_args wait "${KAFKA_DATA_DIR:-}" "$@"
  dir="$FP_DATA_DIR"
  fp_read_env_file "$dir/flatpack-kafka.env" PREV_
  [[ -n "$PREV_PORT" ]] || fp_die "no broker was started in $dir"
  kafka_running_pid "$dir" >/dev/null || {
    fp_tail_log "$dir/server.log"
    fp_die "no broker runs for data dir $dir"
  }
  kafka_wait_ready "$dir" "$PREV_PORT" "${FP_TIMEOUT:-${KAFKA_START_TIMEOUT:-90}}"
  kafka_bootstrap_line "$PREV_PORT"
}

main() {
  local cmd="${1:-}"
  (($#)) && shift
  case "$cmd" in
    fetch) kafka_fetch --verbose ;;
    start | run) cmd_start "$cmd" "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    wait) cmd_wait "$@" ;;
    cluster-id) kafka_fetch && kafka_new_cluster_id ;;
    classpath) kafka_fetch && printf '%s\n' "$KAFKA_LIBS/*" ;;
    cli)
      (($#)) || fp_die "cli needs a main class, e.g. org.apache.kafka.tools.TopicCommand"
      kafka_fetch
      kafka_run_tool "$@"
      ;;
    -h | --help | help) usage ;;
    "") usage >&2; exit 2 ;;
    *) fp_die "unknown command '$cmd' (see --help)" ;;
  esac
}

main "$@"
