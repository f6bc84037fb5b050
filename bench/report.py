#!/usr/bin/env python3
"""Reads the JSON results of one scripts/bench.sh run and prints the table of figures and
ratios; writes it as summary.json beside them. Usage: bench/report.py <output-dir>"""

import json
import math
import os
import statistics
import sys


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


def fmt(x, digits=0, unit=""):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:,.{digits}f}{unit}"


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

    # What each step handled, for CPU per unit: orders accepted or fed (warm-up and the
    # probes that sized the step included, as they ran while the CPU was measured), e-mails,
    # messages.
    def handled(step):
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
            n_handled = handled(c["step"])
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
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
