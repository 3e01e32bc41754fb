"""browser.py - what the Chromium tests share: the node side's packages
(tests/browser/node_modules, npm ci when missing or stale), Debian's
chromium, and running one `node --test` file bounded in time.

The node test files drive /usr/bin/chromium through playwright-core; the
Python tests start the servers and pass their addresses in the environment.
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from harness import ROOT, is_sanitized

BROWSER_DIR = os.path.join(ROOT, "tests", "browser")
SHOTS = os.path.join(ROOT, "tests", "out", "screenshots")
NPM_TIMEOUT = 300


def yaml_quote(s):
    """`s` as a double-quoted YAML scalar."""
    return '"%s"' % str(s).replace("\\", "\\\\").replace('"', '\\"')


def _installed_ok():
    """True if tests/browser/node_modules holds what the lock file pins."""
    try:
        with open(os.path.join(BROWSER_DIR, "package-lock.json")) as f:
            want = json.load(f)["packages"]["node_modules/playwright-core"]["version"]
        with open(os.path.join(BROWSER_DIR, "node_modules", "playwright-core",
                               "package.json")) as f:
            return json.load(f)["version"] == want
    except (OSError, ValueError, KeyError):
        return False


def ensure_node_modules():
    """npm ci in tests/browser when node_modules is missing or stale
    (bounded in time; one install at a time on this machine)."""
    if _installed_ok():
        return
    npm = shutil.which("npm")
    assert npm, "npm is missing (make deps installs it)"
    lock_path = os.path.join(tempfile.gettempdir(), "switchboard-browser-npm.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_ok():
            return
        env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1",
                   npm_config_update_notifier="false")
        try:
            p = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                               cwd=BROWSER_DIR, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=NPM_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError("npm ci in tests/browser took over %d s" % NPM_TIMEOUT)
        out = p.stdout.decode("utf-8", "replace")
        assert p.returncode == 0, "npm ci in tests/browser failed:\n" + out[-3000:]
    assert _installed_ok(), "npm ci did not install playwright-core"


def chromium_path():
    path = os.environ.get("SB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    assert os.path.exists(path), \
        "chromium is missing: apt-get install -y chromium (Debian's; never a downloaded one)"
    return path


def prepare():
    """(node, chromium): both present, node_modules installed, the
    screenshot folder made."""
    node = shutil.which("node")
    assert node, "node is missing (make deps installs it)"
    chromium = chromium_path()
    ensure_node_modules()
    os.makedirs(SHOTS, exist_ok=True)
    return node, chromium


def run_node_tests(node, test_file, env_extra):
    """Runs `node --test test_file` with env_extra added to the environment
    (SB_SLOW and NODE_NO_WARNINGS are set here); returns (exit code or None
    on a timeout, output). node and the chromium it starts form a process
    group of their own: on a timeout the whole group goes, not just node."""
    env = dict(os.environ)
    env.update({"SB_SLOW": "1" if is_sanitized() else "0", "NODE_NO_WARNINGS": "1"})
    env.update(env_extra)
    limit = 480 if is_sanitized() else 300
    p = subprocess.Popen([node, "--test", "--test-reporter=spec",
                          "--test-timeout=%d" % (limit * 1000), test_file],
                         cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        raw, _ = p.communicate(timeout=limit + 30)
        rc = p.returncode
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        raw, _ = p.communicate()
        rc = None
        if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
            raise
    return rc, raw.decode("utf-8", "replace")
