#!/usr/bin/env python3
"""chat_load.py - the chat under load: thousands of users in 100-user rooms.

    python3 tests/bench/chat_load.py [--quick] [--conns 5000] [--room-size 100]
        [--interval 10] [--duration 60] [--ramp-rate 500] [--workers 1]
        [--modes proxy,direct] [--build build/release]
        [--json tests/out/chat_load.json] [--workdir DIR] [--keep]

Python 3 standard library only; needs the build's switchboard and sb-backend
and a C compiler for tests/bench/chatload.c (built into the build dir when
missing or older than its source, like wsload for bench.py).

For each mode, a fresh sb-backend (the default route) and a fresh
./switchboard are started with:

  workers 1 (--workers): the machine this was written for has 2 cores, and
      the chat's fan-out runs on the dashboard's one lws thread; one proxy
      worker (about a third of a core at 50,000 deliveries/s), the
      dashboard thread and the load client are already three busy threads,
      and a second worker would only compete with them for the same cores.
  listen and dashboard on free loopback ports, pools `web` (the backend)
      and `chat` (the dashboard's own address), routes /chat -> chat and
      default -> web, trusted_proxies 127.0.0.0/8, access log off,
      telemetry on, dashboard token auth;
  chat: enabled, fixed rooms load-0 ... load-(K-1) (K = conns / room size),
      no user rooms, max_connections conns + 100;
  limits.max_connections conns + 1000.

Then tests/bench/chatload opens --conns WebSocket connections
(switchboard.chat) at --ramp-rate a second, every user joins its room and,
once all are in, sends one message every --interval seconds (phases spread
evenly) for --duration seconds; every delivery of every message to every
member (the sender's echo included) is timed. Modes:

  proxy   the clients connect to the proxy's port (/chat/ws is tunnelled by
          a proxy worker into the dashboard server): what end users do.
  direct  the clients connect to the dashboard's port itself, bypassing the
          proxy. Same load; only for the memory split: the difference of
          the per-connection RSS growth between the two modes is an estimate
          of the proxy's share (its two sockets and buffers per tunnel), the
          direct figure is the dashboard server's (lws + chat) share.

Measured on the switchboard process (proxy and dashboard are one process):
VmRSS before any client, when every user is in its room, sampled every
0.5 s through the steady phase (median and max), and VmHWM (peak) at the
end; RSS growth per connection; its open descriptors; CPU time per thread
from /proc/PID/task/*/stat over the ramp and over the steady phase, grouped
as the proxy worker threads, the dashboard thread (sb-dashboard), the
telemetry aggregator (sb-telemetry), the health-check thread and the main
thread, with each group's run-queue wait (/proc/PID/task/*/schedstat: time
runnable but not running, i.e. held back by other work on the machine),
the same for the client, and per second of the steady phase the dashboard
and worker CPU and wait and the machine's busy share (/proc/stat), to line
up with the client's per-second delays. The load average and the busiest
other processes are recorded too: the machine is shared, and a dashboard
thread that waits for a CPU shows up directly as delivery delay.

Prints a summary per mode and writes the JSON (default
tests/out/chat_load.json). Exit status 0 when every mode ran and the client
saw every connection in its room, none lost, no error frame and every
expected delivery (the harness works); 1 otherwise. Speed is reported, not
judged.

--quick: 200 connections, 20-user rooms, interval 1 s, 5 s steady, ramp
400/s, proxy mode only (the smoke test's setting); options given beside it
override these.
"""

import argparse
import ctypes
import json
import os
import random
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
DEFAULT_JSON = os.path.join(ROOT, "tests", "out", "chat_load.json")
CLK_TCK = os.sysconf("SC_CLK_TCK")
TOKEN = "chat-load-token-0123456789abcdef"

_libc = ctypes.CDLL(None, use_errno=True)


class BenchError(Exception):
    pass


def _child_setup():
    # Die with this script even if it is killed outright (PR_SET_PDEATHSIG).
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


# ---------------------------------------------------------------- processes

class Proc:
    """A started process; stderr (and stdout unless piped) go to DIR/NAME.log."""

    def __init__(self, name, argv, workdir, pipe_stdout=False):
        self.name = name
        self.log_path = os.path.join(workdir, name + ".log")
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else self._log, stderr=self._log,
            preexec_fn=_child_setup)
        self.pid = self.popen.pid

    def wait_port(self, port, timeout=15):
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

    def log_tail(self, lines=15):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL; returns the exit status."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        if self.popen.stdout:
            self.popen.stdout.close()
        self._log.close()
        return self.popen.returncode


_used_ports = set()


def free_port():
    """A free loopback port below the ephemeral range, so that none of the
    run's own outgoing connections (two per user through the proxy) can
    hold it when a server binds it."""
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
    """Soft RLIMIT_NOFILE up to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def ensure_chatload(build):
    """<build>/chatload, compiled when missing or older than its source."""
    src = os.path.join(BENCH_DIR, "chatload.c")
    out = os.path.join(build, "chatload")
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    cc = os.environ.get("CC", "cc")
    tmp = out + ".tmp%d" % os.getpid()
    cmd = [cc, "-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-Werror", "-o", tmp, src]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise BenchError("building chatload failed:\n" + r.stdout.decode(errors="replace"))
    os.replace(tmp, out)
    return out

# ---------------------------------------------------------------- /proc


def status_kib(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def thread_cpu(pid):
    """{tid: (comm, cpu seconds, run-queue wait seconds)} for every living
    thread of pid. The wait (schedstat's second field: runnable but not
    running) shows how much the other work on the machine held it back."""
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                s = f.read()
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                comm = f.read().strip()
        except OSError:
            continue
        fields = s[s.rindex(")") + 2:].split()
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                wait = int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            wait = 0.0
        out[int(tid)] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK, wait)
    return out


def thread_groups(pid, snapshot, workers):
    """{tid: group}: the main thread (tid == pid), "dashboard" (sb-dashboard),
    "telemetry" (sb-telemetry), and the unnamed threads: proxy.c creates the
    `workers` worker threads before the health-check thread, so the first
    `workers` of them in tid order are the proxy workers and the rest
    "health" (tids grow with creation unless the pid space wraps)."""
    groups, unnamed = {}, []
    for tid, (comm, _, _) in sorted(snapshot.items()):
        if tid == pid:
            groups[tid] = "main"
        elif comm == "sb-dashboard":
            groups[tid] = "dashboard"
        elif comm == "sb-telemetry":
            groups[tid] = "telemetry"
        elif comm == "switchboard":
            unnamed.append(tid)
        else:
            groups[tid] = "other:" + comm
    for i, tid in enumerate(unnamed):
        groups[tid] = "proxy_workers" if i < workers else "health"
    return groups


def cpu_between(pid, a, b, wall, workers):
    """CPU seconds and % of one core per thread group, and the time its
    threads waited runnable for a CPU (% of the wall time), from two
    thread_cpu() snapshots `wall` seconds apart."""
    sums, waits, threads = {}, {}, []
    groups = thread_groups(pid, b, workers)
    pct = (lambda v: round(100 * v / wall, 1) if wall > 0 else None)
    for tid, (comm, c1, w1) in sorted(b.items()):
        _, c0, w0 = a.get(tid, (comm, 0.0, 0.0))
        d, w = max(0.0, c1 - c0), max(0.0, w1 - w0)
        g = groups[tid]
        sums[g] = sums.get(g, 0.0) + d
        waits[g] = waits.get(g, 0.0) + w
        threads.append({"tid": tid, "comm": comm, "group": g, "cpu_s": round(d, 2),
                        "cpu_pct": pct(d), "runq_wait_pct": pct(w)})
    return ({g: {"cpu_s": round(v, 2), "cpu_pct": pct(v), "runq_wait_pct": pct(waits[g])}
             for g, v in sorted(sums.items())}, threads)


def count_fds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def busy_processes(exclude=(), top=5, sample=1.0):
    """The processes that used the most CPU over `sample` seconds (other
    work on a shared machine): [[pid, comm, % of one core], ...]."""
    def snap():
        out = {}
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in exclude:
                continue
            try:
                with open("/proc/%s/stat" % name) as f:
                    s = f.read()
            except OSError:
                continue
            fields = s[s.rindex(")") + 2:].split()
            out[int(name)] = (s[s.index("(") + 1:s.rindex(")")],
                              (int(fields[11]) + int(fields[12])) / CLK_TCK)
        return out
    a = snap()
    time.sleep(sample)
    b = snap()
    rows = [[p, comm, round(100 * (c - a[p][1]) / sample)] for p, (comm, c) in b.items()
            if p in a and c > a[p][1]]
    return sorted(rows, key=lambda r: -r[2])[:top]


def machine_cpu():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]

# ---------------------------------------------------------------- one run


def write_config(path, pp, dp, bp, args):
    n_rooms = (args.conns + args.room_size - 1) // args.room_size
    rooms = ", ".join("load-%d" % i for i in range(n_rooms))
    conf = ('listen: ["127.0.0.1:%d"]\n'
            'workers: %d\n'
            'pools:\n'
            '  web:\n    servers: ["127.0.0.1:%d"]\n'
            '  chat:\n    servers: ["127.0.0.1:%d"]\n'
            'routes:\n'
            '  - {path_prefix: /chat, pool: chat}\n'
            '  - {pool: web}\n'
            'trusted_proxies: [127.0.0.0/8]\n'
            'access_log: off\n'
            'limits:\n  max_connections: %d\n'
            'telemetry:\n  enabled: true\n'
            'dashboard:\n  enabled: true\n  listen: 127.0.0.1:%d\n  auth: {token: %s}\n'
            'chat:\n  enabled: true\n  rooms: [%s]\n  addable_rooms: false\n'
            '  max_connections: %d\n'
            % (pp, args.workers, bp, dp, args.conns + 1000, dp, TOKEN, rooms,
               args.conns + 100))
    with open(path, "w") as f:
        f.write(conf)
    return conf


class LineReader:
    """JSON lines from a pipe, with a timeout, without blocking reads."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""
        self.eof = False

    def next(self, timeout):
        """The next line (bytes), or None on timeout/EOF."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.eof = True
                else:
                    self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line


def run_mode(mode, args, build, workdir):
    """One fresh backend + switchboard, one chatload run. Returns the result."""
    res = {"mode": mode, "loadavg_start": loadavg()}
    procs = []
    try:
        bp, pp, dp = free_port(), free_port(), free_port()
        be = Proc("sb-backend-%s" % mode, [os.path.join(build, "sb-backend"), "--listen",
                                           "127.0.0.1:%d" % bp, "--threads", "1"], workdir)
        procs.append(be)
        be.wait_port(bp)
        cpath = os.path.join(workdir, "switchboard-%s.yaml" % mode)
        write_config(cpath, pp, dp, bp, args)
        sb = Proc("switchboard-%s" % mode, [os.path.join(build, "switchboard"), "-c", cpath],
                  workdir)
        procs.append(sb)
        sb.wait_port(pp)
        sb.wait_port(dp)
        pid = sb.pid
        res["ports"] = {"proxy": pp, "dashboard": dp, "backend": bp}
        time.sleep(1.0)     # let start-up allocations settle
        res["rss_before_kib"] = status_kib(pid, "VmRSS")
        res["hwm_before_kib"] = status_kib(pid, "VmHWM")
        res["fds_before"] = count_fds(pid)
        snap = thread_cpu(pid)
        res["threads"] = {str(t): g for t, g in thread_groups(pid, snap, args.workers).items()}
        res["other_cpu_hogs_start"] = busy_processes(exclude=(pid,))

        port = pp if mode == "proxy" else dp
        argv = [ensure_chatload(build), "--port", str(port), "--path", "/chat/ws",
                "--conns", str(args.conns), "--room-size", str(args.room_size),
                "--interval", str(args.interval), "--duration", str(args.duration),
                "--ramp-rate", str(args.ramp_rate), "--max-pending", str(args.max_pending),
                "--timeout", str(args.timeout), "--drain", str(args.drain)]
        res["chatload_argv"] = " ".join(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a
                                        for a in argv)
        cpu_start, t_start = thread_cpu(pid), time.monotonic()
        cl = Proc("chatload-%s" % mode, argv, workdir, pipe_stdout=True)
        procs.append(cl)
        reader = LineReader(cl.popen.stdout.fileno())
        # Bounded: the client bounds itself; this is a backstop.
        limit = (args.conns / args.ramp_rate + args.timeout + args.duration + args.drain + 60)
        deadline = time.monotonic() + limit
        samples, events, result = [], {}, None
        timeline, prev = [], None
        cpu_ramped = cpu_end = cl_ramped = cl_end = None
        t_ramped = t_end = None
        phase = "ramp"
        while time.monotonic() < deadline:
            line = reader.next(0.5)
            rss = status_kib(pid, "VmRSS")
            if sb.popen.poll() is not None:
                raise BenchError("switchboard exited with %s during the run:\n%s"
                                 % (sb.popen.returncode, sb.log_tail(30)))
            if phase == "steady" and rss is not None:
                samples.append(rss)
            # Per ~second: the server's threads and the machine, to line up
            # with the client's per-second delays.
            now = time.monotonic()
            if prev is None or now - prev[0] >= 1.0:
                snap, mc = thread_cpu(pid), machine_cpu()
                if prev is not None and t_ramped is not None:
                    g, _ = cpu_between(pid, prev[1], snap, now - prev[0], args.workers)
                    timeline.append([
                        round(now - t_ramped, 1), rss,
                        g.get("dashboard", {}).get("cpu_pct"),
                        g.get("dashboard", {}).get("runq_wait_pct"),
                        g.get("proxy_workers", {}).get("cpu_pct"),
                        g.get("proxy_workers", {}).get("runq_wait_pct"),
                        round(100 * (mc[0] - prev[2][0]) / max(1, mc[1] - prev[2][1]), 1)])
                prev = (now, snap, mc)
            if line is None:
                if reader.eof:
                    break
                continue
            msg = json.loads(line)
            if msg.get("event") == "ramped":
                cpu_ramped, t_ramped = thread_cpu(pid), time.monotonic()
                cl_ramped = thread_cpu(cl.pid)
                res["rss_ramped_kib"] = rss
                res["fds_ramped"] = count_fds(pid)
                events["ramped"] = msg
                phase = "steady"
                print("  [%s] ramped in %.1f s: %d joined, %d failed; RSS %s MiB, %s fds"
                      % (mode, msg["t_s"], msg["joined"], msg["failed"],
                         round(rss / 1024, 1) if rss else "?", res["fds_ramped"]), flush=True)
            elif msg.get("event") == "steady_end":
                cpu_end, t_end = thread_cpu(pid), time.monotonic()
                cl_end = thread_cpu(cl.pid)
                res["rss_steady_end_kib"] = rss
                res["fds_steady_end"] = count_fds(pid)
                events["steady_end"] = msg
                phase = "drain"
            elif "conns_attempted" in msg:
                result = msg
        else:
            raise BenchError("chatload did not finish within %.0f s" % limit)
        code = cl.popen.wait(timeout=30)
        res["chatload_exit"] = code
        if result is None:
            raise BenchError("chatload printed no result (exit %s):\n%s"
                             % (code, cl.log_tail()))
        res["client"] = result
        res["server_timeline_fields"] = ["t_since_ramped_s", "rss_kib", "dashboard_cpu_pct",
                                         "dashboard_runq_wait_pct", "workers_cpu_pct",
                                         "workers_runq_wait_pct", "machine_busy_pct"]
        res["server_timeline"] = timeline
        res["events"] = events
        res["hwm_kib"] = status_kib(pid, "VmHWM")
        res["rss_after_kib"] = status_kib(pid, "VmRSS")
        res["rss_steady_samples"] = len(samples)
        if samples:
            res["rss_steady_median_kib"] = int(statistics.median(samples))
            res["rss_steady_max_kib"] = max(samples)
        joined = result["conns_joined"] or 1
        steady_rss = res.get("rss_steady_median_kib") or res.get("rss_ramped_kib")
        if steady_rss and res["rss_before_kib"]:
            res["rss_growth_kib"] = steady_rss - res["rss_before_kib"]
            res["rss_kib_per_conn"] = round(res["rss_growth_kib"] / joined, 2)
            res["hwm_kib_per_conn"] = round((res["hwm_kib"] - res["rss_before_kib"]) / joined, 2)
        if cpu_ramped:
            res["cpu_ramp"], _ = cpu_between(pid, cpu_start, cpu_ramped, t_ramped - t_start,
                                              args.workers)
            res["ramp_wall_s"] = round(t_ramped - t_start, 2)
        if cpu_ramped and cpu_end:
            wall = t_end - t_ramped
            res["cpu_steady"], res["cpu_steady_threads"] = cpu_between(
                pid, cpu_ramped, cpu_end, wall, args.workers)
            res["steady_wall_s"] = round(wall, 2)
            if cl_ramped and cl_end:
                res["client_steady"] = cpu_between(cl.pid, cl_ramped, cl_end, wall, 0)[0]
            res["other_cpu_hogs_end"] = busy_processes(exclude=(pid, cl.pid))
            d = result.get("deliveries_at_steady_end") or 0
            if d:
                res["cpu_us_per_delivery"] = {
                    g: round(1e6 * v["cpu_s"] / d, 2) for g, v in res["cpu_steady"].items()}
        res["loadavg_end"] = loadavg()
        res["switchboard_alive_at_end"] = sb.popen.poll() is None
    finally:
        for p in reversed(procs):
            try:
                rc = p.stop()
                if p.name.startswith("switchboard"):
                    res["switchboard_exit"] = rc
            except Exception as e:  # noqa: BLE001 - teardown goes on regardless
                print("warning: stopping %s: %r" % (p.name, e), file=sys.stderr)
        for p in procs:
            if p.name.startswith("switchboard"):
                res["switchboard_log_tail"] = p.log_tail(20)
    return res


def harness_ok(r):
    c = r.get("client") or {}
    return (c.get("conns_joined") == c.get("conns_attempted") and
            c.get("conns_lost_during_run") == 0 and not c.get("errors") and
            c.get("deliveries") == c.get("deliveries_expected") and
            c.get("messages_sent", 0) > 0 and not c.get("interrupted"))


def fmt_kib(k):
    return "%.1f MiB" % (k / 1024) if isinstance(k, (int, float)) else "?"


def report(r):
    c = r["client"]
    d, e, last = c["delay_ms"], c["echo_delay_ms"], c["last_recipient_ms"]
    print()
    print("== %s: clients -> %s" % (r["mode"], "proxy port (tunnel into the dashboard server)"
                                    if r["mode"] == "proxy" else
                                    "dashboard port directly (no proxy)"))
    print("connections        %d attempted, %d established, %d joined, %d failed, "
          "%d lost during the run; ramp %.1f s"
          % (c["conns_attempted"], c["conns_established"], c["conns_joined"],
             c["conns_failed"], c["conns_lost_during_run"], c["ramp_s"]))
    if c["failures"]:
        print("  failures         %s" % c["failures"])
    if c["server_closes"]:
        print("  server closes    %s" % c["server_closes"])
    print("messages           %d sent in %.1f s (%.1f/s), %d rooms of %d, interval %.1f s"
          % (c["messages_sent"], c["steady_s"], c["messages_per_s"], c["rooms"],
             c["room_size"], c["interval_s"]))
    print("deliveries         %d of %d expected (%s), %.0f/s; %d complete messages"
          % (c["deliveries"], c["deliveries_expected"],
             "all" if c["deliveries"] == c["deliveries_expected"] else
             "MISSING %d" % (c["deliveries_expected"] - c["deliveries"]),
             c["deliveries_per_s"], c["messages_complete"]))
    print("delivery delay     p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms (all %d)"
          % (d["p50"], d["p90"], d["p99"], d["max"], d["count"]))
    print("  sender's echo    p50 %.2f ms, p99 %.2f ms" % (e["p50"], e["p99"]))
    print("  last recipient   p50 %.2f ms, p99 %.2f ms, max %.2f ms (per message)"
          % (last["p50"], last["p99"], last["max"]))
    i, o = c["in_ms"], c["out_ms"]
    print("  legs (wall ms)   in: send -> server's ts p50 %.0f, p99 %.0f; out: ts -> "
          "receipt p50 %.0f, p99 %.0f" % (i["p50"], i["p99"], o["p50"], o["p99"]))
    tl = c.get("timeline") or []
    if tl:
        worst = sorted(tl, key=lambda row: -row[4])[:3]
        print("  per second       mean delay %.1f-%.1f ms; worst seconds (s: mean/max ms) %s"
              % (min(row[3] for row in tl), max(row[3] for row in tl),
                 ", ".join("%d: %.0f/%.0f" % (row[0], row[3], row[4]) for row in worst)))
    print("error frames       %s" % (c["errors"] or "none"))
    print("switchboard RSS    before %s, joined %s, steady median %s (max %s), peak VmHWM %s"
          % (fmt_kib(r.get("rss_before_kib")), fmt_kib(r.get("rss_ramped_kib")),
             fmt_kib(r.get("rss_steady_median_kib")), fmt_kib(r.get("rss_steady_max_kib")),
             fmt_kib(r.get("hwm_kib"))))
    print("  per connection   %s KiB (steady - before), %s KiB (peak - before); fds %s -> %s"
          % (r.get("rss_kib_per_conn"), r.get("hwm_kib_per_conn"), r.get("fds_before"),
             r.get("fds_ramped")))
    cs = r.get("cpu_steady") or {}
    print("CPU, steady        %s over %.1f s (%% of one core)"
          % (", ".join("%s %.1f%%" % (g, v["cpu_pct"]) for g, v in cs.items()
                       if v["cpu_s"] > 0 or g in ("proxy_workers", "dashboard")),
             r.get("steady_wall_s", 0)))
    print("  run-queue wait   %s (%% of the wall time runnable but not running: the "
          "machine's other work)" % ", ".join(
              "%s %.1f%%" % (g, v["runq_wait_pct"]) for g, v in
              list(cs.items()) + [("client", v) for v in (r.get("client_steady") or {}).values()]
              if v["cpu_s"] > 0 or g in ("proxy_workers", "dashboard")))
    if r.get("cpu_us_per_delivery"):
        print("  per delivery     %s µs" % ", ".join(
            "%s %.2f" % (g, v) for g, v in r["cpu_us_per_delivery"].items() if v))
    cr = r.get("cpu_ramp") or {}
    print("CPU, ramp          %s over %.1f s"
          % (", ".join("%s %.1f%%" % (g, v["cpu_pct"]) for g, v in cr.items()
                       if v["cpu_s"] > 0 or g in ("proxy_workers", "dashboard")),
             r.get("ramp_wall_s", 0)))
    print("client CPU         %.1f%% of one core in the steady phase"
          % (100 * c["client_cpu_steady_s"] / c["steady_s"] if c["steady_s"] else 0))
    print("load average       %s at start, %s at end (%d cores, shared)"
          % (" ".join("%.2f" % x for x in r["loadavg_start"]),
             " ".join("%.2f" % x for x in r.get("loadavg_end", [])), os.cpu_count()))
    hogs = r.get("other_cpu_hogs_end") or []
    if hogs:
        print("  other busy procs %s" % ", ".join("%s/%d %d%%" % (c_, p, u) for p, c_, u in hogs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--conns", type=int, help="default 5000 (--quick: 200)")
    ap.add_argument("--room-size", type=int, help="default 100 (--quick: 20)")
    ap.add_argument("--interval", type=float, help="seconds between a user's messages: "
                    "default 10 (--quick: 1)")
    ap.add_argument("--duration", type=float,
                    help="seconds of steady state after the ramp: default 60 (--quick: 5)")
    ap.add_argument("--ramp-rate", type=float, help="connections a second: default 500 "
                    "(--quick: 400)")
    ap.add_argument("--max-pending", type=int, default=200,
                    help="connections not yet in their room at once")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="a connection not in its room after this long fails")
    ap.add_argument("--drain", type=float, help="seconds to wait for the last deliveries: "
                    "default 10 (--quick: 5)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--modes", default=None, help="proxy,direct (default both; --quick: proxy)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--json", default=DEFAULT_JSON)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    args = ap.parse_args()
    defaults = ({"conns": 200, "room_size": 20, "interval": 1.0, "duration": 5.0,
                 "ramp_rate": 400.0, "drain": 5.0} if args.quick else
                {"conns": 5000, "room_size": 100, "interval": 10.0, "duration": 60.0,
                 "ramp_rate": 500.0, "drain": 10.0})
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.conns < 1 or args.room_size < 1 or args.interval <= 0 or args.duration <= 0:
        ap.error("--conns, --room-size, --interval and --duration must be positive")
    modes = (args.modes or ("proxy" if args.quick else "proxy,direct")).split(",")
    for m in modes:
        if m not in ("proxy", "direct"):
            ap.error("unknown mode %r" % m)
    build = args.build if os.path.isabs(args.build) else os.path.join(ROOT, args.build)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    nofile = raise_nofile()
    workdir = args.workdir or tempfile.mkdtemp(prefix="sb-chat-load-")
    os.makedirs(workdir, exist_ok=True)
    doc = {"settings": {"quick": args.quick, "conns": args.conns, "room_size": args.room_size,
                        "interval_s": args.interval, "duration_s": args.duration,
                        "ramp_rate": args.ramp_rate, "workers": args.workers, "modes": modes,
                        "build": os.path.relpath(build, ROOT)},
           "machine": {"nproc": os.cpu_count(), "kernel": os.uname().release,
                       "rlimit_nofile": list(nofile)},
           "runs": {}}
    ok = True
    try:
        ensure_chatload(build)
        print("chat load: %d connections, rooms of %d, a message every %.1f s per user, "
              "%.0f s steady, %d proxy worker(s); RLIMIT_NOFILE %d/%d"
              % (args.conns, args.room_size, args.interval, args.duration, args.workers,
                 nofile[0], nofile[1]), flush=True)
        for mode in modes:
            print("run: %s" % mode, flush=True)
            try:
                r = run_mode(mode, args, build, workdir)
            except BenchError as e:
                print("FAILED: %s" % e, flush=True)
                doc["runs"][mode] = {"mode": mode, "error": str(e)}
                ok = False
                continue
            r["harness_ok"] = harness_ok(r)
            ok = ok and r["harness_ok"]
            doc["runs"][mode] = r
            report(r)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        ok = False
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    p, d = doc["runs"].get("proxy", {}), doc["runs"].get("direct", {})
    if p.get("rss_kib_per_conn") is not None and d.get("rss_kib_per_conn") is not None:
        doc["split_estimate"] = {
            "note": "proxy share = per-connection RSS growth through the proxy minus the "
                    "same load connected directly to the dashboard port; an estimate "
                    "(two runs, allocator noise)",
            "total_kib_per_conn": p["rss_kib_per_conn"],
            "dashboard_server_kib_per_conn": d["rss_kib_per_conn"],
            "proxy_kib_per_conn": round(p["rss_kib_per_conn"] - d["rss_kib_per_conn"], 2),
        }
        s = doc["split_estimate"]
        print()
        print("memory split (estimate): %.1f KiB per chat connection in all: dashboard "
              "server (lws + chat) %.1f KiB, proxy tunnel %.1f KiB"
              % (s["total_kib_per_conn"], s["dashboard_server_kib_per_conn"],
                 s["proxy_kib_per_conn"]))
    doc["complete"] = ok
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
    print("wrote %s" % (os.path.relpath(args.json, ROOT)
                        if os.path.abspath(args.json).startswith(ROOT) else args.json))
    if args.keep or args.workdir:
        print("logs and configs in %s" % workdir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
