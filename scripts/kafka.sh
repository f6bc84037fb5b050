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

Runs Apache Kafka $KAFKA_VERSION (KRaft, combined broker and controller) as a JVM process, its
jars fetched from Maven Central with mvn into
\${FLATPACK_CACHE_DIR:-\$HOME/.cache/flatpack}/kafka-<version>/libs once.

Commands:
  fetch                 Download Kafka and its dependencies into the cache (once).
  run [options]         Write <data-dir>/server.properties, format the KRaft storage unless it
                        is formatted, and run the broker in the foreground (the JVM replaces
                        this script) until it is stopped (SIGTERM: a clean shutdown). It
                        serves once the client port accepts and <data-dir>/server.log says
                        "Kafka Server started". Whoever starts it owns it: supervisord
                        (run.sh), test.sh, a test, or a terminal (Ctrl-C stops it).
  cluster-id            Print a new random cluster id (for a cluster: --cluster-id).
  cli <class> [args]    Run a Kafka CLI main class on the same class path, e.g.
                          scripts/kafka.sh cli org.apache.kafka.tools.TopicCommand \\
                            --bootstrap-server 127.0.0.1:9092 --list

Options of run (environment variable in brackets; an option wins):
  --data-dir D          Config, logs and data [KAFKA_DATA_DIR]; default: a new temp dir
  --node-id N           KRaft node id [KAFKA_NODE_ID]; default 1
  --port P              Client listener port [KAFKA_PORT]; default 9092
  --controller-port P   Controller port [KAFKA_CONTROLLER_PORT]; default: this node's in
                        --voters, else the client port + 1
  --voters LIST         Controller quorum "1@127.0.0.1:9093,2@127.0.0.1:9094,..."
                        [KAFKA_VOTERS]; default: this node alone. Replication factor
                        min(voters, 3), min ISR 2 with three, else 1.
  --cluster-id ID       Cluster id to format with [KAFKA_CLUSTER_ID]; needed with more than
                        one voter; default for one node: a random one.
  --partitions N        num.partitions [KAFKA_PARTITIONS]; default 3
A data dir run again keeps its data (run it with the same options). Topics are not
created automatically (auto.create.topics.enable=false).

Environment: KAFKA_VERSION (default 4.1.1), KAFKA_HEAP_OPTS (default "-Xms256m -Xmx1g"),
KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_OPTS, FLATPACK_CACHE_DIR, KAFKA_MAVEN_REPO.
EOF
}

# ---------------------------------------------------------------- fetching

# The cache counts when it was filled for this version and this pom.
kafka_fingerprint() { printf 'kafka=%s pom=%s\n' "$KAFKA_VERSION" "$(sha256sum <"$KAFKA_POM" | cut -d' ' -f1)"; }
kafka_cached() { [[ -d "$KAFKA_LIBS" && "$(cat -- "$KAFKA_STAMP" 2>/dev/null)" == "$(kafka_fingerprint)" ]]; }

kafka_fetch_locked() {
  kafka_cached && return 0 # another process finished it meanwhile
  fp_need_cmd mvn java
  local tmp="$KAFKA_HOME_DIR/libs.tmp.$$" log4j=2.25.3
  [[ "$KAFKA_VERSION" != 4.1.* ]] || log4j=2.24.3 # the log4j each Kafka release declares
  rm -rf -- "$tmp"
  fp_log "mvn: resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION (log4j $log4j) into $tmp"
  # Debian's mvn 3.8 prints stray colour resets.
  mvn -q -B -Dstyle.color=never -f "$KAFKA_POM" -Dmaven.repo.local="$KAFKA_MAVEN_REPO" \
    -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$log4j" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 | sed -e $'s/\e\\[0m//g' -e '/^$/d' >&2 ||
    fp_die "mvn could not fetch Kafka $KAFKA_VERSION (is that version on Maven Central?)"
  [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" && -f "$tmp/log4j-core-$log4j.jar" ]] ||
    fp_die "the fetched class path lacks Kafka $KAFKA_VERSION or log4j $log4j"
  rm -rf -- "$KAFKA_LIBS"
  mv -- "$tmp" "$KAFKA_LIBS"
  kafka_fingerprint >"$KAFKA_STAMP" # written last: marks the cache complete
  fp_log "Kafka $KAFKA_VERSION cached in $KAFKA_LIBS"
}

kafka_fetch() {
  kafka_cached || fp_with_lock "$KAFKA_HOME_DIR/.lock" kafka_fetch_locked
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

# ---------------------------------------------------------------- run

cmd_run() { # [options]
  local data_dir="${KAFKA_DATA_DIR:-}" node_id="${KAFKA_NODE_ID:-1}" port="${KAFKA_PORT:-9092}"
  local cport="${KAFKA_CONTROLLER_PORT:-}" voters="${KAFKA_VOTERS:-}"
  local cluster_id="${KAFKA_CLUSTER_ID:-}" partitions="${KAFKA_PARTITIONS:-3}"
  while (($#)); do
    case "$1" in
      --data-dir) fp_need_value "$1" $# "${2-}"; data_dir="$2"; shift 2 ;;
      --node-id) fp_need_value "$1" $# "${2-}"; node_id="$2"; shift 2 ;;
      --port) fp_need_value "$1" $# "${2-}"; port="$2"; shift 2 ;;
      --controller-port) fp_need_value "$1" $# "${2-}"; cport="$2"; shift 2 ;;
      --voters) fp_need_value "$1" $# "${2-}"; voters="$2"; shift 2 ;;
      --cluster-id) fp_need_value "$1" $# "${2-}"; cluster_id="$2"; shift 2 ;;
      --partitions) fp_need_value "$1" $# "${2-}"; partitions="$2"; shift 2 ;;
      -h | --help) usage; exit 0 ;;
      *) fp_die "run: unknown option '$1' (see --help)" ;;
    esac
  done
  data_dir="$(fp_abs_dir "${data_dir:-$(fp_mktemp_dir flatpack-kafka)}")"
  local props="$data_dir/server.properties" log_dirs="$data_dir/kraft-data"
  fp_is_uint "$node_id" || fp_die "--node-id must be a number, got '$node_id'"
  if ! fp_is_uint "$partitions" || ((partitions == 0)); then fp_die "--partitions must be a positive number"; fi

  # Controller quorum: this node's entry in --voters gives its controller port.
  local -a entries=()
  local n_voters=1 entry mine=""
  if [[ -n "$voters" ]]; then
    IFS=',' read -r -a entries <<<"$voters"
    n_voters=${#entries[@]}
    for entry in "${entries[@]}"; do
      [[ "$entry" =~ ^([0-9]+)@([^:@,]+):([0-9]+)$ ]] || fp_die "bad --voters entry '$entry' (want ID@HOST:PORT)"
      if ((BASH_REMATCH[1] == node_id)); then mine="${BASH_REMATCH[3]}"; fi
    done
    [[ -n "$mine" ]] || fp_die "node id $node_id is not among the voters '$voters'"
    [[ -z "$cport" || "$cport" == "$mine" ]] || fp_die "--controller-port $cport is not node $node_id's port $mine in --voters"
    cport="$mine"
  fi
  fp_free_port_arg --port "$port"
  cport="${cport:-$((port + 1))}"
  fp_free_port_arg --controller-port "$cport"
  [[ "$port" != "$cport" ]] || fp_die "client and controller port are both $port"
  [[ -n "$voters" ]] || voters="$node_id@127.0.0.1:$cport"

  local formatted=0 rf min_isr
  [[ -f "$log_dirs/meta.properties" ]] && formatted=1
  if ((!formatted && n_voters > 1)) && [[ -z "$cluster_id" ]]; then
    fp_die "with $n_voters voters every node needs the same --cluster-id (make one with: scripts/kafka.sh cluster-id)"
  fi
  rf=$((n_voters < 3 ? n_voters : 3))
  min_isr=$((rf >= 3 ? 2 : 1))

  kafka_fetch
  fp_need_cmd java
  cat >"$props" <<EOF
# Written by scripts/kafka.sh at each run; edits are overwritten.
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
  # Format once; a formatted data dir keeps its data across restarts.
  if ((formatted)); then
    local have_id
    have_id="$(sed -n 's/^cluster\.id=//p' "$log_dirs/meta.properties")"
    [[ -z "$cluster_id" || "$cluster_id" == "$have_id" ]] || fp_die "$log_dirs is formatted for cluster $have_id, not $cluster_id"
  else
    [[ -n "$cluster_id" ]] || cluster_id="$(kafka_new_cluster_id)"
    fp_log "formatting $log_dirs for cluster $cluster_id"
    kafka_run_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$props" >&2 ||
      fp_die "formatting KRaft storage failed"
  fi

  # A fresh log per run (the previous one kept), so that readiness is judged on this run's.
  if [[ -f "$data_dir/server.log" ]]; then mv -f -- "$data_dir/server.log" "$data_dir/server.log.prev"; fi
  cp -- "$SCRIPT_DIR/kafka/log4j2.xml" "$data_dir/log4j2.xml"
  local -a heap perf extra
  read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
  read -r -a perf <<<"${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
  read -r -a extra <<<"${KAFKA_OPTS:-}"
  fp_log "Kafka $KAFKA_VERSION node $node_id: client 127.0.0.1:$port, controller 127.0.0.1:$cport, voters $voters, log $data_dir/server.log"
  cd -- "$data_dir"
  exec java "${heap[@]}" "${perf[@]}" -Dkafka.logs.dir="$data_dir" \
    -Dlog4j2.configurationFile="$data_dir/log4j2.xml" "${extra[@]}" -cp "$KAFKA_LIBS/*" kafka.Kafka "$props"
}

case "${1:-}" in
  fetch) kafka_fetch ;;
  run) shift; cmd_run "$@" ;;
  cluster-id) kafka_fetch && kafka_new_cluster_id ;;
  cli)
    (($# > 1)) || fp_die "cli needs a main class, e.g. org.apache.kafka.tools.TopicCommand"
    kafka_fetch
    shift
    kafka_run_tool "$@"
    ;;
  -h | --help | help) usage ;;
  "") usage >&2; exit 2 ;;
  *) fp_die "unknown command '$1' (see --help)" ;;
esac
