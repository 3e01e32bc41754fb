"""test_proxy_errors.py - what ./switchboard answers by itself, and how it
ends connections: malformed requests (400, 505) and oversized heads (431)
read in full then closed with a FIN (not a reset); backends that refuse,
hang, cut, answer garbage or nothing (502, 504, cut body); client
timeouts (client_idle, client_header -> 408); max_connections.
"""

import select
import socket
import struct
import threading
import time

from harness import Backend, ConnectionClosed, HttpConn, fetch, free_port
from proxy_helpers import all_threads_stopped, pause_fully, start_proxy

TIMEOUT = 60


def _after_answer(conn, timeout=5):
    """What the peer does once its answer was read: "eof" (a clean FIN),
    "reset", "timeout" (still open), or "data" (unexpected bytes)."""
    if conn.buf:
        return "data"
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        r, _, _ = select.select([conn.sock], [], [], left)
        if not r:
            return "timeout"
        try:
            data = conn.sock.recv(65536)
        except ConnectionResetError:
            return "reset"
        if not data:
            return "eof"
        conn.buf += data
        return "data"


def _refused(port, raw, status, junk=b""):
    """Sends `raw` (+ `junk` behind it), expects the whole `status` answer
    with Connection: close, then a clean EOF."""
    with HttpConn("127.0.0.1", port, timeout=5) as c:
        c.send(raw + junk)
        try:
            r = c.read_response(timeout=5)
        except (socket.timeout, ConnectionClosed) as e:
            raise AssertionError("no complete answer to %r: %r" % (raw[:60], e))
        assert r.status == status, (raw[:80], r.status, r.body)
        assert r.body.startswith(b"%d " % status), r.body
        assert (r.header("connection") or "").lower() == "close", (raw[:60], r.headers)
        end = _after_answer(c)
        assert end == "eof", "after %d to %r: %s (want a clean close)" % (status, raw[:60], end)


MALFORMED = [
    ("garbage request line", b"HELLO WORLD\r\n\r\n"),
    ("space before colon", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello"),
    ("NUL in a header value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
    ("CL and TE", b"POST /sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("two different Content-Length", b"POST /sha256 HTTP/1.1\r\nHost: x\r\n"
                                     b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
    ("Transfer-Encoding gzip, chunked", b"POST /sha256 HTTP/1.1\r\nHost: x\r\n"
                                        b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n"),
    ("duplicate Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("CR inside a header value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n"),
]


def test_malformed_requests_get_400_and_clean_close():
    b = Backend("m")
    sb, port = start_proxy({"web": [b]})
    for name, raw in MALFORMED:
        try:
            _refused(port, raw, 400)
            # Bytes still coming after the bad request are drained, not reset.
            _refused(port, raw, 400, junk=b"J" * 65536)
        except AssertionError as e:
            raise AssertionError("%s: %s" % (name, e))
    # None of them reached the backend; the proxy still serves.
    assert b.stats()["requests"] == 1
    assert fetch(port, "GET", "/").body == b"m\n"


def test_bad_chunk_size_gets_400_and_clean_close():
    b = Backend("bc")
    sb, port = start_proxy({"web": [b]})
    t0 = time.monotonic()
    _refused(port, b"POST /sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"zz\r\nabc\r\n0\r\n\r\n", 400)
    assert time.monotonic() - t0 < 3
    # The same after a good chunk already went to the backend.
    _refused(port, b"POST /sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n-1\r\nx\r\n0\r\n\r\n", 400)
    assert fetch(port, "GET", "/").body == b"bc\n"


def test_http2_request_line_gets_505():
    b = Backend("v")
    sb, port = start_proxy({"web": [b]})
    _refused(port, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505)
    _refused(port, b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505)
    assert b.stats()["requests"] == 1


def test_oversized_head_gets_431():
    b = Backend("big")
    sb, port = start_proxy({"web": [b]}, limits={"max_header_bytes": "4k"})
    headers = b"".join(b"X-Filler-%02d: %s\r\n" % (i, b"a" * 100) for i in range(80))  # ~8.6 KB
    assert len(headers) > 8000
    _refused(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n", 431)
    # One long header does it too, and so does a long target.
    _refused(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 8192 + b"\r\n\r\n", 431)
    _refused(port, b"GET /" + b"p" * 8192 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431)
    # Under the limit: served.
    r = fetch(port, "GET", "/", headers=[("X-Filler", "a" * 3000)])
    assert r.status == 200 and r.body == b"big\n"


def test_too_many_header_fields_gets_431():
    b = Backend("many")
    sb, port = start_proxy({"web": [b]})
    fields = lambda n: b"".join(b"X-F%d: 1\r\n" % i for i in range(n))   # noqa: E731
    # Host + 100 = 101 fields: the most allowed.
    with HttpConn("127.0.0.1", port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + fields(100) + b"\r\n")
        r = c.read_response()
        assert r.status == 200 and r.body == b"many\n", r
    # Host + 101 = 102 fields.
    _refused(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + fields(101) + b"\r\n", 431)


# ---------------------------------------------------------------- backends

def test_backend_down_gives_502_quickly():
    down = free_port()          # nothing listens there
    b = Backend("up")
    sb, port = start_proxy({"down": ["127.0.0.1:%d" % down], "web": [b]},
                           routes=[{"path_prefix": "/down", "pool": "down"}, {"pool": "web"}],
                           timeouts={"connect": "5s"})
    with HttpConn("127.0.0.1", port) as c:
        t0 = time.monotonic()
        c.request("GET", "/down")
        r = c.read_response()
        took = time.monotonic() - t0
        print("502 after %.1f ms" % (took * 1000))
        assert r.status == 502, r
        assert took < 0.5, "502 took %.3fs (connect timeout is 5s)" % took
        # The request was read to its end: the connection goes on.
        assert r.header("connection") is None, r.headers
        c.request("GET", "/")
        assert c.read_response().body == b"up\n"


def test_backend_silent_gives_504_after_server_timeout():
    b = Backend("hang")
    sb, port = start_proxy({"web": [b]}, timeouts={"server": "1s"})
    assert fetch(port, "GET", "/").status == 200
    pause_fully(b)      # accepts at the kernel level, never answers
    try:
        t0 = time.monotonic()
        r = fetch(port, "GET", "/", timeout=10)
        took = time.monotonic() - t0
        still_stopped = all_threads_stopped(b)
    finally:
        b.resume()
    assert still_stopped, "the backend was resumed from outside the test; result void"
    print("504 after %.3f s (server: 1s)" % took)
    assert r.status == 504, r
    assert 0.9 <= took <= 2.0, "504 after %.3fs, server timeout is 1s" % took


def test_connect_timeout_gives_504():
    # A listener whose accept queue is full: Linux drops further SYNs, so a
    # connect to it neither succeeds nor fails - an unanswered SYN on loopback.
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    lport = ls.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", lport))
        except BlockingIOError:
            pass
        fillers.append(s)
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", lport))
            assert False, "the accept queue did not fill: cannot produce a connect timeout"
        except socket.timeout:
            pass
        finally:
            probe.close()
        b = Backend("ok")
        sb, port = start_proxy({"bl": ["127.0.0.1:%d" % lport], "web": [b]},
                               routes=[{"path_prefix": "/bl", "pool": "bl"}, {"pool": "web"}],
                               timeouts={"connect": "1s", "server": "10s"})
        t0 = time.monotonic()
        r = fetch(port, "GET", "/bl", timeout=10)
        took = time.monotonic() - t0
        print("connect-timeout 504 after %.3f s (connect: 1s)" % took)
        assert r.status == 504, r
        assert 0.9 <= took <= 2.5, "504 after %.3fs, connect timeout is 1s" % took
    finally:
        for s in fillers:
            s.close()
        ls.close()


def test_backend_closing_mid_body_cuts_client():
    b = Backend("cm")
    sb, port = start_proxy({"web": [b]})
    with HttpConn("127.0.0.1", port) as c:
        t0 = time.monotonic()
        c.request("GET", "/close-mid?n=100000")
        r = c.read_head()
        assert r.status == 200 and r.header("content-length") == "100000"
        rest = c.read_until_close(timeout=5)
        assert len(rest) < 100000, "got the whole body from a backend that cut it"
        assert len(rest) == 50000, len(rest)
        assert time.monotonic() - t0 < 3


def test_backend_garbage_and_close_before_give_502():
    b = Backend("bad")
    sb, port = start_proxy({"web": [b]})
    with HttpConn("127.0.0.1", port) as c:
        for target in ("/garbage", "/close-before"):
            t0 = time.monotonic()
            c.request("GET", target)
            r = c.read_response(timeout=5)
            assert r.status == 502, (target, r)
            assert r.body == b"502 Bad Gateway\n"
            assert time.monotonic() - t0 < 2
        c.request("GET", "/")
        assert c.read_response().body == b"bad\n"


def test_refused_connect_is_retried_on_another_server():
    down = free_port()
    b = Backend("alive")
    sb, port = start_proxy({"web": ["127.0.0.1:%d" % down, b]}, workers=1)
    with HttpConn("127.0.0.1", port) as c:
        # Round robin sends every other request to the dead server first; a
        # refused connect reached no server, so any method may go elsewhere.
        for i in range(6):
            method = "POST" if i % 2 else "GET"
            c.request(method, "/echo?%d" % i, [("Content-Length", "0")] if i % 2 else None)
            r = c.read_response()
            assert r.status == 200 and r.header("x-backend-id") == "alive", (i, r)
    assert "connection refused, retrying" in sb.stderr_text()


def test_non_idempotent_request_not_retried():
    b = Backend("once")
    sb, port = start_proxy({"web": [b]})
    # The server read the POST and closed: it may have acted on it, so the
    # proxy must not send it again (RFC 7230 6.3.1).
    r = fetch(port, "POST", "/close-before", headers=[("Content-Length", "0")])
    assert r.status == 502, r
    s = b.stats()
    assert s["requests"] == 2, "POST sent %d times to the backend" % (s["requests"] - 1)
    r = fetch(port, "PATCH", "/garbage")
    assert r.status == 502, r
    s = b.stats()
    assert s["requests"] == 4, "PATCH sent %d times to the backend" % (s["requests"] - 3)


def test_backend_reset_during_upload_gives_502():
    # An origin that reads the head, then resets the connection while the
    # body is still coming.
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    ls.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = ls.accept()
            except (socket.timeout, OSError):
                continue
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    data += piece
                time.sleep(0.2)
            except OSError:
                pass
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        sb, port = start_proxy({"web": ["127.0.0.1:%d" % ls.getsockname()[1]]})
        for i in range(3):
            c = HttpConn("127.0.0.1", port, timeout=10)

            def upload():
                try:
                    c.upload_pattern("POST", "/up", 64 * 1024 * 1024)
                except OSError:
                    pass
            u = threading.Thread(target=upload, daemon=True)
            u.start()
            r = c.read_response(timeout=5)
            assert r.status == 502, (i, r)
            assert (r.header("connection") or "").lower() == "close", r.headers
            assert c.is_closed(5), "connection left open after a 502 with the body unread"
            c.close()
            u.join(10)
    finally:
        stop.set()
        t.join(5)
        ls.close()


# ---------------------------------------------------------------- clients

def test_client_idle_timeout_closes_keepalive_connection():
    b = Backend("idle")
    sb, port = start_proxy({"web": [b]}, timeouts={"client_idle": "1s"})
    with HttpConn("127.0.0.1", port) as c:
        c.request("GET", "/")
        assert c.read_response().status == 200
        t0 = time.monotonic()
        assert c.is_closed(4), "idle connection still open after 4 s (client_idle: 1s)"
        took = time.monotonic() - t0
        assert 0.8 <= took <= 2.5, "closed after %.2fs idle (client_idle: 1s)" % took
        assert c.buf == b"", bytes(c.buf)


def test_client_header_timeout_gives_408():
    b = Backend("slowhead")
    sb, port = start_proxy({"web": [b]}, timeouts={"client_header": "1s"})
    with HttpConn("127.0.0.1", port) as c:
        t0 = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\n")
        # A header line every 300 ms: always busy, never finished.
        for i in range(15):
            time.sleep(0.3)
            try:
                c.send(b"X-Slow-%d: 1\r\n" % i)
            except OSError:
                break
            if c.is_closed(0.01) or c.buf:
                break
        r = c.read_response(timeout=5)
        took = time.monotonic() - t0
        assert r.status == 408, r
        assert 0.8 <= took <= 2.5, "408 after %.2fs (client_header: 1s)" % took
        assert (r.header("connection") or "").lower() == "close"
        assert c.is_closed(3)
    assert b.stats()["requests"] == 1


def test_max_connections_defers_accept():
    b = Backend("mc")
    sb, port = start_proxy({"web": [b]}, limits={"max_connections": 5})
    time.sleep(0.2)             # the start-up probe connection is gone
    conns = []
    for i in range(5):
        c = HttpConn("127.0.0.1", port)
        c.request("GET", "/")
        assert c.read_response().status == 200, i
        conns.append(c)
    # The 6th is accepted by the kernel but not served...
    sixth = HttpConn("127.0.0.1", port, timeout=10)
    sixth.request("GET", "/echo?sixth")
    assert not sixth.is_closed(0.8), "6th connection refused or closed"
    assert sixth.buf == b"", "6th connection served while 5 are open: %r" % bytes(sixth.buf[:80])
    # ...until one closes; then it is served, not refused.
    conns.pop(0).close()
    t0 = time.monotonic()
    r = sixth.read_response(timeout=5)
    assert r.status == 200 and b"GET /echo?sixth" in r.body, r
    assert time.monotonic() - t0 < 2
    # The proxy keeps working: the slots free and reopen.
    for c in conns:
        c.close()
    sixth.close()
    for i in range(8):
        r = fetch(port, "GET", "/", timeout=5)
        assert r.status == 200, (i, r)
