#!/usr/bin/env python3
"""Reads the JSON results of one scripts/bench.sh run and prints the table of figures and
ratios; writes it as summary.json beside them. Usage: bench/report.py <output-dir>"""

import json
import math
import os
import re
import statistics
import sys

# The cpu step's figures per commit that changed a hot path (scripts/bench.sh --record).
CPU_RECORDED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu-recorded.json")


# loadgen's names for a step's rate before every report shared `seconds` and `per_second`:
# outputs written then read as well.
RENAMED = {"post_seconds": "seconds", "throughput": "per_second",
           "messages_per_second": "per_second", "emails_per_second": "per_second",
           "orders_per_second": "per_second"}


def load(out, step):
    try:
        with open(os.path.join(out, step + ".json")) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(report, dict):
        for old, new in RENAMED.items():
            if old in report and new not in report:
                report[new] = report.pop(old)
    return report


def get(d, *path):
    for key in path:
        if d is None:
            return None
        if isinstance(key, int):
            d = d[key] if isinstance(d, list) and len(d) > key else None
        else:
            d = d.get(key) if isinstance(d, dict) else None
    return d


def stage(report, name):
    for s in get(report, "stages") or []:
        if s.get("stage") == name:
            return s
    return None


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def seconds_between(start, end):
    """Seconds from one RFC 3339 UTC timestamp (microseconds, `Z`) to another; None if either
    is missing."""
    from datetime import datetime
    if not start or not end:
        return None
    parse = lambda t: datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ")
    return (parse(end) - parse(start)).total_seconds()


def steady(report):
    """A throughput step's rate over its steady window (10 % to 90 % of what it did), or,
    for a run without one, its rate over the whole run (`per_second`)."""
    return get(report, "steady", "per_second") or get(report, "per_second")


def window(report):
    """How long a step's steady window lasted, for the table's notes."""
    w = get(report, "steady")
    if report is None:
        return "missing"
    if not w:
        return "whole run, no steady window"
    return f"steady {w['to_seconds'] - w['from_seconds']:.0f} s"


def handled(out, step):
    """What <step> handled, for CPU per unit: orders accepted or fed (warm-up and the probes
    that sized the step included, as they ran while the CPU was measured), e-mails, messages."""
    r = load(out, step)
    if r is None:
        return None
    probed = get(r, "probe", "items") or 0
    if "accepted" in r:
        return r["accepted"] + probed
    if "warmup_orders" in r:
        return r["orders"] + r["warmup_orders"] + probed
    if "seen" in r:
        return r["seen"] + r.get("warmup", 0) + probed
    if "sent" in r:
        return r["sent"] + probed
    if "copied" in r:
        return r["copied"] + probed
    return (r.get("messages") or 0) + probed


def fmt(x, digits=0, unit=""):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:,.{digits}f}{unit}"


# The cpu step: each service's CPU per order with telemetry as deployed ("on") and without
# ("off"), at the maximum rate and at the fixed rate. At the maximum rate a service counts
# only in the measurement where it does per-order work: the orders API under the HTTP load
# (ingest), the four others fed orders (pipeline); at the fixed rate all five do.
CPU_SERVICES = ("orders", "transactions", "analytics", "transactions + analytics", "email", "dashboard")
CPU_MAX = {"orders": "ingest"}  # the others: "pipeline"
CPU_STEP = re.compile(r"cpu-(on|off)-([0-9]+)-(ingest|pipeline|rate)")
TARGET_COST = 0.10
TARGET_SEED_RATIO = 40
W = 40  # the cpu step's label column


def us_per_order(us, service):
    """A service's CPU µs per order in one step's figures (a pair: the sum), or None."""
    if us is None:
        return None
    if service == "transactions + analytics":
        pair = [us.get("transactions"), us.get("analytics")]
        return None if None in pair else sum(pair)
    if service == "seed transactions + analytics":
        pair = [us.get("seed-transactions"), us.get("seed-analytics")]
        return None if None in pair else sum(pair)
    return us.get(service)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def problems(report):
    """What went wrong in one loadgen report, as counts: {"errors", "lost", "duplicated",
    "not counted"}; None for a missing report."""
    if report is None or report.get("failed"):
        return None
    counts = {"errors": sum((report.get("errors") or {}).values()),
              "lost": sum(len(s.get("lost") or []) for s in report.get("stages") or []),
              "duplicated": sum(len(s.get("duplicated") or []) for s in report.get("stages") or [])}
    if "count_after" in report:  # a feed: analytics must count each order once
        counts["not counted"] = report["orders"] - (report["count_after"] - report["count_before"])
    if get(report, "analytics", "exact") is False:
        counts["not counted"] = (get(report, "analytics", "expected_orders_increase") or 0) - (
            get(report, "analytics", "observed_orders_increase") or 0)
    return counts


def load_recorded():
    """The list in bench/cpu-recorded.json, or None with why not."""
    try:
        with open(CPU_RECORDED) as f:
            recorded = json.load(f)
    except FileNotFoundError:
        return None, f"no {os.path.basename(CPU_RECORDED)}"
    except ValueError as e:
        return None, f"{os.path.basename(CPU_RECORDED)} is not JSON: {e}"
    if not isinstance(recorded, list):
        return None, f"{os.path.basename(CPU_RECORDED)} is not a list"
    return recorded, None


def cpu_step(out, per_unit, machine):
    """Prints the cpu step's table; returns its figures for summary.json (and, under
    "figures", what --record adds to bench/cpu-recorded.json), or None if it did not run."""
    runs = {}  # (measurement, variant) -> {round: µs per order by process}
    for step, us in per_unit.items():
        m = CPU_STEP.fullmatch(step)
        if m:
            runs.setdefault((m[3], m[1]), {})[int(m[2])] = us
    seed_ingest = per_unit.get("cpu-seed-ingest-gunicorn")
    seed_pipeline = per_unit.get("cpu-seed-pipeline")
    if not runs and not seed_ingest and not seed_pipeline:
        return None
    rounds = sorted({r for by_round in runs.values() for r in by_round})

    def figure(measurement, service):
        """on, off (medians over the rounds) and the cost: the median of the rounds' on/off - 1
        (each round's two runs ran one right after the other)."""
        on, off = runs.get((measurement, "on"), {}), runs.get((measurement, "off"), {})
        costs = []
        for r in rounds:
            a, b = us_per_order(on.get(r), service), us_per_order(off.get(r), service)
            if a is not None and b:
                costs.append(a / b - 1)
        return (median(us_per_order(us, service) for us in on.values()),
                median(us_per_order(us, service) for us in off.values()), median(costs))

    services = {}
    for service in CPU_SERVICES:
        max_on, max_off, max_cost = figure(CPU_MAX.get(service, "pipeline"), service)
        rate_on, rate_off, rate_cost = figure("rate", service)
        services[service] = {"max_on": max_on, "max_off": max_off, "max_cost": max_cost,
                             "rate_on": rate_on, "rate_off": rate_off, "rate_cost": rate_cost}
    seed = {"orders (gunicorn)": us_per_order(seed_ingest, "seed-orders"),
            "transactions + analytics": us_per_order(seed_pipeline, "seed transactions + analytics")}
    seed_ratios = {
        "orders API": {v: ratio(seed["orders (gunicorn)"], services["orders"][f"max_{v}"])
                       for v in ("on", "off")},
        "transactions + analytics": {v: ratio(seed["transactions + analytics"],
                                              services["transactions + analytics"][f"max_{v}"])
                                     for v in ("on", "off")},
    }

    rate = fmt(machine.get("rate"))
    pct = lambda x: "—" if x is None else f"{100 * x:+.1f} %"
    us = lambda x: fmt(x, 1)
    print(f"  CPU µs per order, step cpu, broker excluded ({len(rounds)} round"
          + ("s: medians" if len(rounds) != 1 else "") + "); on = as deployed, off = no metrics, "
          "no traces, warnings only;")
    print(f"  max rate: orders alone under the HTTP load, the others fed; cost = on/off - 1, "
          f"target ≤ +{100 * TARGET_COST:.0f} % per service")
    fewest = min((handled(out, s) or 0 for s in per_unit if CPU_STEP.fullmatch(s)), default=0)
    if fewest:
        # /proc counts CPU time in ticks: a figure is good to one tick over what the run handled.
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        print(f"  resolution: one tick ({tick_us / 1000:.0f} ms of CPU) over {fewest:,} orders is "
              f"{tick_us / fewest:.1f} µs per order")
    print(f"  {'':<{W}}{'max rate':>27}{rate + '/s':>27}")
    print(f"  {'':<{W}}" + f"{'on':>9}{'off':>9}{'cost':>9}" * 2)
    for service, f in services.items():
        over = any(c is not None and round(c, 4) > TARGET_COST for c in (f["max_cost"], f["rate_cost"]))
        print(f"  {service:<{W}}{us(f['max_on']):>9}{us(f['max_off']):>9}{pct(f['max_cost']):>9}"
              f"{us(f['rate_on']):>9}{us(f['rate_off']):>9}{pct(f['rate_cost']):>9}"
              + ("   OVER TARGET" if over else ""))
    for name, value in seed.items():
        print(f"  {'seed ' + name:<{W}}{us(value):>9}")
    for name, r in seed_ratios.items():
        missed = r["on"] is not None and r["on"] < TARGET_SEED_RATIO
        print(f"  {'seed/flatpack, ' + name:<{W}}{fmt(r['on'], 1):>9}{fmt(r['off'], 1):>9}"
              f"{'':>9}{'':>27}   target ≥ {TARGET_SEED_RATIO}" + ("  MISSED" if missed else ""))
    print()

    # Latency at the fixed rate, telemetry on: what the deployed services answer with.
    targets = (("POST", None, 20), ("POST→order_confirmed", "order_confirmed", 100),
               ("POST→order_email_sent", "order_email_sent", 250))
    latency = {}
    for r in rounds:
        report = load(out, f"cpu-on-{r}-rate")
        if report is None:
            continue
        print(f"  {f'{rate}/s, on, round {r}':<{W}}{'p50':>10}{'p99':>10}   target p99")
        for name, topic, target in targets:
            lat = get(report, "post_latency") if topic is None else get(stage(report, topic), "latency")
            p50, p99 = get(lat, "p50_ms"), get(lat, "p99_ms")
            latency.setdefault(r, {})[name] = {"p50_ms": p50, "p99_ms": p99, "target_p99_ms": target}
            verdict = "" if p99 is None else ("" if p99 <= target else "  MISSED")
            print(f"  {'  ' + name:<{W}}{fmt(p50, 1, ' ms'):>10}{fmt(p99, 1, ' ms'):>10}   ≤ {target} ms{verdict}")
    if latency:
        print()

    # What went through each run: nothing may be lost or duplicated.
    steps = [s for s in ("cpu-seed-ingest-gunicorn", "cpu-seed-pipeline") if s in per_unit] + [
        f"cpu-{v}-{r}-{m}" for r in rounds for m in ("ingest", "pipeline", "rate") for v in ("off", "on")
        if r in runs.get((m, v), {})]
    counts = {}
    print(f"  {'run':<{W}}{'handled':>9}   errors, lost, duplicated, not counted")
    for step in steps:
        c = problems(load(out, step))
        counts[step] = c
        said = "missing report" if c is None else ", ".join(f"{v} {k}" for k, v in c.items())
        bad = c is None or any(c.values())
        print(f"  {step:<{W}}{fmt(handled(out, step)):>9}   {said}" + ("   NOT CLEAN" if bad else ""))
    clean = all(c is not None and not any(c.values()) for c in counts.values())
    print()

    rnd = lambda x, d=2: None if x is None else round(x, d)
    figures = {
        "us_per_order": {s: {k: rnd(v, 4 if k.endswith("cost") else 2) for k, v in f.items()}
                         for s, f in services.items()},
        "seed_us_per_order": {k: rnd(v) for k, v in seed.items()},
        "seed_over_flatpack": {k: {v: rnd(x) for v, x in r.items()} for k, r in seed_ratios.items()},
        "clean": clean,
    }
    beside_recorded(figures)
    return {"rounds": rounds, "figures": figures, "latency_on_at_rate": latency, "runs": counts}


def beside_recorded(figures):
    """Prints this run's figures beside the latest ones in bench/cpu-recorded.json."""
    recorded, why = load_recorded()
    if not recorded:
        print(f"  CPU µs per order beside the last recorded figure: no recorded figure yet"
              f" ({why or os.path.basename(CPU_RECORDED) + ' is empty'})")
        print()
        return
    last = recorded[-1]
    then = last.get("us_per_order") or {}
    change = lambda now, before: ratio(now, before) - 1 if now is not None and before else None
    pct = lambda x: "—" if x is None else f"{100 * x:+.1f} %"
    print(f"  CPU µs per order beside the last recorded figure: {last.get('commit', '?')} of "
          f"{last.get('date', '?')}, {last.get('command', '?')}"
          + (" (QUICK DRY RUN)" if last.get("quick") else ""))
    print(f"  {'':<{W}}{'on now':>9}{'recorded':>10}{'change':>10}{'off now':>11}{'recorded':>10}{'change':>10}")
    for service, f in figures["us_per_order"].items():
        for at, label in (("max", "max rate"), ("rate", f"{fmt(last.get('rate'))}/s")):
            on, off = f[f"{at}_on"], f[f"{at}_off"]
            on_then, off_then = get(then, service, f"{at}_on"), get(then, service, f"{at}_off")
            print(f"  {service + ', ' + label:<{W}}{fmt(on, 1):>9}{fmt(on_then, 1):>10}{pct(change(on, on_then)):>10}"
                  f"{fmt(off, 1):>11}{fmt(off_then, 1):>10}{pct(change(off, off_then)):>10}")
    for name, value in figures["seed_us_per_order"].items():
        before = get(last, "seed_us_per_order", name)
        print(f"  {'seed ' + name:<{W}}{fmt(value, 1):>9}{fmt(before, 1):>10}{pct(change(value, before)):>10}")
    print()


def main():
    out = sys.argv[1]
    raw = load(out, "raw-broker")
    eos_copy = load(out, "eos-copy")
    sink = load(out, "smtp-sink")
    mailpit = load(out, "mailpit")
    flask = load(out, "seed-ingest-flask")
    gunicorn = load(out, "seed-ingest-gunicorn")
    seed_pipe = load(out, "seed-pipeline")
    ingest = load(out, "flatpack-ingest")
    pipe = load(out, "flatpack-pipeline")
    fmax = load(out, "flatpack-max")
    femail = load(out, "flatpack-email")
    femail_mailpit = load(out, "flatpack-email-mailpit")
    frate = load(out, "flatpack-rate")
    frate_mailpit = load(out, "flatpack-rate-mailpit")
    fscale = load(out, "flatpack-scale")
    leave = load(out, "flatpack-scale-leave") or {}
    services = load(out, "services") or []
    cpu = load(out, "cpu") or []
    machine = load(out, "machine") or {}

    def verdict(report):
        """`clean`, or what is wrong with a loadgen HTTP report."""
        if report is None or report.get("failed"):
            return "missing"
        problems = [f"{n} errors {e}" for e, n in (report.get("errors") or {}).items()]
        for s in report.get("stages") or []:
            if s.get("lost"):
                problems.append(f"{len(s['lost'])} not on {s['stage']} in time")
            if s.get("duplicated"):
                problems.append(f"{len(s['duplicated'])} twice on {s['stage']}")
        if get(report, "analytics", "exact") is False:
            problems.append("totals off")
        return "clean" if not problems else "NOT CLEAN: " + ", ".join(problems)

    def clean(report):
        """Whether a loadgen HTTP report saw no error, loss, duplicate or miscount."""
        if report is None or report.get("failed"):
            return False
        if report.get("errors"):
            return False
        for s in report.get("stages") or []:
            if s.get("lost") or s.get("duplicated"):
                return False
        return get(report, "analytics", "exact") is not False

    seed_runs = [(name, r) for name, r in (("app.run", flask), ("gunicorn", gunicorn)) if r]
    seed_best_name, seed_best = max(
        seed_runs, key=lambda nr: steady(nr[1]) or 0, default=(None, None)
    )

    # The e-mail stage's rate in the max run: accepted orders over the time from the first
    # POST to the last order_email_sent, which is at most the posting time plus the largest
    # POST→order_email_sent latency. A lower bound, close when e-mail is the bottleneck.
    email_stage = stage(fmax, "order_email_sent")
    email_rate = None
    if fmax and email_stage and email_stage.get("seen"):
        span = fmax["seconds"] + email_stage["latency"]["max_ms"] / 1000.0
        email_rate = email_stage["seen"] / span if span > 0 else None

    rows = []

    def row(step, figure, value, note=""):
        rows.append((step, figure, value, note))

    row("raw broker", "produce, msg/s", fmt(steady(raw)),
        f"{window(raw)}; {get(raw, 'message_bytes')} B/msg, idempotent acks=all" if raw else "missing")
    row("raw exactly-once copy", "records/s", fmt(steady(eos_copy)),
        (f"{window(eos_copy)}; transactions of ≤ {get(eos_copy, 'max_batch')}"
         + ("" if get(eos_copy, "complete") else ", INCOMPLETE")) if eos_copy else "missing")
    for name, r in (("smtp-sink", sink), ("Mailpit", mailpit)):
        row(name, "accepted e-mails/s", fmt(steady(r)),
            f"{window(r)}; {get(r, 'concurrency')} SMTP connections" if r else "missing")
    for name, r in (("seed ingest (app.run)", flask), ("seed ingest (gunicorn)", gunicorn)):
        row(name, "orders/s", fmt(steady(r)),
            f"{window(r)}; p99 POST {fmt(get(r, 'post_latency', 'p99_ms'), 1, ' ms')}"
            + ("" if clean(r) else ", ERRORS"))
    row("seed pipeline", "orders/s to analytics_result", fmt(steady(seed_pipe)),
        window(seed_pipe) + ("" if get(seed_pipe, "complete") else ", INCOMPLETE"))
    row("flatpack ingest", "orders/s", fmt(steady(ingest)),
        f"{window(ingest)}; p99 POST {fmt(get(ingest, 'post_latency', 'p99_ms'), 1, ' ms')}"
        + ("" if clean(ingest) else ", ERRORS"))
    row("flatpack pipeline", "orders/s to analytics_result", fmt(steady(pipe)),
        f"{window(pipe)}; exactly-once; " + ("exact" if get(pipe, "complete") else "INCOMPLETE"))
    for name, r in (("flatpack e-mail stage", femail), ("  the same, Mailpit", femail_mailpit)):
        row(name, "e-mails/s to order_email_sent", fmt(steady(r)),
            f"{window(r)}; alone, decisions fed" + ("" if get(r, "complete") else "; INCOMPLETE"))
    row("flatpack max", "orders/s POSTed", fmt(steady(fmax)),
        f"{window(fmax)}; {verdict(fmax)}")
    row("flatpack max", "e-mail stage, e-mails/s", fmt(email_rate), "lower bound, whole system busy")
    rate = f"flatpack {fmt(machine.get('rate'))}/s"
    for label, r in (("flatpack max", fmax), (rate, frate), ("  the same, Mailpit", frate_mailpit)):
        if label != "flatpack max":
            row(label, "orders/s POSTed", fmt(get(r, "per_second")), verdict(r))
        row(label, "p99 POST", fmt(get(r, "post_latency", "p99_ms"), 1, " ms"), "target ≤ 20 ms at 1,000/s")
        row(label, "p99 POST→order_confirmed",
            fmt(get(stage(r, "order_confirmed"), "latency", "p99_ms"), 1, " ms"), "target ≤ 100 ms at 1,000/s")
        row(label, "p99 POST→order_email_sent",
            fmt(get(stage(r, "order_email_sent"), "latency", "p99_ms"), 1, " ms"), "target ≤ 250 ms at 1,000/s")

    # Scale-out: the fixed-rate run with two transactions and two email instances, one of each
    # leaving halfway; its latencies beside the one-instance run's, and how long the leavers'
    # partitions waited for an instance staying.
    scale = f"flatpack {fmt(machine.get('rate'))}/s, 2 + 2 instances"
    row(scale, "orders/s POSTed", fmt(get(fscale, "per_second")), verdict(fscale))
    for topic in ("order_confirmed", "order_email_sent"):
        for pct in ("p99_ms", "max_ms"):
            row(scale, f"{pct[:-3]} POST→{topic}",
                fmt(get(stage(fscale, topic), "latency", pct), 1, " ms"),
                "one instance each: " + fmt(get(stage(frate, topic), "latency", pct), 1, " ms"))
    for service in ("transactions", "email"):
        waited = seconds_between(leave.get("left_at"), get(leave, "reassigned_at", service))
        row(scale, f"{service}: leaver's partitions reassigned after", fmt(waited, 1, " s"),
            f"one instance left after {leave.get('left_after_s', '?')} s" if leave else "missing")

    ratios = {
        "flatpack/seed ingest": (ratio(steady(ingest), steady(seed_best)), "≥ 20"),
        "flatpack/seed pipeline": (ratio(steady(pipe), steady(seed_pipe)), "≥ 10"),
        "ingest/raw broker": (ratio(steady(ingest), steady(raw)), "—"),
        "pipeline/raw exactly-once copy": (ratio(steady(pipe), steady(eos_copy)), "≥ 0.5"),
        "e-mail stage/smtp-sink limit": (ratio(steady(femail), steady(sink)), "≥ 0.8"),
        "e-mail stage/Mailpit limit": (ratio(steady(femail_mailpit), steady(mailpit)), "≥ 0.8"),
        "e-mail stage in max run/smtp-sink limit": (ratio(email_rate, steady(sink)), "—"),
    }

    # The memory step's services hold a far larger state: they are shown apart.
    memory_steps = ("flatpack-memory", "flatpack-memory-restart")
    per_service = {}
    for s in services:
        if s.get("step") in memory_steps:
            continue
        name = s["service"]
        agg = per_service.setdefault(name, {"peak_rss_mb": 0.0, "ready_ms": None, "steps": 0})
        agg["peak_rss_mb"] = max(agg["peak_rss_mb"], s.get("peak_rss_mb") or 0.0)
        if s.get("ready_ms") is not None:
            agg["ready_ms"] = max(agg["ready_ms"] or 0, s["ready_ms"])
        agg["steps"] += 1

    width = max(len(r[0]) for r in rows) + 2
    fwidth = max(len(r[1]) for r in rows) + 2
    print()
    size = (f"throughput steps sized for {machine['steady_seconds']} s of steady window"
            if machine.get("steady_seconds") else f"{machine.get('orders', '?')} orders per step")
    print(f"flatpack benchmark — {machine.get('when', '?')}, commit {machine.get('commit', '?')}, "
          f"{machine.get('cores', '?')} cores, {size}"
          + (" (QUICK DRY RUN)" if machine.get("quick") else "")
          + f", load average at end {machine.get('load_average_at_end', '?')}")
    print()
    for step, figure, value, note in rows:
        print(f"  {step:<{width}}{figure:<{fwidth}}{value:>12}   {note}")
    print()
    print("  ratios" + " " * (width + fwidth - 6) + f"{'':>12}   target")
    for name, (value, target) in ratios.items():
        print(f"  {name:<{width + fwidth}}{fmt(value, 2):>12}   {target}")
    print()
    print(f"  {'service':<22}{'peak RSS (max)':>16}{'ready (max)':>14}   target ≤ 50 MB, ≤ 1,000 ms")
    for name, agg in per_service.items():
        print(f"  {name:<22}{fmt(agg['peak_rss_mb'], 1, ' MB'):>16}{fmt(agg['ready_ms'], 0, ' ms'):>14}")
    print()

    # Memory with a large state, and a restart on it.
    memory = {(s["step"], s["service"]): s for s in services if s.get("step") in memory_steps}
    if memory:
        fmem = load(out, "flatpack-memory")
        restart = load(out, "flatpack-memory-restart")
        restores = load(out, "flatpack-memory-restores") or []
        def counted(r):
            return "all counted once" if get(r, "complete") else "NOT all counted"

        print(f"  memory: {fmt(get(fmem, 'orders'))} orders fed ({counted(fmem)}), then every "
              f"service restarted and 1,000 more ({counted(restart)})")
        print(f"  {'service':<22}{'peak RSS':>12}{'after restart':>16}{'ready':>10}"
              f"{'restored':>12}   target ≤ 64 MB, restored ≤ 5 s")
        for name in dict.fromkeys(n for _, n in memory):
            first = memory.get(("flatpack-memory", name), {})
            again = memory.get(("flatpack-memory-restart", name), {})
            took = [f"{r['elapsed']} ({r['records']} records)" for r in restores
                    if r.get("service") == name]
            print(f"  {name:<22}{fmt(first.get('peak_rss_mb'), 1, ' MB'):>12}"
                  f"{fmt(again.get('peak_rss_mb'), 1, ' MB'):>16}{fmt(again.get('ready_ms'), 0, ' ms'):>10}"
                  f"   {', '.join(took) or '—'}")
        print()

    known_names = ["kafka", "mailpit", "smtp-sink", "seed-orders", "seed-transactions",
                   "seed-analytics", "orders", "transactions", "analytics", "email", "dashboard"]
    present = {n for c in cpu for n in (c.get("process_pct") or {})}
    names = [n for n in known_names if n in present] + sorted(present - set(known_names))
    short = {"seed-orders": "s-orders", "seed-transactions": "s-transa", "seed-analytics": "s-analyt"}
    header = "".join(f"{short.get(n, n)[:8]:>9}" for n in names)
    per_unit = {}
    if cpu:
        # Where the time goes: CPU of each process while loadgen ran, in % of one core;
        # "other" is the rest of the machine's busy time (loadgen itself, the OS).
        print("  CPU while loadgen ran")
        print(f"  {'% of one core':<26}" + header + f"{'other':>9}{'busy':>9}")
        for c in cpu:
            procs = c.get("process_pct") or {}
            known = sum(procs.values())
            busy = c.get("machine_busy_pct")
            cells = [procs.get(n) for n in names] + [
                (busy - known) if busy is not None else None, busy]
            print(f"  {c['step']:<26}" + "".join(
                f"{('—' if v is None else f'{v:.0f}'):>9}" for v in cells)
                + f"   of {100 * (c.get('cores') or 0)}")
        print()
        # The same as CPU µs per order (per e-mail in the SMTP and e-mail steps, per message
        # in the raw broker's): the figure that does not depend on how fast the machine is.
        print(f"  {'µs per order':<26}" + header + f"{'handled':>10}")
        for c in cpu:
            n_handled = handled(out, c["step"])
            if not n_handled:
                continue
            used = c.get("process_cpu_ms") or {}
            us = {n: ms * 1000 / n_handled for n, ms in used.items()}
            per_unit[c["step"]] = us
            cells = ["—" if n not in us else f"{us[n]:.1f}" for n in names]
            print(f"  {c['step']:<26}" + "".join(f"{v:>9}" for v in cells) + f"{n_handled:>10,}")
        print()

    def cpu_ratio(step, procs, seed_step, seed_procs):
        ours, theirs = per_unit.get(step), per_unit.get(seed_step)
        if not ours or not theirs:
            return None
        return ratio(sum(ours.get(p, 0) for p in procs), sum(theirs.get(p, 0) for p in seed_procs))

    cpu_ratios = {
        "orders API/seed's orders backend (gunicorn)":
            cpu_ratio("flatpack-ingest", ["orders"], "seed-ingest-gunicorn", ["seed-orders"]),
        "transactions + analytics/seed's two backends":
            cpu_ratio("flatpack-pipeline", ["transactions", "analytics"],
                      "seed-pipeline", ["seed-transactions", "seed-analytics"]),
    }
    if any(value is not None for value in cpu_ratios.values()):
        print("  CPU per order, flatpack/seed" + " " * (width + fwidth - 28) + f"{'':>12}   target")
        for name, value in cpu_ratios.items():
            print(f"  {name:<{width + fwidth}}{fmt(value, 4):>12}   ≤ 0.025 (1/40)")
            ratios["CPU per order, " + name] = (value, "≤ 0.025")
        print()

    # What metrics and traces cost: the services' CPU per accepted order in the fixed-rate
    # run without both and with both at work, in rounds of one run each; a round's cost is
    # its "on" total over its "off" total, and the figure is the median round's.
    services_cpu = ["orders", "transactions", "analytics", "email", "dashboard"]
    runs = {}
    for c in cpu:
        parts = c["step"].split("-")
        if len(parts) != 3 or parts[0] != "telemetry" or parts[1] not in ("off", "on"):
            continue
        report = load(out, c["step"])
        accepted = get(report, "accepted")
        if not accepted:
            continue
        used_ms = c.get("process_cpu_ms") or {}
        per = {n: used_ms.get(n, 0) * 1000 / accepted for n in services_cpu}
        runs.setdefault(int(parts[2]), {})[parts[1]] = {
            "us_per_order": per, "total": sum(per.values()), "accepted": accepted,
            "clean": clean(report)}
    telemetry = {"rounds": [{"round": r, **runs[r]} for r in sorted(runs)]}
    if runs:
        print(f"  {'CPU µs per order at ' + fmt(machine.get('rate')) + '/s':<34}"
              + "".join(f"{n[:8]:>9}" for n in services_cpu) + f"{'total':>9}{'cost':>9}")
        costs = []
        for r in sorted(runs):
            for variant, label in (("off", "no metrics, no traces"), ("on", "metrics + traces")):
                t = runs[r].get(variant)
                if not t:
                    continue
                cost = ""
                if variant == "on" and runs[r].get("off", {}).get("total"):
                    costs.append(t["total"] / runs[r]["off"]["total"] - 1)
                    cost = f"{100 * costs[-1]:+.1f} %"
                print(f"  {f'{r}: {label}':<34}"
                      + "".join(f"{t['us_per_order'][n]:>9.1f}" for n in services_cpu)
                      + f"{t['total']:>9.1f}{cost:>9}   {t['accepted']} orders"
                      + ("" if t["clean"] else ", NOT CLEAN"))
        if costs:
            telemetry["cost"] = statistics.median(costs)
            telemetry["cost_min"], telemetry["cost_max"] = min(costs), max(costs)
            print(f"  {'cost of metrics + traces':<34}"
                  f"{100 * telemetry['cost']:>+63.1f} %   median of {len(costs)} rounds "
                  f"({100 * min(costs):+.1f} % to {100 * max(costs):+.1f} %), target ≤ +10 %")
        print()

    cpu_summary = cpu_step(out, per_unit, machine)

    summary = {
        "machine": machine,
        "rows": [dict(zip(("step", "figure", "value", "note"), r)) for r in rows],
        "ratios": {k: v[0] for k, v in ratios.items()},
        "seed_best_ingest": seed_best_name,
        "email_stage_per_second": get(femail, "per_second"),
        "email_stage_in_max_run_per_second": email_rate,
        "services": per_service,
        "cpu": cpu,
        "telemetry": telemetry,
        "cpu_step": cpu_summary,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
