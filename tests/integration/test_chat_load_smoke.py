"""test_chat_load_smoke.py - the chat load benchmark's harness, in quick mode.

Runs tests/bench/chat_load.py --quick (200 chat connections through the
proxy in 20-user rooms, a message per user a second, 5 s) against the build
under test, and checks that the harness works: every connection was
upgraded and joined its room, none was lost, no error frame came back,
every expected delivery (each message to every member of its room, the
sender included) arrived, and the JSON has the delay percentiles, the RSS
figures and the CPU split between the proxy worker and the dashboard
thread. Speed is never judged here: on a shared machine the numbers are
noise.

A second test runs tests/bench/chatload against a scripted stand-in server
that sends what libwebsockets rarely does: fragmented messages with a ping
between the fragments, the 64-bit length form, messages beyond 64 KiB and
several frames in one write; every delivery must still be counted.

Under a sanitized build the load is smaller (100 connections in rooms of
10, so that the instrumented server keeps up on a shared machine) and the
switchboard log is checked for sanitizer reports.
"""

import base64
import hashlib
import json
import math
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time

import harness

TIMEOUT = 180
BENCH_LIMIT = 120


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_chat_load_quick_delivers_everything():
    tmp = harness.make_tmpdir("sb-chat-load-smoke-")
    out_json = os.path.join(tmp, "chat_load.json")
    work = os.path.join(tmp, "work")
    argv = [sys.executable, os.path.join(harness.ROOT, "tests", "bench", "chat_load.py"),
            "--quick", "--build", harness.build_dir(), "--json", out_json, "--workdir", work]
    if harness.is_sanitized():
        argv += ["--conns", "100", "--room-size", "10"]
    code, text = harness.run_script(argv, BENCH_LIMIT)
    assert code == 0, "chat_load.py --quick exited with %d:\n%s" % (code, text[-4000:])
    for needle in ("delivery delay", "switchboard RSS", "CPU, steady", "load average"):
        assert needle in text, "no %r in the output:\n%s" % (needle, text[-4000:])

    with open(out_json) as f:
        doc = json.load(f)
    assert doc["complete"] is True
    assert doc["settings"]["quick"] is True
    r = doc["runs"]["proxy"]
    assert "error" not in r, r.get("error")
    c = r["client"]
    n = doc["settings"]["conns"]
    assert c["conns_attempted"] == n
    assert c["conns_established"] == n and c["conns_joined"] == n, c
    assert c["conns_failed"] == 0 and c["conns_lost_during_run"] == 0, c
    assert c["errors"] == {}, c["errors"]
    assert c["server_closes"] == {}, c["server_closes"]
    assert c["messages_sent"] > 0
    # Every message to every member of its room, the sender's echo included.
    assert c["deliveries_expected"] == c["messages_sent"] * doc["settings"]["room_size"], c
    assert c["deliveries"] == c["deliveries_expected"], c
    assert c["echoes"] == c["messages_sent"], c
    assert c["messages_complete"] == c["messages_sent"], c
    assert c["foreign_messages"] == 0
    for key in ("p50", "p90", "p99", "max"):
        assert _is_number(c["delay_ms"][key]) and c["delay_ms"][key] >= 0, c["delay_ms"]
    assert c["delay_ms"]["count"] == c["deliveries"]
    assert c["delay_ms"]["p50"] <= c["delay_ms"]["p99"] <= c["delay_ms"]["max"]

    for key in ("rss_before_kib", "rss_ramped_kib", "rss_steady_median_kib", "hwm_kib",
                "rss_kib_per_conn"):
        assert _is_number(r.get(key)), "%s = %r" % (key, r.get(key))
    assert r["hwm_kib"] >= r["rss_before_kib"]
    # Three descriptors per user: client side and upstream side of the
    # tunnel in the proxy, and the dashboard server's end.
    assert r["fds_ramped"] >= r["fds_before"] + 3 * n, (r["fds_before"], r["fds_ramped"])
    for group in ("proxy_workers", "dashboard"):
        assert _is_number(r["cpu_steady"][group]["cpu_s"]), r["cpu_steady"]
    assert r["switchboard_alive_at_end"] is True
    assert r["switchboard_exit"] == 0, r["switchboard_log_tail"]

    if harness.is_sanitized():
        for name in os.listdir(work):
            if name.endswith(".log") and name.startswith(("switchboard", "sb-backend")):
                with open(os.path.join(work, name), "rb") as f:
                    report = harness._sanitizer_report(f.read().decode("utf-8", "replace"))
                assert report is None, "%s:\n%s" % (name, report)


# ---------------------------------------------------------------- chatload's framing

def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _recv_frame(sock):
    """(opcode, payload) of one masked client frame."""
    b0, b1 = _recv_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", _recv_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", _recv_exact(sock, 8))[0]
    assert b1 & 0x80, "a client frame must be masked"
    key = _recv_exact(sock, 4)
    data = bytearray(_recv_exact(sock, n))
    for i in range(n):
        data[i] ^= key[i & 3]
    return b0 & 0x0F, bytes(data)


def _frame(opcode, payload, fin=True, long_form=False):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if long_form or n >= 65536:
        head = struct.pack("!BBQ", b0, 127, n)
    elif n >= 126:
        head = struct.pack("!BBH", b0, 126, n)
    else:
        head = struct.pack("!BB", b0, n)
    return head + payload


class _ScriptedChat:
    """A stand-in chat server on loopback: welcome, joined, and every "say"
    broadcast to every connection as a "message" frame, each sent in an
    awkward way in turn: fragmented with a ping between the fragments, with
    a 64-bit length, padded beyond 64 KiB, or as several frames in one
    write."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.conns, self.lock, self.next_id, self.pongs = [], threading.Lock(), 0, 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _send(self, sock, data):
        with self.lock:
            sock.sendall(data)

    def _accept(self):
        while True:
            try:
                sock, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _message(self, text):
        with self.lock:
            self.next_id += 1
            n = self.next_id
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".%03dZ" % (
            int(time.time() * 1000) % 1000)
        msg = {"type": "message", "room": "load-0", "id": n, "from": "x", "text": text,
               "ts": ts}
        if n % 4 == 2:
            msg["pad"] = "p" * 70000
        payload = json.dumps(msg).encode()
        if n % 4 == 0:      # three fragments, a ping in the middle
            a, b = len(payload) // 3, 2 * len(payload) // 3
            return (_frame(1, payload[:a], fin=False) + _frame(9, b"hi") +
                    _frame(0, payload[a:b], fin=False) + _frame(0, payload[b:]))
        if n % 4 == 1:      # a small frame in the 64-bit length form
            return _frame(1, payload, long_form=True)
        if n % 4 == 2:      # > 64 KiB
            return _frame(1, payload)
        return _frame(1, json.dumps({"type": "presence", "users": []}).encode()) + \
            _frame(1, payload)

    def _serve(self, sock):
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                head += chunk
            key = re.search(rb"Sec-WebSocket-Key: (\S+)", head).group(1)
            accept = base64.b64encode(hashlib.sha1(
                key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                         b"\r\nSec-WebSocket-Protocol: switchboard.chat\r\n\r\n")
            welcome = json.dumps({"type": "welcome", "modes": ["rooms"]}).encode()
            self._send(sock, _frame(1, welcome[:10], fin=False) + _frame(0, welcome[10:]))
            with self.lock:
                self.conns.append(sock)
            while True:
                op, data = _recv_frame(sock)
                if op == 0xA:
                    with self.lock:
                        self.pongs += 1
                    continue
                if op == 8:
                    return
                req = json.loads(data)
                if req["type"] == "join":
                    self._send(sock, _frame(1, json.dumps(
                        {"type": "joined", "room": req["room"], "users": [],
                         "history": []}).encode()))
                elif req["type"] == "say":
                    frame = self._message(req["text"])
                    with self.lock:
                        targets = list(self.conns)
                    for s in targets:
                        try:
                            self._send(s, frame)
                        except OSError:
                            pass
        except (OSError, ConnectionError, ValueError, AttributeError):
            pass
        finally:
            sock.close()

    def close(self):
        self.lsock.close()
        with self.lock:
            for s in self.conns:
                try:
                    s.close()
                except OSError:
                    pass


def test_chatload_handles_fragments_pings_and_long_frames():
    sys.path.insert(0, os.path.join(harness.ROOT, "tests", "bench"))
    try:
        import chat_load
    finally:
        sys.path.pop(0)
    binary = chat_load.ensure_chatload(harness.build_dir())
    server = _ScriptedChat()
    try:
        r = subprocess.run([binary, "--port", str(server.port), "--conns", "3",
                            "--room-size", "3", "--interval", "0.25", "--duration", "2",
                            "--drain", "3", "--timeout", "10"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    finally:
        server.close()
    out = r.stdout.decode()
    assert r.returncode == 0, "chatload exited with %d:\n%s\n%s" % (
        r.returncode, out, r.stderr.decode(errors="replace"))
    c = json.loads(out.strip().splitlines()[-1])
    assert c["conns_joined"] == 3 and c["conns_lost_during_run"] == 0, c
    assert c["messages_sent"] >= 12, c
    assert c["deliveries"] == c["deliveries_expected"] == 3 * c["messages_sent"], c
    assert c["pings_received"] >= c["messages_sent"] // 4 * 3 - 3, c
    assert server.pongs >= c["pings_received"] - 3, (server.pongs, c["pings_received"])
    assert c["frames"].get("presence", 0) > 0 and c["foreign_messages"] == 0, c
    assert c["out_ms"]["count"] == c["deliveries"], c
