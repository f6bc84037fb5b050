#!/usr/bin/env bash
# The benchmark: flatpack against the seed and against the broker's and the SMTP servers' own
# limits, on one local broker in one run. See --help and BENCHMARKS.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cd "$root"
FP_NAME=bench.sh
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

usage() {
  cat <<'TXT'
Usage: scripts/bench.sh [options]

Runs, on one local Kafka broker (scripts/kafka.sh), one Postfix smtp-sink
(scripts/smtp-sink.sh: an SMTP server made for benchmarking clients, which keeps nothing) and
one Mailpit (scripts/mailpit.sh), all started here and stopped on exit. The services send
their e-mails to smtp-sink, as to a relay on another machine; Mailpit, which stores and
indexes every e-mail on the same two cores, gives the e-mail steps a second line:


  1. raw-broker       the broker's produce capacity for orders as the orders service writes
                      them (loadgen produce: the services' idempotent acks=all producer)
     eos-copy         the raw exactly-once copy loop: --orders orders copied from
                      order_details to another topic, offsets committed in each transaction
                      of at most 5,000, as the services commit (loadgen eos-copy): the
                      ceiling of an exactly-once stage on this broker
  2. smtp             the SMTP servers' own acceptance rates for the e-mails the email
                      service sends (loadgen smtp: the email crate's sender,
                      --smtp-concurrency senders): smtp-sink, then mailpit
  3. seed-ingest-*    the seed's orders backend (bench/seed/, Flask + kafka-python) under the
                      same HTTP load as flatpack's, run as the seed runs it (app.run) and under
                      gunicorn; the better counts
     seed-pipeline    the seed's transactions + analytics backends: orders written straight to
                      order_details until analytics_result counts them (loadgen feed)
  4. flatpack-ingest  flatpack's orders service alone under that HTTP load
     flatpack-pipeline  the five services (release build, exactly-once), the same feed
     flatpack-email   the email service alone: --emails decided orders written straight to
                      order_confirmed, timed until all are on order_email_sent (loadgen
                      email-stage); its rate over the server's is the e-mail stage
                      ratio; then flatpack-email-mailpit, the same with Mailpit
     flatpack-max     the five services, HTTP load as fast as it goes, every order followed
                      to order_confirmed, order_email_sent and analytics_result
     flatpack-rate    the same at a fixed --rate (default 1000 orders/s); then
                      flatpack-rate-mailpit, the same with Mailpit
     flatpack-scale   the fixed-rate run with two transactions and two email instances
                      (each pair one consumer group); halfway through, one of each leaves
                      (SIGTERM): throughput, loss, duplicates, latency against flatpack-rate,
                      and how long the leavers' partitions waited for the ones staying
     telemetry        what metrics and traces cost: the fixed-rate run with
                      FLATPACK_METRICS=off and OTEL_SDK_DISABLED=true, and with every span
                      exported to a Jaeger and every /metrics scraped every 5 s, in
                      --telemetry-rounds pairs (off first, then on first, ...), e-mails
                      going to smtp-sink; the report compares the services' CPU per order
     flatpack-memory  the five services with their state stores on disk (FLATPACK_STORE_DIR):
                      --memory-orders orders (default 1,000,000) written straight to
                      order_details until each is decided, e-mailed and counted (loadgen
                      feed); then every service restarted on the same stores and 1,000 more
                      orders through: each service's peak RSS in both runs, and how long
                      each restarted one took to restore its state (its "state restored"
                      lines)
  5. services         each service's peak RSS (VmHWM) and time from exec to ready

Every throughput step (1 to 4, but for the fixed-rate ones) is sized by a quick probe so that
its steady window, from 10 % to 90 % of what it does, lasts --steady-seconds, and reports its
rate over that window (loadgen --steady-seconds). The fixed-rate steps post --rate-orders.

Every step records the CPU time of each process (the broker, the SMTP servers, the seed's
and flatpack's services) while it ran; the report prints it as % of one core and as CPU µs
per order (e-mail, message), and the flatpack/seed CPU-per-order ratios of the orders API
and of the transactions + analytics pair.

Each step writes <step>.json into the output dir (and its processes' logs into logs/);
summary.json and a table of figures and ratios come last. Each flatpack step has a
FLATPACK_TOPIC_PREFIX of its own; the seed uses its fixed, unprefixed topic names, which no
flatpack step uses, on this run's fresh broker.

Options:
  --steady-seconds S     Seconds of steady window each throughput step is sized for
                         (default 30)
  --orders N             A fixed size for every throughput step instead, no probe
  --quick                A small dry run: 500 orders and 200 e-mails unless given, short waits
  --emails N             With --orders: e-mails for the smtp and e-mail stage steps (default:
                         orders / 4)
  --concurrency C        HTTP connections of the load generator (default 32)
  --smtp-concurrency C   SMTP senders for the smtp step (default 32, as EMAIL_CONCURRENCY)
  --rate R               Orders per second of the fixed-rate step (default 1000)
  --rate-orders N        Orders of the fixed-rate steps (default: 40 s of --rate; --orders
                         with --quick)
  --telemetry-rounds N   Off/on pairs of the telemetry step (default 3)
  --memory-orders N      Orders of the flatpack-memory step (default 1000000; --orders with
                         --quick)
  --settle-seconds S     How long a step waits, after its last order, for every order to
                         arrive downstream before it counts the missing ones as lost
                         (default 300; 60 with --quick)
  --gunicorn-workers W   gunicorn workers for the seed (default 2 * cores + 1)
  --steps S,S,...        Run only these steps (for tuning; the table then lacks the others):
                         raw-broker, eos-copy, smtp, seed-ingest, seed-pipeline, flatpack-ingest,
                         flatpack-pipeline, flatpack-email, flatpack-max, flatpack-rate,
                         flatpack-scale, flatpack-memory, telemetry (default: all)
  --out DIR              Output dir (default target/bench/<UTC timestamp>)
  --no-build             Use the release binaries as they are
  -h, --help             This help

Installs (idempotent, under ${FLATPACK_CACHE_DIR:-$HOME/.cache/flatpack}): Kafka and
Mailpit through their scripts, and a Python venv (seed-venv/) with bench/seed/requirements.txt
(reinstalled only when that file changes). Needs cargo, python3 (with venv), curl, jq.
TXT
}

orders="" steady=30 quick=0 emails="" concurrency=32 smtp_concurrency=32 rate=1000 rate_orders=""
telemetry_rounds=3 memory_orders=""
gunicorn_workers=$(($(nproc) * 2 + 1)) out="" build=1 settle=""
all_steps="raw-broker eos-copy smtp seed-ingest seed-pipeline flatpack-ingest flatpack-pipeline flatpack-email flatpack-max flatpack-rate flatpack-scale flatpack-memory telemetry"
steps=$all_steps
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "bench.sh: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --orders) need "$@"; orders=$2; shift 2 ;;
    --steady-seconds) need "$@"; steady=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --emails) need "$@"; emails=$2; shift 2 ;;
    --concurrency) need "$@"; concurrency=$2; shift 2 ;;
    --smtp-concurrency) need "$@"; smtp_concurrency=$2; shift 2 ;;
    --rate) need "$@"; rate=$2; shift 2 ;;
    --rate-orders) need "$@"; rate_orders=$2; shift 2 ;;
    --telemetry-rounds) need "$@"; telemetry_rounds=$2; shift 2 ;;
    --memory-orders) need "$@"; memory_orders=$2; shift 2 ;;
    --settle-seconds) need "$@"; settle=$2; shift 2 ;;
    --gunicorn-workers) need "$@"; gunicorn_workers=$2; shift 2 ;;
    --steps) need "$@"; steps=${2//,/ }; shift 2 ;;
    --out) need "$@"; out=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
warmup=120
if ((quick)); then
  orders=${orders:-500} emails=${emails:-200} settle=${settle:-60} rate_orders=${rate_orders:-$orders}
fi
# A throughput step runs --orders when given, else as many as its probe says.
sizing=(--steady-seconds "$steady")
[[ -z $orders ]] || sizing=()
settle=${settle:-300}
orders=${orders:-20000}
emails=${emails:-$((orders / 4))}
rate_orders=${rate_orders:-$((rate * 40))}
((quick)) && memory_orders=${memory_orders:-$orders}
memory_orders=${memory_orders:-1000000}
for step in $steps; do
  [[ " $all_steps " == *" $step "* ]] || { echo "bench.sh: unknown step '$step' (see --help)" >&2; exit 2; }
done
wants() { [[ " $steps " == *" $1 "* ]]; } # <step>: whether this run includes it
for n in orders steady emails concurrency smtp_concurrency rate_orders gunicorn_workers settle telemetry_rounds; do
  [[ "${!n}" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --${n//_/-} must be a positive integer" >&2; exit 2; }
done

cache=${FLATPACK_CACHE_DIR:-$HOME/.cache/flatpack}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=${out:-$root/target/bench/$stamp}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
logs=$out/logs
work=$(mktemp -d "${TMPDIR:-/tmp}/flatpack-bench.XXXXXX")
bin=$root/target/release


# --- processes: each in a process group of its own, stopped by that group's id -------------
declare -A live=()
stop_group() { # <pid>: SIGTERM the group, SIGKILL after 10 s
  local pid=$1 i
  [[ -n "${live[$pid]:-}" ]] || return 0
  unset "live[$pid]"
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  trap - EXIT INT TERM
  local pid
  for pid in "${!live[@]}"; do stop_group "$pid"; done
  "$here/mailpit.sh" stop --data-dir "$work/mailpit" >/dev/null 2>&1 || true
  "$here/kafka.sh" stop --data-dir "$work/kafka" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ns() { date +%s%N; }

# Starts "$@" in its own process group with its output in $logs/<name>.log; sets
# started_pid and started_ns.
start() { # <name> <cmd...>
  local name=$1; shift
  started_ns=$(now_ns)
  setsid "$@" >"$logs/$name.log" 2>&1 &
  started_pid=$!
  live[$started_pid]=1
}

# Waits until <probe> succeeds; prints the milliseconds since <start-ns>, or fails.
wait_ready() { # <name> <pid> <start-ns> <timeout-s> <probe...>
  local name=$1 pid=$2 start_ns=$3 timeout=$4; shift 4
  local deadline=$(($(now_ns) + timeout * 1000000000))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      fp_log "$name exited before it was ready; its log ($logs/$name.log) ends:"
      tail -n 20 "$logs/$name.log" >&2
      return 1
    fi
    if (($(now_ns) > deadline)); then
      fp_log "$name not ready within ${timeout}s; see $logs/$name.log"
      return 1
    fi
    sleep 0.01
  done
  echo $((($(now_ns) - start_ns) / 1000000))
}
http_answers() { curl -sS -o /dev/null --max-time 1 "$1"; }
tcp_answers() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}"); } # <host:port>
log_has() { grep -q -- "$2" "$1"; }

# Peak RSS in kB of the process group <pid> (the largest of its processes).
peak_rss_kb() { # <pid>
  local p max=0 kb
  for p in $(pgrep -g "$1" || true); do
    kb=$(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true)
    [[ -n "$kb" ]] && ((kb > max)) && max=$kb
  done
  echo "$max"
}

# Service records: one JSON object per started service, in $work/services.jsonl.
record_service() { # <step> <name> <ready-ms or null> <pid>
  local rss
  rss=$(peak_rss_kb "$4")
  jq -cn --arg step "$1" --arg name "$2" --argjson ready "$3" --argjson rss "$rss" \
    '{step: $step, service: $name, ready_ms: $ready, peak_rss_mb: ($rss / 1024)}' \
    >>"$work/services.jsonl"
}

# --- CPU: where the time goes in each flatpack step ------------------------------------------
# Ticks (1/CLK_TCK s) of user + system CPU used so far by the process group <pgid>.
group_ticks() { # <pgid>
  local p t=0 v
  for p in $(pgrep -g "$1" || true); do
    v=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
    t=$((t + v))
  done
  echo "$t"
}
# Busy and total ticks of the whole machine, from /proc/stat.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
# gone_ticks: the last CPU ticks of a service that left during a step.
declare -A cpu_at=() svc_pid=() svc_ready=() gone_ticks=()
# Remembers the CPU used so far by the broker, Mailpit, smtp-sink and the step's services.
cpu_begin() {
  local name
  cpu_at=([kafka]=$(group_ticks "$broker_pgid") [mailpit]=$(group_ticks "$mailpit_pgid")
    [smtp-sink]=$(group_ticks "$sink_pgid"))
  for name in "${!svc_pid[@]}"; do cpu_at[$name]=$(group_ticks "${svc_pid[$name]}"); done
  read -r cpu_busy0 cpu_total0 < <(machine_ticks)
  cpu_t0=$(now_ns)
}
# Appends to cpu.jsonl what each of them used since cpu_begin, in % of one core.
cpu_end() { # <step>
  local name now pgid args=() ms='{}' busy total
  local wall_ms=$((($(now_ns) - cpu_t0) / 1000000))
  read -r busy total < <(machine_ticks)
  for name in "${!cpu_at[@]}"; do
    case "$name" in
      kafka) pgid=$broker_pgid ;;
      mailpit) pgid=$mailpit_pgid ;;
      smtp-sink) pgid=$sink_pgid ;;
      *) pgid=${svc_pid[$name]} ;;
    esac
    now=${gone_ticks[$name]:-$(group_ticks "$pgid")}
    args+=(--argjson "$name" "$(((now - cpu_at[$name]) * 100000 / clk_tck / (wall_ms > 0 ? wall_ms : 1)))")
    ms=$(jq -c --arg n "$name" --argjson v "$(((now - cpu_at[$name]) * 1000 / clk_tck))" '. + {($n): $v}' <<<"$ms")
  done
  jq -cn --arg step "$1" --argjson wall_ms "$wall_ms" --argjson cores "$(nproc)" \
    --argjson busy "$(((busy - cpu_busy0) * 100 * $(nproc) / ((total - cpu_total0) > 0 ? (total - cpu_total0) : 1)))" \
    --argjson cpu_ms "$ms" "${args[@]}" '{step: $step, wall_ms: $wall_ms, cores: $cores,
      machine_busy_pct: $busy, process_pct: ($ARGS.named | del(.step, .wall_ms, .cores, .busy, .cpu_ms)),
      process_cpu_ms: $cpu_ms}' >>"$work/cpu.jsonl"
}

# Runs loadgen; a run that reports loss or errors exits 1 but still wrote its JSON.
loadgen() { # <step> <args...>
  local step=$1; shift
  local rc=0
  fp_log "step $step: loadgen $*"
  "$bin/loadgen" "$@" --json "$out/$step.json" 2> >(tee "$logs/loadgen-$step.log" >&2) || rc=$?
  if ((rc != 0)); then
    fp_log "step $step: loadgen exited $rc (see $logs/loadgen-$step.log)"
    [[ -s "$out/$step.json" ]] || echo '{"failed": true}' >"$out/$step.json"
  fi
}

# --- installs ------------------------------------------------------------------------------
if ((build)); then
  fp_log "building the release binaries"
  cargo build --release --bins --locked
fi
venv=$cache/seed-venv
req=$root/bench/seed/requirements.txt
req_sum=$(sha256sum "$req" | cut -d' ' -f1)
if { wants seed-ingest || wants seed-pipeline; } &&
  [[ "$(cat "$venv/.requirements.sha256" 2>/dev/null || true)" != "$req_sum" ]]; then
  fp_log "installing the seed's Python dependencies into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$req"
  echo "$req_sum" >"$venv/.requirements.sha256"
fi

# --- broker, Mailpit, smtp-sink -------------------------------------------------------------
fp_log "starting Kafka"
fp_export_lines "$("$here/kafka.sh" start --data-dir "$work/kafka" --owner-pid $$)"
fp_log "starting Mailpit"
fp_export_lines "$("$here/mailpit.sh" start --data-dir "$work/mailpit" --owner-pid $$)"
mailpit_port=${MAILPIT_SMTP##*:}
sink=$("$here/smtp-sink.sh")
sink_port=$(fp_free_ports 1)
sink_user=()
((EUID != 0)) || sink_user=(-u nobody) # it refuses to run as root
start smtp-sink "${sink#SMTP_SINK=}" "${sink_user[@]}" "127.0.0.1:$sink_port" 1024
sink_pgid=$started_pid
wait_ready smtp-sink "$sink_pgid" "$started_ns" 30 tcp_answers "127.0.0.1:$sink_port" >/dev/null
export SMTP_HOST=127.0.0.1 SMTP_PORT=$sink_port
clk_tck=$(getconf CLK_TCK)
# Both lead process groups of their own (see lib.sh's fp_launch).
broker_pgid=$(pgrep -f -- "-Dkafka.logs.dir=$work/kafka" | head -n 1)
mailpit_pgid=$(pgrep -f -- "--database $work/mailpit/mailpit.db" | head -n 1)
: >"$work/cpu.jsonl"
export RUST_LOG=${RUST_LOG:-info} LOG_FORMAT=text
: >"$work/services.jsonl"

# --- 1. raw broker -------------------------------------------------------------------------
if wants raw-broker; then
  cpu_begin
  FLATPACK_TOPIC_PREFIX="bench.raw." loadgen raw-broker produce --messages "$orders" "${sizing[@]}"
  cpu_end raw-broker
fi
if wants eos-copy; then
  cpu_begin
  FLATPACK_TOPIC_PREFIX="bench.eos-copy." loadgen eos-copy eos-copy --messages "$orders" "${sizing[@]}"
  cpu_end eos-copy
fi

# --- 2. Mailpit ----------------------------------------------------------------------------
if wants smtp; then
  for server in smtp-sink mailpit; do
    port=$sink_port
    [[ $server == smtp-sink ]] || port=$mailpit_port
    cpu_begin
    SMTP_PORT=$port loadgen "$server" smtp --emails "$emails" --concurrency "$smtp_concurrency" \
      "${sizing[@]}"
    cpu_end "$server"
  done
fi

# --- 3. the seed ---------------------------------------------------------------------------
export KAFKA_SERVER_ADDRESS=$KAFKA_BOOTSTRAP_SERVERS
FLATPACK_TOPIC_PREFIX="" "$bin/loadgen" topics order_details order_confirmed order_email_sent analytics_result
seed=$root/bench/seed

# Puts the seed's orders backend, started by <cmd...> on $seed_port, under the ingest load.
seed_ingest() { # <variant> <cmd...>
  local variant=$1 pid ready
  shift
  start "seed-orders-$variant" "$@"
  pid=$started_pid
  ready=$(wait_ready "seed-orders-$variant" "$pid" "$started_ns" 60 http_answers "http://127.0.0.1:$seed_port/order")
  svc_pid=([seed-orders]=$pid)
  cpu_begin
  loadgen "seed-ingest-$variant" --url "http://127.0.0.1:$seed_port" --orders "$orders" \
    --concurrency "$concurrency" --no-follow "${sizing[@]}"
  cpu_end "seed-ingest-$variant"
  svc_pid=()
  record_service "seed-ingest-$variant" seed-orders "$ready" "$pid"
  stop_group "$pid"
}

if wants seed-ingest; then
  seed_port=$(fp_free_ports 1)
  seed_ingest flask env SEED_ORDERS_PORT="$seed_port" PYTHONUNBUFFERED=1 \
    "$venv/bin/python" "$seed/orders_backend.py"

  seed_port=$(fp_free_ports 1)
  seed_ingest gunicorn "$venv/bin/gunicorn" --chdir "$seed" -w "$gunicorn_workers" \
    -b "127.0.0.1:$seed_port" orders_backend:app
fi

# The seed's consumers have no group and start at the end of their topics: the feed's warm-up
# orders tell when they are reading; the orders of the ingest steps above are never seen.
if wants seed-pipeline; then
  start seed-transactions env PYTHONUNBUFFERED=1 "$venv/bin/python" "$seed/transactions_backend.py"
  seed_tx=$started_pid
  start seed-analytics env PYTHONUNBUFFERED=1 "$venv/bin/python" "$seed/analytics_backend.py"
  seed_an=$started_pid
  svc_pid=([seed-transactions]=$seed_tx [seed-analytics]=$seed_an)
  cpu_begin
  FLATPACK_TOPIC_PREFIX="" loadgen seed-pipeline feed --orders "$orders" "${sizing[@]}" \
    --warmup-seconds "$warmup" --settle-seconds "$settle"
  cpu_end seed-pipeline
  svc_pid=()
  record_service seed-pipeline seed-transactions null "$seed_tx"
  record_service seed-pipeline seed-analytics null "$seed_an"
  stop_group "$seed_tx"
  stop_group "$seed_an"
fi

# --- 4. flatpack ---------------------------------------------------------------------------
# Starts the given services with the step's topic prefix (bench.<step>., or $step_prefix)
# and waits for each to be ready. A service named <binary>@<instance> is one more instance of
# <binary> (its own instance id, its own ops address).
start_flatpack() { # <step> <service[@instance]...>
  local step=$1 name exe instance ops probe prefix=${step_prefix:-bench.$1.}; shift
  orders_addr=127.0.0.1:$(fp_free_ports 1)
  dashboard_addr=127.0.0.1:$(fp_free_ports 1)
  ops_addrs=() svc_pid=() svc_ready=()
  for name in "$@"; do
    exe=${name%@*} instance=a
    [[ $name != *@* ]] || instance=${name#*@}
    ops=127.0.0.1:$(fp_free_ports 1)
    [[ $exe == orders || $exe == dashboard ]] || ops_addrs+=("$ops")
    # Their stores on disk, as deployed (compose, run.sh), one directory per step.
    start "$step-$name" env FLATPACK_TOPIC_PREFIX="$prefix" \
      FLATPACK_STORE_DIR="${FLATPACK_STORE_DIR:-$work/stores/$step}" \
      ORDERS_HTTP_ADDR="$orders_addr" DASHBOARD_HTTP_ADDR="$dashboard_addr" \
      TRANSACTIONS_OPS_ADDR="$ops" ANALYTICS_OPS_ADDR="$ops" EMAIL_OPS_ADDR="$ops" \
      TRANSACTIONS_INSTANCE_ID="${prefix}$instance" ORDERS_INSTANCE_ID="${prefix}$instance" "$bin/$exe"
    svc_pid[$name]=$started_pid
    case "$exe" in
      orders) probe=(fp_http_ok "http://$orders_addr/readyz") ;;
      dashboard) probe=(fp_http_ok "http://$dashboard_addr/readyz") ;;
      # analytics counts once its totals are restored and the partitions it alone reads are
      # assigned; the others once their group assigned them partitions (client="<service>":
      # the readers that restore state log their own assignments without one).
      analytics) probe=(log_has "$logs/$step-$name.log" "consuming exactly once") ;;
      *) probe=(log_has "$logs/$step-$name.log" "partitions assigned client=\"$exe\"") ;;
    esac
    svc_ready[$name]=$(wait_ready "$step-$name" "$started_pid" "$started_ns" 60 "${probe[@]}")
    fp_log "step $step: $name ready after ${svc_ready[$name]} ms"
  done
}
stop_flatpack() { # <step>
  local name
  for name in "${!svc_pid[@]}"; do
    record_service "$1" "$name" "${svc_ready[$name]}" "${svc_pid[$name]}"
    stop_group "${svc_pid[$name]}"
  done
}
all=(orders transactions analytics email dashboard)

if wants flatpack-ingest; then
  start_flatpack ingest orders
  cpu_begin
  FLATPACK_TOPIC_PREFIX="bench.ingest." loadgen flatpack-ingest --url "http://$orders_addr" \
    --orders "$orders" --concurrency "$concurrency" --no-follow "${sizing[@]}"
  cpu_end flatpack-ingest
  stop_flatpack flatpack-ingest
fi

if wants flatpack-pipeline; then
  start_flatpack pipeline "${all[@]}"
  cpu_begin
  FLATPACK_TOPIC_PREFIX="bench.pipeline." loadgen flatpack-pipeline feed --orders "$orders" \
    "${sizing[@]}" --warmup-seconds "$warmup" --settle-seconds "$settle"
  cpu_end flatpack-pipeline
  stop_flatpack flatpack-pipeline
fi

# The steps measured with either SMTP server: <step> (smtp-sink), then <step>-mailpit.
with_each_smtp_server() { # <function> <step>
  "$1" "$2"
  SMTP_PORT=$mailpit_port "$1" "$2-mailpit"
}

flatpack_email() { # <step>
  start_flatpack "$1" email
  cpu_begin
  FLATPACK_TOPIC_PREFIX="bench.$1." loadgen "$1" email-stage --emails "$emails" \
    "${sizing[@]}" --settle-seconds "$settle"
  cpu_end "$1"
  stop_flatpack "$1"
}
if wants flatpack-email; then
  with_each_smtp_server flatpack_email flatpack-email
fi

if wants flatpack-max; then
  start_flatpack max "${all[@]}"
  cpu_begin
  FLATPACK_TOPIC_PREFIX="bench.max." loadgen flatpack-max --url "http://$orders_addr" \
    --orders "$orders" --concurrency "$concurrency" --settle-seconds "$settle" "${sizing[@]}"
  cpu_end flatpack-max
  stop_flatpack flatpack-max
fi

flatpack_rate() { # <step>
  start_flatpack "$1" "${all[@]}"
  cpu_begin
  FLATPACK_TOPIC_PREFIX="bench.$1." loadgen "$1" --url "http://$orders_addr" \
    --orders "$rate_orders" --rate "$rate" --concurrency "$concurrency" --settle-seconds "$settle"
  cpu_end "$1"
  stop_flatpack "$1"
}
if wants flatpack-rate; then
  with_each_smtp_server flatpack_rate flatpack-rate
fi

# Scale-out: two instances of each consumer-group service at the fixed rate; halfway through,
# one of each leaves (SIGTERM). Writes when they left and when the instances staying were
# next assigned partitions to $out/flatpack-scale-leave.json.
if wants flatpack-scale; then
  start_flatpack scale "${all[@]}" transactions@b email@b
  leavers=(transactions@b email@b)
  half=$((rate_orders / rate / 2))
  cpu_begin
  FLATPACK_TOPIC_PREFIX="bench.scale." loadgen flatpack-scale --url "http://$orders_addr" \
    --orders "$rate_orders" --rate "$rate" --concurrency "$concurrency" \
    --settle-seconds "$settle" &
  load_pid=$!
  sleep "$half"
  # A leaver's CPU counts until it is gone (it commits its open batch and stops).
  for name in "${leavers[@]}"; do gone_ticks[$name]=$(group_ticks "${svc_pid[$name]}"); done
  left_at=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)
  for name in "${leavers[@]}"; do kill -TERM -- "-${svc_pid[$name]}" 2>/dev/null || true; done
  for name in "${leavers[@]}"; do
    for ((i = 0; i < 300; i++)); do
      t=$(group_ticks "${svc_pid[$name]}")
      ((t == 0)) && break
      gone_ticks[$name]=$t
      sleep 0.1
    done
  done
  wait "$load_pid" || true
  cpu_end flatpack-scale
  takeovers='{}'
  for name in transactions email; do
    # The first assignment of the instance staying after the other left.
    at=$(grep -h "partitions assigned" "$logs/scale-$name.log" | awk -v t="$left_at" '$1 > t { print $1; exit }')
    takeovers=$(jq -c --arg n "$name" --arg at "$at" '. + {($n): (if $at == "" then null else $at end)}' <<<"$takeovers")
  done
  jq -n --arg left "$left_at" --argjson at "$takeovers" --argjson half "$half" \
    '{left_at: $left, left_after_s: $half, reassigned_at: $at}' >"$out/flatpack-scale-leave.json"
  for name in "${leavers[@]}"; do unset "svc_pid[$name]"; done
  gone_ticks=()
  stop_flatpack flatpack-scale
fi

# Memory with a large state, and restarts on it (see the usage).
if wants flatpack-memory; then
  export FLATPACK_STORE_DIR=$work/stores
  start_flatpack memory "${all[@]}"
  cpu_begin
  FLATPACK_TOPIC_PREFIX="bench.memory." loadgen flatpack-memory feed --orders "$memory_orders" \
    --warmup-seconds "$warmup" --settle-seconds "$settle"
  cpu_end flatpack-memory
  stop_flatpack flatpack-memory
  step_prefix=bench.memory. start_flatpack memory-restart "${all[@]}"
  FLATPACK_TOPIC_PREFIX="bench.memory." loadgen flatpack-memory-restart feed --orders 1000 \
    --warmup-seconds "$warmup" --settle-seconds "$settle"
  stop_flatpack flatpack-memory-restart
  unset FLATPACK_STORE_DIR
  # Each restarted service's restores: changelog (or topic), records read, time taken.
  for name in "${all[@]}"; do
    grep -h "state restored" "$logs/memory-restart-$name.log" | sed 's/\x1b\[[0-9;]*m//g' |
      jq -R -c --arg service "$name" 'capture("changelog=(?<changelog>\\S+).* restored=(?<records>[0-9]+) elapsed=(?<elapsed>\\S+)")
        + {service: $service}' || true
  done | jq -s . >"$out/flatpack-memory-restores.json"
fi

# What metrics and traces cost: the fixed-rate run with neither, then with both at work
# (every span exported to a Jaeger, every /metrics scraped every 5 s as Prometheus would), in
# pairs whose order alternates, so that a machine getting busier or quieter during the run
# weighs on both alike.
telemetry_run() { # <variant> <round>
  local variant=$1 step=telemetry-$1-$2 scraper=""
  if [[ $variant == off ]]; then
    export FLATPACK_METRICS=off OTEL_SDK_DISABLED=true
    unset OTEL_EXPORTER_OTLP_ENDPOINT
  else
    export FLATPACK_METRICS=on OTEL_SDK_DISABLED=false OTEL_EXPORTER_OTLP_ENDPOINT=http://$jaeger_otlp
  fi
  start_flatpack "$step" "${all[@]}"
  if [[ $variant == on ]]; then
    # shellcheck disable=SC2016 # expanded by the inner bash
    start "$step-scraper" bash -c 'while :; do for a in "$@"; do curl -sS -o /dev/null "http://$a/metrics"; done; sleep 5; done' \
      scrape "$orders_addr" "$dashboard_addr" "${ops_addrs[@]}"
    scraper=$started_pid
  fi
  cpu_begin
  FLATPACK_TOPIC_PREFIX="bench.$step." loadgen "$step" --url "http://$orders_addr" \
    --orders "$rate_orders" --rate "$rate" --concurrency "$concurrency" --settle-seconds "$settle"
  cpu_end "$step"
  [[ -z $scraper ]] || stop_group "$scraper"
  stop_flatpack "$step"
}
if wants telemetry; then
  jaeger=$("$here/go-tool.sh" jaeger)
  jaeger_otlp=127.0.0.1:$(fp_free_ports 1) jaeger_ui=127.0.0.1:$(fp_free_ports 1)
  start jaeger env JAEGER_OTLP_HTTP_ADDR="$jaeger_otlp" JAEGER_UI_ADDR="$jaeger_ui" \
    JAEGER_QUERY_GRPC_ADDR="127.0.0.1:$(fp_free_ports 1)" "${jaeger#JAEGER=}" --config "$here/jaeger/local.yaml"
  jaeger_pid=$started_pid
  wait_ready jaeger "$jaeger_pid" "$started_ns" 60 http_answers "http://$jaeger_ui/api/services" >/dev/null
  for ((round = 1; round <= telemetry_rounds; round++)); do
    if ((round % 2)); then pair=(off on); else pair=(on off); fi
    for variant in "${pair[@]}"; do
      telemetry_run "$variant" "$round"
    done
  done
  unset FLATPACK_METRICS OTEL_SDK_DISABLED OTEL_EXPORTER_OTLP_ENDPOINT
  stop_group "$jaeger_pid"
fi

# --- 5. services, summary ------------------------------------------------------------------
jq -s '.' "$work/services.jsonl" >"$out/services.json"
jq -s '.' "$work/cpu.jsonl" >"$out/cpu.json"
jq -n --arg dir "$out" --arg when "$stamp" --arg host "$(uname -srm)" \
  --argjson cores "$(nproc)" --argjson orders "$orders" --argjson rate "$rate" \
  --argjson quick "$quick" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --argjson steady "$([[ ${#sizing[@]} -gt 0 ]] && echo "$steady" || echo null)" \
  --arg commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  '{dir: $dir, when: $when, host: $host, cores: $cores, orders: $orders, rate: $rate,
    steady_seconds: $steady, rate_orders: '"$rate_orders"', commit: $commit,
    quick: ($quick == 1), load_average_at_end: $load}' >"$out/machine.json"
python3 "$root/bench/report.py" "$out"
fp_log "results in $out"
