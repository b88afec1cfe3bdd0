#!/usr/bin/env python3
"""Reads a loadgen latency trace (`loadgen --latency-trace FILE`) and says
what a scenario's tail is made of: slow moments (every message of a
millisecond late together: the server, the loadgen or the machine stalled)
or slow connections (some connections served worse than others at the
same moments).

    scripts/latency_trace.py TRACE.csv [--scenario NAME] [--window-ms W] [--json]

For each scenario in the file (or the one named):

- p50, p99, p99.9 and max of the latencies (nearest rank, exact);
- "moments": each message given its window's median latency (windows of
  W ms, default 1, by arrival time), the p99 of that; its share of the
  tail is (that p99 - p50) / (p99 - p50): 1 when the tail is entirely
  made of slow windows, 0 when every window's median is the p50;
- the p99 of each message's distance above its window's median: how
  much messages of one moment differ;
- "connections": each message given its connection's median latency, the
  p99 of that and its share of the tail, the same way;
- the five slowest 10 ms stretches (their median), with their times.

Exit 2 with a one-line reason for a missing or unreadable file, a header
that is not the loadgen's, a row that is not four fields of a name and
three whole numbers, no rows (or none of the named scenario), and a window
that is not positive.
"""

import argparse
import json
import math
import sys
from collections import OrderedDict

HEADER = "scenario,t_us,latency_us,connection"
SLOW_STRETCH_MS = 10
SLOW_STRETCHES_SHOWN = 5


class TraceError(Exception):
    """Input that cannot be read as a loadgen latency trace."""


def read_trace(path):
    """Rows by scenario, in file order: {name: [(t_us, latency_us, connection)]}."""
    try:
        handle = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise TraceError(f"cannot read {path}: {e.strerror}") from None
    scenarios = OrderedDict()
    with handle:
        try:
            header = handle.readline().rstrip("\r\n")
            if header != HEADER:
                raise TraceError(f"{path}: the first line is {header[:60]!r}, not the loadgen's {HEADER!r}")
            for number, line in enumerate(handle, start=2):
                fields = line.rstrip("\r\n").split(",")
                if len(fields) != 4 or not fields[0]:
                    raise TraceError(f"{path}:{number}: expected scenario,t_us,latency_us,connection, got {line.strip()[:60]!r}")
                try:
                    row = (int(fields[1]), int(fields[2]), int(fields[3]))
                except ValueError:
                    raise TraceError(f"{path}:{number}: t_us, latency_us and connection must be whole numbers, got {line.strip()[:60]!r}") from None
                if min(row) < 0:
                    raise TraceError(f"{path}:{number}: negative figure in {line.strip()[:60]!r}")
                scenarios.setdefault(fields[0], []).append(row)
        except UnicodeDecodeError:
            raise TraceError(f"{path}: not a text file") from None
    if not scenarios:
        raise TraceError(f"{path}: no rows")
    return scenarios


def nearest_rank(sorted_values, q):
    """The q-quantile of sorted values, nearest rank."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def median_of(values):
    ordered = sorted(values)
    return nearest_rank(ordered, 0.5)


def group_latencies(rows, key):
    """Each group's latencies, groups made by key(row)."""
    groups = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row[1])
    return groups


def group_medians(rows, key):
    """Each group's median latency, groups made by key(row)."""
    return {k: median_of(v) for k, v in group_latencies(rows, key).items()}


def tail_share(p50, p99, explained_p99):
    """How much of the p99's excess over the p50 a per-message figure
    explains (None when there is no excess)."""
    if p99 <= p50:
        return None
    return (explained_p99 - p50) / (p99 - p50)


def analyse(rows, window_ms):
    latencies = sorted(r[1] for r in rows)
    p50 = nearest_rank(latencies, 0.5)
    p99 = nearest_rank(latencies, 0.99)
    window_us = window_ms * 1000

    def window(row):
        return int(row[0] // window_us)

    window_median = group_medians(rows, window)
    moment = sorted(window_median[window(r)] for r in rows)
    above_moment = sorted(r[1] - window_median[window(r)] for r in rows)
    connection_median = group_medians(rows, lambda r: r[2])
    by_connection = sorted(connection_median[r[2]] for r in rows)
    moment_p99 = nearest_rank(moment, 0.99)
    connection_p99 = nearest_rank(by_connection, 0.99)

    stretch_us = SLOW_STRETCH_MS * 1000
    stretch_latencies = group_latencies(rows, lambda r: r[0] // stretch_us)
    stretches = {k: median_of(v) for k, v in stretch_latencies.items()}
    counts = {k: len(v) for k, v in stretch_latencies.items()}
    slowest = sorted(stretches.items(), key=lambda kv: (-kv[1], kv[0]))[:SLOW_STRETCHES_SHOWN]
    return {
        "messages": len(rows),
        "connections": len(connection_median),
        "span_s": (max(r[0] for r in rows) - min(r[0] for r in rows)) / 1e6,
        "p50_us": p50,
        "p99_us": p99,
        "p999_us": nearest_rank(latencies, 0.999),
        "max_us": latencies[-1],
        "window_ms": window_ms,
        "moments_p99_us": moment_p99,
        "moments_share": tail_share(p50, p99, moment_p99),
        "within_moment_p99_above_median_us": nearest_rank(above_moment, 0.99),
        "connections_p99_us": connection_p99,
        "connections_share": tail_share(p50, p99, connection_p99),
        "slowest_connection_median_us": max(connection_median.values()),
        "slowest_stretches": [
            {"t_ms": k * SLOW_STRETCH_MS, "median_us": v, "messages": counts[k]} for k, v in slowest
        ],
    }


def ms(us):
    return f"{us / 1000:.2f}"


def share(value):
    return "n/a (p99 = p50)" if value is None else f"{value:.2f}"


def render(name, a):
    lines = [
        f"{name}: {a['messages']} messages, {a['connections']} connections over {a['span_s']:.1f} s",
        f"  latency ms: p50 {ms(a['p50_us'])}  p99 {ms(a['p99_us'])}  p99.9 {ms(a['p999_us'])}  max {ms(a['max_us'])}",
        f"  moments ({a['window_ms']:g} ms windows): p99 of the window medians {ms(a['moments_p99_us'])} ms, "
        f"share of the tail {share(a['moments_share'])}; within a window, p99 above its median "
        f"{ms(a['within_moment_p99_above_median_us'])} ms",
        f"  connections: p99 of the connection medians {ms(a['connections_p99_us'])} ms, "
        f"share of the tail {share(a['connections_share'])}; slowest connection's median "
        f"{ms(a['slowest_connection_median_us'])} ms",
        f"  slowest {SLOW_STRETCH_MS} ms stretches (t ms: median ms, messages): "
        + ", ".join(f"{s['t_ms']}: {ms(s['median_us'])}, {s['messages']}" for s in a["slowest_stretches"]),
    ]
    return "\n".join(lines)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--scenario")
    parser.add_argument("--window-ms", type=float, default=1.0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        if not args.window_ms > 0:
            raise TraceError(f"--window-ms must be positive, got {args.window_ms:g}")
        scenarios = read_trace(args.trace)
        if args.scenario is not None:
            if args.scenario not in scenarios:
                raise TraceError(f"{args.trace}: no rows of scenario {args.scenario!r} (it has {', '.join(scenarios)})")
            scenarios = OrderedDict([(args.scenario, scenarios[args.scenario])])
    except TraceError as e:
        print(f"latency_trace: {e}", file=sys.stderr)
        return 2
    results = OrderedDict((name, analyse(rows, args.window_ms)) for name, rows in scenarios.items())
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n".join(render(name, a) for name, a in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
