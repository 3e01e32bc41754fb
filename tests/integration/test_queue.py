"""test_queue.py - per-server max_conns and the pool's wait queue: requests
beyond the limit wait (in order) instead of failing, a full queue answers
503 at once, a request that waits longer than queue.timeout gets 503.
"""

import threading
import time

from harness import Backend, HttpConn, Switchboard, free_port

TIMEOUT = 60


def _config(port, server, max_conns, size=100, timeout="5s", workers=2):
    return (
        'listen: ["127.0.0.1:%d"]\n'
        "workers: %d\n"
        "pools:\n"
        "  web:\n"
        "    queue: {size: %d, timeout: %s}\n"
        "    servers:\n"
        '      - {address: "%s", max_conns: %d}\n'
        "access_log: stderr\n"
        "telemetry: {enabled: false}\n"
        "dashboard: {enabled: false}\n" % (port, workers, size, timeout, server.addr,
                                           max_conns))


def _parallel(port, n, target):
    """n concurrent requests on n connections: [(status, seconds)]."""
    out = [None] * n
    go = threading.Barrier(n)

    def one(i):
        with HttpConn("127.0.0.1", port, timeout=20) as c:
            go.wait()
            t0 = time.monotonic()
            c.request("GET", target)
            r = c.read_response()
            out[i] = (r.status, time.monotonic() - t0)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_max_conns_makes_requests_wait_not_fail():
    b = Backend("web")
    port = free_port()
    Switchboard(_config(port, b, max_conns=2), wait_ports=[port])
    t0 = time.monotonic()
    got = _parallel(port, 6, "/delay?ms=300")
    took = time.monotonic() - t0
    assert all(st == 200 for st, _ in got), got
    # Two at a time: three rounds of 300 ms, not one.
    assert took >= 0.85, "finished in %.2f s: max_conns not enforced" % took
    assert took < 3, took
    waits = sorted(t for _, t in got)
    assert waits[1] < 0.6 and waits[-1] >= 0.85, waits


def test_queue_timeout_answers_503():
    b = Backend("web")
    port = free_port()
    sb = Switchboard(_config(port, b, max_conns=1, timeout="200ms"), wait_ports=[port])
    got = _parallel(port, 3, "/delay?ms=1000")
    statuses = sorted(st for st, _ in got)
    assert statuses == [200, 503, 503], got
    for st, t in got:
        if st == 503:
            assert 0.15 < t < 0.8, t
    assert "reason=queue_timeout" in sb.stderr_text()


def test_full_queue_answers_503_at_once():
    b = Backend("web")
    port = free_port()
    sb = Switchboard(_config(port, b, max_conns=1, size=1, workers=1), wait_ports=[port])
    got = _parallel(port, 3, "/delay?ms=500")
    statuses = sorted(st for st, _ in got)
    assert statuses == [200, 200, 503], got
    fast = [t for st, t in got if st == 503]
    assert fast[0] < 0.3, fast
    assert "reason=queue_full" in sb.stderr_text()
