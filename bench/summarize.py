#!/usr/bin/env python3
"""Turns a bench/compare.sh results directory into summary.md (on stdout).

    python3 bench/summarize.py bench/results/<date>

Reads machine.txt, every <scenario>.<server>.<n>.json written by herald-bench and the
<scenario>.<server>.<n>.ctx.json beside it. Each table cell is the median over the repeats,
with the range [min–max] when there were several; loss and error counts are totals over all
repeats. The ratio is Herald's median over nchan's, taken before any rounding.

Rounding never favours Herald: for a metric where higher is better (+) or lower is better (-),
Herald's figures are rounded towards worse, nchan's towards better and the ratio towards worse
for Herald; bare's figures are rounded to the nearest.
"""

import glob
import json
import math
import os
import re
import statistics
import sys

SCENARIOS = {
    "idle": "idle: 15,000 WebSocket subscribers over 100 channels, no publishing",
    "idlesse": "idle over SSE: 15,000 SSE subscribers over 100 channels, no publishing",
    "idlelongpoll": "idle over long polling: 15,000 waiting long polls over 100 channels, no publishing",
    "fanout50": "fan-out: 1 channel × 2,000 WebSocket subscribers, 50 publishes/s, 100 B",
    "fanout100": "fan-out: 1 channel × 2,000 WebSocket subscribers, 100 publishes/s, 100 B",
    "fanout200": "saturation: 1 channel × 2,000 WebSocket subscribers, 200 publishes/s, 100 B",
    "fanout400": "saturation: 1 channel × 2,000 WebSocket subscribers, 400 publishes/s, 100 B",
    "fanout400one": "saturation from one publisher connection: 1 channel × 2,000 WebSocket subscribers, 400 publishes/s, 100 B",
    "many": "many channels: 1,000 channels × 5 WebSocket subscribers, 2,000 publishes/s, 100 B",
    "sse": "fan-out over SSE: 1 channel × 2,000 subscribers, 50 publishes/s, 100 B",
    "longpoll": "fan-out over long polling: 1 channel × 2,000 subscribers, 50 publishes/s, 100 B",
    "publish": "publish throughput: no subscribers, 100 channels, 8 keep-alive connections, as fast as possible",
    "publish40k": "publishing at 40,000/s: no subscribers, 100 channels, 8 keep-alive connections (a load both servers carry)",
}
SERVERS = ("herald", "nchan", "bare")
IDLE = ("idle", "idlesse", "idlelongpoll")
PUBLISH = ("publish", "publish40k")


def get(doc, *path):
    for key in path:
        if doc is None:
            return None
        doc = doc.get(key)
    return doc


def ms(us):
    return None if us is None else us / 1000.0


def cpu_per_publish(report):
    cpu = get(report, "server", "cpu_seconds")
    published = get(report, "publish", "published")
    if cpu is None or not published:
        return None
    return cpu * 1e6 / published


def cpu_part_per_delivery(report, part):
    """The user or system part of the server's CPU per delivery, µs (None for reports of
    herald-bench versions that did not split it)."""
    total = get(report, "server", "cpu_seconds")
    piece = get(report, "server", f"cpu_{part}_seconds")
    per_delivery = get(report, "server", "cpu_us_per_delivery")
    if total is None or piece is None or per_delivery is None or not total:
        return None
    return per_delivery * piece / total


# (label, extractor, format, direction: +1 higher is better, -1 lower is better)
def delivery_metrics():
    return [
        ("deliveries/s", lambda r: get(r, "deliveries", "per_second"), "{:,.0f}", +1),
        ("latency p50 (ms)", lambda r: ms(get(r, "latency_us", "p50")), "{:.2f}", -1),
        ("latency p99 (ms)", lambda r: ms(get(r, "latency_us", "p99")), "{:.2f}", -1),
        ("latency max (ms)", lambda r: ms(get(r, "latency_us", "max")), "{:.2f}", -1),
        ("server CPU per delivery (µs)", lambda r: get(r, "server", "cpu_us_per_delivery"), "{:.2f}", -1),
        ("of which user mode (µs)", lambda r: cpu_part_per_delivery(r, "user"), "{:.2f}", -1),
        ("of which kernel (µs)", lambda r: cpu_part_per_delivery(r, "system"), "{:.2f}", -1),
        ("publishes/s achieved", lambda r: get(r, "publish", "achieved_rate"), "{:,.1f}", +1),
    ]


METRICS = {
    "idle": [
        ("RSS per idle connection (bytes)", lambda r: get(r, "server", "bytes_per_idle_connection"), "{:,.0f}", -1),
        ("subscribers connected", lambda r: get(r, "subscribers", "connected"), "{:,.0f}", +1),
    ],
    "publish": [
        ("publishes/s", lambda r: get(r, "publish", "achieved_rate"), "{:,.0f}", +1),
        ("server CPU per publish (µs)", cpu_per_publish, "{:.2f}", -1),
        ("publish request latency p50 (ms)", lambda r: ms(get(r, "publish", "latency_us", "p50")), "{:.2f}", -1),
        ("publish request latency p99 (ms)", lambda r: ms(get(r, "publish", "latency_us", "p99")), "{:.2f}", -1),
    ],
}
METRICS["idlesse"] = METRICS["idlelongpoll"] = METRICS["idle"]
METRICS["publish40k"] = METRICS["publish"]
for name in ("fanout50", "fanout100", "fanout200", "fanout400", "fanout400one", "many", "sse", "longpoll"):
    METRICS[name] = delivery_metrics()


def fmt(value, pattern, toward=0):
    """Formats value; toward=+1 rounds up, -1 rounds down, 0 to the nearest."""
    if value is None:
        return "—"
    if toward:
        found = re.search(r"\.(\d+)f", pattern)
        factor = 10 ** (int(found.group(1)) if found else 0)
        scaled = value * factor
        # A value already exact at this precision (up to float noise) stays as it is.
        if abs(scaled - round(scaled)) < 1e-6:
            scaled = round(scaled)
        value = (math.ceil(scaled) if toward > 0 else math.floor(scaled)) / factor
    return pattern.format(value)


def toward(server, direction):
    """Rounding direction so that rounding never favours Herald."""
    if server == "herald":
        return -direction
    if server == "nchan":
        return direction
    return 0


def cell(values, pattern, rounding=0):
    values = [v for v in values if v is not None]
    if not values:
        return "—", None
    median = statistics.median(values)
    text = fmt(median, pattern, rounding)
    if len(values) > 1:
        text += " [{}–{}]".format(fmt(min(values), pattern, rounding), fmt(max(values), pattern, rounding))
    return text, median


def load(directory):
    runs = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.ctx.json"))):
        with open(path) as f:
            ctx = json.load(f)
        name = os.path.basename(path)[: -len(".ctx.json")]
        scenario, server, repeat = name.split(".")
        report_path = os.path.join(directory, name + ".json")
        report = None
        if os.path.exists(report_path):
            with open(report_path) as f:
                report = json.load(f)
        runs.setdefault((scenario, server), []).append((int(repeat), ctx, report))
    for key in runs:
        runs[key].sort(key=lambda run: run[0])
    return runs


def machine(directory):
    info = {}
    path = os.path.join(directory, "machine.txt")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if "=" in line:
                    key, value = line.rstrip("\n").split("=", 1)
                    info[key] = value
    return info


def totals(reports):
    """Loss, duplicates, reordering and errors summed over the runs that reported."""
    t = {"expected": 0, "lost": 0, "duplicated": 0, "reordered": 0, "unexpected": 0,
         "errors": 0, "publish_errors": 0, "failed_subs": 0}
    for r in reports:
        d = r.get("deliveries", {})
        for k in ("expected", "lost", "duplicated", "reordered", "unexpected"):
            t[k] += d.get(k, 0)
        t["errors"] += sum(r.get("errors", {}).values())
        t["publish_errors"] += get(r, "publish", "errors") or 0
        t["failed_subs"] += get(r, "subscribers", "failed") or 0
    return t


def median_of(runs, scenario, server, extract):
    """Median of a metric over a scenario's runs against one server, or None."""
    values = [extract(r) for _, _, r in runs.get((scenario, server), []) if r is not None]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def verdict(ok):
    return "**met**" if ok else "**not met**"


def targets(runs, w):
    """The issue's targets, judged from this run's medians (rounding towards worse for Herald)."""
    cpu = lambda r: get(r, "server", "cpu_us_per_delivery")
    rss = lambda r: get(r, "server", "bytes_per_idle_connection")
    rate = lambda r: get(r, "deliveries", "per_second")
    p99 = lambda r: ms(get(r, "latency_us", "p99"))
    publish_p99 = lambda r: ms(get(r, "publish", "latency_us", "p99"))
    rows = []

    h = median_of(runs, "idle", "herald", rss)
    if h is not None:
        rows.append(("memory per idle WebSocket ≤ 2 KiB (2,048 B)",
                     "{} B".format(fmt(h, "{:,.0f}", +1)), verdict(h <= 2048)))
    for scenario, bound, label in (("fanout50", 0.85, "1 channel × 2,000 subs × 50/s"),
                                   ("many", 0.5, "many channels")):
        h, n = median_of(runs, scenario, "herald", cpu), median_of(runs, scenario, "nchan", cpu)
        if h is None or not n:
            continue
        b = median_of(runs, scenario, "bare", cpu)
        floor = "" if b is None else "; bare floor {} µs = {} ×".format(
            fmt(b, "{:.2f}"), fmt(b / n, "{:.3f}"))
        hk = median_of(runs, scenario, "herald", lambda r: cpu_part_per_delivery(r, "system"))
        nk = median_of(runs, scenario, "nchan", lambda r: cpu_part_per_delivery(r, "system"))
        if hk is not None and nk is not None:
            # The kernel's part alone, against the bound: how much room user space leaves.
            floor += "; kernel part alone {} vs {} µs = {} × (the bound is {} µs)".format(
                fmt(hk, "{:.2f}"), fmt(nk, "{:.2f}"), fmt(hk / nk, "{:.3f}"),
                fmt(bound * n, "{:.2f}", -1))
        ratio = fmt(h / n, "{:.3f}", +1)
        rows.append((f"server CPU per delivery ≤ {bound} × nchan's, {label}",
                     "{} vs {} µs = {} ×{}".format(fmt(h, "{:.2f}", +1), fmt(n, "{:.2f}", -1),
                                                   ratio, floor),
                     verdict(float(ratio) <= bound)))
    for scenario, load in (("fanout100", "100/s"), ("fanout200", "200/s"), ("fanout400", "400/s"),
                           ("fanout400one", "400/s from one publisher connection")):
        h, n = median_of(runs, scenario, "herald", rate), median_of(runs, scenario, "nchan", rate)
        if h is None or n is None:
            continue
        rows.append((f"at saturation ({scenario}: {load}), deliveries/s ≥ nchan's",
                     "{} vs {}".format(fmt(h, "{:,.0f}", -1), fmt(n, "{:,.0f}", +1)),
                     verdict(h >= n)))
    compared, worse = [], []
    for scenario in SCENARIOS:
        # Flat-out publishing runs the servers at different loads; at 40,000/s the latency
        # compared is the publish request's.
        if scenario in IDLE or scenario == "publish":
            continue
        latency = publish_p99 if scenario in PUBLISH else p99
        h, n = median_of(runs, scenario, "herald", latency), median_of(runs, scenario, "nchan", latency)
        if h is None or n is None:
            continue
        name = scenario + (" (publish request)" if scenario in PUBLISH else "")
        compared.append("{} {} vs {}".format(name, fmt(h, "{:.2f}", +1), fmt(n, "{:.2f}", -1)))
        if h > n:
            worse.append(scenario)
    if compared:
        rows.append(("p99 latency ≤ nchan's at the same load (ms)", "; ".join(compared),
                     verdict(not worse) + (" (worse: " + ", ".join(worse) + ")" if worse else "")))
    lost, checked = [], 0
    for scenario in SCENARIOS:
        if scenario in IDLE or (scenario, "herald") not in runs:
            continue
        reports = [r for _, _, r in runs[(scenario, "herald")] if r is not None]
        missing = len(runs[(scenario, "herald")]) - len(reports)
        t = totals(reports)
        checked += 1
        if t["lost"] or t["publish_errors"] or missing:
            lost.append("{} ({:,} lost, {:,} failed publishes, {} runs without results)".format(
                scenario, t["lost"], t["publish_errors"], missing))
    if checked:
        rows.append(("zero loss in every scenario", "; ".join(lost) or
                     f"0 lost, 0 failed publishes in {checked} scenario(s)", verdict(not lost)))
    if not rows:
        return
    w("## Targets, judged from this run")
    w("")
    w("| target | this run | |")
    w("|---|---|---|")
    for target, result, status in rows:
        w(f"| {target} | {result} | {status} |")


def main():
    directory = sys.argv[1]
    info = machine(directory)
    runs = load(directory)
    out = []
    w = out.append

    w("# Herald vs nginx + nchan: benchmark results")
    w("")
    w("- date (UTC): {}".format(info.get("date_utc", "?")))
    w("- command: `{}`".format(info.get("command", "?")))
    w("- machine: {} × {}, {} RAM, {}, {}".format(
        info.get("nproc", "?"), info.get("cpu", "?"), info.get("mem", "?"),
        info.get("kernel", "?"), info.get("os", "?")))
    w("- nginx {}, libnginx-mod-nchan {}".format(info.get("nginx", "?"), info.get("nchan", "?")))
    w("- Herald commit {} ({})".format(info.get("herald_commit", "?"), info.get("herald_subject", "")))
    w("- herald-bench commit {}, {}".format(info.get("bench_commit", "?"), info.get("rustc", "")))
    w("- {} run(s) per scenario and server, {} measured publish phase; total script time {} s".format(
        info.get("repeat", "?"), info.get("duration", "?"), info.get("total_seconds", "?")))
    if info.get("skipped"):
        w("- **skipped for the time limit:** {}".format(info["skipped"]))
    w("")
    w("Cells: median [min–max] over the runs. Loss and error rows: totals over all runs. "
      "ratio = Herald median / nchan median, taken before rounding. Rounding never favours "
      "Herald: its figures are rounded towards worse, nchan's towards better, the ratio towards "
      "worse for Herald. bare = `herald-bench bare`, the minimal WebSocket fan-out floor (no "
      "history, no envelopes; WebSocket scenarios only).")
    w("")
    w("| scenario | metric | Herald | nchan | ratio (Herald/nchan) | bare |")
    w("|---|---|---|---|---|---|")
    for scenario, title in SCENARIOS.items():
        if not any((scenario, s) in runs for s in SERVERS):
            continue
        first = True
        rows = []
        for label, extract, pattern, direction in METRICS[scenario]:
            cells = {}
            medians = {}
            for server in SERVERS:
                reports = [r for _, _, r in runs.get((scenario, server), []) if r is not None]
                if (scenario, server) not in runs:
                    cells[server] = "—"
                    continue
                cells[server], medians[server] = cell(
                    [extract(r) for r in reports], pattern, toward(server, direction))
            h, n = medians.get("herald"), medians.get("nchan")
            ratio = "—" if h is None or not n else fmt(h / n, "{:.3f}", -direction)
            rows.append((label, cells["herald"], cells["nchan"], ratio, cells["bare"]))
        # Loss and errors, totals.
        loss = {}
        errs = {}
        for server in SERVERS:
            if (scenario, server) not in runs:
                loss[server] = errs[server] = "—"
                continue
            entries = runs[(scenario, server)]
            reports = [r for _, _, r in entries if r is not None]
            missing = len(entries) - len(reports)
            t = totals(reports)
            if scenario in IDLE:
                loss[server] = "{:,} failed".format(t["failed_subs"])
            elif scenario in PUBLISH:
                loss[server] = "{:,} failed publishes".format(t["publish_errors"])
            else:
                loss[server] = "{:,} of {:,}".format(t["lost"], t["expected"])
                extra = [f"{t[k]:,} {k}" for k in ("duplicated", "reordered", "unexpected") if t[k]]
                if extra:
                    loss[server] += " (" + ", ".join(extra) + ")"
            errs[server] = "{:,}".format(t["errors"])
            crashed = sum(1 for _, c, _ in entries if c.get("server_alive_after") is False)
            failed = sum(1 for _, c, _ in entries if c.get("exit_status", 0) != 0)
            notes = []
            if missing:
                notes.append(f"{missing} run(s) without results")
            if failed:
                notes.append(f"{failed} generator exit(s) ≠ 0")
            if crashed:
                notes.append(f"server gone after {crashed} run(s)")
            if notes:
                errs[server] += " (" + "; ".join(notes) + ")"
        if scenario in IDLE:
            rows.append(("subscribers failed (all runs)", loss["herald"], loss["nchan"], "—", loss["bare"]))
        elif scenario in PUBLISH:
            rows.append(("failed publishes (all runs)", loss["herald"], loss["nchan"], "—", loss["bare"]))
        else:
            rows.append(("lost of expected (all runs)", loss["herald"], loss["nchan"], "—", loss["bare"]))
        rows.append(("errors reported (all runs)", errs["herald"], errs["nchan"], "—", errs["bare"]))
        for label, h, n, ratio, b in rows:
            w("| {} | {} | {} | {} | {} | {} |".format(title if first else "", label, h, n, ratio, b))
            first = False
    w("")
    targets(runs, w)
    w("")
    w("## Every run")
    w("")
    w("other CPU = CPU time used during the run by processes other than the server and the "
      "generator (other users of the machine), as a share of the machine's 2-core capacity; "
      "server CPU is over the measured publish phase only, per delivery (or per publish).")
    w("")
    w("| run | connected | publishes/s | deliveries/s | lost | p99 (ms) | server CPU (µs) | RSS/conn (B) | generator CPU, publish phase (s) | other CPU | load before | errors |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for scenario in SCENARIOS:
        for server in SERVERS:
            for repeat, ctx, r in runs.get((scenario, server), []):
                name = f"{scenario}.{server}.{repeat}"
                other = ctx.get("other_cpu_seconds")
                total = ctx.get("machine_cpu_seconds")
                other_text = "—" if not total else "{:.0f}%".format(100 * other / total)
                if r is None:
                    w(f"| {name} | no result (exit {ctx.get('exit_status', '?')}) |||||||||| |")
                    continue
                cpu = get(r, "server", "cpu_us_per_delivery")
                if scenario in PUBLISH:
                    cpu = cpu_per_publish(r)
                errors = "; ".join(f"{v:,} {k}" for k, v in sorted(r.get("errors", {}).items())) or "none"
                if ctx.get("server_alive_after") is False:
                    errors += "; SERVER GONE AFTER THE RUN"
                w("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                    name,
                    fmt(get(r, "subscribers", "connected"), "{:,}"),
                    fmt(get(r, "publish", "achieved_rate"), "{:,.1f}"),
                    fmt(get(r, "deliveries", "per_second"), "{:,}"),
                    fmt(get(r, "deliveries", "lost"), "{:,}"),
                    fmt(ms(get(r, "latency_us", "p99")) if get(r, "latency_us", "count") else None, "{:.2f}"),
                    fmt(cpu, "{:.2f}"),
                    fmt(get(r, "server", "bytes_per_idle_connection"), "{:,.0f}"),
                    fmt(r.get("bench_cpu_seconds"), "{:.2f}"),
                    other_text,
                    ctx.get("loadavg_before", "?"),
                    errors,
                ))
    w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
