"""harness.py - what Switchboard's integration tests use to start processes
and talk to them. Python 3 standard library only.

tests/run.py runs each test function in a child process of its own, with
SB_BUILD naming the build directory, and calls cleanup() after it, pass or
fail. Everything a test starts through this module (sb-backend,
switchboard, temp dirs, sockets) is registered here and torn down by
cleanup(): processes are stopped (SIGTERM, then SIGKILL), and for a
sanitized build every switchboard's and sb-backend's stderr is checked for
AddressSanitizer / LeakSanitizer / UBSan reports, which fail the test even
if the test forgot to stop the process.

Servers bind only 127.0.0.1 or ::1, on ports from free_port(). Every wait
and read loop here is bounded in time.

Quick reference (all servers on 127.0.0.1 unless a host is given):

    b = Backend("b1", threads=1)        # sb-backend on a free port, "ready" awaited
    b.port, b.addr, b.stats()           # addr "127.0.0.1:PORT"; stats() is /stats
    b.stop() / b.kill() / b.pause() / b.resume()
    sb = Switchboard(yaml_text, wait_ports=[port])   # -c FILE in a temp dir
    sb.reload(new_yaml=None); sb.signal(sig); sb.stop(timeout=10) -> exit code
    sb.stderr_text(); sb.pid; sb.rss_kib()
    code, output = run_switchboard_check(yaml_text)  # switchboard -t -c FILE

    r = fetch(port, "GET", "/")         # one request on a fresh connection
    c = HttpConn("127.0.0.1", port)     # keep-alive, pipelining, raw bytes
    c.request("GET", "/", headers=[("X-A", "1")], body=None)
    r = c.read_response()               # r.status r.reason r.version r.headers
                                        # r.header(n) r.headers_all(n) r.body r.raw_head
    c.upload_pattern("POST", "/sha256", n, chunked=True)   # streamed, not held
    c.read_response(sink=lambda d: None, sha256=True).sha256
    c.is_closed(timeout); c.read_until_close(); c.send(raw_bytes)
    line, headers, body = parse_echo(r.body)    # sb-backend /echo dumps
    ws = WebSocket.connect("127.0.0.1", port, "/ws")
    ws.send_text("x"); ws.send_binary(b); ws.recv() -> (opcode, payload)
    wait_for(lambda: cond(), timeout=5)

Switchboard(wait_ports=...) probes each port with a TCP connect, which the
proxy sees as one short client connection. The byte pattern shared with
sb-backend's /bytes: byte i is (i*31+7) & 0xff (pattern(), pattern_sha256()).
"""

import base64
import hashlib
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer")

# ---------------------------------------------------------------- registry

_processes = []     # every _Process started since the last cleanup()
_tmpdirs = []
_sockets = []
_used_ports = set()


def cleanup():
    """Stop everything the current test started; remove its temp dirs.

    Raises AssertionError if a sanitized process reported an error, after
    everything has been torn down."""
    problems = []
    # Switchboard first: it is the one under test, and stopping it before
    # its backends keeps its shutdown path the ordinary one.
    ordered = sorted(_processes, key=lambda p: 0 if isinstance(p, Switchboard) else 1)
    for proc in ordered:
        try:
            proc.stop(timeout=10)
        except AssertionError as e:
            problems.append(str(e))
        except Exception as e:  # noqa: BLE001 - teardown goes on regardless
            problems.append("%s: stop failed: %r" % (proc.name, e))
    _processes.clear()
    for s in _sockets:
        try:
            s.close()
        except OSError:
            pass
    _sockets.clear()
    for d in _tmpdirs:
        shutil.rmtree(d, ignore_errors=True)
    _tmpdirs.clear()
    _used_ports.clear()
    if problems:
        raise AssertionError("\n\n".join(problems))


def failure_context(lines=20):
    """The stderr tails of every process still registered (for reports)."""
    parts = []
    for proc in _processes:
        tail = proc.stderr_tail(lines)
        if tail:
            parts.append("--- %s stderr (last %d lines) ---\n%s" % (proc.name, lines, tail))
    return "\n".join(parts)


def make_tmpdir(prefix="sb-test-"):
    """A temp dir removed by cleanup()."""
    d = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("SB_TMPDIR") or None)
    _tmpdirs.append(d)
    return d


def _register_socket(sock):
    _sockets.append(sock)
    return sock

# ---------------------------------------------------------------- build dir


def build_dir():
    """The build directory under test (SB_BUILD, default build/release)."""
    d = os.environ.get("SB_BUILD", "build/release")
    return d if os.path.isabs(d) else os.path.join(ROOT, d)


def bin_path(name):
    """Path of a binary ("switchboard", "sb-backend") in the build dir."""
    return os.path.join(build_dir(), name)


_sanitized_cache = {}


def is_sanitized(directory=None):
    """True if the build dir holds a sanitizer build (ASan/UBSan or TSan).

    SB_SANITIZED=1/0 decides if set (tests/run.py sets it); otherwise the
    binaries are searched for the ASan runtime."""
    directory = directory or build_dir()
    env = os.environ.get("SB_SANITIZED")
    if env in ("0", "1") and directory == build_dir():
        return env == "1"
    if directory not in _sanitized_cache:
        _sanitized_cache[directory] = _detect_sanitized(directory)
    return _sanitized_cache[directory]


def _detect_sanitized(directory):
    candidates = [os.path.join(directory, "switchboard"), os.path.join(directory, "sb-backend")]
    unit = os.path.join(directory, "tests", "unit")
    for dirpath, _, files in os.walk(unit):
        candidates.extend(os.path.join(dirpath, f) for f in files if f.startswith("test_"))
    seen_any = False
    for path in candidates:
        try:
            with open(path, "rb") as f:
                data = f.read(256 << 20)
        except OSError:
            continue
        seen_any = True
        if b"__asan_init" in data or b"__ubsan_handle" in data or b"__tsan_init" in data:
            return True
    return not seen_any and "asan" in os.path.basename(os.path.normpath(directory))

# ---------------------------------------------------------------- ports


def _ephemeral_floor():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_port(family, host):
    # Below the ephemeral range, outgoing connections never take the port
    # between our probe and the server's bind.
    hi = min(_ephemeral_floor(), 65536)
    lo = min(20000, hi - 1000)
    for _ in range(200):
        port = random.randrange(lo, hi)
        if port in _used_ports:
            continue
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        except OSError:
            continue
        finally:
            s.close()
        _used_ports.add(port)
        return port
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        port = s.getsockname()[1]
    finally:
        s.close()
    _used_ports.add(port)
    return port


def free_port():
    """A TCP port free on 127.0.0.1 (not handed out twice in one test)."""
    return _free_port(socket.AF_INET, "127.0.0.1")


def free_port6():
    """A TCP port free on ::1."""
    return _free_port(socket.AF_INET6, "::1")


def format_addr(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def port_open(port, host="127.0.0.1", timeout=0.5):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_for(predicate, timeout=10, interval=0.05, message=None):
    """Polls predicate() until it returns a true value, which is returned.
    Raises AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_error = e
        if time.monotonic() >= deadline:
            msg = message or "condition not met within %.1fs" % timeout
            if last_error is not None:
                msg += " (last error: %r)" % (last_error,)
            raise AssertionError(msg)
        time.sleep(interval)

# ---------------------------------------------------------------- processes


def _read_file_tail(path, lines):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _sanitizer_report(text, max_lines=80):
    """The first sanitizer report in text, or None."""
    positions = [text.find(m) for m in SANITIZER_MARKERS if m in text]
    if not positions:
        return None
    start = text.rfind("\n", 0, min(positions)) + 1
    return "\n".join(text[start:].splitlines()[:max_lines])


class _Process:
    """A registered child process whose stderr goes to a file."""

    name = "process"

    def _spawn(self, argv, tmpdir, stdout=subprocess.DEVNULL):
        self.argv = argv
        self.tmpdir = tmpdir
        self.stderr_path = os.path.join(tmpdir, "stderr.log")
        self._stderr_file = open(self.stderr_path, "wb")
        self.exit_code = None
        self._stopped = False
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                                     stderr=self._stderr_file, cwd=ROOT)
        self.pid = self.proc.pid
        _processes.append(self)

    def running(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.running():
            self.proc.send_signal(sig)

    def kill(self):
        """SIGKILL: a server that died without a word."""
        if self.running():
            self.proc.kill()
            self.proc.wait(timeout=10)
        return self.proc.returncode

    def pause(self):
        """SIGSTOP: a server that hangs with its sockets open."""
        self.signal(signal.SIGSTOP)

    def resume(self):
        self.signal(signal.SIGCONT)

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_tail(self, lines=20):
        return _read_file_tail(self.stderr_path, lines)

    def rss_kib(self):
        """Resident memory (VmRSS) in KiB."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS for pid %d" % self.pid)

    def stop(self, timeout=10):
        """SIGTERM, wait, SIGKILL if needed; returns the exit code (negative:
        killed by that signal). For a sanitized build, raises AssertionError
        with the report if stderr holds one. Idempotent."""
        if self._stopped:
            return self.exit_code
        self._stopped = True
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)     # in case it is paused
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.exit_code = self.proc.returncode
        self._stderr_file.close()
        self._close_pipes()
        if self in _processes:
            _processes.remove(self)
        if is_sanitized():
            report = _sanitizer_report(self.stderr_text())
            if report:
                raise AssertionError("%s (pid %d) sanitizer report:\n%s"
                                     % (self.name, self.pid, report))
        return self.exit_code

    def _close_pipes(self):
        pass

    def _abandon(self):
        """Kill and forget a process that failed to start."""
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.exit_code = self.proc.returncode
        self._stderr_file.close()
        self._close_pipes()
        if self in _processes:
            _processes.remove(self)


class Backend(_Process):
    """sb-backend on 127.0.0.1 (or `host`), on `port` or a free one.

    Attributes: id, port, host, addr ("127.0.0.1:PORT"), pid."""

    def __init__(self, id="backend", port=None, threads=1, host="127.0.0.1",
                 extra_args=(), ready_timeout=None):
        self.id = id
        self.host = host
        self.name = "sb-backend %s" % id
        ready_timeout = ready_timeout or (20 if is_sanitized() else 10)
        binary = bin_path("sb-backend")
        if not os.path.exists(binary):
            raise RuntimeError("%s does not exist (build it first)" % binary)
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            self.port = port if port is not None else (
                free_port6() if ":" in host else free_port())
            self.addr = format_addr(host, self.port)
            tmpdir = make_tmpdir("sb-backend-")
            argv = [binary, "--listen", self.addr, "--id", id, "--threads", str(threads)]
            argv.extend(extra_args)
            self._spawn(argv, tmpdir, stdout=subprocess.PIPE)
            if self._wait_ready(ready_timeout):
                return
            self._abandon()
            err = self.stderr_text()
            if "Address already in use" not in err or attempt == attempts - 1:
                raise RuntimeError("sb-backend %s did not become ready (exit %s):\n%s"
                                   % (id, self.proc.returncode, err))

    def _wait_ready(self, timeout):
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        data = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return False
                data += chunk
                if b"ready\n" in data:
                    return True
            elif self.proc.poll() is not None:
                return False
        return False

    def _close_pipes(self):
        if self.proc.stdout:
            self.proc.stdout.close()

    def stats(self):
        """The backend's /stats as a dict (on a connection of its own, which
        counts as one connection and one request)."""
        import json
        return json.loads(fetch(self.port, "GET", "/stats", host=self.host).body)


class Switchboard(_Process):
    """./switchboard -c FILE with FILE holding `config_yaml_text`.

    Waits until every port in wait_ports (int for 127.0.0.1, or (host, port))
    accepts a connection, or raises RuntimeError with stderr if the process
    exits first or the wait times out."""

    name = "switchboard"

    def __init__(self, config_yaml_text, wait_ports=(), extra_args=(), timeout=None):
        binary = bin_path("switchboard")
        if not os.path.exists(binary):
            raise RuntimeError("%s does not exist (build it first)" % binary)
        tmpdir = make_tmpdir("sb-switchboard-")
        self.config_path = os.path.join(tmpdir, "switchboard.yaml")
        with open(self.config_path, "w") as f:
            f.write(config_yaml_text)
        self.stdout_path = os.path.join(tmpdir, "stdout.log")
        self._stdout_file = open(self.stdout_path, "wb")
        self._spawn([binary, "-c", self.config_path] + list(extra_args), tmpdir,
                    stdout=self._stdout_file)
        timeout = timeout or (20 if is_sanitized() else 10)
        deadline = time.monotonic() + timeout
        pending = [p if isinstance(p, tuple) else ("127.0.0.1", p) for p in wait_ports]
        while pending:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise RuntimeError("switchboard exited with %s before listening:\n%s"
                                   % (code, self.stderr_text()))
            if port_open(pending[0][1], pending[0][0], timeout=0.2):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError("switchboard not listening on %s after %ss:\n%s"
                                   % (format_addr(*pending[0]), timeout, self.stderr_text()))
            time.sleep(0.02)

    def reload(self, new_yaml=None):
        """Rewrite the config (if given) and send SIGHUP."""
        if new_yaml is not None:
            tmp = self.config_path + ".new"
            with open(tmp, "w") as f:
                f.write(new_yaml)
            os.replace(tmp, self.config_path)
        self.signal(signal.SIGHUP)

    def stdout_text(self):
        with open(self.stdout_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _close_pipes(self):
        self._stdout_file.close()


def run_script(argv, limit):
    """Runs a script that starts processes of its own (a benchmark); on the
    time limit it gets SIGTERM (it stops what it started), then SIGKILL, and
    the test fails with its output. Returns (exit code, output)."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        raise AssertionError("%s did not finish in %ss:\n%s"
                             % (" ".join(os.path.basename(a) for a in argv[1:3]), limit,
                                out.decode("utf-8", "replace")[-4000:]))
    return proc.returncode, out.decode("utf-8", "replace")


def run_switchboard_check(config_text, timeout=30):
    """`switchboard -t -c FILE`: returns (exit_code, stdout + stderr)."""
    tmpdir = make_tmpdir("sb-check-")
    path = os.path.join(tmpdir, "switchboard.yaml")
    with open(path, "w") as f:
        f.write(config_text)
    proc = subprocess.run([bin_path("switchboard"), "-t", "-c", path], cwd=ROOT,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)
    out = proc.stdout.decode("utf-8", "replace")
    if is_sanitized():
        report = _sanitizer_report(out)
        if report:
            raise AssertionError("switchboard -t sanitizer report:\n" + report)
    return proc.returncode, out

# ---------------------------------------------------------------- pattern

_PATTERN_BLOCK = bytes(((i * 31 + 7) & 0xFF) for i in range(256)) * 257   # 65792 bytes
_PATTERN_STEP = 65536
_sha_cache = {}


def pattern(offset, length):
    """Bytes [offset, offset+length) of the shared pattern (length <= 64 KiB
    per call; use pattern_chunks() for more)."""
    assert length <= _PATTERN_STEP
    start = offset & 255
    return _PATTERN_BLOCK[start:start + length]


def pattern_chunks(n, chunk=_PATTERN_STEP):
    """Yields the first n pattern bytes in pieces of at most `chunk`."""
    chunk = min(chunk, _PATTERN_STEP)
    off = 0
    while off < n:
        take = min(chunk, n - off)
        yield pattern(off, take)
        off += take


def pattern_sha256(n):
    """Hex sha256 of the first n pattern bytes."""
    if n not in _sha_cache:
        h = hashlib.sha256()
        for piece in pattern_chunks(n):
            h.update(piece)
        _sha_cache[n] = h.hexdigest()
    return _sha_cache[n]

# ---------------------------------------------------------------- HTTP client


class ConnectionClosed(Exception):
    """The peer closed before a complete response arrived."""


class Response:
    """status (int), reason, version ("HTTP/1.1"), headers [(name, value)],
    body (bytes), body_len, trailers [(name, value)], raw_head (bytes)."""

    def __init__(self):
        self.status = None
        self.reason = ""
        self.version = ""
        self.headers = []
        self.trailers = []
        self.body = b""
        self.body_len = 0
        self.raw_head = b""
        self.sha256 = None      # hex digest, when read with sha256=True

    def header(self, name, default=None):
        """The first value of header `name` (case-insensitive)."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return default

    def headers_all(self, name):
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return "<Response %s %s, %d body bytes>" % (self.status, self.reason, self.body_len)


class HttpConn:
    """A raw HTTP/1.1 client connection: send anything, read responses in
    order (so pipelining is just several request() calls, then several
    read_response() calls)."""

    def __init__(self, host="127.0.0.1", port=None, timeout=10):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock = _register_socket(socket.create_connection((host, port), timeout=timeout))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    # -- sending

    def send(self, data):
        self.sock.sendall(data)

    def request(self, method, target, headers=None, body=None, version="HTTP/1.1",
                host_header=True):
        """Sends one request. headers: list of (name, value) or a dict. A
        Host header is added unless present (or host_header=False); a
        Content-Length is added for a bytes body unless a Content-Length or
        Transfer-Encoding header is given."""
        hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        names = {k.lower() for k, _ in hdrs}
        if host_header and "host" not in names:
            hdrs.insert(0, ("Host", format_addr(self.host, self.port)))
        if body is not None and "content-length" not in names and "transfer-encoding" not in names:
            hdrs.append(("Content-Length", str(len(body))))
        head = "%s %s %s\r\n" % (method, target, version)
        head += "".join("%s: %s\r\n" % (k, v) for k, v in hdrs) + "\r\n"
        self.send(head.encode("latin-1") + (body or b""))

    def send_pattern_body(self, n, chunked=False, chunk_size=65536):
        """Streams the first n pattern bytes as a body: raw (after a
        Content-Length head) or chunked with chunks of chunk_size, ending
        with the last chunk."""
        for piece in pattern_chunks(n, chunk_size):
            if chunked:
                self.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
            else:
                self.send(piece)
        if chunked:
            self.send(b"0\r\n\r\n")

    def upload_pattern(self, method, target, n, chunked=False, headers=None, chunk_size=65536):
        """request() + send_pattern_body(): uploads n pattern bytes without
        holding them in memory."""
        hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        hdrs.append(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(n)))
        self.request(method, target, hdrs)
        self.send_pattern_body(n, chunked, chunk_size)

    # -- receiving

    def _fill(self, deadline):
        if time.monotonic() > deadline:
            raise socket.timeout("response not complete in time")
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise ConnectionClosed("connection closed by peer")
        self.buf += data

    def _read_line(self, deadline, limit=1 << 20):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > limit:
                raise ValueError("line too long")
            self._fill(deadline)

    def _read_exact(self, n, deadline, sink):
        while n > 0:
            if not self.buf:
                self._fill(deadline)
            take = min(n, len(self.buf))
            sink(bytes(self.buf[:take]))
            del self.buf[:take]
            n -= take

    def read_exact(self, n, timeout=None):
        """Exactly n bytes (e.g. part of a body after read_head())."""
        parts = []
        self._read_exact(n, time.monotonic() + (timeout or max(self.timeout, 120)), parts.append)
        return b"".join(parts)

    def read_head(self, deadline=None):
        """Reads a status line and headers; returns a Response without body."""
        deadline = deadline or time.monotonic() + self.timeout
        while True:
            i = self.buf.find(b"\r\n\r\n")
            j = self.buf.find(b"\n\n")
            ends = [e for e in ((i, 4), (j, 2)) if e[0] >= 0]
            if ends:
                pos, sep = min(ends)
                raw = bytes(self.buf[:pos + sep])
                del self.buf[:pos + sep]
                break
            if len(self.buf) > 1 << 20:
                raise ValueError("response head too long")
            self._fill(deadline)
        r = Response()
        r.raw_head = raw
        lines = raw.decode("latin-1").split("\n")
        status_line = lines[0].rstrip("\r")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ValueError("bad status line %r" % status_line)
        r.version, r.status = parts[0], int(parts[1])
        r.reason = parts[2] if len(parts) > 2 else ""
        for line in lines[1:]:
            line = line.rstrip("\r")
            if not line:
                continue
            name, _, value = line.partition(":")
            r.headers.append((name.strip(), value.strip()))
        return r

    def read_response(self, head=False, sink=None, sha256=False, skip_interim=False,
                      timeout=None):
        """Reads the next response. head=True: no body expected (answer to
        HEAD). Interim 1xx responses are returned as they come unless
        skip_interim. Body bytes go to .body, or to sink(bytes) if given
        (then .body stays empty); sha256=True also fills .sha256. .body_len
        counts body bytes either way. The whole read must finish within
        `timeout` (default: max(connection timeout, 120 s))."""
        deadline = time.monotonic() + (timeout or max(self.timeout, 120))
        while True:
            r = self.read_head(deadline)
            if not (skip_interim and 100 <= r.status < 200 and r.status != 101):
                break
        parts = []
        h = hashlib.sha256() if sha256 else None

        def take(data):
            r.body_len += len(data)
            if h:
                h.update(data)
            if sink:
                sink(data)
            else:
                parts.append(data)

        te = (r.header("transfer-encoding") or "").lower()
        cl = r.header("content-length")
        if head or 100 <= r.status < 200 or r.status in (204, 304):
            pass
        elif te and te.split(",")[-1].strip() == "chunked":
            while True:
                size_line = self._read_line(deadline).strip()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    break
                self._read_exact(size, deadline, take)
                if self._read_line(deadline) not in (b"\r\n", b"\n"):
                    raise ValueError("chunk not followed by CRLF")
            while True:     # trailers
                line = self._read_line(deadline)
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                r.trailers.append((name.strip(), value.strip()))
        elif cl is not None:
            self._read_exact(int(cl), deadline, take)
        else:
            while True:
                if self.buf:
                    take(bytes(self.buf))
                    self.buf.clear()
                try:
                    self._fill(deadline)
                except ConnectionClosed:
                    break
        r.body = b"".join(parts)
        if h:
            r.sha256 = h.hexdigest()
        return r

    def read_until_close(self, timeout=None):
        """Everything until the peer closes (bytes)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                self._fill(deadline)
            except ConnectionClosed:
                break
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def is_closed(self, timeout=1.0):
        """True if the peer closes (EOF or reset) within timeout. Data that
        arrives meanwhile is kept for read_response()."""
        if self.eof:
            return True
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return False
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ConnectionAbortedError):
                data = b""
            except OSError:
                return True
            if not data:
                self.eof = True
                return True
            self.buf += data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fetch(port, method="GET", target="/", headers=None, body=None, host="127.0.0.1",
          timeout=10, **read_kw):
    """One request on a fresh connection; returns the final response (1xx
    skipped). read_kw go to read_response (sink=, sha256=)."""
    with HttpConn(host, port, timeout) as c:
        c.request(method, target, headers, body)
        return c.read_response(head=(method == "HEAD"), skip_interim=True, **read_kw)


def parse_echo(body):
    """Splits an sb-backend /echo body into (request_line, [(name, value)], body)."""
    head, _, rest = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers.append((name, value))
    return lines[0], headers, rest


def echo_header(headers, name):
    """The values of `name` (case-insensitive) in parse_echo() headers."""
    lname = name.lower()
    return [v for k, v in headers if k.lower() == lname]

# ---------------------------------------------------------------- WebSocket

WS_CONT, WS_TEXT, WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WebSocketError(Exception):
    pass


def _mask(payload, key):
    if not payload:
        return b""
    n = len(payload)
    full = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(full, "big")).to_bytes(n, "big")


class WebSocket:
    """A minimal RFC 6455 client. Frames it sends are masked."""

    def __init__(self, conn, response):
        self.conn = conn
        self.response = response
        self.subprotocol = response.header("sec-websocket-protocol")

    @classmethod
    def connect(cls, host, port, path="/", headers=None, subprotocol=None, timeout=10):
        """Opens the connection and does the handshake; raises WebSocketError
        (with .status and .response) unless the answer is a valid 101.
        `headers` are added to the handshake and replace its defaults of the
        same name (Upgrade, Connection, Sec-WebSocket-Key/-Version)."""
        conn = HttpConn(host, port, timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        given = {k.lower() for k, _ in extra}
        hdrs = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")]
        if subprotocol:
            hdrs.append(("Sec-WebSocket-Protocol", subprotocol))
        # Headers the caller gives replace the defaults of the same name.
        hdrs = [h for h in hdrs if h[0].lower() not in given] + extra
        key = dict((k.lower(), v) for k, v in hdrs).get("sec-websocket-key", key)
        conn.request("GET", path, hdrs)
        r = conn.read_head()
        if r.status != 101:
            # Read the body too, so the error is informative.
            try:
                cl = r.header("content-length")
                if cl:
                    parts = []
                    conn._read_exact(int(cl), time.monotonic() + timeout, parts.append)
                    r.body = b"".join(parts)
            except (OSError, ConnectionClosed, ValueError):
                pass
            conn.close()
            err = WebSocketError("WebSocket handshake got %s %s" % (r.status, r.reason))
            err.status, err.response = r.status, r
            raise err
        expected = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest()).decode()
        if r.header("sec-websocket-accept") != expected:
            conn.close()
            err = WebSocketError("bad Sec-WebSocket-Accept %r" % r.header("sec-websocket-accept"))
            err.status, err.response = r.status, r
            raise err
        return cls(conn, r)

    def send_frame(self, opcode, payload=b"", fin=True, rsv=0, mask=True):
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
        else:
            head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
        if mask:
            key = os.urandom(4)
            self.conn.send(head + key + _mask(payload, key))
        else:
            self.conn.send(head + payload)

    def send_text(self, s):
        self.send_frame(WS_TEXT, s.encode("utf-8"))

    def send_binary(self, b):
        self.send_frame(WS_BINARY, bytes(b))

    def ping(self, payload=b""):
        self.send_frame(WS_PING, payload)

    def recv_frame(self, timeout=None):
        """One frame: (fin, opcode, payload)."""
        deadline = time.monotonic() + (timeout or max(self.conn.timeout, 60))
        c = self.conn
        parts = []
        c._read_exact(2, deadline, parts.append)
        b0, b1 = b"".join(parts)
        n = b1 & 0x7F
        if n in (126, 127):
            parts = []
            c._read_exact(2 if n == 126 else 8, deadline, parts.append)
            n = int.from_bytes(b"".join(parts), "big")
        key = None
        if b1 & 0x80:
            parts = []
            c._read_exact(4, deadline, parts.append)
            key = b"".join(parts)
        parts = []
        c._read_exact(n, deadline, parts.append)
        payload = b"".join(parts)
        if key:
            payload = _mask(payload, key)
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv(self, timeout=None):
        """The next message: (opcode, payload). Fragments are joined (the
        opcode is the first fragment's); control frames come back as they
        arrive, also between fragments."""
        deadline = time.monotonic() + (timeout or max(self.conn.timeout, 60))
        opcode, parts = None, []
        for _ in range(1 << 20):
            fin, op, payload = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if op & 0x8:
                return op, payload
            if opcode is None:
                if op == WS_CONT:
                    raise WebSocketError("continuation frame without a message")
                opcode = op
            elif op != WS_CONT:
                raise WebSocketError("new message inside a fragmented one")
            parts.append(payload)
            if fin:
                return opcode, b"".join(parts)
        raise WebSocketError("too many fragments")

    def close(self, code=1000, reason=b"", wait=True, timeout=5):
        """Sends a close frame, waits (bounded) for the peer's, closes the
        socket. Returns the peer's close payload, or None."""
        reply = None
        try:
            self.send_frame(WS_CLOSE, struct.pack("!H", code) + reason)
            if wait:
                deadline = time.monotonic() + timeout
                for _ in range(1000):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    _, op, payload = self.recv_frame(left)
                    if op == WS_CLOSE:
                        reply = payload
                        break
        except (OSError, ConnectionClosed):
            pass
        self.conn.close()
        return reply

    def is_closed(self, timeout=1.0):
        return self.conn.is_closed(timeout)
