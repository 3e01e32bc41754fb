"""test_health.py - active health checks: a server that stops answering its
check goes down after `fall` failures and gets no more requests; it comes
back after `rise` successes; a wrong status or a stalled server counts as a
failure; a reload keeps a down server down; with every server down the pool
answers 503.
"""

import time

from harness import Backend, HttpConn, Switchboard, free_port, wait_for

TIMEOUT = 90

INTERVAL_MS = 200


def _config(port, servers, path="/", expect=0, rise=2, fall=2, timeout_ms=100):
    lines = "".join('      - "%s"\n' % s for s in servers)
    return (
        'listen: ["127.0.0.1:%d"]\n'
        "workers: 2\n"
        "pools:\n"
        "  web:\n"
        "    health_check: {path: \"%s\", interval: %dms, timeout: %dms,"
        " rise: %d, fall: %d, expect_status: %d}\n"
        "    servers:\n%s"
        "access_log: off\n"
        "telemetry: {enabled: false}\n"
        "dashboard: {enabled: false}\n"
        % (port, path, INTERVAL_MS, timeout_ms, rise, fall, expect, lines))


def _ids(port, n):
    """Backend ids answering n requests on one keep-alive connection."""
    out = []
    with HttpConn("127.0.0.1", port) as c:
        for _ in range(n):
            c.request("GET", "/")
            r = c.read_response()
            out.append((r.status, r.header("x-backend-id")))
    return out


def _only(port, n, want_id):
    return all(st == 200 and bid == want_id for st, bid in _ids(port, n))


def test_down_after_fall_and_back_after_rise():
    a, b = Backend("a"), Backend("b")
    port = free_port()
    sb = Switchboard(_config(port, [a.addr, b.addr]), wait_ports=[port])
    seen = {bid for _, bid in _ids(port, 10)}
    assert seen == {"a", "b"}, seen

    a_port = a.port
    a.kill()
    t0 = time.monotonic()
    wait_for(lambda: "is DOWN" in sb.stderr_text(), 5, message="no DOWN log line")
    took = time.monotonic() - t0
    # fall=2 checks at 200 ms: down within about 2 intervals (+ slack).
    assert took < 2.0, "went down after %.2f s" % took
    assert "127.0.0.1:%d is DOWN" % a_port in sb.stderr_text()
    assert _only(port, 20, "b"), "requests still reach the dead server"

    a2 = Backend("a2", port=a_port)
    wait_for(lambda: "is UP" in sb.stderr_text(), 5, message="no UP log line")
    assert a2.port == a_port
    wait_for(lambda: "a2" in {bid for _, bid in _ids(port, 6)}, 3,
             message="the server that came back gets no requests")


def test_wrong_status_counts_as_failure():
    a, b = Backend("a"), Backend("b")
    port = free_port()
    # /status?code=503 answers 503: with expect_status 200 the check fails.
    sb = Switchboard(_config(port, [a.addr, b.addr], path="/status?code=503",
                             expect=200), wait_ports=[port])
    wait_for(lambda: sb.stderr_text().count("is DOWN") == 2, 5,
             message="servers answering 503 to the check stayed up")
    assert "health check answered 503" in sb.stderr_text()


def test_stalled_server_times_out():
    a, b = Backend("a"), Backend("b")
    port = free_port()
    sb = Switchboard(_config(port, [a.addr, b.addr]), wait_ports=[port])
    a.pause()
    try:
        wait_for(lambda: "timed out" in sb.stderr_text() and "is DOWN" in sb.stderr_text(),
                 5, message="a stalled server was not taken down")
        assert _only(port, 10, "b")
    finally:
        a.resume()


def test_reload_keeps_down_server_down():
    a, b = Backend("a"), Backend("b")
    port = free_port()
    text = _config(port, [a.addr, b.addr], rise=5)
    sb = Switchboard(text, wait_ports=[port])
    a_port = a.port
    a.kill()
    wait_for(lambda: "is DOWN" in sb.stderr_text(), 5, message="no DOWN line")
    # The server is back, but rise=5 checks at 200 ms take about a second:
    # right after the reload it must still be down (state carried over).
    Backend("a2", port=a_port)
    sb.reload(text)
    wait_for(lambda: "reloaded" in sb.stderr_text(), 3, message="no reload")
    assert _only(port, 10, "b"), "reload brought a down server back at once"
    wait_for(lambda: "is UP" in sb.stderr_text(), 5, message="never came back")


def test_all_down_answers_503():
    a = Backend("a")
    port = free_port()
    sb = Switchboard(_config(port, [a.addr]), wait_ports=[port])
    a.kill()
    wait_for(lambda: "is DOWN" in sb.stderr_text(), 5, message="no DOWN line")
    with HttpConn("127.0.0.1", port) as c:
        c.request("GET", "/")
        r = c.read_response()
    assert r.status == 503, r.status
    assert b"503" in r.body


def _state_config(port, a, b, a_state):
    return (
        'listen: ["127.0.0.1:%d"]\n'
        "workers: 2\n"
        "pools:\n"
        "  web:\n"
        "    health_check: {path: /, interval: 200ms, timeout: 100ms}\n"
        "    servers:\n"
        '      - {address: "%s", state: %s}\n'
        '      - "%s"\n'
        "access_log: off\n"
        "telemetry: {enabled: false}\n"
        "dashboard: {enabled: false}\n" % (port, a.addr, a_state, b.addr))


def test_draining_by_reload_finishes_inflight():
    import threading
    a, b = Backend("a"), Backend("b")
    port = free_port()
    sb = Switchboard(_state_config(port, a, b, "active"), wait_ports=[port])
    result = {}

    def long_request():
        # Round robin with two servers: one of two requests lands on a.
        with HttpConn("127.0.0.1", port, timeout=10) as c:
            for _ in range(2):
                c.request("GET", "/delay?ms=1500")
                r = c.read_response()
                if r.header("x-backend-id") == "a":
                    result["a"] = r.status
                    return

    t = threading.Thread(target=long_request)
    t.start()
    time.sleep(0.3)
    sb.reload(_state_config(port, a, b, "draining"))
    wait_for(lambda: "reloaded" in sb.stderr_text(), 3, message="no reload")
    assert _only(port, 20, "b"), "a draining server got new requests"
    t.join(10)
    assert result.get("a") == 200, result
    time.sleep(0.5)     # health checks must not bring a draining server back
    assert _only(port, 10, "b")


def test_disabled_server_gets_nothing():
    a, b = Backend("a"), Backend("b")
    port = free_port()
    Switchboard(_state_config(port, a, b, "disabled"), wait_ports=[port])
    time.sleep(0.5)
    assert _only(port, 20, "b")
