#!/usr/bin/env python3
"""The benchmark driver behind scripts/bench.sh: flatpack against the seed and against the
broker's and the SMTP servers' own limits, on one local broker in one run. See --help and
BENCHMARKS.md; bench/report.py reads what it writes.

Every long-lived program it needs (Kafka, Mailpit, smtp-sink, Jaeger, the seed's and
flatpack's services, the metrics scraper, loadgen) is a `Process`: started in a session of
its own with its output in logs/<name>.log, awaited by a probe, stopped by its process
group. A run owns them all and stops them when it ends, on an error or on Ctrl-C too.
Standard library only (Python 3.11)."""

import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
NAME = "bench.sh"  # what the user typed: log lines and errors say so
CPU_RECORDED = ROOT / "bench" / "cpu-recorded.json"  # the cpu step's figures per commit (--record)

USAGE = """\
Usage: scripts/bench.sh [options]

Runs, on one local Kafka broker (scripts/kafka.sh), one Postfix smtp-sink
(scripts/tool.sh smtp-sink: an SMTP server made for benchmarking clients, which keeps
nothing) and one Mailpit (scripts/mailpit.sh), all started here and stopped on exit. The
services send their e-mails to smtp-sink, as to a relay on another machine; Mailpit, which
stores and indexes every e-mail on the same two cores, gives the e-mail steps a second line:


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
     cpu              each service's CPU per order, with metrics and traces as deployed by
                      default ("on": FLATPACK_METRICS, traces with the default sampler
                      exported to a Jaeger, every /metrics scraped every 5 s, RUST_LOG
                      unset) and without ("off": FLATPACK_METRICS=off,
                      OTEL_SDK_DISABLED=true, RUST_LOG=warn): orders alone under the HTTP
                      load (as flatpack-ingest), the five services fed (as
                      flatpack-pipeline), and the five at --rate (as flatpack-rate), each
                      measurement off then on in odd --cpu-rounds and on then off in even
                      ones; beside them the seed's orders backend under gunicorn and its
                      pipeline (as seed-ingest, seed-pipeline), and the last figures
                      recorded in bench/cpu-recorded.json (--record adds this run's)
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
  --cpu-rounds N         Rounds of the cpu step, each measurement off and on (default 1;
                         more: the median per service)
  --record               After the cpu step, add its figures (and the commit, git rev-parse
                         --short HEAD) to bench/cpu-recorded.json: for a commit that changed
                         a hot path, on the full (not --quick) step
  --memory-orders N      Orders of the flatpack-memory step (default 1000000; --orders with
                         --quick)
  --settle-seconds S     How long a step waits, after its last order, for every order to
                         arrive downstream before it counts the missing ones as lost
                         (default 300; 60 with --quick)
  --gunicorn-workers W   gunicorn workers for the seed (default 2 * cores + 1)
  --steps S,S,...        Run only these steps (for tuning; the table then lacks the others):
                         raw-broker, eos-copy, smtp, seed-ingest, seed-pipeline, flatpack-ingest,
                         flatpack-pipeline, flatpack-email, flatpack-max, flatpack-rate,
                         flatpack-scale, flatpack-memory, telemetry, cpu (default: all)
  --out DIR              Output dir (default target/bench/<UTC timestamp>)
  --no-build             Use the release binaries as they are
  -h, --help             This help

Installs (idempotent, under ${FLATPACK_CACHE_DIR:-$HOME/.cache/flatpack}): Kafka and
Mailpit through their scripts, smtp-sink and Jaeger through scripts/tool.sh, and a Python
venv (seed-venv/) with bench/seed/requirements.txt (reinstalled only when that file
changes). Needs cargo, python3 (with venv); bench/bench.py is the program, scripts/bench.sh
its command.
"""

ALL_STEPS = ("raw-broker eos-copy smtp seed-ingest seed-pipeline flatpack-ingest flatpack-pipeline "
             "flatpack-email flatpack-max flatpack-rate flatpack-scale flatpack-memory telemetry cpu").split()
SERVICES = ("orders", "transactions", "analytics", "email", "dashboard")
WARMUP_SECONDS = 120
STOP_SECONDS = 10
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log(message):
    print(f"{NAME}: {message}", file=sys.stderr, flush=True)


class UsageError(Exception):
    """A bad command line: the run exits 2 before it starts anything."""


class Failure(Exception):
    """A run that cannot go on: the message says what failed; everything started is stopped."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


# --- options ------------------------------------------------------------------------------

@dataclass
class Options:
    steady: int = 30
    orders: int = 20000
    quick: bool = False
    emails: int = 0
    concurrency: int = 32
    smtp_concurrency: int = 32
    rate: int = 1000
    rate_orders: int = 0
    telemetry_rounds: int = 3
    cpu_rounds: int = 1
    record: bool = False
    memory_orders: int = 0
    settle: int = 300
    gunicorn_workers: int = 0
    steps: list = field(default_factory=lambda: list(ALL_STEPS))
    out: str | None = None
    build: bool = True
    fixed_size: bool = False  # --orders given (or --quick): no probes
    command: str = NAME  # the command line as typed, for bench/cpu-recorded.json

    def sizing(self):
        """loadgen's sizing options: a probe for --steady-seconds, unless --orders fixes the
        size."""
        return [] if self.fixed_size else ["--steady-seconds", str(self.steady)]

    def wants(self, step):
        return step in self.steps


def positive(option, value):
    """<value> as a positive integer, or a UsageError naming <option>."""
    if not re.fullmatch(r"[1-9][0-9]*", value):
        raise UsageError(f"{option} must be a positive integer, got '{value}'")
    return int(value)


def parse_args(argv):
    """Options from the command line; None for --help (printed). Defaults follow from each
    other as the help says: --quick sizes, --orders stops the probes."""
    given = {}
    valued = {"--orders", "--steady-seconds", "--emails", "--concurrency", "--smtp-concurrency",
              "--rate", "--rate-orders", "--telemetry-rounds", "--cpu-rounds", "--memory-orders",
              "--settle-seconds", "--gunicorn-workers", "--steps", "--out"}
    o = Options(command=shlex.join(["scripts/bench.sh", *argv]))
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in valued:
            if not args or not args[0]:
                raise UsageError(f"{arg} needs a value")
            given[arg] = args.pop(0)
        elif arg == "--quick":
            o.quick = True
        elif arg == "--no-build":
            o.build = False
        elif arg == "--record":
            o.record = True
        elif arg in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return None
        else:
            raise UsageError(f"unknown option '{arg}' (see --help)")

    if "--steps" in given:
        o.steps = [s for s in given.pop("--steps").split(",") if s]
        for step in o.steps:
            if step not in ALL_STEPS:
                raise UsageError(f"unknown step '{step}' (see --help)")
    o.out = given.pop("--out", None)
    if o.record and not o.wants("cpu"):
        raise UsageError("--record records the cpu step's figures: add cpu to --steps")
    n = {k: positive(k, v) for k, v in given.items()}

    if o.quick:
        n.setdefault("--orders", 500)
        n.setdefault("--emails", 200)
        n.setdefault("--settle-seconds", 60)
        n.setdefault("--rate-orders", n["--orders"])
        n.setdefault("--memory-orders", n["--orders"])
    o.fixed_size = "--orders" in n
    o.orders = n.get("--orders", 20000)
    o.steady = n.get("--steady-seconds", o.steady)
    o.emails = n.get("--emails", o.orders // 4)
    o.concurrency = n.get("--concurrency", o.concurrency)
    o.smtp_concurrency = n.get("--smtp-concurrency", o.smtp_concurrency)
    o.rate = n.get("--rate", o.rate)
    o.rate_orders = n.get("--rate-orders", o.rate * 40)
    o.telemetry_rounds = n.get("--telemetry-rounds", o.telemetry_rounds)
    o.cpu_rounds = n.get("--cpu-rounds", o.cpu_rounds)
    o.memory_orders = n.get("--memory-orders", 1000000)
    o.settle = n.get("--settle-seconds", o.settle)
    o.gunicorn_workers = n.get("--gunicorn-workers", cores() * 2 + 1)
    if o.emails == 0:
        raise UsageError(f"--emails must be a positive integer (orders / 4 is 0 for --orders {o.orders})")
    return o


# --- the machine ---------------------------------------------------------------------------

def cores():
    """CPUs this process may run on, as nproc counts them."""
    return len(os.sched_getaffinity(0))


CLK_TCK = os.sysconf("SC_CLK_TCK")


def group_members(pgid):
    """(pid, fields after the command name) of every process in the process group <pgid>."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # the name may hold spaces
        if int(fields[2]) == pgid:  # field 5, pgrp
            members.append((int(entry.name), fields))
    return members


def group_ticks(pgid):
    """Ticks (1/CLK_TCK s) of user + system CPU used so far by the process group <pgid>."""
    return sum(int(f[11]) + int(f[12]) for _, f in group_members(pgid))  # fields 14 and 15


def peak_rss_kb(pgid):
    """Peak RSS (VmHWM) in kB of the process group <pgid>: the largest of its processes."""
    peak = 0
    for pid, _ in group_members(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
    return peak


def machine_ticks():
    """(busy, total) ticks of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        cpu = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = cpu
    return user + nice + system + irq + softirq + steal, sum(cpu)


def free_ports(n):
    """<n> distinct free TCP ports on 127.0.0.1 (all held open together, so that they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_addr():
    return f"127.0.0.1:{free_ports(1)[0]}"


# --- probes: what "ready" means ------------------------------------------------------------

def http_status(url, timeout=1.0):
    """The status of GET <url>, or None when nothing answered."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path or "/")
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def http_answers(url):
    """Probe: any HTTP answer."""
    return lambda: http_status(url) is not None


def http_ok(url):
    """Probe: an answer below 400."""
    return lambda: (http_status(url, 2.0) or 999) < 400


def tcp_accepts(addr):
    """Probe: <host:port> accepts a TCP connection."""
    host, port = addr.rsplit(":", 1)

    def probe():
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except OSError:
            return False
    return probe


def log_has(path, text):
    """Probe: the file <path> (perhaps not there yet) contains <text>. Reads only what was
    added since the last look."""
    state = {"offset": 0, "tail": b""}
    needle = text.encode()

    def probe():
        try:
            with open(path, "rb") as f:
                f.seek(state["offset"])
                chunk = f.read()
        except OSError:
            return False
        state["offset"] += len(chunk)
        seen = state["tail"] + chunk
        state["tail"] = seen[-len(needle):]
        return needle in seen
    return probe


def all_of(*probes):
    return lambda: all(p() for p in probes)


# --- processes -----------------------------------------------------------------------------

class Process:
    """One long-lived program of the run, in a session (process group) of its own so that it,
    and all it starts, is measured and stopped as one; its output in logs/<name>.log (with
    echo, its stderr on ours too). The kernel sends it SIGTERM should this driver die without
    stopping it (setpriv --pdeathsig)."""

    def __init__(self, run, name, argv, env=None, echo=False):
        self.name = name
        self.log = run.logs / f"{name}.log"
        self.started_ns = time.monotonic_ns()
        self._gone = False
        self._tee = None
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                ["setpriv", "--pdeathsig", "TERM", "--", *map(str, argv)],
                stdin=subprocess.DEVNULL, stdout=None if echo else out,
                stderr=subprocess.PIPE if echo else subprocess.STDOUT,
                env=run.environ() if env is None else env, start_new_session=True)
        run.live.append(self)
        if echo:
            self._tee = threading.Thread(target=self._copy_stderr, daemon=True)
            self._tee.start()

    @property
    def pgid(self):
        return self.popen.pid

    def _copy_stderr(self):
        with open(self.log, "ab") as out:
            for line in self.popen.stderr:
                out.write(line)
                out.flush()
                sys.stderr.buffer.write(line)
                sys.stderr.flush()

    def alive(self):
        return self.popen.poll() is None

    def wait_ready(self, what, probe, timeout):
        """Waits until <probe> succeeds; returns the milliseconds since the start. When the
        process exits first or <timeout> s pass, shows the end of its log and fails, naming
        <what> it waited for."""
        deadline = time.monotonic() + timeout
        while not probe():
            if not self.alive():
                self._show_tail()
                raise Failure(f"{self.name} exited (status {self.popen.returncode}) before {what}; "
                              f"see {self.log}")
            if time.monotonic() > deadline:
                self._show_tail()
                raise Failure(f"{self.name}: no {what} within {timeout} s; see {self.log}")
            time.sleep(0.01)
        return (time.monotonic_ns() - self.started_ns) // 1_000_000

    def _show_tail(self, lines=20):
        log(f"----- last lines of {self.log} -----")
        try:
            tail = self.log.read_bytes().splitlines()[-lines:]
        except OSError:
            tail = []
        sys.stderr.buffer.write(b"".join(line + b"\n" for line in tail))
        sys.stderr.flush()

    def running(self):
        """Whether anything of its group still runs. Once the group is empty after its leader
        was reaped it is never signalled again: its id may be another group's by then."""
        if self._gone:
            return False
        if self.popen.poll() is None:
            return True
        try:
            os.killpg(self.pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            self._gone = True
            return False

    def signal(self, sig):
        """Sends <sig> to its whole group, if anything of it still runs."""
        if self.running():
            try:
                os.killpg(self.pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def wait(self):
        """Waits until the process exits; returns its exit status, as a shell would give it."""
        rc = self.popen.wait()
        if self._tee:
            self._tee.join()
        return 128 - rc if rc < 0 else rc

    def stop(self):
        """SIGTERM its group, SIGKILL after 10 s."""
        if self.running():
            self.signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_SECONDS
            while self.running() and time.monotonic() < deadline:
                time.sleep(0.1)
            self.signal(signal.SIGKILL)
        self.wait()
        self._gone = True


def tool_path(*cmd):
    """Runs an install command that prints NAME=<path>; returns the path."""
    line = run_checked(*cmd, capture=True).strip().splitlines()[-1]
    return line.split("=", 1)[1]


def run_checked(*cmd, capture=False, env=None):
    """Runs a short command to its end (its output on ours unless captured); fails the run
    when it fails."""
    try:
        done = subprocess.run([str(c) for c in cmd], check=True, env=env,
                              stdout=subprocess.PIPE if capture else None, text=capture)
    except subprocess.CalledProcessError as e:
        raise Failure(f"{Path(str(cmd[0])).name} {' '.join(map(str, cmd[1:]))} exited {e.returncode}",
                      e.returncode) from None
    except FileNotFoundError:
        raise Failure(f"'{cmd[0]}' is required but not on PATH") from None
    return done.stdout


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")


# --- CPU: where the time goes in each step -------------------------------------------------

class CpuWindow:
    """The CPU used by the broker, Mailpit, smtp-sink and the step's processes (name ->
    Process) from now to end()."""

    def __init__(self, groups):
        self.groups = groups
        self.at = {name: group_ticks(p.pgid) for name, p in groups.items()}
        self.busy0, self.total0 = machine_ticks()
        self.t0 = time.monotonic_ns()

    def end(self, step, gone=None):
        """The record for cpu.json: each process' CPU in % of one core and in ms. <gone>: the
        last ticks of processes that left during the step."""
        gone = gone or {}
        wall_ms = (time.monotonic_ns() - self.t0) // 1_000_000
        busy, total = machine_ticks()
        pct, ms = {}, {}
        for name, p in self.groups.items():
            used = (gone[name] if name in gone else group_ticks(p.pgid)) - self.at[name]
            pct[name] = used * 100000 // CLK_TCK // max(wall_ms, 1)
            ms[name] = used * 1000 // CLK_TCK
        n = cores()
        return {"step": step, "wall_ms": wall_ms, "cores": n,
                "machine_busy_pct": (busy - self.busy0) * 100 * n // max(total - self.total0, 1),
                "process_pct": pct, "process_cpu_ms": ms}


# --- flatpack's services -------------------------------------------------------------------

class Flatpack:
    """The services of one flatpack step, started one after the other, each awaited."""

    def __init__(self, run, step, names, prefix=None, store_dir=None, env=None):
        self.run = run
        prefix = prefix or f"bench.{step}."
        store = store_dir or run.env.get("FLATPACK_STORE_DIR") or run.work / "stores" / step
        self.orders_addr, self.dashboard_addr = free_addr(), free_addr()
        self.ops_addrs = []
        self.procs, self.ready = {}, {}
        for name in names:
            exe, _, instance = name.partition("@")
            instance = instance or "a"
            ops = free_addr()
            if exe not in ("orders", "dashboard"):
                self.ops_addrs.append(ops)
            # Their stores on disk, as deployed (compose, run.sh), one directory per step.
            proc = Process(run, f"{step}-{name}", [run.bin / exe], env=run.environ(
                env, FLATPACK_TOPIC_PREFIX=prefix, FLATPACK_STORE_DIR=str(store),
                ORDERS_HTTP_ADDR=self.orders_addr, DASHBOARD_HTTP_ADDR=self.dashboard_addr,
                TRANSACTIONS_OPS_ADDR=ops, ANALYTICS_OPS_ADDR=ops, EMAIL_OPS_ADDR=ops,
                TRANSACTIONS_INSTANCE_ID=prefix + instance, ORDERS_INSTANCE_ID=prefix + instance))
            self.procs[name] = proc
            if exe == "orders":
                what, probe = "/readyz answering", http_ok(f"http://{self.orders_addr}/readyz")
            elif exe == "dashboard":
                what, probe = "/readyz answering", http_ok(f"http://{self.dashboard_addr}/readyz")
            # analytics counts once its totals are restored and the partitions it alone reads
            # are assigned; the others once their group assigned them partitions
            # (client="<service>": the readers that restore state log their own assignments
            # without one).
            elif exe == "analytics":
                what = "'consuming exactly once' in its log"
                probe = log_has(proc.log, "consuming exactly once")
            else:
                text = f'partitions assigned client="{exe}"'
                what, probe = f"'{text}' in its log", log_has(proc.log, text)
            self.ready[name] = proc.wait_ready(what, probe, 60)
            log(f"step {step}: {name} ready after {self.ready[name]} ms")

    def url(self):
        return f"http://{self.orders_addr}"

    def stop(self, step, leaving=()):
        """Records each service's peak RSS and readiness under <step> (but the <leaving>
        ones') and stops them all."""
        for name, proc in self.procs.items():
            if name not in leaving:
                self.run.record_service(step, name, self.ready[name], proc)
            proc.stop()


# --- the run -------------------------------------------------------------------------------

SCRAPER = """\
import sys, time, urllib.request
while True:
    for addr in sys.argv[1:]:
        try:
            urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read()
        except Exception as e:
            print(f"scrape {addr}: {e}", file=sys.stderr, flush=True)
    time.sleep(5)
"""


# The cpu step's two variants: the environment of each service (None unsets a variable), given
# the OTLP/HTTP address of the Jaeger. "on" is the services as deployed by default: metrics,
# traces with the default sampler exported over OTLP, the default log level. "off" has no
# metrics, no traces and warnings only, but for the two start-up lines (at info) that
# Flatpack waits for; they are logged once per assignment, not per order.
CPU_TELEMETRY = {
    "on": lambda otlp: {
        "FLATPACK_METRICS": None, "OTEL_SDK_DISABLED": None, "RUST_LOG": None,
        "OTEL_TRACES_SAMPLER": None, "OTEL_TRACES_SAMPLER_ARG": None,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": None, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{otlp}"},
    "off": lambda otlp: {
        "FLATPACK_METRICS": "off", "OTEL_SDK_DISABLED": "true",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": None, "OTEL_EXPORTER_OTLP_ENDPOINT": None,
        "RUST_LOG": "warn,common::kafka::client=info,common::kafka::exactly_once=info"},
}


class Run:
    """One benchmark run: its output dir, work dir, processes and records."""

    def __init__(self, o):
        self.o = o
        self.stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.out = Path(os.path.abspath(o.out or ROOT / "target" / "bench" / self.stamp))
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="flatpack-bench.", dir=os.environ.get("TMPDIR", "/tmp")))
        self.bin = ROOT / "target" / "release"
        self.cache = Path(os.environ.get("FLATPACK_CACHE_DIR") or Path.home() / ".cache" / "flatpack")
        self.env = dict(os.environ)
        self.live = []  # every Process started, stopped at the end in reverse
        self.services, self.cpu = [], []

    def environ(self, extra=None, **more):
        """The run's environment with <extra> and <more>; a None value unsets a variable."""
        env = dict(self.env)
        for k, v in {**(extra or {}), **more}.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
        return env

    def close(self):
        for proc in reversed(self.live):
            proc.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def record_service(self, step, name, ready_ms, proc):
        self.services.append({"step": step, "service": name, "ready_ms": ready_ms,
                              "peak_rss_mb": peak_rss_kb(proc.pgid) / 1024})

    def cpu_begin(self, procs=None):
        return CpuWindow({**self.fixed, **(procs or {})})

    def cpu_end(self, window, step, gone=None):
        self.cpu.append(window.end(step, gone))

    def loadgen(self, step, *args, env=None, wait=True):
        """Runs loadgen for <step>, its report in <step>.json; a run that reports loss or
        errors exits 1 but still wrote its JSON. Without <wait>, returns the Process for
        finish_loadgen."""
        args = [str(a) for a in args]
        log(f"step {step}: loadgen {' '.join(args)}")
        proc = Process(self, f"loadgen-{step}", [self.bin / "loadgen", *args, "--json", self.out / f"{step}.json"],
                       env=self.environ(env), echo=True)
        return self.finish_loadgen(step, proc) if wait else proc

    def finish_loadgen(self, step, proc):
        rc = proc.wait()
        proc.stop()
        if rc != 0:
            log(f"step {step}: loadgen exited {rc} (see {proc.log})")
            report = self.out / f"{step}.json"
            if not report.exists() or report.stat().st_size == 0:
                report.write_text('{"failed": true}\n')

    # --- installs, broker, SMTP servers ----------------------------------------------------

    def install(self):
        o = self.o
        if o.build:
            log("building the release binaries")
            run_checked("cargo", "build", "--release", "--bins", "--locked")
        if o.wants("seed-ingest") or o.wants("seed-pipeline") or o.wants("cpu"):
            venv = self.venv = self.cache / "seed-venv"
            req = ROOT / "bench" / "seed" / "requirements.txt"
            want = hashlib.sha256(req.read_bytes()).hexdigest()
            try:
                have = (venv / ".requirements.sha256").read_text().strip()
            except OSError:
                have = ""
            if have != want:
                log(f"installing the seed's Python dependencies into {venv}")
                shutil.rmtree(venv, ignore_errors=True)
                run_checked(sys.executable, "-m", "venv", venv)
                run_checked(venv / "bin" / "pip", "install", "--quiet", "-r", req)
                (venv / ".requirements.sha256").write_text(want + "\n")
        run_checked(SCRIPTS / "kafka.sh", "fetch")
        run_checked(SCRIPTS / "mailpit.sh", "fetch")
        self.sink_bin = tool_path(SCRIPTS / "tool.sh", "smtp-sink")
        if o.wants("telemetry") or o.wants("cpu"):
            self.jaeger_bin = tool_path(SCRIPTS / "tool.sh", "jaeger")

    def start_servers(self):
        log("starting Kafka")
        port, cport = free_ports(2)
        data = self.work / "kafka"
        kafka = Process(self, "kafka", [SCRIPTS / "kafka.sh", "run", "--data-dir", data, "--port", port,
                                        "--controller-port", cport])
        kafka.wait_ready(f"broker on 127.0.0.1:{port} with 'Kafka Server started' in {data}/server.log",
                         all_of(tcp_accepts(f"127.0.0.1:{port}"), log_has(data / "server.log", "Kafka Server started")),
                         90)
        bootstrap = f"127.0.0.1:{port}"
        log("starting Mailpit")
        smtp, http_port = free_ports(2)
        mailpit = Process(self, "mailpit", [SCRIPTS / "mailpit.sh", "run", "--data-dir", self.work / "mailpit",
                                            "--smtp-port", smtp, "--http-port", http_port])
        mailpit.wait_ready(f"SMTP on 127.0.0.1:{smtp} and 200 from /livez on 127.0.0.1:{http_port}",
                           all_of(tcp_accepts(f"127.0.0.1:{smtp}"),
                                  lambda: http_status(f"http://127.0.0.1:{http_port}/livez") == 200), 30)
        self.mailpit_port = smtp
        self.sink_port = free_ports(1)[0]
        # It refuses to run as root. (It changes its user itself, which clears the parent-death
        # signal: a driver killed with SIGKILL leaves it running.)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        sink = Process(self, "smtp-sink", [self.sink_bin, *user, f"127.0.0.1:{self.sink_port}", "1024"])
        sink.wait_ready(f"SMTP on 127.0.0.1:{self.sink_port}", tcp_accepts(f"127.0.0.1:{self.sink_port}"), 30)
        self.fixed = {"kafka": kafka, "mailpit": mailpit, "smtp-sink": sink}
        self.env.update(KAFKA_BOOTSTRAP_SERVERS=bootstrap, KAFKA_SERVER_ADDRESS=bootstrap,
                        MAILPIT_SMTP=f"127.0.0.1:{smtp}", MAILPIT_HTTP=f"http://127.0.0.1:{http_port}",
                        SMTP_HOST="127.0.0.1", SMTP_PORT=str(self.sink_port),
                        RUST_LOG=self.env.get("RUST_LOG") or "info", LOG_FORMAT="text")

    # --- the steps -------------------------------------------------------------------------

    def steps(self):
        o, sizing = self.o, self.o.sizing()
        # 1. raw broker
        if o.wants("raw-broker"):
            w = self.cpu_begin()
            self.loadgen("raw-broker", "produce", "--messages", o.orders, *sizing,
                         env={"FLATPACK_TOPIC_PREFIX": "bench.raw."})
            self.cpu_end(w, "raw-broker")
        if o.wants("eos-copy"):
            w = self.cpu_begin()
            self.loadgen("eos-copy", "eos-copy", "--messages", o.orders, *sizing,
                         env={"FLATPACK_TOPIC_PREFIX": "bench.eos-copy."})
            self.cpu_end(w, "eos-copy")

        # 2. the SMTP servers
        if o.wants("smtp"):
            for server, port in (("smtp-sink", self.sink_port), ("mailpit", self.mailpit_port)):
                w = self.cpu_begin()
                self.loadgen(server, "smtp", "--emails", o.emails, "--concurrency", o.smtp_concurrency,
                             *sizing, env={"SMTP_PORT": port})
                self.cpu_end(w, server)

        # 3. the seed
        run_checked(self.bin / "loadgen", "topics", "order_details", "order_confirmed", "order_email_sent",
                    "analytics_result", env=self.environ(FLATPACK_TOPIC_PREFIX=""))
        if o.wants("seed-ingest"):
            for variant in ("flask", "gunicorn"):
                self.seed_ingest(variant)
        if o.wants("seed-pipeline"):
            self.seed_pipeline()

        # 4. flatpack
        if o.wants("flatpack-ingest"):
            self.flatpack_step("flatpack-ingest", "ingest", ["orders"], self.ingest_args)
        if o.wants("flatpack-pipeline"):
            self.flatpack_step("flatpack-pipeline", "pipeline", SERVICES, self.pipeline_args)
        if o.wants("flatpack-email"):
            self.with_each_smtp_server(self.flatpack_email, "flatpack-email")
        if o.wants("flatpack-max"):
            self.flatpack_step("flatpack-max", "max", SERVICES, lambda fp: [
                "--url", fp.url(), "--orders", o.orders, "--concurrency", o.concurrency,
                "--settle-seconds", o.settle, *sizing])
        if o.wants("flatpack-rate"):
            self.with_each_smtp_server(self.flatpack_rate, "flatpack-rate")
        if o.wants("flatpack-scale"):
            self.flatpack_scale()
        if o.wants("flatpack-memory"):
            self.flatpack_memory()
        if o.wants("telemetry"):
            self.telemetry()
        if o.wants("cpu"):
            self.cpu_step()

    def seed_ingest(self, variant, prefix=""):
        """The seed's orders backend under the ingest load, as the seed runs it (<variant>
        flask: app.run) or under gunicorn: step <prefix>seed-ingest-<variant>."""
        o, seed, py = self.o, ROOT / "bench" / "seed", self.venv / "bin"
        port = free_ports(1)[0]
        if variant == "flask":
            argv = [py / "python", seed / "orders_backend.py"]
            env = {"SEED_ORDERS_PORT": port, "PYTHONUNBUFFERED": "1"}
        else:
            argv = [py / "gunicorn", "--chdir", seed, "-w", o.gunicorn_workers, "-b", f"127.0.0.1:{port}",
                    "orders_backend:app"]
            env = {}
        proc = Process(self, f"{prefix}seed-orders-{variant}", argv, env=self.environ(env))
        ready = proc.wait_ready(f"an HTTP answer on 127.0.0.1:{port}",
                                http_answers(f"http://127.0.0.1:{port}/order"), 60)
        step = f"{prefix}seed-ingest-{variant}"
        w = self.cpu_begin({"seed-orders": proc})
        self.loadgen(step, "--url", f"http://127.0.0.1:{port}", "--orders", o.orders, "--concurrency",
                     o.concurrency, "--no-follow", *o.sizing())
        self.cpu_end(w, step)
        self.record_service(step, "seed-orders", ready, proc)
        proc.stop()

    def seed_pipeline(self, prefix=""):
        """The seed's transactions + analytics backends fed orders: step <prefix>seed-pipeline.
        The seed's consumers have no group and start at the end of their topics: the feed's
        warm-up orders tell when they are reading; the orders of earlier steps are never
        seen."""
        o, seed, py = self.o, ROOT / "bench" / "seed", self.venv / "bin" / "python"
        procs = {name: Process(self, prefix + name, [py, seed / f"{name.removeprefix('seed-')}_backend.py"],
                               env=self.environ(PYTHONUNBUFFERED="1"))
                 for name in ("seed-transactions", "seed-analytics")}
        step = f"{prefix}seed-pipeline"
        w = self.cpu_begin(procs)
        self.loadgen(step, "feed", "--orders", o.orders, *o.sizing(), "--warmup-seconds",
                     WARMUP_SECONDS, "--settle-seconds", o.settle, env={"FLATPACK_TOPIC_PREFIX": ""})
        self.cpu_end(w, step)
        for name, proc in procs.items():
            self.record_service(step, name, None, proc)
            proc.stop()

    def with_each_smtp_server(self, measure, step):
        """<step> with smtp-sink, then <step>-mailpit with Mailpit."""
        measure(step, {})
        measure(f"{step}-mailpit", {"SMTP_PORT": self.mailpit_port})

    def flatpack_step(self, step, name, services, args, env=None, alongside=None):
        """One flatpack step: <services> started (topic prefix bench.<name>.), loadgen run with
        <args>(the services) while their CPU is counted, then all stopped. <alongside>(the
        services), if given, starts a process that runs beside loadgen (its CPU not counted)."""
        env = env or {}
        fp = Flatpack(self, name, services, env=env)
        beside = alongside(fp) if alongside else None
        w = self.cpu_begin(fp.procs)
        self.loadgen(step, *args(fp), env={**env, "FLATPACK_TOPIC_PREFIX": f"bench.{name}."})
        self.cpu_end(w, step)
        if beside:
            beside.stop()
        fp.stop(step)

    def flatpack_email(self, step, env):
        o = self.o
        self.flatpack_step(step, step, ["email"], lambda fp: [
            "email-stage", "--emails", o.emails, *o.sizing(), "--settle-seconds", o.settle], env)

    def ingest_args(self, fp):
        """loadgen's arguments for the orders service alone under the HTTP load, POSTs only."""
        o = self.o
        return ["--url", fp.url(), "--orders", o.orders, "--concurrency", o.concurrency, "--no-follow",
                *o.sizing()]

    def pipeline_args(self, fp):
        """loadgen's arguments for the orders fed straight to order_details until
        analytics_result counts them."""
        o = self.o
        return ["feed", "--orders", o.orders, *o.sizing(), "--warmup-seconds", WARMUP_SECONDS,
                "--settle-seconds", o.settle]

    def rate_args(self, fp):
        o = self.o
        return ["--url", fp.url(), "--orders", o.rate_orders, "--rate", o.rate, "--concurrency",
                o.concurrency, "--settle-seconds", o.settle]

    def flatpack_rate(self, step, env):
        self.flatpack_step(step, step, SERVICES, self.rate_args, env)

    def flatpack_scale(self):
        """Two instances of each consumer-group service at the fixed rate; halfway through, one
        of each leaves (SIGTERM). Writes when they left and when the instances staying were
        next assigned partitions to flatpack-scale-leave.json."""
        o = self.o
        leavers = ("transactions@b", "email@b")
        fp = Flatpack(self, "scale", [*SERVICES, *leavers])
        half = o.rate_orders // o.rate // 2
        w = self.cpu_begin(fp.procs)
        load = self.loadgen("flatpack-scale", *self.rate_args(fp), env={"FLATPACK_TOPIC_PREFIX": "bench.scale."},
                            wait=False)
        time.sleep(half)
        # A leaver's CPU counts until it is gone (it commits its open batch and stops).
        gone = {name: group_ticks(fp.procs[name].pgid) for name in leavers}
        left_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for name in leavers:
            fp.procs[name].signal(signal.SIGTERM)
        for name in leavers:
            proc = fp.procs[name]
            for _ in range(300):
                ticks = group_ticks(proc.pgid) if proc.running() else 0
                if ticks == 0:
                    break
                gone[name] = ticks
                time.sleep(0.1)
        self.finish_loadgen("flatpack-scale", load)
        self.cpu_end(w, "flatpack-scale", gone)
        reassigned = {}
        for name in ("transactions", "email"):
            # The first assignment of the instance staying after the other left.
            reassigned[name] = None
            for line in (self.logs / f"scale-{name}.log").read_text(errors="replace").splitlines():
                at = ANSI.sub("", line).split(" ", 1)[0]
                if "partitions assigned" in line and at > left_at:
                    reassigned[name] = at
                    break
        write_json(self.out / "flatpack-scale-leave.json",
                   {"left_at": left_at, "left_after_s": half, "reassigned_at": reassigned})
        fp.stop("flatpack-scale", leaving=leavers)

    def flatpack_memory(self):
        """Memory with a large state, and restarts on it (see the usage)."""
        o = self.o
        stores = self.work / "stores"
        env = {"FLATPACK_STORE_DIR": stores, "FLATPACK_TOPIC_PREFIX": "bench.memory."}
        feed = ["--warmup-seconds", WARMUP_SECONDS, "--settle-seconds", o.settle]
        fp = Flatpack(self, "memory", SERVICES, store_dir=stores)
        w = self.cpu_begin(fp.procs)
        self.loadgen("flatpack-memory", "feed", "--orders", o.memory_orders, *feed, env=env)
        self.cpu_end(w, "flatpack-memory")
        fp.stop("flatpack-memory")
        fp = Flatpack(self, "memory-restart", SERVICES, prefix="bench.memory.", store_dir=stores)
        self.loadgen("flatpack-memory-restart", "feed", "--orders", 1000, *feed, env=env)
        fp.stop("flatpack-memory-restart")
        # Each restarted service's restores: changelog (or topic), records read, time taken.
        restores = []
        pattern = re.compile(r"changelog=(?P<changelog>\S+).* restored=(?P<records>[0-9]+) elapsed=(?P<elapsed>\S+)")
        for name in SERVICES:
            for line in (self.logs / f"memory-restart-{name}.log").read_text(errors="replace").splitlines():
                m = "state restored" in line and pattern.search(ANSI.sub("", line))
                if m:
                    restores.append({**m.groupdict(), "service": name})
        write_json(self.out / "flatpack-memory-restores.json", restores)

    def telemetry(self):
        """What metrics and traces cost: the fixed-rate run with neither, then with both at
        work (every span exported to a Jaeger, every /metrics scraped every 5 s as Prometheus
        would), in pairs whose order alternates, so that a machine getting busier or quieter
        during the run weighs on both alike."""
        jaeger, otlp = self.start_jaeger("jaeger")
        for round_ in range(1, self.o.telemetry_rounds + 1):
            for variant in (("off", "on") if round_ % 2 else ("on", "off")):
                self.telemetry_run(variant, round_, otlp)
        jaeger.stop()

    def start_jaeger(self, name):
        """A Jaeger (spans kept in memory) named <name>; returns it and its OTLP/HTTP address."""
        otlp, ui = free_addr(), free_addr()
        jaeger = Process(self, name, [self.jaeger_bin, "--config", SCRIPTS / "jaeger" / "local.yaml"],
                         env=self.environ(JAEGER_OTLP_HTTP_ADDR=otlp, JAEGER_UI_ADDR=ui,
                                          JAEGER_QUERY_GRPC_ADDR=free_addr()))
        jaeger.wait_ready(f"an HTTP answer from http://{ui}/api/services",
                          http_answers(f"http://{ui}/api/services"), 60)
        return jaeger, otlp

    def scraper(self, step):
        """For flatpack_step's <alongside>: a Prometheus stand-in that GETs every started
        service's /metrics every 5 s (its CPU not counted)."""
        def start(fp):
            exes = {name.partition("@")[0] for name in fp.procs}
            addrs = [*([fp.orders_addr] if "orders" in exes else []),
                     *([fp.dashboard_addr] if "dashboard" in exes else []), *fp.ops_addrs]
            return Process(self, f"{step}-scraper", [sys.executable, "-c", SCRAPER, *addrs])
        return start

    def telemetry_run(self, variant, round_, otlp):
        step = f"telemetry-{variant}-{round_}"
        if variant == "off":
            env = {"FLATPACK_METRICS": "off", "OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": None}
        else:
            env = {"FLATPACK_METRICS": "on", "OTEL_SDK_DISABLED": "false",
                   "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{otlp}"}
        scraper = self.scraper(step) if variant == "on" else None
        self.flatpack_step(step, step, SERVICES, self.rate_args, env, alongside=scraper)

    def cpu_step(self):
        """Each service's CPU per order with telemetry as deployed by default and without, at
        the maximum rate and at --rate, beside the seed's (see the usage). The two variants of
        a measurement run one right after the other, off first in odd rounds and on first in
        even ones, so that a machine getting busier or quieter weighs on both alike. Steps
        cpu-seed-ingest-gunicorn, cpu-seed-pipeline and cpu-<on|off>-<round>-<measurement>."""
        self.seed_ingest("gunicorn", prefix="cpu-")
        self.seed_pipeline(prefix="cpu-")
        jaeger, otlp = self.start_jaeger("cpu-jaeger")
        measurements = {"ingest": (["orders"], self.ingest_args),
                        "pipeline": (SERVICES, self.pipeline_args),
                        "rate": (SERVICES, self.rate_args)}
        for round_ in range(1, self.o.cpu_rounds + 1):
            for measurement, (services, args) in measurements.items():
                for variant in (("off", "on") if round_ % 2 else ("on", "off")):
                    step = f"cpu-{variant}-{round_}-{measurement}"
                    self.flatpack_step(step, step, services, args, CPU_TELEMETRY[variant](otlp),
                                       alongside=self.scraper(step) if variant == "on" else None)
        jaeger.stop()

    # --- 5. services, summary --------------------------------------------------------------

    def summary(self):
        o = self.o
        write_json(self.out / "services.json", self.services)
        write_json(self.out / "cpu.json", self.cpu)
        commit = git_commit()
        u = os.uname()
        write_json(self.out / "machine.json", {
            "dir": str(self.out), "when": self.stamp, "host": f"{u.sysname} {u.release} {u.machine}",
            "cores": cores(), "orders": o.orders, "rate": o.rate,
            "steady_seconds": None if o.fixed_size else o.steady, "rate_orders": o.rate_orders,
            "commit": commit, "quick": o.quick,
            "load_average_at_end": " ".join(Path("/proc/loadavg").read_text().split()[:3])})
        run_checked(sys.executable, ROOT / "bench" / "report.py", self.out)
        log(f"results in {self.out}")

    def record_cpu(self):
        """--record: adds the cpu step's figures (summary.json's cpu_step.figures), with the
        commit, the date and the command, to the list in bench/cpu-recorded.json."""
        summary = json.loads((self.out / "summary.json").read_text())
        figures = (summary.get("cpu_step") or {}).get("figures")
        if not figures:
            raise Failure(f"--record: the cpu step left no figures in {self.out}/summary.json")
        try:
            recorded = json.loads(CPU_RECORDED.read_text())
        except FileNotFoundError:
            recorded = []
        commit = git_commit()
        recorded.append({"commit": commit, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                         "command": self.o.command, "quick": self.o.quick, "rate": self.o.rate,
                         "rounds": self.o.cpu_rounds, **figures})
        write_json(CPU_RECORDED, recorded)
        log(f"recorded the cpu step's figures for {commit} in {CPU_RECORDED.relative_to(ROOT)}"
            + (" (a --quick run: not figures to commit)" if self.o.quick else ""))


def git_commit():
    """The checked-out commit, abbreviated (git rev-parse --short HEAD), or 'unknown'."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def interrupted(signum, frame):
    raise KeyboardInterrupt


def main(argv):
    try:
        o = parse_args(argv)
    except UsageError as e:
        print(f"{NAME}: {e}", file=sys.stderr)
        return 2
    if o is None:
        return 0
    os.chdir(ROOT)
    signal.signal(signal.SIGTERM, interrupted)
    run = Run(o)
    try:
        run.install()
        run.start_servers()
        run.steps()
        run.summary()
        if o.record:
            run.record_cpu()
        return 0
    except Failure as e:
        log(f"error: {e}")
        return e.code
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        # Nothing interrupts the cleanup.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        run.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
