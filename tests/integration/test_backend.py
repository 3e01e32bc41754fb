"""test_backend.py - sb-backend on its own, driven through the harness.

These pin down the behaviour the proxy tests rely on (every route, keep-alive,
pipelining, 100-continue, HEAD, streaming bodies both ways, WebSocket echo,
/stats) and prove the harness's clients against a server that is not the
proxy. No switchboard process is involved.
"""

import json
import os
import socket
import struct
import time

from harness import (WS_BINARY, WS_CLOSE, WS_CONT, WS_PING, WS_PONG, WS_TEXT, Backend,
                     ConnectionClosed, HttpConn, WebSocket, WebSocketError, echo_header,
                     fetch, free_port, free_port6, parse_echo, pattern, pattern_sha256,
                     wait_for)

MB = 1024 * 1024


def test_root_answers_with_id():
    b = Backend("alpha")
    r = fetch(b.port, "GET", "/")
    assert r.status == 200, r
    assert r.body == b"alpha\n"
    assert r.header("X-Backend-Id") == "alpha"
    assert r.header("content-type") == "text/plain"
    r = fetch(b.port, "GET", "/no/such/route?x=1")
    assert r.status == 200 and r.body == b"alpha\n"


def test_keepalive_by_default():
    b = Backend("ka")
    with HttpConn("127.0.0.1", b.port) as c:
        for _ in range(20):
            c.request("GET", "/")
            r = c.read_response()
            assert r.status == 200 and r.body == b"ka\n"
            assert r.header("connection") is None
        c.request("GET", "/stats")
        stats = json.loads(c.read_response().body)
    assert stats == {"id": "ka", "connections": 1, "requests": 21}


def test_connection_close_honoured():
    b = Backend("cc")
    with HttpConn("127.0.0.1", b.port) as c:
        c.request("GET", "/", [("Connection", "close")])
        r = c.read_response()
        assert r.status == 200 and r.header("connection") == "close"
        assert c.is_closed(2)


def test_http10_closes_unless_keepalive():
    b = Backend("old")
    with HttpConn("127.0.0.1", b.port) as c:
        c.request("GET", "/", version="HTTP/1.0")
        r = c.read_response()
        assert r.status == 200 and r.body == b"old\n"
        assert r.header("connection") == "close"
        assert c.is_closed(2)
    with HttpConn("127.0.0.1", b.port) as c:
        for _ in range(3):
            c.request("GET", "/", [("Connection", "keep-alive")], version="HTTP/1.0")
            r = c.read_response()
            assert r.status == 200 and r.header("connection") == "keep-alive"
        assert not c.is_closed(0.2)


def test_pipelined_requests_answered_in_order():
    b = Backend("pipe")
    with HttpConn("127.0.0.1", b.port) as c:
        # A slow one first: the quick ones behind it must wait their turn.
        c.request("GET", "/delay?ms=200&then=/status?code=201")
        c.request("GET", "/bytes?n=100000")
        c.request("HEAD", "/bytes?n=7")
        c.request("POST", "/sha256", body=b"hello")
        c.request("GET", "/status?code=404")
        c.request("GET", "/echo")
        r = c.read_response()
        assert r.status == 201
        r = c.read_response()
        assert r.status == 200 and r.body_len == 100000
        assert r.body == pattern(0, 65536) + pattern(65536, 100000 - 65536)
        r = c.read_response(head=True)
        assert r.status == 200 and r.header("content-length") == "7" and r.body == b""
        r = c.read_response()
        assert r.body.startswith(b"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 5")
        r = c.read_response()
        assert r.status == 404
        r = c.read_response()
        assert r.status == 200 and r.body.startswith(b"GET /echo HTTP/1.1\r\n")


def test_expect_100_continue():
    b = Backend("exp")
    with HttpConn("127.0.0.1", b.port) as c:
        c.request("POST", "/sha256", [("Expect", "100-continue"), ("Content-Length", "5")])
        r = c.read_response()
        assert r.status == 100, r
        assert r.raw_head == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.send(b"hello")
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 5\n"


def test_reject_expect_answers_417_without_reading():
    b = Backend("rej")
    with HttpConn("127.0.0.1", b.port) as c:
        c.request("PUT", "/reject-expect", [("Expect", "100-continue"), ("Content-Length", "1000000")])
        r = c.read_response()
        assert r.status == 417 and r.header("connection") == "close"
        assert c.is_closed(3)
    # Without Expect the body is read and the connection survives.
    with HttpConn("127.0.0.1", b.port) as c:
        c.request("PUT", "/reject-expect", body=b"x" * 1000)
        assert c.read_response().status == 417
        c.request("GET", "/")
        assert c.read_response().status == 200


def test_head_has_length_and_no_body():
    b = Backend("hd")
    with HttpConn("127.0.0.1", b.port) as c:
        for target, length in (("/", "3"), ("/bytes?n=12345", "12345"), ("/status?code=500", None)):
            c.request("HEAD", target)
            r = c.read_response(head=True)
            if length:
                assert r.header("content-length") == length, (target, r.headers)
        # If a body had been sent, this would read it as a response.
        c.request("GET", "/")
        r = c.read_response()
        assert r.status == 200 and r.body == b"hd\n"
        c.request("HEAD", "/echo", [("X-A", "1")])
        r = c.read_response(head=True)
        c.request("GET", "/echo", [("X-A", "1")])
        # The dump starts with the method: "HEAD" is one byte longer than "GET".
        assert int(r.header("content-length")) == len(c.read_response().body) + 1


def test_echo_dumps_request():
    b = Backend("echo")
    with HttpConn("127.0.0.1", b.port) as c:
        c.request("POST", "/echo?a=1&b=2", [("X-First", "one"), ("x-second", "two"),
                                             ("X-First", "again")], body=b"payload\x00\xff")
        r = c.read_response()
        line, headers, body = parse_echo(r.body)
        assert line == "POST /echo?a=1&b=2 HTTP/1.1"
        assert [h for h in headers if h[0].lower().startswith("x-")] == [
            ("X-First", "one"), ("x-second", "two"), ("X-First", "again")]
        assert echo_header(headers, "host") == ["127.0.0.1:%d" % b.port]
        assert echo_header(headers, "content-length") == ["9"]
        assert body == b"payload\x00\xff"
        # A chunked body is echoed decoded, with the framing header as sent.
        c.request("PUT", "/echo", [("Transfer-Encoding", "chunked")])
        c.send(b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n")
        r = c.read_response()
        line, headers, body = parse_echo(r.body)
        assert line == "PUT /echo HTTP/1.1"
        assert echo_header(headers, "transfer-encoding") == ["chunked"]
        assert body == b"abcdefg"


def test_sha256_of_10mb_chunked_upload():
    b = Backend("sha")
    n = 10 * MB
    with HttpConn("127.0.0.1", b.port, timeout=60) as c:
        c.upload_pattern("POST", "/sha256", n, chunked=True, chunk_size=10000)
        r = c.read_response()
        assert r.status == 200
        assert r.body == ("%s %d\n" % (pattern_sha256(n), n)).encode()
        # Same connection, Content-Length framing this time.
        c.upload_pattern("POST", "/sha256", 3 * MB + 1)
        r = c.read_response()
        assert r.body == ("%s %d\n" % (pattern_sha256(3 * MB + 1), 3 * MB + 1)).encode()


def test_bytes_10mb_sha256():
    b = Backend("bytes")
    n = 10 * MB
    r = fetch(b.port, "GET", "/bytes?n=%d" % n, sha256=True, sink=lambda d: None, timeout=60)
    assert r.status == 200 and r.header("content-length") == str(n)
    assert r.body_len == n and r.sha256 == pattern_sha256(n)
    r = fetch(b.port, "GET", "/bytes?n=%d&chunked=1&chunk=1000" % (MB + 7), sha256=True,
              sink=lambda d: None, timeout=60)
    assert r.header("transfer-encoding") == "chunked" and r.header("content-length") is None
    assert r.body_len == MB + 7 and r.sha256 == pattern_sha256(MB + 7)
    r = fetch(b.port, "GET", "/bytes?n=0&chunked=1")
    assert r.status == 200 and r.body == b""
    assert fetch(b.port, "GET", "/bytes?n=abc").status == 400


def test_bytes_streams_with_backpressure():
    b = Backend("bp")
    base = b.rss_kib()
    with HttpConn("127.0.0.1", b.port) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.request("GET", "/bytes?n=%d" % (8 * 1024 * MB))     # 8 GiB, never read in full
        c.read_head()
        time.sleep(0.5)
        grown = b.rss_kib() - base
        assert grown < 32 * 1024, "backend RSS grew by %d KiB for an unread body" % grown
        # The stream is live: a few MB arrive in order.
        assert c.read_exact(3 * MB, timeout=30)[:65536] == pattern(0, 65536)


def test_delay_waits_then_answers():
    b = Backend("slow")
    t0 = time.monotonic()
    r = fetch(b.port, "GET", "/delay?ms=300")
    assert time.monotonic() - t0 >= 0.29
    assert r.status == 200 and r.body == b"slow\n"
    r = fetch(b.port, "GET", "/delay?ms=10&then=/bytes?n=5&chunked=1")
    assert r.header("transfer-encoding") == "chunked" and r.body == pattern(0, 5)
    r = fetch(b.port, "GET", "/delay?ms=10&then=%2Fstatus%3Fcode%3D418")
    assert r.status == 418


def test_status_codes():
    b = Backend("st")
    with HttpConn("127.0.0.1", b.port) as c:
        for code in (200, 302, 404, 500, 503):
            c.request("GET", "/status?code=%d" % code)
            r = c.read_response()
            assert r.status == code and r.header("x-backend-id") == "st"
            assert r.body.startswith(b"%d " % code)
        for code in (204, 304):
            c.request("GET", "/status?code=%d" % code)
            r = c.read_response()
            assert r.status == code and r.body == b"" and r.header("content-length") is None
        c.request("GET", "/status?code=103")
        r = c.read_response()
        assert r.status == 103 and r.header("x-backend-id") == "st"
        r = c.read_response()
        assert r.status == 200 and r.body == b"st\n"
        c.request("GET", "/status?code=99")
        assert c.read_response().status == 400


def test_close_mid_sends_half_then_closes():
    b = Backend("cm")
    with HttpConn("127.0.0.1", b.port) as c:
        c.request("GET", "/close-mid?n=100000")
        head = c.read_head()
        assert head.status == 200 and head.header("content-length") == "100000"
        rest = c.read_until_close()
        assert len(rest) == 50000 and rest[:1000] == pattern(0, 1000)
        try:
            c.request("GET", "/")
            c.read_response()
            raise AssertionError("connection still usable")
        except (ConnectionClosed, OSError):
            pass


def test_close_before_answers_nothing():
    b = Backend("cb")
    with HttpConn("127.0.0.1", b.port) as c:
        c.request("GET", "/close-before")
        assert c.read_until_close() == b""


def test_garbage_response():
    b = Backend("gb")
    with HttpConn("127.0.0.1", b.port) as c:
        c.request("GET", "/garbage")
        assert c.read_until_close() == b"HTTP/1.1 ???\r\nthis is not http\r\n\r\n"


def test_unparsable_request_gets_400_and_close():
    b = Backend("bad")
    with HttpConn("127.0.0.1", b.port) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
        r = c.read_response()
        assert r.status == 400 and r.header("connection") == "close"
        assert c.is_closed(3)
    with HttpConn("127.0.0.1", b.port) as c:
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n")
        assert c.read_response().status == 400
        assert c.is_closed(3)


def test_limits():
    b = Backend("lim")
    with HttpConn("127.0.0.1", b.port) as c:
        c.request("GET", "/", [("X-Big", "a" * 70000)])
        assert c.read_response().status == 431
        assert c.is_closed(3)
    with HttpConn("127.0.0.1", b.port) as c:
        c.request("GET", "/" + "a" * 20000)
        assert c.read_response().status == 414
    with HttpConn("127.0.0.1", b.port) as c:
        # /echo holds the body in memory, so it refuses past 16 MiB.
        c.request("POST", "/echo", [("Content-Length", str(17 * MB))])
        try:
            c.send_pattern_body(17 * MB)
        except OSError:
            pass    # the backend may close before the last bytes go out
        r = c.read_response()
        assert r.status == 413 and r.header("connection") == "close"


def test_many_pipelined_requests():
    b = Backend("burst")
    n = 2000
    with HttpConn("127.0.0.1", b.port, timeout=30) as c:
        # Sent whole before reading: the backend must stop reading while its
        # answers pile up, not buffer them without bound.
        c.send(b"".join(b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" %
                        (b"bytes?n=5000" if i % 3 == 0 else b"echo?%d" % i) for i in range(n // 2)))
        for i in range(n // 2):
            r = c.read_response()
            assert r.status == 200
            if i % 3 == 0:
                assert r.body == pattern(0, 5000)
            else:
                assert parse_echo(r.body)[0] == "GET /echo?%d HTTP/1.1" % i
    assert b.stats()["requests"] == n // 2 + 1


def test_stats_counts_connections_and_requests():
    b = Backend("stats")
    for _ in range(3):
        fetch(b.port, "GET", "/")
    with HttpConn("127.0.0.1", b.port) as c:
        for _ in range(4):
            c.request("GET", "/")
            c.read_response()
    s = b.stats()
    assert s == {"id": "stats", "connections": 5, "requests": 8}, s


def test_websocket_echo():
    b = Backend("ws")
    ws = WebSocket.connect("127.0.0.1", b.port, "/ws", subprotocol="chat, superchat")
    assert ws.response.header("x-backend-id") == "ws"
    assert ws.subprotocol == "chat"
    ws.send_text("hello, switchboard")
    assert ws.recv() == (WS_TEXT, b"hello, switchboard")
    blob = os.urandom(100 * 1024)
    ws.send_binary(blob)
    assert ws.recv() == (WS_BINARY, blob)
    ws.ping(b"are you there")
    assert ws.recv() == (WS_PONG, b"are you there")
    ws.send_frame(WS_PONG, b"unsolicited")     # swallowed, per RFC 6455
    # Fragments come back as the same fragments; a ping in between is answered.
    ws.send_frame(WS_TEXT, b"frag-", fin=False)
    ws.send_frame(WS_PING, b"mid")
    ws.send_frame(WS_CONT, b"mented", fin=True)
    assert ws.recv_frame() == (False, WS_TEXT, b"frag-")
    assert ws.recv_frame() == (True, WS_PONG, b"mid")
    assert ws.recv_frame() == (True, WS_CONT, b"mented")
    ws.send_text("")
    assert ws.recv() == (WS_TEXT, b"")
    reply = ws.close(1000, b"bye")
    assert reply == struct.pack("!H", 1000) + b"bye"


def test_websocket_large_frame_and_errors():
    b = Backend("ws2")
    ws = WebSocket.connect("127.0.0.1", b.port, "/ws")
    big = os.urandom(4 * MB)
    ws.send_binary(big)
    assert ws.recv(timeout=60) == (WS_BINARY, big)
    ws.send_frame(WS_TEXT, b"unmasked", mask=False)
    assert ws.recv_frame() == (True, WS_CLOSE, struct.pack("!H", 1002))
    assert ws.is_closed(3)


def test_websocket_bad_handshakes():
    b = Backend("ws3")
    r = fetch(b.port, "GET", "/ws")
    assert r.status == 400
    try:
        WebSocket.connect("127.0.0.1", b.port, "/ws", headers=[("Sec-WebSocket-Version", "8")])
        raise AssertionError("version 8 accepted")
    except WebSocketError as e:
        assert e.status == 426
        assert e.response.header("sec-websocket-version") == "13"
    with HttpConn("127.0.0.1", b.port) as c:
        c.request("GET", "/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                 ("Sec-WebSocket-Version", "13")])
        assert c.read_response().status == 400


def test_threads_share_the_port():
    b = Backend("mt", threads=4)
    conns = [HttpConn("127.0.0.1", b.port) for _ in range(16)]
    for c in conns:
        c.request("GET", "/")
    for c in conns:
        r = c.read_response()
        assert r.status == 200 and r.body == b"mt\n"
    s = b.stats()
    assert s["connections"] == 17 and s["requests"] == 17, s
    assert b.stop() == 0


def test_ipv6_listener():
    b = Backend("six", host="::1")
    assert b.addr == "[::1]:%d" % b.port
    r = fetch(b.port, "GET", "/", host="::1")
    assert r.status == 200 and r.body == b"six\n"


def test_sigterm_exits_cleanly_with_open_connections():
    b = Backend("term")
    idle = HttpConn("127.0.0.1", b.port)
    idle.request("GET", "/")
    idle.read_response()
    busy = HttpConn("127.0.0.1", b.port)
    busy.request("GET", "/bytes?n=%d" % (1024 * MB))
    busy.read_head()
    half = HttpConn("127.0.0.1", b.port)
    half.send(b"POST /sha256 HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
    time.sleep(0.2)
    assert b.stop() == 0


def test_pause_resume_and_kill():
    b = Backend("pz")
    b.pause()
    with HttpConn("127.0.0.1", b.port, timeout=0.5) as c:
        c.request("GET", "/")
        try:
            c.read_response()
            raise AssertionError("a stopped backend answered")
        except socket.timeout:
            pass
        b.resume()
        c.sock.settimeout(5)
        assert c.read_response().status == 200
    port = b.port
    b.kill()
    try:
        HttpConn("127.0.0.1", port, timeout=2)
        raise AssertionError("a killed backend accepted a connection")
    except ConnectionRefusedError:
        pass


def test_harness_helpers():
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    assert free_port6() not in ports
    assert wait_for(lambda: 42, timeout=1) == 42
    t0 = time.monotonic()
    try:
        wait_for(lambda: False, timeout=0.3, message="never")
        raise AssertionError("wait_for did not time out")
    except AssertionError as e:
        assert "never" in str(e)
    assert time.monotonic() - t0 < 2
    b = Backend("port-given", port=free_port())
    assert fetch(b.port).body == b"port-given\n"
    assert b.stop() == 0
    assert b.stop() == 0        # idempotent
