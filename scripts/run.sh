#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Runs the whole flatpack system on this machine, without Docker: Apache Kafka (from the
# Maven Central jars), Mailpit, Jaeger (built from its Go module) and every service, as the
# programs of run/supervisord.conf under supervisord (PyPI's `supervisor`, see tool.sh),
# which restarts whatever exits, with backoff, and logs that it did. Prints where to look and how to control it, then runs
# until Ctrl-C or a closed terminal, which stop everything cleanly (Ctrl-C twice: at once).
#
# Nothing outlives this script: supervisord runs in a session of its own (so that the
# terminal's SIGINT and SIGHUP reach only this script, which then stops it in order), and
# it and every program it runs get SIGKILL as soon as their parent dies (setpriv
# --pdeathsig), even when this script or supervisord itself is SIGKILLed.
#
# Kafka keeps its data in <state>/kafka, so orders and totals survive a restart.
# Environment:
#   FLATPACK_STATE_DIR   config, data and logs (default .flatpack in the repository)
#   KAFKA_PORT (9092), MAILPIT_SMTP_PORT (1025), MAILPIT_HTTP_PORT (8025),
#   ORDERS_HTTP_ADDR (127.0.0.1:5002), DASHBOARD_HTTP_ADDR (127.0.0.1:8000),
#   TRANSACTIONS_OPS_ADDR (127.0.0.1:9101), ANALYTICS_OPS_ADDR (127.0.0.1:9102),
#   EMAIL_OPS_ADDR (127.0.0.1:9103), JAEGER_UI_ADDR (127.0.0.1:16686),
#   JAEGER_OTLP_HTTP_ADDR (127.0.0.1:4318), JAEGER_QUERY_GRPC_ADDR (127.0.0.1:16685)
#   FLATPACK_PROFILE     dev or release (default dev): the cargo profile built and run
#   FLATPACK_BIN_DIR     run the service binaries in this directory, without building
#   SUPERVISOR_VERSION   supervisor from PyPI (default 4.3.0, see scripts/tool.sh)
# plus any setting the services read.
# shellcheck disable=SC2317 # stop_all runs through trap
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cd "$root"
# shellcheck disable=SC2034 # read by lib.sh
FP_NAME=run.sh
# shellcheck source=lib.sh
source "$here/lib.sh"

services=(orders transactions email analytics dashboard)
fp_need_cmd python3 setpriv setsid
state=$(fp_abs_dir "${FLATPACK_STATE_DIR:-$root/.flatpack}")
logs="$state/logs"
mkdir -p "$logs"
conf="$here/run/supervisord.conf"
ctl="$state/supervisorctl"
kafka_port=${KAFKA_PORT:-9092}
smtp_port=${MAILPIT_SMTP_PORT:-1025}
mailpit_http_port=${MAILPIT_HTTP_PORT:-8025}
export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$kafka_port" SMTP_HOST=127.0.0.1 SMTP_PORT="$smtp_port"
export ORDERS_HTTP_ADDR=${ORDERS_HTTP_ADDR:-127.0.0.1:5002}
export DASHBOARD_HTTP_ADDR=${DASHBOARD_HTTP_ADDR:-127.0.0.1:8000}
export TRANSACTIONS_OPS_ADDR=${TRANSACTIONS_OPS_ADDR:-127.0.0.1:9101}
export ANALYTICS_OPS_ADDR=${ANALYTICS_OPS_ADDR:-127.0.0.1:9102}
export EMAIL_OPS_ADDR=${EMAIL_OPS_ADDR:-127.0.0.1:9103}
export JAEGER_UI_ADDR=${JAEGER_UI_ADDR:-127.0.0.1:16686}
export JAEGER_OTLP_HTTP_ADDR=${JAEGER_OTLP_HTTP_ADDR:-127.0.0.1:4318}
export JAEGER_QUERY_GRPC_ADDR=${JAEGER_QUERY_GRPC_ADDR:-127.0.0.1:16685}
# Every service sends its spans to Jaeger.
export OTEL_EXPORTER_OTLP_ENDPOINT=${OTEL_EXPORTER_OTLP_ENDPOINT:-http://$JAEGER_OTLP_HTTP_ADDR}
# Stable instance ids: a restarted service takes its partitions back at once.
export EMAIL_INSTANCE_ID=${EMAIL_INSTANCE_ID:-email-1}
# The on-disk copies of the services' state stores, next to the broker data they copy.
export FLATPACK_STORE_DIR=${FLATPACK_STORE_DIR:-$state/stores}

[[ ! -S "$state/supervisor.sock" ]] || ! "$ctl" pid >/dev/null 2>&1 ||
  fp_die "flatpack already runs from $state; control it with $ctl"
for port in "$kafka_port" $((kafka_port + 1)) "$smtp_port" "$mailpit_http_port" "${ORDERS_HTTP_ADDR##*:}" \
  "${DASHBOARD_HTTP_ADDR##*:}" "${TRANSACTIONS_OPS_ADDR##*:}" "${ANALYTICS_OPS_ADDR##*:}" \
  "${EMAIL_OPS_ADDR##*:}" "${JAEGER_UI_ADDR##*:}" "${JAEGER_OTLP_HTTP_ADDR##*:}" \
  "${JAEGER_QUERY_GRPC_ADDR##*:}"; do
  ! fp_port_open "$port" || fp_die "port $port is in use; the variables at the top of $0 choose others"
done

if [[ -n "${FLATPACK_BIN_DIR:-}" ]]; then
  bin_dir=$FLATPACK_BIN_DIR
else
  profile=${FLATPACK_PROFILE:-dev}
  case "$profile" in
    dev) bin_dir="$root/target/debug" ;;
    release) bin_dir="$root/target/release" ;;
    *) fp_die "FLATPACK_PROFILE must be dev or release, not '$profile'" ;;
  esac
  fp_log "building the services ($profile)"
  cargo build --profile "$profile" --bins --workspace --locked
fi
for service in "${services[@]}"; do
  [[ -x "$bin_dir/$service" ]] || fp_die "no service binary $bin_dir/$service"
done

# ---------------------------------------------------------------- supervisor

# Fetch and build now, in view, rather than inside the supervised programs.
fp_export_lines "$("$here/tool.sh" supervisord jaeger)"
"$here/kafka.sh" fetch
"$here/mailpit.sh" fetch

# Every %(ENV_...)s of supervisord.conf.
export FLATPACK_ROOT="$root" FLATPACK_STATE_DIR="$state" FLATPACK_BIN_DIR="$bin_dir" KAFKA_PORT="$kafka_port"
export MAILPIT_SMTP_PORT="$smtp_port" MAILPIT_HTTP_PORT="$mailpit_http_port" KAFKA_STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
printf '#!/bin/sh\n# supervisorctl for the flatpack run from %s\nexec %q -s %q "$@"\n' \
  "$state" "${SUPERVISORD%/*}/supervisorctl" "unix://$state/supervisor.sock" >"$ctl"
chmod +x "$ctl"

# ---------------------------------------------------------------- run

supervisor_pid=""
tail_pid=""
stop_all() {
  local status=$?
  trap '' HUP TERM # a closed terminal sends more than one SIGHUP
  trap 'kill -KILL "$supervisor_pid" 2>/dev/null' INT # 2nd Ctrl-C: the programs die with it
  if [[ -n "$supervisor_pid" ]]; then
    # Messages may fail: after SIGHUP there is no terminal any more.
    fp_log "stopping everything (Ctrl-C again: stop at once)" || true
    kill -TERM "$supervisor_pid" 2>/dev/null || true
    wait "$supervisor_pid" 2>/dev/null || true
  fi
  if [[ -n "$tail_pid" ]]; then
    sleep 0.2 # the last lines of supervisord's log
    kill "$tail_pid" 2>/dev/null || true
  fi
  fp_log "stopped" || true
  exit "$status"
}
trap stop_all EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

: >>"$logs/supervisord.log"
setpriv --pdeathsig KILL -- tail -n 0 -F "$logs/supervisord.log" &
tail_pid=$!
# Its programs get SIGKILL when it dies, and it when this script dies, whatever killed it.
setsid setpriv --pdeathsig KILL -- "$SUPERVISORD" -c "$conf" </dev/null &
supervisor_pid=$!

for ((i = 0; i < 480; i++)); do
  fp_alive "$supervisor_pid" || fp_die "supervisord exited; see $logs/supervisord.log"
  ! fp_http_ok "http://$ORDERS_HTTP_ADDR/readyz" || break
  sleep 0.25
done
fp_http_ok "http://$ORDERS_HTTP_ADDR/readyz" || fp_log "the orders API is not ready after 120 s; see $logs/"

cat <<TXT

flatpack is running; supervisord restarts whatever exits.
  Orders API   http://$ORDERS_HTTP_ADDR/order   (POST; health: /healthz, /readyz)
  Dashboard    http://$DASHBOARD_HTTP_ADDR/
  Metrics      http://$ORDERS_HTTP_ADDR/metrics, http://$DASHBOARD_HTTP_ADDR/metrics,
               http://$TRANSACTIONS_OPS_ADDR/metrics, http://$ANALYTICS_OPS_ADDR/metrics,
               http://$EMAIL_OPS_ADDR/metrics   (each also /healthz, /readyz)
  Traces       http://$JAEGER_UI_ADDR/api/traces?service=orders   (Jaeger's API: 1 % of the orders,
               and every order sent with a sampled traceparent: .../api/traces/<its trace id>)
  Mailpit UI   http://127.0.0.1:$mailpit_http_port/   (SMTP 127.0.0.1:$smtp_port)
  Kafka        $KAFKA_BOOTSTRAP_SERVERS   (broker log: $state/kafka/server.log)
  Logs         $logs/<program>.log, supervisord's own: $logs/supervisord.log

Control it (programs: kafka, mailpit, jaeger, services:orders, services:transactions, ...):
  $ctl status
  $ctl stop kafka     (and: start kafka; or kill -9 the broker, it is restarted)
  $ctl restart services:transactions

Try:
  curl -s -X POST http://$ORDERS_HTTP_ADDR/order -H 'content-type: application/json' \\
    -d '{"user_id": 7, "order_id": 1001, "user_email": "anna@example.com", "order_details": {"price": 349}}'

Ctrl-C, or closing this terminal, stops everything.
TXT

rc=0
wait "$supervisor_pid" || rc=$?
supervisor_pid=""
fp_log "supervisord exited (status $rc), and with it everything it ran"
exit "$rc"
