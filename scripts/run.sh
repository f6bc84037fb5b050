#!/usr/bin/env bash
# Runs the whole flatpack system on this machine, without Docker: Apache Kafka (from the
# Maven Central jars), Mailpit, and every service, each logging to .flatpack/logs/.
# Prints where to look, then runs until Ctrl-C, which stops everything cleanly.
#
# Kafka keeps its data in .flatpack/kafka, so orders and totals survive a restart.
# Environment: KAFKA_PORT (default 9092), ORDERS_HTTP_ADDR (default 127.0.0.1:5002),
# DASHBOARD_HTTP_ADDR (default 127.0.0.1:8000),
# FLATPACK_PROFILE (dev or release, default dev), plus any setting the services read.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cd "$root"
FP_NAME=run.sh
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

services=(orders transactions email analytics dashboard)
state="$root/.flatpack"
logs="$state/logs"
mkdir -p "$logs"
profile=${FLATPACK_PROFILE:-dev}
case "$profile" in
  dev) target_dir="$root/target/debug" ;;
  release) target_dir="$root/target/release" ;;
  *) echo "run.sh: FLATPACK_PROFILE must be dev or release, not '$profile'" >&2; exit 2 ;;
esac

pids=()
stop_all() {
  trap - EXIT INT TERM
  echo >&2
  echo "run.sh: stopping services" >&2
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  "$here/mailpit.sh" stop --data-dir "$state/mailpit" >/dev/null || true
  "$here/kafka.sh" stop --data-dir "$state/kafka" >/dev/null || true
  echo "run.sh: stopped" >&2
}
trap stop_all EXIT
trap 'exit 0' INT TERM


echo "run.sh: building the services ($profile)" >&2
cargo build --profile "$profile" --bins --workspace --locked

echo "run.sh: starting Kafka" >&2
fp_export_lines "$("$here/kafka.sh" start --data-dir "$state/kafka" --port "${KAFKA_PORT:-9092}" --owner-pid $$)"
echo "run.sh: starting Mailpit" >&2
fp_export_lines "$("$here/mailpit.sh" start --data-dir "$state/mailpit" --owner-pid $$)"
smtp_port=${MAILPIT_SMTP##*:}
export SMTP_HOST=127.0.0.1 SMTP_PORT="$smtp_port"
export ORDERS_HTTP_ADDR=${ORDERS_HTTP_ADDR:-127.0.0.1:5002}
export DASHBOARD_HTTP_ADDR=${DASHBOARD_HTTP_ADDR:-127.0.0.1:8000}

for service in "${services[@]}"; do
  "$target_dir/$service" >"$logs/$service.log" 2>&1 &
  pids+=("$!")
done

# Wait for the API to answer before saying where to look.
for _ in $(seq 1 150); do
  if curl -fsS "http://$ORDERS_HTTP_ADDR/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.2
done

cat <<TXT

flatpack is running.
  Orders API   http://$ORDERS_HTTP_ADDR/order   (POST; health: /healthz, /readyz)
  Dashboard    http://$DASHBOARD_HTTP_ADDR/
  Mailpit UI   $MAILPIT_HTTP
  Kafka        $KAFKA_BOOTSTRAP_SERVERS
  Logs         $logs/<service>.log

Try:
  curl -s -X POST http://$ORDERS_HTTP_ADDR/order -H 'content-type: application/json' \\
    -d '{"user_id": 7, "order_id": 1001, "user_email": "anna@example.com", "order_details": {"price": 349}}'

Ctrl-C stops everything.
TXT

# Stay up until Ctrl-C, or until a service dies (then say which and stop the rest).
while true; do
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "run.sh: ${services[$i]} exited; see $logs/${services[$i]}.log" >&2
      exit 1
    fi
  done
  sleep 1
done
