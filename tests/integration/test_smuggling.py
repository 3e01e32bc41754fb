"""test_smuggling.py - request smuggling and desync: every row of
smuggling_cases.py against ./switchboard in front of sb-backend (requests)
or in front of a raw fake backend in this process (responses).

For requests, sb-backend's /stats (requests counted at the end of each head
it parses) proves what reached the backend: nothing for a refused head, at
most the one head for a bad chunked body, and exactly the requests the proxy
answered for valid rows - so no framing trick can make the backend see a
second request the proxy did not see.

For responses, the fake backend records every request and connection: an
invalid answer gets the client a 502 (or, once the head went out, a cut
connection), the request is not sent again, and the backend connection is
closed by the proxy, never reused.
"""

import os
import socket
import threading
import time

from harness import Backend, ConnectionClosed, HttpConn, _register_socket, fetch, parse_echo
from proxy_helpers import start_proxy
from smuggling_cases import CUT, NOTHING, OK_BODY, PARTIAL, REQUESTS, RESPONSES, SMUGGLED

TIMEOUT = 180


def _after_answer(conn, timeout=5):
    """"eof", "reset", "timeout" (still open) or "data" once an answer was read."""
    if conn.buf:
        return "data"
    try:
        closed = conn.is_closed(timeout)
    except OSError:
        return "reset"
    if conn.buf:
        return "data"
    return "eof" if closed else "timeout"


def _run_request_case(port, backend, case):
    """Sends one row; returns a list of problems (empty when it behaved)."""
    problems = []
    before = backend.stats()["requests"]
    with HttpConn("127.0.0.1", port, timeout=5) as c:
        c.send(case.raw)
        answers = 2 if case.backend == 2 else 1
        got = []
        try:
            for _ in range(answers):
                got.append(c.read_response(timeout=5))
        except (socket.timeout, ConnectionClosed, ValueError, OSError) as e:
            problems.append("no complete answer (%r)" % (e,))
        if got:
            r = got[0]
            if r.status != case.status:
                problems.append("status %s, want %s (%r)" % (r.status, case.status, r.body[:60]))
            conn_hdr = (r.header("connection") or "").lower()
            if case.closed:
                if conn_hdr != "close":
                    problems.append("no Connection: close")
                end = _after_answer(c)
                if end != "eof":
                    problems.append("after the answer: %s (want a clean close)" % end)
            else:
                if conn_hdr == "close":
                    problems.append("Connection: close on a valid request")
                if len(got) == answers and c.is_closed(0.1):
                    problems.append("connection closed after a valid request")
            for extra in got[1:]:
                if extra.status != 200:
                    problems.append("pipelined answer %s" % extra.status)
    if case.backend == PARTIAL:
        time.sleep(0.1)         # a forwarded head is counted when parsed
    seen = backend.stats()["requests"] - before - 1
    if case.backend == NOTHING and seen != 0:
        problems.append("backend saw %d request(s), want none" % seen)
    elif case.backend == PARTIAL and seen > 1:
        problems.append("backend saw %d requests, want at most the one head" % seen)
    elif case.backend > 0 and seen != case.backend:
        problems.append("backend saw %d request(s), want %d" % (seen, case.backend))
    return problems, (got[0].status if got else None), seen


def _describe_backend(spec):
    return {NOTHING: "nothing", PARTIAL: "<=1 head"}.get(spec, "exactly %s" % spec)


def test_request_smuggling_table():
    b = Backend("smug")
    sb, port = start_proxy({"web": [b]})
    failures = []
    print("%-55s %-6s %-7s %-14s %s" % ("case", "want", "got", "backend want", "saw"))
    for case in REQUESTS:
        problems, status, seen = _run_request_case(port, b, case)
        print("%-55s %-6s %-7s %-14s %s%s" % (
            case.name[:55], case.status, status, _describe_backend(case.backend), seen,
            "" if not problems else "   <-- " + "; ".join(problems)))
        if problems:
            failures.append("%s: %s" % (case.name, "; ".join(problems)))
    print("%d request cases, %d failed" % (len(REQUESTS), len(failures)))
    # The proxy still serves after all of that.
    assert fetch(port, "GET", "/").body == b"smug\n"
    assert not failures, "%d case(s) misbehaved:\n%s" % (len(failures), "\n".join(failures))


def test_valid_chunked_variants_reach_backend_reframed():
    """What the proxy accepts reaches the backend framed anew: the TE
    variants it tolerates (tab, upper case, extensions, leading zeros,
    trailers) arrive as plain "Transfer-Encoding: chunked" with the same
    data, and a request head hidden in a body stays body."""
    b = Backend("echo")
    sb, port = start_proxy({"web": [b]})
    variants = [
        (b"Transfer-Encoding:\tchunked\r\n", b"3\r\nabc\r\n0\r\n\r\n", b"abc"),
        (b"TRANSFER-ENCODING: CHUNKED\r\n", b"3\r\nabc\r\n0\r\n\r\n", b"abc"),
        (b"Transfer-Encoding: chunked\r\n", b'3;a=b;c="d e"\r\nabc\r\n0003\r\ndef\r\n0\r\n\r\n',
         b"abcdef"),
        (b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n", b"abc"),
        (b"Transfer-Encoding: chunked\r\n",
         b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED), SMUGGLED),
        (b"Content-Length: %d\r\n" % len(SMUGGLED), SMUGGLED, SMUGGLED),
    ]
    before = b.stats()["requests"]
    for head, body, want in variants:
        with HttpConn("127.0.0.1", port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + body)
            r = c.read_response(timeout=5)
            assert r.status == 200, (head, r)
            line, headers, echoed = parse_echo(r.body)
            names = [k.lower() for k, _ in headers]
            assert echoed == want, (head, body, echoed)
            if b"chunked" in head.lower():
                te = [v for k, v in headers if k.lower() == "transfer-encoding"]
                assert te == ["chunked"], (head, headers)
                assert "content-length" not in names, headers
            assert "x-t" not in names, headers
    assert b.stats()["requests"] - before - 1 == len(variants)


# ---------------------------------------------------------------- responses


class FakeOrigin:
    """A raw HTTP backend in a thread: answers "/case/N" with
    RESPONSES[N].raw, anything else with OK_BODY, on as many requests per
    connection as the proxy sends. Records, per connection, the request
    lines it got and whether the proxy closed it."""

    def __init__(self):
        self.sock = _register_socket(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []         # [{"requests": [line], "closed": bool}]
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                rec = {"requests": [], "closed": False}
                self.conns.append(rec)
            threading.Thread(target=self._serve, args=(conn, rec), daemon=True).start()

    def _serve(self, conn, rec):
        conn.settimeout(30)
        data = b""
        try:
            while True:
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        rec["closed"] = True
                        return
                    data += piece
                head, data = data.split(b"\r\n\r\n", 1)
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                with self.lock:
                    rec["requests"].append(line)
                target = line.split(" ")[1]
                if target.startswith("/case/"):
                    conn.sendall(RESPONSES[int(target[6:])].raw)
                else:
                    conn.sendall(OK_BODY)
        except OSError:
            rec["closed"] = True
        finally:
            conn.close()

    def find(self, target):
        """[(connection index, record)] of the connections that got `target`."""
        with self.lock:
            return [(i, rec) for i, rec in enumerate(self.conns)
                    if any(line.split(" ")[1] == target for line in rec["requests"])]


def _run_response_case(port, origin, i, case):
    problems = []
    target = "/case/%d" % i
    outcome = None
    with HttpConn("127.0.0.1", port, timeout=5) as c:
        # POST: not idempotent, so never retried - the backend sees it once.
        c.send(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % target.encode())
        try:
            r = c.read_response(timeout=5)
            outcome = r.status
            if r.status == 200 and r.body != b"ok":
                problems.append("body %r" % r.body[:40])
        except (ConnectionClosed, ValueError, OSError):
            outcome = CUT
        if outcome != case.outcome:
            problems.append("client got %s, want %s" % (outcome, case.outcome))
        if outcome == CUT and not c.is_closed(3):
            problems.append("client connection not closed after the cut")
        if outcome in (200, 502):
            if (r.header("connection") or "").lower() == "close":
                problems.append("client connection closed after %s" % outcome)
            # The next request on the same client connection gets a clean
            # answer, never bytes the bad backend connection still held.
            c.send(b"GET /next%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            try:
                r2 = c.read_response(timeout=5)
                if r2.status != 200 or r2.body != b"ok":
                    problems.append("next request got %s %r" % (r2.status, r2.body[:40]))
            except (ConnectionClosed, ValueError, OSError) as e:
                problems.append("next request: %r" % (e,))
    seen = origin.find(target)
    if len(seen) != 1 or len(seen[0][1]["requests"]) < 1 or \
            sum(line.split(" ")[1] == target for _, rec in seen for line in rec["requests"]) != 1:
        problems.append("backend got the request %d times" % sum(
            line.split(" ")[1] == target for _, rec in seen for line in rec["requests"]))
    if seen and not case.reusable:
        idx, rec = seen[0]
        deadline = time.monotonic() + 3
        while not rec["closed"] and time.monotonic() < deadline:
            time.sleep(0.01)
        if not rec["closed"]:
            problems.append("backend connection left open")
        nxt = origin.find("/next%d" % i)
        if nxt and nxt[0][0] == idx:
            problems.append("backend connection reused after an invalid answer")
    return problems, outcome


def test_response_desync_table():
    origin = FakeOrigin()
    sb, port = start_proxy({"web": [origin.addr]})
    failures = []
    print("%-40s %-6s %-6s %s" % ("response case", "want", "got", "backend conn"))
    for i, case in enumerate(RESPONSES):
        problems, outcome = _run_response_case(port, origin, i, case)
        print("%-40s %-6s %-6s %s%s" % (case.name[:40], case.outcome, outcome,
                                        "may be kept" if case.reusable else "closed",
                                        "" if not problems else "   <-- " + "; ".join(problems)))
        if problems:
            failures.append("%s: %s" % (case.name, "; ".join(problems)))
    origin.stop = True
    print("%d response cases, %d failed" % (len(RESPONSES), len(failures)))
    assert not failures, "%d case(s) misbehaved:\n%s" % (len(failures), "\n".join(failures))


def test_refused_answer_to_get_is_retried_on_fresh_connections():
    """A GET may be sent again after an invalid answer (it is idempotent):
    each try goes on a new backend connection, every one of them is closed,
    and the client gets one 502. (The retry used to touch the freed first
    connection; the ASan run of this test catches that.)"""
    origin = FakeOrigin()
    sb, port = start_proxy({"web": [origin.addr]})
    names = ("obs-fold", "101 to a request without Upgrade", "CL and TE")
    for name in names:
        i = next(k for k, case in enumerate(RESPONSES) if case.name == name)
        with HttpConn("127.0.0.1", port, timeout=5) as c:
            c.request("GET", "/case/%d" % i)
            r = c.read_response(timeout=5)
            assert r.status == 502, (name, r)
            c.request("GET", "/after")
            assert c.read_response(timeout=5).body == b"ok", name
        tries = origin.find("/case/%d" % i)
        assert 1 <= len(tries) <= 3, (name, tries)
        for _, rec in tries:
            # The invalid answer was the last thing on its connection.
            assert rec["requests"][-1].split(" ")[1] == "/case/%d" % i, (name, rec)
            deadline = time.monotonic() + 3
            while not rec["closed"] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert rec["closed"], (name, "backend connection left open")
        print("%s: answered 502 after %d tries" % (name, len(tries)))
    origin.stop = True
    assert sb.running()


def _cpu_seconds(proc):
    with open("/proc/%d/stat" % proc.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_client_half_close_mid_body_ends_exchange_without_spinning():
    """A client that sends part of a body and half-closes can never finish
    its request: the proxy ends the exchange at once (the backend does not
    wait for timeouts.server), and does not spin on the EOF meanwhile (it
    used to re-arm the read event on a socket at EOF: a busy loop)."""
    b = Backend("half")
    sb, port = start_proxy({"web": [b]})
    for name, rest in (("Content-Length", b"Content-Length: 10\r\n\r\nabc"),
                       ("chunked", b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")):
        s = _register_socket(socket.create_connection(("127.0.0.1", port)))
        s.sendall(b"POST /sha256 HTTP/1.1\r\nHost: x\r\n" + rest)
        time.sleep(0.2)
        cpu0 = _cpu_seconds(sb)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        t0 = time.monotonic()
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
        took = time.monotonic() - t0
        time.sleep(1)
        cpu = _cpu_seconds(sb) - cpu0
        s.close()
        print("%s: closed after %.3f s, proxy CPU %.2f s over ~1 s" % (name, took, cpu))
        assert data == b"", (name, data)
        assert took < 2, "%s: connection still open %.1f s after the half-close" % (name, took)
        assert cpu < 0.3, "%s: proxy used %.2f s of CPU after the half-close" % (name, cpu)
    assert fetch(port, "GET", "/").body == b"half\n"


def test_backend_garbage_gets_502_once():
    b = Backend("garbage")
    sb, port = start_proxy({"web": [b]})
    with HttpConn("127.0.0.1", port) as c:
        c.send(b"POST /garbage HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        r = c.read_response(timeout=5)
        assert r.status == 502, r
        c.request("GET", "/")
        assert c.read_response(timeout=5).body == b"garbage\n"
    # /garbage answered once (no retry of the POST), then "/", then /stats.
    assert b.stats()["requests"] == 3
