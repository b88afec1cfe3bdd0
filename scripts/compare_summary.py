#!/usr/bin/env python3
"""Pools the echo rounds of one or more `compare.sh` results and prints, for
each peer, its medians against ws-uring and how often ws-uring won, with an
exact sign test: the chance of at least that many wins if the two servers
were equal (a coin flip each round). Wins are counted for msg/s (closed
loop only: in open loop every server carries the offered rate), p99 and
server CPU per message. The host drifts by more than the servers differ,
so a single round says little; pooled rounds, each a pair run minutes
apart, are what the performance targets are judged on.

  scripts/compare_summary.py RESULTS.json [RESULTS.json ...]
  scripts/compare.sh --pool RESULTS.json [RESULTS.json ...]     (the same)

Rounds pair with the ws-uring round of the same number in the same file.
A round that received nothing (msg/s 0: the server did not start or
answer) loses the msg/s count and takes no part in the p99 and CPU ones.
Files must share the workload (connections, in flight, message size, open-loop
rate); round length may differ; a file given twice is refused. Exit
status: 0 printed, 2 bad input.
"""

import json
import math
import os
import statistics
import sys

SCHEMA = "ws-uring-compare/1"
REFERENCE = "ws-uring"
# What makes two runs the same experiment; duration_s may differ.
WORKLOAD_KEYS = ("connections", "in_flight", "message_bytes", "echo_rate_msg_per_s")


class BadInput(Exception):
    pass


def sign_test_p(wins, trials):
    """One-sided exact sign test: P(X >= wins) for X ~ Binomial(trials, 1/2)."""
    if trials == 0:
        return 1.0
    return sum(math.comb(trials, k) for k in range(wins, trials + 1)) / 2 ** trials


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load(paths):
    """Every echo row of the files, each tagged with its file's index."""
    rows, workload, seen = [], None, {}
    for index, path in enumerate(paths):
        real = os.path.realpath(path)
        if real in seen:
            raise BadInput(f"{path} is given twice (also as {seen[real]}): its rounds would count twice")
        seen[real] = path
        try:
            with open(path) as f:
                doc = json.load(f)
        except OSError as e:
            raise BadInput(f"cannot read {path}: {e.strerror}")
        except json.JSONDecodeError as e:
            raise BadInput(f"{path} is not JSON ({e.msg}, line {e.lineno})")
        except UnicodeDecodeError:
            raise BadInput(f"{path} is not JSON (not UTF-8 text)")
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise BadInput(f"{path} is not a compare.sh result (no \"schema\": \"{SCHEMA}\")")
        this = {key: doc.get(key) for key in WORKLOAD_KEYS}
        if workload is None:
            workload, first = this, path
        elif this != workload:
            differ = ", ".join(f"{k} {workload[k]} against {this[k]}" for k in WORKLOAD_KEYS if workload[k] != this[k])
            raise BadInput(f"{path} ran another workload than {first} ({differ}): pool like with like")
        peers = doc.get("peers", [])
        if not isinstance(peers, list) or not all(isinstance(row, dict) for row in peers):
            raise BadInput(f"{path}: \"peers\" is not a list of rows")
        for row in peers:
            if row.get("workload") != "echo":
                continue
            missing = [k for k in ("peer", "round", "msg_per_s", "p99_us") if k not in row]
            if missing:
                raise BadInput(f"{path}: a row lacks {', '.join(missing)}")
            wrong = [k for k in ("msg_per_s", "p99_us") if not is_number(row[k])]
            if not isinstance(row["round"], int) or isinstance(row["round"], bool):
                wrong.insert(0, "round")
            if wrong:
                raise BadInput(f"{path}: {row.get('peer')} has a {', '.join(wrong)} that is not a number")
            rows.append(dict(row, file=index))
    if not rows:
        raise BadInput("no echo rounds in " + ", ".join(paths))
    return rows, workload


def cpu_us(row):
    """Server CPU µs per message; None when the sampler had none (or 0)."""
    value = row.get("server_cpu_us_per_msg")
    return value if is_number(value) and value > 0 else None


def answered(row):
    """Whether the round received messages: a loadgen that got none
    reports msg/s 0 and a p99 of 0, which is no latency."""
    return row["msg_per_s"] > 0 and row["p99_us"] > 0


def summarize(rows, files, open_loop_rate=None):
    """The summary's lines. In open loop every server carries the offered
    rate, so msg/s decides nothing there: CPU per message and p99 do."""
    reference = {(r["file"], r["round"]): r for r in rows if r["peer"] == REFERENCE}
    fmt = lambda v, spec: format(v, spec) if v is not None else "-"
    loop = f"open loop at {open_loop_rate} msg/s" if open_loop_rate else "closed loop"
    lines = [f"pooled echo rounds ({loop}) from {files} file{'s' if files != 1 else ''} "
             "(msg/s and CPU ratios: the peer over ws-uring in the same round; above 1 the peer is faster, "
             "or spends more CPU per message)"]
    tests = [] if open_loop_rate else [
        ("faster", lambda r, b: True,
         lambda r, b: b["msg_per_s"] > r["msg_per_s"], lambda r, b: b["msg_per_s"] == r["msg_per_s"]),
    ]
    # Each test: its name, which pairs it judges, ws-uring better, level.
    tests += [
        ("p99 lower", lambda r, b: answered(r) and answered(b),
         lambda r, b: b["p99_us"] < r["p99_us"], lambda r, b: b["p99_us"] == r["p99_us"]),
        ("cheaper per message", lambda r, b: answered(r) and answered(b) and cpu_us(r) and cpu_us(b),
         lambda r, b: cpu_us(b) < cpu_us(r), lambda r, b: cpu_us(b) == cpu_us(r)),
    ]
    for peer in dict.fromkeys(r["peer"] for r in rows):
        mine = [r for r in rows if r["peer"] == peer]
        p99 = [r["p99_us"] / 1000 for r in mine if answered(r)]
        slowest = [r["slowest_connection_vs_median"] for r in mine
                   if answered(r) and is_number(r.get("slowest_connection_vs_median"))]
        failed = len(mine) - len(p99)
        line = (f"  {peer:<20} {len(mine)} rounds{f' ({failed} received nothing)' if failed else ''}"
                f"  p99 median {fmt(statistics.median(p99) if p99 else None, '.2f')} ms"
                f"  slowest connection {fmt(max(slowest) if slowest else None, '.2f')}x the median")
        pairs = [(r, reference[(r["file"], r["round"])]) for r in mine
                 if peer != REFERENCE and (r["file"], r["round"]) in reference]
        if not pairs:
            lines.append(line)
            continue
        ratios = [r["msg_per_s"] / b["msg_per_s"] for r, b in pairs if answered(b)]
        cpu = [cpu_us(r) / cpu_us(b) for r, b in pairs if answered(r) and answered(b) and cpu_us(r) and cpu_us(b)]
        p99_ratio = [b["p99_us"] / r["p99_us"] for r, b in pairs if answered(r) and answered(b)]
        lines.append(line + f"  msg/s {fmt(statistics.median(ratios) if ratios else None, '.2f')}x"
                     f" ({fmt(min(ratios) if ratios else None, '.2f')}-{fmt(max(ratios) if ratios else None, '.2f')}x)"
                     f"  cpu/msg {fmt(statistics.median(cpu) if cpu else None, '.2f')}x")
        # Ties tell neither way and leave the test (4 µs latency buckets make
        # equal p99s happen; equal msg/s hardly).
        for what, judges, ours_better, tie in tests:
            judged = [(r, b) for r, b in pairs if judges(r, b)]
            if not judged:
                continue
            wins = sum(ours_better(r, b) for r, b in judged)
            ties = sum(tie(r, b) for r, b in judged)
            untied = len(judged) - ties
            tie_text = f", level in {ties}" if ties else ""
            lines.append(f"  {'':<20} ws-uring {what} in {wins} of {len(judged)}{tie_text}; "
                         f"if the two were equal, {wins} or more of {untied} has p = {sign_test_p(wins, untied):.3g}")
        lines.append(f"  {'':<20} p99 ws-uring / {peer}: median "
                     f"{fmt(statistics.median(p99_ratio) if p99_ratio else None, '.3f')}x")
    return lines


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        rows, workload = load(argv)
    except BadInput as e:
        print(f"compare_summary: {e}", file=sys.stderr)
        return 2
    print("\n".join(summarize(rows, len(argv), workload["echo_rate_msg_per_s"])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
