"""proxy_helpers.py - config builders and small tools shared by the
test_proxy_*.py integration tests (not a test module itself).

    backends = [Backend("a"), Backend("b")]
    sb, port = start_proxy({"web": backends}, workers=1)
    text = proxy_config(port, {"web": {"balance": "hash", "hash_key": "uri",
                                       "servers": [(b, 2), b2.addr]}},
                        routes=[{"host": "*.example.com", "pool": "web"}])

A pool is a list of servers or a dict with "servers" and optional "balance"
and "hash_key". A server is a Backend, an address string, a (server, weight)
pair or a dict {"address", "weight", "backup"}. Everything the helpers start
goes through the harness, so its cleanup() stops it.
"""

import os
import socket
import subprocess
import threading
import time

from harness import Backend, Switchboard, free_port, is_sanitized, make_tmpdir

SLOW = is_sanitized()


def _q(s):
    """A YAML double-quoted scalar."""
    return '"%s"' % str(s).replace("\\", "\\\\").replace('"', '\\"')


def _server_yaml(s):
    if isinstance(s, Backend):
        return "      - %s\n" % _q(s.addr)
    if isinstance(s, str):
        return "      - %s\n" % _q(s)
    if isinstance(s, tuple):
        srv, weight = s
        addr = srv.addr if isinstance(srv, Backend) else srv
        return "      - address: %s\n        weight: %d\n" % (_q(addr), weight)
    if isinstance(s, dict):
        addr = s["address"]
        addr = addr.addr if isinstance(addr, Backend) else addr
        out = "      - address: %s\n" % _q(addr)
        if "weight" in s:
            out += "        weight: %d\n" % s["weight"]
        if s.get("backup"):
            out += "        backup: true\n"
        return out
    raise TypeError("bad server %r" % (s,))


def proxy_config(port, pools, routes=None, workers=1, timeouts=None, limits=None,
                 access_log="stderr", access_format=None, trusted=None, listen=None,
                 dashboard=False):
    """The YAML text of a Switchboard config listening on 127.0.0.1:port
    (or on every address of `listen`). The dashboard (enabled by default on
    the fixed 127.0.0.1:8081) is switched off unless `dashboard` is true, so
    several proxies can run at once and the core tests need no fixed port."""
    listen = listen or ["127.0.0.1:%d" % port]
    out = "listen:\n" + "".join("  - %s\n" % _q(a) for a in listen)
    out += "workers: %s\n" % workers
    out += "pools:\n"
    for name, pool in pools.items():
        if not isinstance(pool, dict):
            pool = {"servers": pool}
        out += "  %s:\n" % name
        if "balance" in pool:
            out += "    balance: %s\n" % pool["balance"]
        if "hash_key" in pool:
            out += "    hash_key: %s\n" % _q(pool["hash_key"])
        out += "    servers:\n"
        out += "".join(_server_yaml(s) for s in pool["servers"])
    if routes:
        out += "routes:\n"
        for r in routes:
            items = [(k, r[k]) for k in ("host", "path_prefix", "pool") if k in r]
            first = True
            for k, v in items:
                out += "  %s %s: %s\n" % ("-" if first else " ", k, _q(v))
                first = False
    if trusted is not None:
        out += "trusted_proxies: [%s]\n" % ", ".join(_q(t) for t in trusted)
    if timeouts:
        out += "timeouts:\n" + "".join("  %s: %s\n" % kv for kv in timeouts.items())
    if limits:
        out += "limits:\n" + "".join("  %s: %s\n" % kv for kv in limits.items())
    if access_format:
        out += "access_log:\n  path: %s\n  format: %s\n" % (_q(access_log), access_format)
    else:
        out += "access_log: %s\n" % _q(access_log)
    if not dashboard:
        out += "dashboard:\n  enabled: false\n"
    return out


def start_proxy(pools, port=None, **kw):
    """Switchboard on a free port with proxy_config(port, pools, **kw);
    returns (sb, port)."""
    port = port or free_port()
    sb = Switchboard(proxy_config(port, pools, **kw), wait_ports=[port])
    return sb, port


def one_backend_proxy(id="b1", **kw):
    """One sb-backend behind a proxy with one pool "web"; (sb, port, backend)."""
    b = Backend(id)
    sb, port = start_proxy({"web": [b]}, **kw)
    return sb, port, b


def small_asan_quarantine(mb=4):
    """For memory-bound checks under ASan: processes started after this call
    keep at most `mb` MiB of freed memory in ASan's quarantine (default 256
    MiB), so VmRSS measures the program's own buffers rather than the
    sanitizer's bookkeeping. No effect on an unsanitized build."""
    if SLOW:
        opts = os.environ.get("ASAN_OPTIONS", "")
        os.environ["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "quarantine_size_mb=%d" % mb


def curl(*args, timeout=20):
    """curl -sS with --max-time; returns CompletedProcess (stdout bytes)."""
    argv = ["curl", "-sS", "--max-time", str(timeout)] + [str(a) for a in args]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout + 10)


def access_lines(path, n=1, timeout=5):
    """The lines of an access log file once it has at least n lines."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            lines = []
        if len(lines) >= n:
            return lines
        time.sleep(0.02)
    raise AssertionError("access log %s has %d lines, wanted %d: %r"
                         % (path, len(lines), n, lines[-5:]))


def log_path(name="access.log"):
    return os.path.join(make_tmpdir("sb-log-"), name)


class RawOrigin:
    """A tiny HTTP origin in a thread of the test process, for answers
    sb-backend never gives (a body delimited by closing the connection).
    Each accepted connection reads one request head, sends `response`
    bytes, then closes. Runs until close() or the end of the test process;
    its socket is closed by cleanup() through the harness registry."""

    def __init__(self, response, host="127.0.0.1"):
        from harness import _register_socket
        self.response = response
        self.sock = _register_socket(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.addr = "%s:%d" % (host, self.port)
        self.requests = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + 120
        while not self._stop and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                conn.sendall(self.response)
                conn.shutdown(socket.SHUT_WR)
                # Drain what the peer still sends, briefly, then close.
                conn.settimeout(0.5)
                try:
                    while conn.recv(65536):
                        pass
                except OSError:
                    pass
            except OSError:
                pass
            finally:
                conn.close()

    def close(self):
        self._stop = True
        try:
            self.sock.close()
        except OSError:
            pass


def all_threads_stopped(proc):
    """True when every thread of `proc` is in the stopped state (T)."""
    task_dir = "/proc/%d/task" % proc.pid
    try:
        tids = os.listdir(task_dir)
        states = []
        for tid in tids:
            with open("%s/%s/stat" % (task_dir, tid)) as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
    except OSError:
        return False
    return bool(states) and all(st in ("T", "t") for st in states)


def pause_fully(proc, timeout=5):
    """SIGSTOP, then wait until every thread has stopped (the signal is
    delivered asynchronously)."""
    proc.pause()
    from harness import wait_for
    wait_for(lambda: all_threads_stopped(proc), timeout=timeout,
             message="%s not stopped %ss after SIGSTOP" % (proc.name, timeout))


class RssSampler:
    """Samples a process's VmRSS (KiB) in a thread every `interval` s."""

    def __init__(self, proc, interval=0.02):
        self.proc = proc
        self.interval = interval
        self.max_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                v = self.proc.rss_kib()
            except (OSError, RuntimeError, ValueError):
                return
            self.samples += 1
            if v > self.max_kib:
                self.max_kib = v
            self._stop.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(timeout=5)
