#!/usr/bin/env python3
"""Switchboard demo (`make run`).

Starts the demo backends that conf/switchboard.yaml names (sb-backend on
127.0.0.1:9001-9005), then ./switchboard with a copy of that config that
adds a random dashboard token (proxy on :8080, live dashboard on :8081, the
chat demo at :8080/chat/ through the proxy, its staff page needing the
token), then tests/demo_traffic.py, which sends requests
from addresses all over the world so the map is alive within seconds. Prints
where to point a browser or curl, and stops everything on Ctrl-C (or
SIGTERM).
"""
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("SB_BUILD", os.path.join(ROOT, "build", "release"))
CONFIG = os.path.join(ROOT, "conf", "switchboard.yaml")

# (id, port) of each backend in conf/switchboard.yaml
BACKENDS = [("web-1", 9001), ("web-2", 9002), ("web-3", 9003),
            ("api-1", 9004), ("api-backup", 9005)]
PROXY_PORT = 8080
DASHBOARD_PORT = 8081


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port, proc, what, limit=10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        if port_open(port):
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} did not open port {port} within {limit:.0f} s")


def main():
    procs = []

    def stop(*_):
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=35)
            except subprocess.TimeoutExpired:
                p.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    busy = [port for _, port in BACKENDS if port_open(port)] + \
        ([PROXY_PORT] if port_open(PROXY_PORT) else [])
    if busy:
        raise SystemExit(f"ports already in use: {busy}; stop what holds them first")
    try:
        for ident, port in BACKENDS:
            p = subprocess.Popen([os.path.join(BUILD, "sb-backend"), "--listen",
                                  f"127.0.0.1:{port}", "--id", ident],
                                 stdout=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port, p, f"backend {ident}")
        token = secrets.token_urlsafe(24)
        with open(CONFIG) as f:
            text = f.read()
        anchor = "dashboard:\n  enabled: true\n"
        if anchor not in text:
            raise SystemExit(f"{CONFIG} has no '{anchor.strip()}' block to add a token to")
        workdir = os.path.join(ROOT, "build", "demo")
        os.makedirs(workdir, exist_ok=True)
        config = os.path.join(workdir, "switchboard.yaml")
        with open(config, "w") as f:
            f.write(text.replace(anchor, anchor + f"  auth:\n    token: {token}\n", 1))
        os.chmod(config, 0o600)
        proxy = subprocess.Popen([os.path.join(ROOT, "switchboard"), "-c", config])
        procs.append(proxy)
        wait_port(PROXY_PORT, proxy, "switchboard")
        dashboard = port_open(DASHBOARD_PORT)
        traffic = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests",
                                                                 "demo_traffic.py"),
                                    "--port", str(PROXY_PORT)])
        procs.append(traffic)
        print(f"""
Switchboard is running with {CONFIG} (+ a token: {config})
  proxy:     http://127.0.0.1:{PROXY_PORT}/        (also http://[::1]:{PROXY_PORT}/)
  try:       curl -s http://127.0.0.1:{PROXY_PORT}/          -> pool web (3 servers, weights 1,1,2)
             curl -s http://127.0.0.1:{PROXY_PORT}/api/      -> pool api (least_conn, with a backup)
             curl -s http://127.0.0.1:{PROXY_PORT}/echo      -> what the backend received
  reload:    kill -HUP {proxy.pid}
  dashboard: {"http://127.0.0.1:%d/?token=%s  (live map)" % (DASHBOARD_PORT, token)
              if dashboard else "(disabled in the config)"}
  token:     {token}
  metrics:   curl -H 'Authorization: Bearer {token}' http://127.0.0.1:{DASHBOARD_PORT}/metrics
  chat:      http://127.0.0.1:{PROXY_PORT}/chat/   (through the proxy; open it in two tabs)
  staff:     http://127.0.0.1:{PROXY_PORT}/chat/staff/?token={token}  (support queue)
  traffic:   tests/demo_traffic.py is sending requests from around the world
Press Ctrl-C to stop.
""", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("a process exited; stopping the demo", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        stop()


if __name__ == "__main__":
    main()
