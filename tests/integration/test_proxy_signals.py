"""test_proxy_signals.py - the running proxy and its signals and logs:
SIGHUP reloads (a route switch while a long download goes on; an invalid
file rejected), the access log (combined, json, off) and SIGUSR1 reopening
it, SIGTERM graceful stop and its shutdown timeout.
"""

import json
import os
import re
import signal
import socket
import threading
import time

from harness import (Backend, HttpConn, fetch, free_port, pattern_sha256, port_open,
                     wait_for)
from proxy_helpers import access_lines, curl, log_path, proxy_config, start_proxy

TIMEOUT = 60
MB = 1024 * 1024


# ---------------------------------------------------------------- SIGHUP

class _Download(threading.Thread):
    """Reads a /bytes answer on its own connection, hashing it, at no more
    than `rate` bytes per second."""

    def __init__(self, port, n, rate):
        super().__init__(daemon=True)
        self.port, self.n, self.rate = port, n, rate
        self.received = 0
        self.result = None
        self.error = None
        self.started = threading.Event()

    def run(self):
        import hashlib
        try:
            with HttpConn("127.0.0.1", self.port, timeout=60) as c:
                c.request("GET", "/bytes?n=%d" % self.n)
                head = c.read_head()
                self.status = head.status
                self.backend = head.header("x-backend-id")
                h = hashlib.sha256()
                t0 = time.monotonic()
                left = int(head.header("content-length"))
                self.started.set()
                while left > 0:
                    piece = c.read_exact(min(left, 256 * 1024), timeout=60)
                    h.update(piece)
                    left -= len(piece)
                    self.received += len(piece)
                    ahead = self.received / self.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
                self.result = h.hexdigest()
        except Exception as e:      # noqa: BLE001 - checked by the test
            self.error = e
            self.started.set()


def test_sighup_switches_route_while_download_continues():
    old, new = Backend("old"), Backend("new")
    port = free_port()
    pools = {"blue": [old], "green": [new]}
    sb, _ = start_proxy(pools, port=port, routes=[{"pool": "blue"}])
    assert fetch(port, "GET", "/").body == b"old\n"
    n = 64 * MB
    dl = _Download(port, n, rate=32 * MB)      # takes at least 2 s
    dl.start()
    assert dl.started.wait(10) and dl.error is None, dl.error
    assert dl.backend == "old"
    wait_for_bytes = time.monotonic() + 5
    while dl.received < 4 * MB and time.monotonic() < wait_for_bytes:
        time.sleep(0.01)
    assert dl.received >= 4 * MB, "download stalled before the reload: %d" % dl.received
    sb.reload(proxy_config(port, pools, routes=[{"pool": "green"}]))
    t0 = time.monotonic()
    switched = None
    for _ in range(200):
        if fetch(port, "GET", "/").body == b"new\n":
            switched = time.monotonic() - t0
            break
        if time.monotonic() - t0 > 3:
            break
        time.sleep(0.01)
    during = dl.received
    print("reload: new route after %.1f ms; download at %d/%d bytes"
          % ((switched or -1) * 1000, during, n))
    assert switched is not None and switched < 1.0, "new route not in use %.1fs after SIGHUP" % (
        time.monotonic() - t0)
    assert during < n, "the download ended before the switch; nothing was tested"
    dl.join(60)
    assert not dl.is_alive(), "download did not finish"
    assert dl.error is None, dl.error
    assert dl.received == n and dl.result == pattern_sha256(n), (dl.received, dl.result)
    assert "reloaded" in sb.stderr_text()
    # Requests keep going to the new pool; the old one served only the download.
    for _ in range(5):
        assert fetch(port, "GET", "/").body == b"new\n"


def test_sighup_invalid_config_is_rejected():
    a = Backend("a")
    sb, port = start_proxy({"web": [a]})
    assert fetch(port, "GET", "/").body == b"a\n"
    bad = proxy_config(port, {"web": [a]}).replace(
        "      - \"%s\"\n" % a.addr, "      - address: \"%s\"\n        weight: heavy\n" % a.addr)
    assert "weight: heavy" in bad
    sb.reload(bad)
    # Generous: a sanitizer build on a busy host can take seconds to get there.
    wait_for(lambda: "reload rejected" in sb.stderr_text(), 10,
             message="no \"reload rejected\" within 10 s")
    err = sb.stderr_text()
    line = [l for l in err.splitlines() if "reload rejected" in l][0]
    assert re.search(r"switchboard\.yaml:\d+:\d+: pools\.web\.servers\[0\]\.weight: ", line), line
    # A YAML syntax error is rejected the same way.
    sb.reload("listen: [127.0.0.1:%d\npools: {\n" % port)
    wait_for(lambda: sb.stderr_text().count("reload rejected") > err.count("reload rejected"),
             10, message="the YAML syntax error was not rejected within 10 s")
    lines = [l for l in sb.stderr_text().splitlines() if "reload rejected" in l]
    assert len(lines) == 2, lines
    assert re.search(r"switchboard\.yaml:\d+:\d+: ", lines[1]), lines[1]
    # Still serving with the old configuration.
    assert sb.running()
    for _ in range(3):
        assert fetch(port, "GET", "/").body == b"a\n"


def test_sighup_keeps_idle_backend_connections():
    b = Backend("keep")
    sb, port = start_proxy({"web": [b]}, workers=1)
    with HttpConn("127.0.0.1", port) as c:
        c.request("GET", "/stats")
        before = json.loads(c.read_response().body)
        assert before["connections"] == 1, before
        n = sb.stderr_text().count("reloaded")
        sb.reload()                 # same file
        for _ in range(100):
            if sb.stderr_text().count("reloaded") > n:
                break
            time.sleep(0.02)
        assert sb.stderr_text().count("reloaded") > n, "no reload logged"
        c.request("GET", "/stats")
        after = json.loads(c.read_response().body)
    # The pooled backend connection moved to the new generation.
    assert after["connections"] == 1, (before, after)
    assert after["requests"] == before["requests"] + 1


def test_sighup_changes_listen_addresses():
    b = Backend("ls")
    port = free_port()
    sb, _ = start_proxy({"web": [b]}, port=port)
    # A connection open before the reload keeps working after it.
    keep = HttpConn("127.0.0.1", port)
    keep.request("GET", "/")
    assert keep.read_response().status == 200
    port2 = free_port()
    sb.reload(proxy_config(port2, {"web": [b]}))
    for _ in range(100):
        if port_open(port2) and not port_open(port):
            break
        time.sleep(0.02)
    assert port_open(port2), "new listen address not opened"
    assert not port_open(port), "old listen address still accepting"
    assert fetch(port2, "GET", "/").body == b"ls\n"
    keep.request("GET", "/")
    assert keep.read_response().body == b"ls\n"
    keep.close()


# ---------------------------------------------------------------- access log

COMBINED = re.compile(
    r'^(?P<client>\S+) - - \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) '
    r'(?P<proto>HTTP/\d\.\d)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" '
    r'"(?P<ua>[^"]*)" pool=(?P<pool>\S+) server=(?P<server>\S+) rt=(?P<rt>[\d.]+) '
    r'reason=(?P<reason>\S+)$')


def test_access_log_combined():
    b = Backend("al")
    log = log_path()
    sb, port = start_proxy({"web": [b]}, access_log=log)
    p = curl("-A", "sb-test/1.0", "-e", "http://ref.example/", "-D", "-",
             "http://127.0.0.1:%d/bytes?n=1234" % port)
    assert p.returncode == 0, p.stderr
    total = len(p.stdout)            # head + body as the client got them
    r = fetch(port, "GET", "/status?code=404")
    assert r.status == 404
    lines = access_lines(log, 2)
    m = COMBINED.match(lines[0])
    assert m, lines[0]
    f = m.groupdict()
    assert f["client"] == "127.0.0.1"
    assert (f["method"], f["path"], f["proto"], f["status"]) == \
        ("GET", "/bytes?n=1234", "HTTP/1.1", "200"), f
    # The size counts the body, or head and body; either way not less.
    assert int(f["bytes"]) in (1234, total), (f["bytes"], total)
    assert f["referer"] == "http://ref.example/" and f["ua"] == "sb-test/1.0", f
    assert f["pool"] == "web" and f["server"] == b.addr, f
    assert f["reason"] == "-"
    m = COMBINED.match(lines[1])
    assert m and m.group("status") == "404" and m.group("path") == "/status?code=404", lines[1]
    # An answer of the proxy's own: no server, a reason.
    fetch(port, "GET", "/", headers=[("X-A", "a\x01b")])
    lines = access_lines(log, 3)
    m = COMBINED.match(lines[2])
    assert m and m.group("status") == "400" and m.group("server") == "-", lines[2]
    assert m.group("reason") != "-"


def test_access_log_json():
    b = Backend("aj")
    log = log_path()
    sb, port = start_proxy({"web": [b]}, access_log=log, access_format="json")
    fetch(port, "GET", "/echo?a=\"q\"", headers=[("User-Agent", "ua \"quoted\"")])
    fetch(port, "POST", "/sha256", body=b"12345")
    lines = access_lines(log, 2)
    recs = [json.loads(l) for l in lines]
    a, p = recs
    assert a["client"] == "127.0.0.1" and a["method"] == "GET", a
    assert a["path"] == "/echo?a=\"q\"" and a["status"] == 200, a
    assert a["user_agent"] == "ua \"quoted\"", a
    assert a["pool"] == "web" and a["server"] == b.addr, a
    assert a["protocol"] == "HTTP/1.1" and a["reason"] is None, a
    assert isinstance(a["duration_ms"], (int, float)) and a["duration_ms"] >= 0
    assert p["method"] == "POST" and p["status"] == 200 and p["bytes_in"] >= 5, p
    assert p["bytes_out"] > 0


def test_access_log_off_writes_nothing():
    b = Backend("off")
    sb, port = start_proxy({"web": [b]}, access_log="off")
    for target in ("/", "/echo", "/status?code=500"):
        fetch(port, "GET", target)
    fetch(port, "GET", "/", headers=[("Host", "a"), ("Host", "b")])      # a 400
    time.sleep(0.2)
    err = sb.stderr_text()
    assert "\"GET " not in err and "pool=" not in err, err
    assert not [l for l in err.splitlines() if l.startswith("{")], err


def test_sigusr1_reopens_access_log():
    b = Backend("rot")
    log = log_path()
    sb, port = start_proxy({"web": [b]}, access_log=log)
    fetch(port, "GET", "/before")
    access_lines(log, 1)
    os.rename(log, log + ".1")
    # Until SIGUSR1 the old (renamed) file gets the lines.
    fetch(port, "GET", "/renamed")
    access_lines(log + ".1", 2)
    sb.signal(signal.SIGUSR1)
    for _ in range(100):
        if os.path.exists(log):
            break
        time.sleep(0.02)
    assert os.path.exists(log), "SIGUSR1 did not reopen %s" % log
    fetch(port, "GET", "/after")
    new = access_lines(log, 1)
    old = access_lines(log + ".1", 2)
    assert len(new) == 1 and "/after" in new[0], new
    assert len(old) == 2 and "/after" not in "".join(old), old
    assert "/before" in old[0] and "/renamed" in old[1]


# ---------------------------------------------------------------- SIGTERM

def _connect_refused(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", port))
        return False
    except ConnectionRefusedError:
        return True
    finally:
        s.close()


def test_sigterm_lets_inflight_request_finish():
    b = Backend("slow")
    sb, port = start_proxy({"web": [b]}, timeouts={"shutdown": "10s"})
    idle = HttpConn("127.0.0.1", port)
    idle.request("GET", "/")
    assert idle.read_response().status == 200
    busy = HttpConn("127.0.0.1", port, timeout=10)
    busy.request("GET", "/delay?ms=1500")
    time.sleep(0.2)
    t0 = time.monotonic()
    sb.signal(signal.SIGTERM)
    # New connections are refused at once.
    refused_after = None
    for _ in range(100):
        if _connect_refused(port):
            refused_after = time.monotonic() - t0
            break
        time.sleep(0.01)
    assert refused_after is not None and refused_after < 1.0, "still accepting after SIGTERM"
    # The idle keep-alive connection is closed.
    assert idle.is_closed(2), "idle connection kept open during shutdown"
    r = busy.read_response(timeout=10)
    assert r.status == 200 and r.body == b"slow\n", r
    assert (r.header("connection") or "").lower() == "close", r.headers
    code = sb.proc.wait(timeout=10)
    took = time.monotonic() - t0
    assert code == 0, "exit status %s" % code
    assert took < 5, "exit %.2fs after SIGTERM with a 1.5 s request in flight" % took


def test_sigterm_shutdown_timeout_cuts_long_request():
    b = Backend("slower")
    sb, port = start_proxy({"web": [b]}, timeouts={"shutdown": "1s"})
    busy = HttpConn("127.0.0.1", port, timeout=10)
    busy.request("GET", "/delay?ms=5000")
    time.sleep(0.2)
    t0 = time.monotonic()
    sb.signal(signal.SIGTERM)
    code = sb.proc.wait(timeout=10)
    took = time.monotonic() - t0
    print("exit %.3f s after SIGTERM (shutdown: 1s)" % took)
    assert code == 0, "exit status %s" % code
    assert 0.8 <= took <= 2.5, "exited %.2fs after SIGTERM, shutdown timeout is 1s" % took
    # The request was cut, not answered.
    try:
        data = busy.read_until_close(timeout=3)
    except OSError:
        data = b""
    assert not data.startswith(b"HTTP/1.1 200"), data[:100]
