#!/usr/bin/env python3
"""Tests for scripts/latency_trace.py on traces made up here: a tail made of
slow moments, one made of slow connections, none at all, several
scenarios in one file, and every refusal. Runs no server and no loadgen.

    python3 scripts/test_latency_trace.py
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "latency_trace.py")
sys.path.insert(0, HERE)
import latency_trace  # noqa: E402

CONNECTIONS = 100
WINDOWS = 1000


def trace_rows(latency_of, scenario="baseline"):
    """One message per connection per millisecond for a second."""
    rows = []
    for w in range(WINDOWS):
        for c in range(CONNECTIONS):
            rows.append(f"{scenario},{w * 1000 + c},{latency_of(w, c)},{c}")
    return rows


def slow_moments(w, c):
    # 20 of 1000 milliseconds (2 % of the messages) late together.
    return 9000 if 100 <= w < 120 else 5000


def slow_connections(w, c):
    # 2 of 100 connections always late.
    return 9000 if c < 2 else 5000


class LatencyTraceTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.dir.cleanup()

    def write(self, rows, header=latency_trace.HEADER, name="trace.csv"):
        path = os.path.join(self.dir.name, name)
        with open(path, "w") as f:
            f.write("\n".join([header] + rows) + "\n")
        return path

    def run_script(self, *args):
        done = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)
        return done.returncode, done.stdout, done.stderr

    def figures(self, path, *args):
        code, out, err = self.run_script(path, "--json", *args)
        self.assertEqual(code, 0, err)
        return json.loads(out)

    def test_a_tail_of_slow_moments(self):
        a = self.figures(self.write(trace_rows(slow_moments)))["baseline"]
        self.assertEqual(a["messages"], CONNECTIONS * WINDOWS)
        self.assertEqual(a["connections"], CONNECTIONS)
        self.assertEqual((a["p50_us"], a["p99_us"], a["max_us"]), (5000, 9000, 9000))
        self.assertEqual(a["moments_p99_us"], 9000)
        self.assertEqual(a["moments_share"], 1.0)
        self.assertEqual(a["within_moment_p99_above_median_us"], 0)
        self.assertEqual(a["connections_share"], 0.0)
        self.assertEqual(a["slowest_connection_median_us"], 5000)
        # The late milliseconds 100-119 are the 10 ms stretches at 100 and 110.
        slowest = [(s["t_ms"], s["median_us"], s["messages"]) for s in a["slowest_stretches"]]
        self.assertEqual(slowest[:2], [(100, 9000, 1000), (110, 9000, 1000)])
        self.assertEqual(len(slowest), latency_trace.SLOW_STRETCHES_SHOWN)

    def test_a_tail_of_slow_connections(self):
        a = self.figures(self.write(trace_rows(slow_connections)))["baseline"]
        self.assertEqual((a["p50_us"], a["p99_us"]), (5000, 9000))
        self.assertEqual(a["moments_share"], 0.0)
        self.assertEqual(a["connections_p99_us"], 9000)
        self.assertEqual(a["connections_share"], 1.0)
        self.assertEqual(a["slowest_connection_median_us"], 9000)
        # Every millisecond has its two late messages above its median.
        self.assertEqual(a["within_moment_p99_above_median_us"], 4000)

    def test_wider_windows_blur_short_moments(self):
        # At 100 ms a window holds 20 late milliseconds of 100: its median
        # is the p50, so the moments no longer explain the tail.
        a = self.figures(self.write(trace_rows(slow_moments)), "--window-ms", "100")["baseline"]
        self.assertEqual(a["window_ms"], 100)
        self.assertEqual(a["moments_share"], 0.0)

    def test_no_tail_says_so(self):
        path = self.write(trace_rows(lambda w, c: 5000))
        a = self.figures(path)["baseline"]
        self.assertIsNone(a["moments_share"])
        self.assertIsNone(a["connections_share"])
        code, out, _ = self.run_script(path)
        self.assertEqual(code, 0)
        self.assertIn("share of the tail n/a (p99 = p50)", out)

    def test_text_report(self):
        code, out, _ = self.run_script(self.write(trace_rows(slow_moments)))
        self.assertEqual(code, 0)
        self.assertIn("baseline: 100000 messages, 100 connections over 1.0 s", out)
        self.assertIn("p50 5.00  p99 9.00", out)
        self.assertIn("share of the tail 1.00", out)
        self.assertIn("100: 9.00, 1000", out)

    def test_scenarios_are_kept_apart_and_one_can_be_chosen(self):
        path = self.write(trace_rows(slow_moments, "high") + trace_rows(slow_connections, "extreme"))
        both = self.figures(path)
        self.assertEqual(list(both), ["high", "extreme"])
        self.assertEqual(both["high"]["moments_share"], 1.0)
        self.assertEqual(both["extreme"]["connections_share"], 1.0)
        one = self.figures(path, "--scenario", "extreme")
        self.assertEqual(list(one), ["extreme"])
        code, _, err = self.run_script(path, "--scenario", "baseline")
        self.assertEqual(code, 2)
        self.assertIn("no rows of scenario 'baseline' (it has high, extreme)", err)

    def test_the_header_is_the_one_the_loadgen_writes(self):
        suite = os.path.join(HERE, "..", "loadgen", "src", "suite.rs")
        with open(suite) as f:
            source = f.read()
        written = source.split('pub const TRACE_HEADER: &str = "', 1)[1].split('\\n";', 1)[0]
        self.assertEqual(written, latency_trace.HEADER)

    def test_nearest_rank(self):
        values = list(range(1, 101))
        self.assertEqual(latency_trace.nearest_rank(values, 0.99), 99)
        self.assertEqual(latency_trace.nearest_rank(values, 0.5), 50)
        self.assertEqual(latency_trace.nearest_rank([7], 0.99), 7)

    def refused(self, args, reason):
        code, out, err = self.run_script(*args)
        self.assertEqual(code, 2, out + err)
        self.assertEqual(out, "")
        self.assertIn(reason, err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)

    def test_refusals(self):
        good = ["baseline,1,5000,0"]
        self.refused([os.path.join(self.dir.name, "missing.csv")], "cannot read")
        self.refused([self.write(good, header="t,latency")], "not the loadgen's")
        self.refused([self.write(["baseline,1,5000"])], "expected scenario,t_us,latency_us,connection")
        self.refused([self.write([",1,5000,0"])], "expected scenario,t_us,latency_us,connection")
        self.refused([self.write(["baseline,1,5.5,0"])], "must be whole numbers")
        self.refused([self.write(["baseline,1,-5,0"])], "negative figure")
        self.refused([self.write([])], "no rows")
        self.refused([self.write(good), "--window-ms", "0"], "--window-ms must be positive")
        binary = os.path.join(self.dir.name, "binary.csv")
        with open(binary, "wb") as f:
            f.write(latency_trace.HEADER.encode() + b"\nbaseline,\xff\xfe,1,0\n")
        self.refused([binary], "not a text file")


if __name__ == "__main__":
    unittest.main()
