"""test_outlier.py - passive outlier detection and retries: consecutive
failures eject a server for a back-off that doubles while it keeps failing;
an ejected server gets no requests; a failed connect is retried on another
server up to `retries` times; with every server ejected the proxy still tries
one rather than refusing all.
"""

import re
import time

from harness import Backend, HttpConn, Switchboard, free_port, wait_for

TIMEOUT = 60


def _config(port, servers, failures=3, base="400ms", retries=2):
    lines = "".join('      - "%s"\n' % s for s in servers)
    return (
        'listen: ["127.0.0.1:%d"]\n'
        "workers: 1\n"
        "pools:\n"
        "  web:\n"
        "    retries: %d\n"
        "    outlier_detection: {consecutive_failures: %d, base_ejection_time: %s,"
        " max_ejection_time: 10s}\n"
        "    servers:\n%s"
        "access_log: off\n"
        "telemetry: {enabled: false}\n"
        "dashboard: {enabled: false}\n" % (port, retries, failures, base, lines))


def _get(port, n):
    out = []
    with HttpConn("127.0.0.1", port) as c:
        for _ in range(n):
            c.request("GET", "/")
            r = c.read_response()
            out.append((r.status, r.header("x-backend-id")))
    return out


def test_refused_server_is_ejected_and_backoff_doubles():
    a, b = Backend("a"), Backend("b")
    port = free_port()
    sb = Switchboard(_config(port, [a.addr, b.addr]), wait_ports=[port])
    a.kill()
    # Every request still succeeds: a refused connect is retried on b.
    got = _get(port, 12)
    assert all(st == 200 and bid == "b" for st, bid in got), got
    wait_for(lambda: "ejected for 400 ms" in sb.stderr_text(), 3,
             message="no ejection after consecutive refused connects")
    retries_before = sb.stderr_text().count("retrying")
    # While ejected, a is not even tried: no new "retrying" lines.
    got = _get(port, 10)
    assert all(st == 200 for st, _ in got), got
    assert sb.stderr_text().count("retrying") == retries_before, \
        "an ejected server was still tried"
    # After the ejection a is tried again, fails again: twice as long.
    time.sleep(0.5)
    for _ in range(20):
        _get(port, 3)
        if "ejected for 800 ms" in sb.stderr_text():
            break
        time.sleep(0.05)
    assert "ejected for 800 ms" in sb.stderr_text(), sb.stderr_text()[-2000:]


def test_retries_zero_answers_502():
    a, b = Backend("a"), Backend("b")
    port = free_port()
    sb = Switchboard(_config(port, [a.addr, b.addr], failures=0, retries=0),
                     wait_ports=[port])
    a.kill()
    statuses = [st for st, _ in _get(port, 10)]
    assert statuses.count(502) >= 4, statuses        # round robin: every other one
    assert "retrying" not in sb.stderr_text()


def test_all_ejected_still_tries():
    a = Backend("a")
    port = free_port()
    a_port = a.port
    sb = Switchboard(_config(port, [a.addr], failures=2, base="5s"), wait_ports=[port])
    a.kill()
    statuses = [st for st, _ in _get(port, 4)]
    assert all(st == 502 for st in statuses), statuses
    wait_for(lambda: "ejected" in sb.stderr_text(), 3, message="not ejected")
    Backend("a2", port=a_port)
    # Ejected for 5 s, but it is the only server: it is tried, and answers.
    got = _get(port, 3)
    assert all(st == 200 and bid == "a2" for st, bid in got), got


def test_retry_budget_stops_retry_storms():
    a, b = Backend("a"), Backend("b")
    port = free_port()
    text = _config(port, [a.addr, b.addr], failures=0, retries=2).replace(
        "    retries: 2\n", "    retries: 2\n    retry_budget: 20\n")
    sb = Switchboard(text, wait_ports=[port])
    a.kill()
    b.kill()
    n = 200
    statuses = [st for st, _ in _get(port, n)]
    assert all(st == 502 for st in statuses), set(statuses)
    retries = sb.stderr_text().count("retrying")
    # 10 tokens to start with, then 0.2 per request: about 50, not 400.
    print("# retry budget: %d requests, %d retries" % (n, retries))
    assert 30 <= retries <= 70, retries


def test_slow_start_ramps_a_returning_server():
    a, b = Backend("a"), Backend("b")
    port = free_port()
    text = (_config(port, [a.addr, b.addr], failures=0)
            .replace("    retries: 2\n", "    retries: 2\n    slow_start: 3s\n"
                     # Slack for a busy machine: a flapping check would
                     # restart the ramp and measure the wrong thing.
                     "    health_check: {path: /, interval: 200ms, timeout: 200ms,"
                     " rise: 1, fall: 3}\n"))
    sb = Switchboard(text, wait_ports=[port])
    a_port = a.port
    a.kill()
    wait_for(lambda: "is DOWN" in sb.stderr_text(), 3, message="not down")
    Backend("a2", port=a_port)
    wait_for(lambda: "is UP" in sb.stderr_text(), 3, message="not up")
    early = [bid for _, bid in _get(port, 200)]
    time.sleep(3.2)
    late = [bid for _, bid in _get(port, 200)]
    early_share = early.count("a2") / len(early)
    late_share = late.count("a2") / len(late)
    print("# slow start: share right after coming back %.2f, after 3 s %.2f"
          % (early_share, late_share))
    assert sb.stderr_text().count("is UP") == 1, "health checks flapped"
    assert early_share < 0.3, early_share
    assert 0.4 <= late_share <= 0.6, late_share
