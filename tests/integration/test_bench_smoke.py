"""test_bench_smoke.py - `make bench`'s harness, in quick mode.

Runs tests/bench/bench.py --quick (1 round of 1 s per scenario and target,
500 idle connections) against the build under test, with HAProxy and nginx
(`make test` installs them through bench-deps), and checks that it produced
a complete result: the table on stdout and a JSON document with a number for
every proxy and scenario. Speed is never judged here: on a shared machine
the numbers are noise, and the benchmark states facts, not pass/fail.

For a sanitized build, the logs of every switchboard and sb-backend the
bench started are checked for sanitizer reports.
"""

import json
import math
import os
import re
import sys

import harness

TIMEOUT = 420
BENCH_LIMIT = 360       # bench.py itself; every step in it is bounded too

SCENARIOS = ["keepalive", "close", "1mb", "idle", "websocket"]
PROXIES = ["switchboard", "switchboard_tm", "haproxy", "nginx"]
LABELS = {"switchboard": "Switchboard", "switchboard_tm": "Switchboard+telemetry",
          "haproxy": "HAProxy", "nginx": "nginx", "direct": "direct (no proxy)"}

# What must be a number in each scenario's medians, for every target, and in
# addition for every proxy (the direct backend has no proxy CPU or RSS).
NEEDED = {
    "keepalive": (["rps", "p50_ms", "p99_ms"], ["cpu_us_per_req", "peak_rss_kib"]),
    "close": (["rps", "p50_ms", "p99_ms"], ["cpu_us_per_req", "peak_rss_kib"]),
    "1mb": (["bytes_per_s", "p50_ms", "p99_ms"], ["cpu_us_per_mib", "peak_rss_kib"]),
    "idle": (["kib_per_conn", "rss_before_kib", "rss_after_kib", "connections"], []),
    "websocket": (["msgs_per_s", "p50_ms", "p99_ms"], ["cpu_us_per_msg", "peak_rss_kib"]),
}
RATES = {"rps", "bytes_per_s", "msgs_per_s", "connections"}


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_bench_quick_is_complete():
    tmp = harness.make_tmpdir("sb-bench-smoke-")
    out_json = os.path.join(tmp, "bench.json")
    argv = [sys.executable, os.path.join(harness.ROOT, "tests", "bench", "bench.py"),
            "--quick", "--build", harness.build_dir(), "--json", out_json,
            "--workdir", tmp, "--keep"]
    code, text = harness.run_script(argv, BENCH_LIMIT)
    assert code == 0, "bench.py --quick exited with %d:\n%s" % (code, text[-4000:])

    # The table: a header naming the machine and versions, every scenario,
    # every target, and the tracked ratios.
    for needle in ("machine:", "versions:", "backend:", "Tracked ratios"):
        assert needle in text, "no %r in the output:\n%s" % (needle, text[-4000:])
    for label in LABELS.values():
        assert label in text, "no row for %s in the output" % label

    with open(out_json) as f:
        doc = json.load(f)
    assert doc["complete"] is True, "incomplete: %s" % doc.get("missing")
    assert doc["settings"]["quick"] is True
    for key in ("nproc", "kernel"):
        assert key in doc["machine"], "machine.%s missing" % key
    for key in ("switchboard", "haproxy", "nginx", "wrk"):
        assert doc["versions"].get(key), "versions.%s missing" % key
    assert doc["backend"]["chosen"] in ("sb-backend", "nginx")
    assert doc["verdict"], "no tracked ratio lines"
    # One round: each per-round range is that round's ratio, lowest = highest.
    rounds = [v for v in doc["verdict"] if v.startswith("Per round")]
    assert rounds and "n/a" not in rounds[0], rounds
    for lo, hi in re.findall(r"(\d+\.\d+)-(\d+\.\d+)", rounds[0]):
        assert lo == hi, rounds[0]

    problems = []
    for scenario in SCENARIOS:
        results = doc["scenarios"][scenario]["results"]
        targets = PROXIES + ([] if scenario == "idle" else ["direct"])
        for target in targets:
            row = results.get(target)
            if row is None:
                problems.append("%s: no row for %s" % (scenario, target))
                continue
            if not row["runs"]:
                problems.append("%s/%s: no successful run" % (scenario, target))
            common, proxy_only = NEEDED[scenario]
            for metric in common + (proxy_only if target in PROXIES else []):
                v = row["median"].get(metric)
                if not _is_number(v):
                    problems.append("%s/%s/%s = %r" % (scenario, target, metric, v))
                elif metric in RATES and v <= 0:
                    problems.append("%s/%s/%s = %r (nothing measured)"
                                    % (scenario, target, metric, v))
        base = results["haproxy"]["vs_haproxy"]
        for metric, v in base.items():
            if not (_is_number(v) and abs(v - 1.0) < 1e-9):
                problems.append("%s: HAProxy's own ratio %s = %r" % (scenario, metric, v))
    assert not problems, "bench JSON incomplete:\n" + "\n".join(problems)

    if harness.is_sanitized():
        for dirpath, _, files in os.walk(tmp):
            for name in files:
                if name.endswith(".log") and name.startswith(("switchboard", "sb-backend")):
                    with open(os.path.join(dirpath, name), "rb") as f:
                        report = harness._sanitizer_report(f.read().decode("utf-8", "replace"))
                    assert report is None, "%s:\n%s" % (name, report)
