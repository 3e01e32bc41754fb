"""test_browser_chat.py - the chat demo in a real browser, through the proxy.

Starts sb-backends and a ./switchboard whose dashboard server also serves the
chat (a `chat:` section, a dashboard token), with a pool `chat` whose one
server is the dashboard's own listen address and a route `/chat` -> chat in
front of the default route: end users reach the chat through the proxy, as
in production, and their traffic shows on the live map. Then runs

    node --test tests/browser/chat.test.mjs

with the addresses in environment variables (see the top of that file). The
pages are opened on the proxy's listen address, never the dashboard's. This
test fails when node fails, and shows node's output; everything started here
is stopped by harness.cleanup(), pass or fail.

Needs: node and npm (make deps), chromium (apt-get install -y chromium),
tests/browser/node_modules (npm ci here when it is missing or stale).
Screenshots go to tests/out/screenshots/chat-*.png.
"""

import json
import os
import secrets

from browser import BROWSER_DIR, SHOTS, prepare, run_node_tests, yaml_quote as _q
from harness import (ROOT, Backend, Switchboard, fetch, free_port, run_switchboard_check)

TIMEOUT = 600

TEST_FILE = os.path.join(BROWSER_DIR, "chat.test.mjs")
CHAT_ROOMS = ["Lobby", "Library", "Dining", "Casino", "Gym", "Nightclub"]


def _chat_section():
    return ("chat:\n"
            "  enabled: true\n"
            "  modes: [rooms, support, random]\n"
            "  default: rooms\n"
            "  rooms: [%s]\n"
            "  addable_rooms: true\n"
            "  addable_rooms_visible: true\n"
            "  max_name_length: 30\n"
            "  history: 50\n"
            "  max_message_bytes: 2000\n"
            "  rate: 5\n"
            "  burst: 10\n"
            "  max_rooms_per_user: 3\n"
            "  max_connections: 10000\n"
            "  reconnect_grace: 30s\n"
            "  no_show_timeout: 30s\n"
            "  log: off\n") % ", ".join(CHAT_ROOMS)


def _config(port, dash_port, token, web):
    out = 'listen: ["127.0.0.1:%d"]\n' % port
    out += "workers: 2\n"
    out += "pools:\n"
    out += "  web:\n    servers:\n" + "".join("      - %s\n" % _q(b.addr) for b in web)
    # The chat is the dashboard server itself, behind the proxy.
    out += "  chat:\n    servers:\n      - %s\n" % _q("127.0.0.1:%d" % dash_port)
    out += "routes:\n  - path_prefix: /chat\n    pool: chat\n  - pool: web\n"
    out += "access_log: off\n"
    out += "dashboard:\n"
    out += "  listen: %s\n" % _q("127.0.0.1:%d" % dash_port)
    out += "  auth:\n    token: %s\n" % _q(token)
    out += _chat_section()
    return out


def test_chat_in_chromium():
    node, chromium = prepare()

    web = [Backend("web-1"), Backend("web-2")]
    port, dash_port = free_port(), free_port()
    token = secrets.token_hex(16)
    conf = _config(port, dash_port, token, web)
    code, out = run_switchboard_check(conf)
    assert code == 0, "this build does not take the chat config (is the chat server " \
                      "side built?):\n%s" % out
    Switchboard(conf, wait_ports=[port, dash_port])
    # The page is embedded at build time: a binary older than the files
    # under dashboard/web/chat/ would test yesterday's page.
    for name in ("index.html", "chat.js", "chat.css"):
        with open(os.path.join(ROOT, "dashboard", "web", "chat", name), "rb") as f:
            want = f.read()
        r = fetch(port, "GET", "/chat/" + name)
        assert r.status == 200, "GET /chat/%s through the proxy: %d" % (name, r.status)
        assert r.body == want, "the binary serves an older dashboard/web/chat/%s: " \
                               "rebuild (make) and run again" % name

    rc, out = run_node_tests(node, TEST_FILE, {
        "SB_PROXY_URL": "http://127.0.0.1:%d/" % port,
        "SB_DASHBOARD_URL": "http://127.0.0.1:%d/" % dash_port,
        "SB_DASHBOARD_TOKEN": token,
        "SB_CHAT_ROOMS": json.dumps(CHAT_ROOMS),
        "SB_SCREENSHOT_DIR": SHOTS,
        "SB_CHROMIUM": chromium,
    })
    print(out)
    if rc != 0:
        lines = out.rstrip().splitlines()
        raise AssertionError("node --test %s %s; output (last 150 lines):\n%s"
                             % (os.path.relpath(TEST_FILE, ROOT),
                                "timed out" if rc is None else "exited with %s" % rc,
                                "\n".join(lines[-150:])))
