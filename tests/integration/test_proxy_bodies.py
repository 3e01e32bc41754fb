"""test_proxy_bodies.py - bodies streamed through ./switchboard: chunked
uploads and downloads, close-delimited answers re-framed per client
version, 100 MB each way with sha256 checks and a bound on the
proxy's memory growth, and the splice pipes limits.pipe_size sets.

sb-backend always frames its answers (Content-Length or chunked), so the
close-delimited answers come from RawOrigin (proxy_helpers), a minimal
origin in the test process that writes a head without length and closes.
"""

import fcntl
import hashlib
import os
import socket
import sys
import time

from harness import (Backend, HttpConn, fetch, pattern, pattern_chunks, pattern_sha256,
                     wait_for)
from proxy_helpers import (RawOrigin, RssSampler, curl, pause_fully, proxy_config,
                           small_asan_quarantine, start_proxy)

TIMEOUT = 60

MB = 1024 * 1024
BIG = 100 * MB
RSS_LIMIT_KIB = 32 * 1024
# Under ASan, the switchboard of the 100 MB tests runs with a 4 MiB quarantine
# (small_asan_quarantine): with the default 256 MiB, freed buffers pile up in
# the sanitizer and VmRSS would measure ASan, not the proxy.


def _sha_line(n):
    return ("%s %d\n" % (pattern_sha256(n), n)).encode()


# ---------------------------------------------------------------- chunked

def test_chunked_upload():
    b = Backend("cu")
    sb, port = start_proxy({"web": [b]})
    n = 3 * MB + 17
    with HttpConn("127.0.0.1", port, timeout=30) as c:
        c.upload_pattern("POST", "/sha256", n, chunked=True, chunk_size=10000)
        r = c.read_response()
        assert r.status == 200 and r.body == _sha_line(n), (r, r.body)
        # Chunk extensions and trailers are accepted; the body is what counts.
        c.request("PUT", "/sha256", [("Transfer-Encoding", "chunked")])
        c.send(b"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n")
        r = c.read_response()
        assert r.body == ("%s 7\n" % hashlib.sha256(b"abcdefg").hexdigest()).encode(), r.body
        # An empty chunked body, and the connection still works.
        c.request("POST", "/sha256", [("Transfer-Encoding", "chunked")])
        c.send(b"0\r\n\r\n")
        r = c.read_response()
        assert r.body == ("%s 0\n" % hashlib.sha256(b"").hexdigest()).encode(), r.body
        c.request("GET", "/")
        assert c.read_response().body == b"cu\n"


def test_chunked_upload_with_curl():
    b = Backend("cuc")
    sb, port = start_proxy({"web": [b]})
    data = os.urandom(1 * MB + 3)
    path = os.path.join(sb.tmpdir, "up.bin")
    with open(path, "wb") as f:
        f.write(data)
    p = curl("-H", "Transfer-Encoding: chunked", "--data-binary", "@" + path,
             "http://127.0.0.1:%d/sha256" % port)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ("%s %d\n" % (hashlib.sha256(data).hexdigest(), len(data))).encode()


def test_chunked_download():
    b = Backend("cd")
    sb, port = start_proxy({"web": [b]})
    n = 2 * MB + 5
    with HttpConn("127.0.0.1", port, timeout=30) as c:
        c.request("GET", "/bytes?n=%d&chunked=1&chunk=1000" % n)
        r = c.read_response(sha256=True, sink=lambda d: None)
        assert r.status == 200
        assert r.header("transfer-encoding") == "chunked", r.headers
        assert r.header("content-length") is None, r.headers
        assert r.body_len == n and r.sha256 == pattern_sha256(n)
        # The framing itself, byte for byte, on a small one.
        c.request("GET", "/bytes?n=5&chunked=1")
        head = c.read_head()
        assert head.header("transfer-encoding") == "chunked"
        raw = b""
        for _ in range(100):
            if raw.endswith(b"0\r\n\r\n"):
                break
            raw += c.read_exact(1, timeout=5)
        assert raw == b"5\r\n" + next(pattern_chunks(5)) + b"\r\n0\r\n\r\n", raw


def test_chunked_answer_to_http10_client_is_bare_then_close():
    b = Backend("c10")
    sb, port = start_proxy({"web": [b]})
    n = 100000
    with HttpConn("127.0.0.1", port) as c:
        # The proxy asks the backend in HTTP/1.1, so the backend answers chunked.
        c.request("GET", "/bytes?n=%d&chunked=1" % n, version="HTTP/1.0")
        r = c.read_head()
        assert r.status == 200
        assert r.header("transfer-encoding") is None, r.headers
        assert (r.header("connection") or "").lower() == "close", r.headers
        body = c.read_until_close(timeout=10)
        assert len(body) == n and hashlib.sha256(body).hexdigest() == pattern_sha256(n)


def test_close_delimited_answer_rechunked_for_http11():
    body = bytes(range(256)) * 400         # 102400 bytes
    origin = RawOrigin(b"HTTP/1.1 200 OK\r\nX-Backend-Id: raw\r\n"
                       b"Content-Type: application/octet-stream\r\n\r\n" + body)
    sb, port = start_proxy({"web": [origin.addr]})
    with HttpConn("127.0.0.1", port) as c:
        c.request("GET", "/one")
        r = c.read_response()
        assert r.status == 200 and r.header("x-backend-id") == "raw"
        assert r.header("transfer-encoding") == "chunked", r.headers
        assert r.header("content-length") is None
        assert r.body == body, len(r.body)
        # Re-chunked, the client connection survives the backend's close.
        assert r.header("connection") is None, r.headers
        c.request("GET", "/two")
        r = c.read_response()
        assert r.status == 200 and r.body == body
    assert len(origin.requests) == 2


def test_close_delimited_answer_bare_for_http10():
    body = b"0123456789" * 5000
    origin = RawOrigin(b"HTTP/1.1 200 OK\r\nX-Backend-Id: raw\r\n\r\n" + body)
    sb, port = start_proxy({"web": [origin.addr]})
    with HttpConn("127.0.0.1", port) as c:
        c.request("GET", "/", [("Connection", "keep-alive")], version="HTTP/1.0")
        r = c.read_head()
        assert r.status == 200
        assert r.header("transfer-encoding") is None and r.header("content-length") is None, \
            r.headers
        assert (r.header("connection") or "").lower() == "close", r.headers
        got = c.read_until_close(timeout=10)
        assert got == body, len(got)


def test_empty_and_small_bodies():
    b = Backend("eb")
    sb, port = start_proxy({"web": [b]})
    with HttpConn("127.0.0.1", port) as c:
        c.request("POST", "/sha256", [("Content-Length", "0")])
        r = c.read_response()
        assert r.body == ("%s 0\n" % hashlib.sha256(b"").hexdigest()).encode()
        for code in (204, 304):
            c.request("GET", "/status?code=%d" % code)
            r = c.read_response()
            assert r.status == code and r.body == b"", r
        c.request("POST", "/echo", body=b"x" * 10)
        r = c.read_response()
        assert r.body.endswith(b"\r\n\r\n" + b"x" * 10)


# ---------------------------------------------------------------- 100 MB

def _report(what, before, peak, seconds):
    growth = peak - before
    msg = ("%s: %d MiB in %.2fs, switchboard VmRSS before %d KiB, peak %d KiB, "
           "growth %d KiB (limit %d KiB)" % (what, BIG // MB, seconds, before, peak,
                                             growth, RSS_LIMIT_KIB))
    print(msg)
    sys.stdout.flush()
    return growth, msg


def test_100mb_upload_sha256_and_rss():
    import time
    small_asan_quarantine()
    b = Backend("up100")
    sb, port = start_proxy({"web": [b]})
    fetch(port, "POST", "/sha256", body=b"warm-up")
    before = sb.rss_kib()
    with HttpConn("127.0.0.1", port, timeout=60) as c:
        t0 = time.monotonic()
        with RssSampler(sb) as rss:
            c.upload_pattern("POST", "/sha256", BIG)
            r = c.read_response(timeout=60)
        took = time.monotonic() - t0
    assert r.status == 200 and r.body == _sha_line(BIG), (r, r.body)
    growth, msg = _report("upload", before, max(rss.max_kib, before), took)
    assert rss.samples >= 3, "too few RSS samples (%d): %s" % (rss.samples, msg)
    assert growth < RSS_LIMIT_KIB, msg
test_100mb_upload_sha256_and_rss.timeout = 120


def test_100mb_download_sha256_and_rss():
    import time
    small_asan_quarantine()
    b = Backend("down100")
    sb, port = start_proxy({"web": [b]})
    fetch(port, "GET", "/bytes?n=1000")
    before = sb.rss_kib()
    with HttpConn("127.0.0.1", port, timeout=60) as c:
        t0 = time.monotonic()
        with RssSampler(sb) as rss:
            c.request("GET", "/bytes?n=%d" % BIG)
            r = c.read_response(sha256=True, sink=lambda d: None, timeout=60)
        took = time.monotonic() - t0
    assert r.status == 200 and r.header("content-length") == str(BIG), r.headers
    assert r.body_len == BIG and r.sha256 == pattern_sha256(BIG), (r.body_len, r.sha256)
    growth, msg = _report("download", before, max(rss.max_kib, before), took)
    assert rss.samples >= 3, "too few RSS samples (%d): %s" % (rss.samples, msg)
    assert growth < RSS_LIMIT_KIB, msg
test_100mb_download_sha256_and_rss.timeout = 120


# ---------------------------------------------------------------- back-pressure

def test_unread_download_does_not_grow_proxy():
    small_asan_quarantine()
    b = Backend("slowread")
    sb, port = start_proxy({"web": [b]})
    fetch(port, "GET", "/bytes?n=1000")
    before = sb.rss_kib()
    with HttpConn("127.0.0.1", port, timeout=30) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.request("GET", "/bytes?n=%d" % (1024 * MB))      # 1 GiB, mostly never read
        c.read_head()
        time.sleep(0.5)
        growth = sb.rss_kib() - before
        assert growth < RSS_LIMIT_KIB, "proxy grew %d KiB for an unread answer" % growth
        # The stream is live and in order.
        assert c.read_exact(3 * MB, timeout=30)[:65536] == pattern(0, 65536)


def test_upload_to_stalled_backend_is_throttled():
    small_asan_quarantine()
    b = Backend("stall")
    sb, port = start_proxy({"web": [b]})
    fetch(port, "GET", "/")
    before = sb.rss_kib()
    pause_fully(b)
    sent = 0
    try:
        with HttpConn("127.0.0.1", port, timeout=1) as c:
            c.request("POST", "/sha256", [("Content-Length", str(1024 * MB))])
            try:
                for piece in pattern_chunks(256 * MB):
                    c.sock.sendall(piece)
                    sent += len(piece)
            except socket.timeout:
                pass
            growth = sb.rss_kib() - before
    finally:
        b.resume()
    # What was accepted sits in socket buffers and the proxy's bounded
    # buffers, not in a growing heap.
    assert sent < 64 * MB, "the proxy took %d MB for a stalled backend" % (sent // MB)
    assert growth < RSS_LIMIT_KIB, "proxy grew %d KiB for a stalled upload" % growth


def test_client_abort_mid_download():
    b = Backend("abort")
    sb, port = start_proxy({"web": [b]}, workers=1)
    for _ in range(3):
        c = HttpConn("127.0.0.1", port)
        c.request("GET", "/bytes?n=%d" % (100 * MB))
        c.read_head()
        c.read_exact(MB, timeout=10)
        c.close()
    # The proxy drops those backend connections and goes on serving.
    time.sleep(0.2)
    with HttpConn("127.0.0.1", port) as c:
        for _ in range(3):
            c.request("GET", "/")
            assert c.read_response().body == b"abort\n"
    assert "client_write_error" in sb.stderr_text() or "client write error" in sb.stderr_text()


# ---------------------------------------------------------------- splicing

def _pipe_sizes(pid):
    """{inode: capacity in bytes} of the pipes process `pid` has open. A pipe
    end reopened through /proc answers F_GETPIPE_SZ for the pipe itself."""
    F_GETPIPE_SZ = 1032
    sizes = {}
    fd_dir = "/proc/%d/fd" % pid
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if not target.startswith("pipe:["):
            continue
        try:
            fd = os.open(os.path.join(fd_dir, name), os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            sizes[target] = fcntl.fcntl(fd, F_GETPIPE_SZ)
        finally:
            os.close(fd)
    return sizes


def _download_2mb(port):
    r = fetch(port, "GET", "/bytes?n=%d" % (2 * MB), sha256=True, sink=lambda d: None,
              timeout=TIMEOUT)
    assert r.status == 200 and r.body_len == 2 * MB and r.sha256 == pattern_sha256(2 * MB), \
        (r.status, r.body_len)


def _pipes_once_serving(sb, port):
    """_pipe_sizes() once the worker has answered a request: it opens pipes
    of its own while it starts, after the listening socket already accepts."""
    assert fetch(port, "GET", "/").status == 200
    return _pipe_sizes(sb.pid)


def test_pipe_size_sets_the_splice_pipe_and_zero_copies():
    b = Backend("pipes")
    sb, port = start_proxy({"web": [b]}, limits={"pipe_size": "64k"})
    before = _pipes_once_serving(sb, port)
    _download_2mb(port)
    # The body went through a pipe of that size, kept for the next answer.
    new = {k: v for k, v in _pipe_sizes(sb.pid).items() if k not in before}
    assert sorted(new.values()) == [65536], new

    # A reload to another size replaces the kept pipe at its next use. The
    # worker takes the new configuration up a little after "reloaded" is
    # logged: the reload also moves "/" to another backend, to see when.
    b2 = Backend("pipes2")
    sb.reload(proxy_config(port, {"web": [b2]}, limits={"pipe_size": "32k"}))
    wait_for(lambda: fetch(port, "GET", "/").body == b"pipes2\n", 10,
             message="the reloaded configuration was not in use within 10 s")
    _download_2mb(port)
    new = {k: v for k, v in _pipe_sizes(sb.pid).items() if k not in before}
    assert sorted(new.values()) == [32768], new

    # 0: the body is copied, and no pipe is opened for it.
    sb2, port2 = start_proxy({"web": [b]}, limits={"pipe_size": 0})
    before = _pipes_once_serving(sb2, port2)
    _download_2mb(port2)
    new = {k: v for k, v in _pipe_sizes(sb2.pid).items() if k not in before}
    assert new == {}, new
