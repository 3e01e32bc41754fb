"""test_proxy_accept.py - how ./switchboard takes connections in and when it
watches them: `defer_accept` (TCP_DEFER_ACCEPT) and the client read that is
armed only once an answer takes PX_ABORT_WATCH_MS (100 ms).

With defer_accept the kernel hands a connection over once its first bytes
arrive, or, for a silent one, after about a second; so a silent connection
is closed about that much later than with defer_accept off, and a request
sent late on an open connection is still answered.
"""

import re
import socket
import struct
import time

from harness import Backend, HttpConn, Switchboard, free_port, wait_for
from proxy_helpers import proxy_config, start_proxy

IDLE = "1s"


def _seconds_until_closed(port, limit=15.0):
    """Connects, sends nothing, and returns how long the proxy took to close."""
    s = socket.create_connection(("127.0.0.1", port), timeout=limit)
    start = time.monotonic()
    try:
        s.settimeout(limit)
        data = s.recv(4096)
        assert data == b"", "a silent connection got %r" % data[:200]
        return time.monotonic() - start
    finally:
        s.close()


def test_defer_accept_late_request_is_answered_and_silent_connection_closed():
    b = Backend("da")
    on, on_port = start_proxy({"web": [b]}, timeouts={"client_idle": IDLE})
    off_port = free_port()
    off = Switchboard(proxy_config(off_port, {"web": [b]}, timeouts={"client_idle": IDLE})
                      + "defer_accept: false\n", wait_ports=[off_port])

    # A request that comes 300 ms after the connection is still answered.
    for port in (on_port, off_port):
        with HttpConn("127.0.0.1", port) as c:
            time.sleep(0.3)
            c.request("GET", "/")
            r = c.read_response()
            assert r.status == 200 and r.body == b"da\n", r

    t_off = _seconds_until_closed(off_port)
    t_on = _seconds_until_closed(on_port)
    # Off: client_idle from the handshake. On: the kernel holds the silent
    # connection back for about a second first.
    assert 0.9 <= t_off < 4.0, t_off
    assert t_on >= t_off + 0.5, (t_on, t_off)
    assert t_on < t_off + 6.0, (t_on, t_off)


def test_reset_client_is_seen_while_the_backend_works():
    """A client that resets while its answer is being prepared is noticed
    within the abort-watch delay, not when the answer finally comes."""
    b = Backend("rst")
    sb, port = start_proxy({"web": [b]})
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /delay?ms=4000 HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.05)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset_at = time.monotonic()
    s.close()

    def logged():
        return re.search(r'"GET /delay\?ms=4000 HTTP/1.1".*', sb.stderr_text())

    wait_for(logged, timeout=3, message="no access log line within 3 s of the reset")
    seen_after = time.monotonic() - reset_at
    line = logged().group(0)
    rt = float(re.search(r"rt=([0-9.]+)", line).group(1))
    assert "reason=client" in line, line
    assert rt < 2.0 and seen_after < 3.0, (rt, seen_after, line)

    # The proxy goes on serving.
    with HttpConn("127.0.0.1", port) as c:
        c.request("GET", "/")
        assert c.read_response().body == b"rst\n"
