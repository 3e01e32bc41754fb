"""test_proxy_http.py - HTTP/1.1 semantics through ./switchboard: keep-alive
on both sides, pipelining, Expect: 100-continue, HEAD, hop-by-hop headers,
X-Forwarded-For and trusted proxies, IPv6, WebSocket tunnels.

Every test starts its own sb-backend(s) and switchboard on free loopback
ports; the harness stops them.
"""

import json
import os
import re
import struct
import time

from harness import (WS_BINARY, WS_PONG, WS_TEXT, Backend, HttpConn, Switchboard, WebSocket,
                     echo_header, fetch, free_port6, parse_echo, pattern_sha256)
from proxy_helpers import (RawOrigin, access_lines, curl, log_path, proxy_config,
                           start_proxy)

TIMEOUT = 60


def _stats_via_proxy(conn):
    """sb-backend's /stats fetched through the proxy on `conn`."""
    conn.request("GET", "/stats")
    r = conn.read_response()
    assert r.status == 200, r
    return json.loads(r.body)


# ---------------------------------------------------------------- keep-alive

def test_keepalive_reuse_on_both_sides():
    b = Backend("ka")
    sb, port = start_proxy({"web": [b]}, workers=1)
    with HttpConn("127.0.0.1", port) as c:
        for i in range(200):
            c.request("GET", "/?i=%d" % i)
            r = c.read_response()
            assert r.status == 200 and r.body == b"ka\n", (i, r)
            assert r.header("connection") is None, (i, r.headers)
        assert not c.is_closed(0.05), "client connection closed after 200 requests"
        # /stats through the proxy: it travels on the pooled connection too.
        s = _stats_via_proxy(c)
    assert s["requests"] == 201, s
    assert s["connections"] == 1, "200 requests on one client connection made the " \
        "proxy open %d backend connections" % s["connections"]
    # A second client connection reuses the idle backend connection.
    with HttpConn("127.0.0.1", port) as c2:
        c2.request("GET", "/")
        assert c2.read_response().body == b"ka\n"
        s = _stats_via_proxy(c2)
    assert s == {"id": "ka", "connections": 1, "requests": 203}, s


def test_keepalive_http10_client():
    b = Backend("k10")
    sb, port = start_proxy({"web": [b]})
    with HttpConn("127.0.0.1", port) as c:
        for _ in range(3):
            c.request("GET", "/", [("Connection", "keep-alive")], version="HTTP/1.0")
            r = c.read_response()
            assert r.status == 200 and r.body == b"k10\n"
            assert (r.header("connection") or "").lower() == "keep-alive", r.headers
        c.request("GET", "/", version="HTTP/1.0")
        r = c.read_response()
        assert r.status == 200 and (r.header("connection") or "").lower() == "close"
        assert c.is_closed(2), "HTTP/1.0 request without keep-alive left the connection open"


def test_client_half_close_after_request_still_answered():
    import socket
    b = Backend("half")
    sb, port = start_proxy({"web": [b]})
    for target in ("/echo", "/delay?ms=300"):
        with HttpConn("127.0.0.1", port) as c:
            c.send(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target.encode())
            c.sock.shutdown(socket.SHUT_WR)
            r = c.read_response(timeout=5)
            assert r.status == 200, (target, r)
            assert c.is_closed(3), "connection kept open after the client's FIN"


# ---------------------------------------------------------------- pipelining

def test_pipelined_requests_answered_in_order():
    b = Backend("pipe")
    sb, port = start_proxy({"web": [b]})
    with HttpConn("127.0.0.1", port) as c:
        c.send(b"GET /echo?1 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /echo?2 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /echo?3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        for i in (1, 2, 3):
            r = c.read_response()
            assert r.status == 200, (i, r)
            line = parse_echo(r.body)[0]
            assert line == "GET /echo?%d HTTP/1.1" % i, (i, line)
            if i < 3:
                assert r.header("connection") is None, (i, r.headers)
        assert (r.header("connection") or "").lower() == "close", r.headers
        assert c.is_closed(2), "connection not closed after the Connection: close request"


def test_pipelined_slow_first_and_mixed_bodies():
    b = Backend("pipe2")
    sb, port = start_proxy({"web": [b]})
    with HttpConn("127.0.0.1", port) as c:
        # A slow answer first: the quick ones behind it wait their turn.
        c.send(b"GET /delay?ms=300&then=/status?code=201 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"POST /sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
               b"GET /bytes?n=70000 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"HEAD /bytes?n=9 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /echo?last HTTP/1.1\r\nHost: x\r\n\r\n")
        r = c.read_response()
        assert r.status == 201, r
        r = c.read_response()
        assert r.body == b"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 5\n", r.body
        r = c.read_response(sha256=True)
        assert r.body_len == 70000 and r.sha256 == pattern_sha256(70000)
        r = c.read_response(head=True)
        assert r.status == 200 and r.header("content-length") == "9"
        r = c.read_response()
        assert parse_echo(r.body)[0] == "GET /echo?last HTTP/1.1"
        assert not c.is_closed(0.1)


def test_pipelining_flood_answered_in_order():
    b = Backend("flood")
    sb, port = start_proxy({"web": [b]}, access_log="off")
    n = 1000
    with HttpConn("127.0.0.1", port, timeout=30) as c:
        # Sent whole before reading: the proxy must hold back, not buffer all.
        c.send(b"".join(b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" %
                        (b"bytes?n=5000" if i % 3 == 0 else b"echo?%d" % i) for i in range(n)))
        for i in range(n):
            r = c.read_response()
            assert r.status == 200, (i, r)
            if i % 3 == 0:
                assert r.body_len == 5000, (i, r)
            else:
                assert parse_echo(r.body)[0] == "GET /echo?%d HTTP/1.1" % i, (i, r.body[:40])
    assert b.stats()["requests"] == n + 1


# ---------------------------------------------------------------- Expect

def test_expect_100_continue():
    b = Backend("exp")
    sb, port = start_proxy({"web": [b]})
    with HttpConn("127.0.0.1", port) as c:
        c.request("POST", "/sha256", [("Expect", "100-continue"), ("Content-Length", "5")])
        # The body is not sent until the interim answer came.
        r = c.read_response(timeout=5)
        assert r.status == 100, r
        assert r.raw_head.startswith(b"HTTP/1.1 100 Continue\r\n"), r.raw_head
        c.send(b"hello")
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 5\n"
        # The connection goes on.
        c.request("GET", "/")
        assert c.read_response().body == b"exp\n"


def test_expect_rejected_with_417_without_body():
    b = Backend("rej")
    sb, port = start_proxy({"web": [b]})
    with HttpConn("127.0.0.1", port) as c:
        c.request("PUT", "/reject-expect", [("Expect", "100-continue"),
                                            ("Content-Length", "1000000")])
        t0 = time.monotonic()
        r = c.read_response(timeout=5)
        assert r.status == 417, r
        assert time.monotonic() - t0 < 2
        assert (r.header("connection") or "").lower() == "close", r.headers
        # The body was never sent: the connection cannot be reused, so it closes.
        assert c.is_closed(3)


def test_expect_100_continue_with_curl():
    b = Backend("cexp")
    sb, port = start_proxy({"web": [b]})
    body = os.urandom(300000)
    path = os.path.join(sb.tmpdir, "body.bin")
    with open(path, "wb") as f:
        f.write(body)
    p = curl("-v", "-H", "Expect: 100-continue", "--data-binary", "@" + path,
             "http://127.0.0.1:%d/sha256" % port)
    assert p.returncode == 0, p.stderr
    err = p.stderr.decode("latin-1")
    assert "< HTTP/1.1 100 Continue" in err, err
    import hashlib
    assert p.stdout == ("%s %d\n" % (hashlib.sha256(body).hexdigest(), len(body))).encode()


def test_interim_1xx_answers():
    b = Backend("eh")
    sb, port = start_proxy({"web": [b]})
    with HttpConn("127.0.0.1", port) as c:
        c.request("GET", "/status?code=103")
        r = c.read_response()
        assert r.status == 103 and r.header("x-backend-id") == "eh", r
        r = c.read_response()
        assert r.status == 200 and r.body == b"eh\n"
        # HTTP/1.0 clients do not get interim answers.
        c.request("GET", "/status?code=103", [("Connection", "keep-alive")], version="HTTP/1.0")
        r = c.read_response()
        assert r.status == 200 and r.body == b"eh\n", r


# ---------------------------------------------------------------- HEAD

def test_head_has_length_and_no_body():
    b = Backend("hd")
    sb, port = start_proxy({"web": [b]})
    with HttpConn("127.0.0.1", port) as c:
        c.request("HEAD", "/bytes?n=12345")
        r = c.read_response(head=True)
        assert r.status == 200 and r.header("content-length") == "12345", r.headers
        c.request("HEAD", "/")
        r = c.read_response(head=True)
        assert r.status == 200 and r.header("content-length") == "3", r.headers
        # Had a body followed either head, this GET would read it as its answer.
        c.request("GET", "/")
        r = c.read_response()
        assert r.status == 200 and r.body == b"hd\n"
        assert not c.is_closed(0.2), "bytes or a close after HEAD"
    # curl agrees: a HEAD answer with a length and nothing after it.
    p = curl("-sI", "http://127.0.0.1:%d/bytes?n=777" % port)
    assert p.returncode == 0, p.stderr
    assert re.search(rb"(?im)^content-length: 777\r$", p.stdout), p.stdout


# ---------------------------------------------------------------- hop-by-hop

def test_hop_by_hop_headers_removed_toward_backend():
    b = Backend("hop")
    sb, port = start_proxy({"web": [b]})
    r = fetch(port, "GET", "/echo", headers=[
        ("Connection", "close, X-Secret"), ("X-Secret", "s3cret"), ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("Trailer", "X-T"),
        ("Upgrade", "websocket"), ("X-Kept", "yes")])
    assert r.status == 200, r
    _, headers, _ = parse_echo(r.body)
    names = {k.lower() for k, _ in headers}
    for gone in ("connection", "x-secret", "keep-alive", "proxy-connection", "te",
                 "trailer", "upgrade"):
        assert gone not in names, "%s reached the backend: %r" % (gone, headers)
    assert echo_header(headers, "x-kept") == ["yes"]
    # On a keep-alive connection, with the named header in a second Connection.
    with HttpConn("127.0.0.1", port) as c:
        c.request("GET", "/echo", [("Connection", "keep-alive"), ("Connection", "X-Other"),
                                   ("X-Other", "1"), ("X-Stay", "2")])
        r = c.read_response()
        _, headers, _ = parse_echo(r.body)
        names = {k.lower() for k, _ in headers}
        assert "x-other" not in names and "connection" not in names, headers
        assert echo_header(headers, "x-stay") == ["2"]


def test_long_header_named_in_connection_is_removed():
    # Names of any length count (a 64-byte bound once let long ones through).
    b = Backend("long")
    sb, port = start_proxy({"web": [b]})
    leaked = []
    for n in (63, 64, 100, 300):
        name = "X-" + "L" * (n - 2)
        r = fetch(port, "GET", "/echo", headers=[("Connection", "keep-alive, " + name),
                                                (name, "secret")])
        assert r.status == 200, r
        _, headers, _ = parse_echo(r.body)
        if echo_header(headers, name):
            leaked.append(n)
    assert not leaked, "headers named in Connection reached the backend, name lengths %s" % leaked


def test_hop_by_hop_headers_removed_toward_client():
    body = b"hello from raw\n"
    origin = RawOrigin(b"HTTP/1.1 200 OK\r\n"
                       b"Connection: close, X-Hop\r\n"
                       b"Keep-Alive: timeout=5\r\n"
                       b"Proxy-Connection: keep-alive\r\n"
                       b"TE: trailers\r\n"
                       b"Trailer: X-T\r\n"
                       b"Upgrade: h2c\r\n"
                       b"X-Hop: secret\r\n"
                       b"X-End: kept\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)
    sb, port = start_proxy({"web": [origin.addr]})
    with HttpConn("127.0.0.1", port) as c:
        c.request("GET", "/")
        r = c.read_response()
        assert r.status == 200 and r.body == body, (r, r.body)
        names = [k.lower() for k, _ in r.headers]
        for gone in ("keep-alive", "proxy-connection", "te", "trailer", "upgrade", "x-hop"):
            assert gone not in names, "%s reached the client: %r" % (gone, r.headers)
        # The backend's "close" is its own business: the client connection stays.
        assert r.header("connection") is None, r.headers
        assert r.header("x-end") == "kept"
        c.request("GET", "/")
        assert c.read_response().body == body


# ---------------------------------------------------------------- forwarded

def test_x_forwarded_for_untrusted_peer():
    b = Backend("xff")
    sb, port = start_proxy({"web": [b]})
    r = fetch(port, "GET", "/echo", headers=[("X-Forwarded-For", "9.9.9.9"),
                                            ("X-Real-IP", "6.6.6.6"),
                                            ("X-Forwarded-Proto", "https"),
                                            ("X-Forwarded-Host", "evil.example")])
    _, headers, _ = parse_echo(r.body)
    assert echo_header(headers, "x-forwarded-for") == ["9.9.9.9, 127.0.0.1"], headers
    assert echo_header(headers, "x-real-ip") == ["127.0.0.1"], headers
    # An untrusted peer's forwarding claims are replaced, not passed on.
    assert echo_header(headers, "x-forwarded-proto") == ["http"], headers
    assert echo_header(headers, "x-forwarded-host") == ["127.0.0.1:%d" % port], headers
    # Without a header of its own, the peer alone.
    r = fetch(port, "GET", "/echo")
    _, headers, _ = parse_echo(r.body)
    assert echo_header(headers, "x-forwarded-for") == ["127.0.0.1"], headers


def test_x_forwarded_for_trusted_peer_and_access_log():
    b = Backend("xft")
    log = log_path()
    sb, port = start_proxy({"web": [b]}, trusted=["127.0.0.0/8", "10.0.0.0/8"],
                           access_log=log)
    r = fetch(port, "GET", "/echo?one", headers=[("X-Forwarded-For", "1.1.1.1, 10.0.0.1")])
    _, headers, _ = parse_echo(r.body)
    assert echo_header(headers, "x-real-ip") == ["1.1.1.1"], headers
    assert echo_header(headers, "x-forwarded-for") == ["1.1.1.1, 10.0.0.1, 127.0.0.1"], headers
    # Several X-Forwarded-For headers are folded into one, in order.
    r = fetch(port, "GET", "/echo?two", headers=[("X-Forwarded-For", "5.5.5.5"),
                                                ("X-Forwarded-For", "2.2.2.2, 10.1.2.3")])
    _, headers, _ = parse_echo(r.body)
    assert echo_header(headers, "x-forwarded-for") == ["5.5.5.5, 2.2.2.2, 10.1.2.3, 127.0.0.1"], \
        headers
    assert echo_header(headers, "x-real-ip") == ["2.2.2.2"], headers
    lines = access_lines(log, 2)
    assert lines[0].startswith("1.1.1.1 "), lines
    assert "/echo?one" in lines[0]
    assert lines[1].startswith("2.2.2.2 "), lines


def test_x_forwarded_for_only_loopback_trusted():
    b = Backend("xfl")
    sb, port = start_proxy({"web": [b]}, trusted=["127.0.0.0/8"])
    r = fetch(port, "GET", "/echo", headers=[("X-Forwarded-For", "1.1.1.1, 10.0.0.1"),
                                            ("X-Forwarded-Proto", "https")])
    _, headers, _ = parse_echo(r.body)
    # 10.0.0.1 is not trusted here: it is the rightmost untrusted hop.
    assert echo_header(headers, "x-real-ip") == ["10.0.0.1"], headers
    # A trusted peer's X-Forwarded-Proto is kept.
    assert echo_header(headers, "x-forwarded-proto") == ["https"], headers


# ---------------------------------------------------------------- IPv6

def test_ipv6_listener_and_backend():
    b = Backend("six", host="::1")
    port = free_port6()
    text = proxy_config(port, {"web": [b]}, listen=["[::1]:%d" % port])
    sb = Switchboard(text, wait_ports=[("::1", port)])
    r = fetch(port, "GET", "/echo", host="::1")
    assert r.status == 200 and r.header("x-backend-id") == "six", r
    _, headers, _ = parse_echo(r.body)
    assert echo_header(headers, "x-real-ip") == ["::1"], headers
    assert echo_header(headers, "x-forwarded-for") == ["::1"], headers
    p = curl("-g", "http://[::1]:%d/" % port)
    assert p.returncode == 0 and p.stdout == b"six\n", (p.stdout, p.stderr)


# ---------------------------------------------------------------- WebSocket

def test_websocket_echo_through_proxy():
    b = Backend("ws")
    sb, port = start_proxy({"web": [b]})
    ws = WebSocket.connect("127.0.0.1", port, "/ws", subprotocol="chat")
    assert ws.response.header("x-backend-id") == "ws"
    assert (ws.response.header("upgrade") or "").lower() == "websocket"
    ws.send_text("hello through the proxy")
    assert ws.recv(timeout=10) == (WS_TEXT, b"hello through the proxy")
    blob = os.urandom(100 * 1024)
    ws.send_binary(blob)
    assert ws.recv(timeout=10) == (WS_BINARY, blob)
    ws.ping(b"are you there")
    assert ws.recv(timeout=10) == (WS_PONG, b"are you there")
    reply = ws.close(1000, b"bye")
    assert reply == struct.pack("!H", 1000) + b"bye", reply


def test_websocket_connection_header_forms():
    b = Backend("wsf")
    sb, port = start_proxy({"web": [b]})
    # Firefox sends "keep-alive, Upgrade"; the token may also sit in a second
    # Connection field.
    for hdrs in ([("Connection", "keep-alive, Upgrade")],
                 [("Connection", "keep-alive"), ("Connection", "Upgrade")]):
        ws = WebSocket.connect("127.0.0.1", port, "/ws", headers=hdrs)
        ws.send_text("via %r" % (hdrs,))
        assert ws.recv(timeout=5) == (WS_TEXT, ("via %r" % (hdrs,)).encode())
        assert ws.close() == struct.pack("!H", 1000)


def test_websocket_tunnel_idle_timeout():
    b = Backend("wst")
    sb, port = start_proxy({"web": [b]}, timeouts={"tunnel": "1s"})
    # Traffic keeps a tunnel alive past the timeout...
    ws = WebSocket.connect("127.0.0.1", port, "/ws")
    t_open = time.monotonic()
    for i in range(6):
        if i:
            time.sleep(0.3)
        ws.send_text("tick %d" % i)
        assert ws.recv(timeout=5) == (WS_TEXT, b"tick %d" % i)
        last = time.monotonic()         # the tunnel's last activity
    assert last - t_open > 1.2, "traffic did not outlast the timeout"
    # ...and an idle one is closed, about 1 s after its last activity.
    assert ws.is_closed(4), "idle tunnel still open 4 s after the last message"
    took = time.monotonic() - last
    assert 0.85 <= took <= 2.5, "idle tunnel closed %.2fs after the last message (tunnel: 1s)" \
        % took


def test_upgrade_refused_by_backend_is_plain_answer():
    b = Backend("wsno")
    sb, port = start_proxy({"web": [b]})
    with HttpConn("127.0.0.1", port) as c:
        # A bad handshake (no key): the backend answers 400, no tunnel.
        c.request("GET", "/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                 ("Sec-WebSocket-Version", "13")])
        r = c.read_response()
        assert r.status == 400, r
