"""test_proxy_cli.py - the command line of ./switchboard (-t, -V, -h, bad
options, unreadable files, a port already taken) and `make install` into a
DESTDIR.
"""

import os
import re
import socket
import subprocess

from harness import ROOT, bin_path, free_port, make_tmpdir, run_switchboard_check
from proxy_helpers import proxy_config

TIMEOUT = 60


def _run(args, timeout=20):
    p = subprocess.run([bin_path("switchboard")] + args, cwd=ROOT, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def test_check_valid_config():
    code, out = run_switchboard_check(proxy_config(free_port(), {"web": ["127.0.0.1:9"]}))
    assert code == 0, out
    assert "valid" in out, out
    # The sample configuration shipped with the sources is valid too.
    code, out, err = _run(["-t", "-c", "conf/switchboard.yaml"])
    assert code == 0, out + err


ERRORS = [
    # (config text, expected "LINE:COL: KEY: message" regex)
    ("listen:\n  - 127.0.0.1:8080\npools:\n  web:\n    servers:\n      - address: 127.0.0.1:9001\n"
     "        weight: heavy\n",
     r":7:17: pools\.web\.servers\[0\]\.weight: .*heavy"),
    ("lisen:\n  - 127.0.0.1:8080\npools:\n  web:\n    servers: [127.0.0.1:9001]\n",
     r":1:1: lisen: unknown key"),
    ("listen:\n  - 127.0.0.1:8080\npools:\n  web:\n    servers: [127.0.0.1:9001]\n"
     "routes:\n  - pool: apl\n",
     r":7:11: routes\[0\]\.pool: .*apl"),
    ("listen:\n  - 127.0.0.1:8080\npools:\n  web:\n    servers: [127.0.0.1:9001]\n"
     "timeouts:\n  connect: 0s\n",
     r":7:12: timeouts\.connect: "),
    ("listen: [127.0.0.1:8080\npools: {\n", r":\d+:\d+: "),
]


def test_check_reports_file_line_col():
    for text, want in ERRORS:
        code, out = run_switchboard_check(text)
        assert code == 1, (code, out, text)
        lines = [l for l in out.splitlines() if l.strip()]
        assert len(lines) == 1, "expected one error line, got %r" % out
        m = re.match(r"^(\S+\.yaml)(:\d+:\d+: .*)$", lines[0])
        assert m, "not FILE:LINE:COL: KEY: message: %r" % lines[0]
        assert os.path.basename(m.group(1)) == "switchboard.yaml", lines[0]
        assert re.match(want, m.group(2)), "%r does not match %r" % (lines[0], want)


def test_missing_file():
    code, out, err = _run(["-t", "-c", "/nonexistent/sb.yaml"])
    assert code == 1, (code, out, err)
    assert err.startswith("/nonexistent/sb.yaml: "), err


def test_version_and_help():
    code, out, err = _run(["-V"])
    assert code == 0, err
    assert re.match(r"^switchboard \d+\.\d+\.\d+\S*\n$", out), out
    code, out, err = _run(["-h"])
    assert code == 0 and "usage: switchboard" in out, out + err


def test_unknown_option_and_extra_argument():
    code, out, err = _run(["-Z"])
    assert code not in (0, None) and code > 0, code
    assert "usage" in err, err
    code, out, err = _run(["-t", "stray-argument"])
    assert code > 0 and "usage" in err, (code, err)


def test_port_in_use_fails_to_start():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        path = os.path.join(make_tmpdir(), "sb.yaml")
        with open(path, "w") as f:
            f.write(proxy_config(port, {"web": ["127.0.0.1:9"]}))
        code, out, err = _run(["-c", path], timeout=20)
        assert code == 1, (code, err)
        assert str(port) in err, err
    finally:
        s.close()


def test_make_install_destdir():
    dest = make_tmpdir("sb-install-")
    p = subprocess.run(["make", "-s", "install", "PREFIX=/usr", "DESTDIR=" + dest], cwd=ROOT,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=240)
    out = p.stdout.decode("utf-8", "replace")
    if p.returncode != 0 and "Text file busy" in out:
        raise AssertionError("make install failed: ./switchboard is running elsewhere and the "
                             "Makefile's `cp` cannot replace a running binary:\n" + out)
    assert p.returncode == 0, out
    files = set()
    for d, _, names in os.walk(dest):
        for n in names:
            files.add(os.path.relpath(os.path.join(d, n), dest))
    want = {"usr/sbin/switchboard", "usr/share/man/man8/switchboard.8",
            "usr/share/man/man5/switchboard.conf.5",
            "usr/etc/switchboard/switchboard.yaml.sample"}
    assert want <= files, "missing: %s (installed: %s)" % (want - files, sorted(files))
    assert files == want, "unexpected files: %s" % sorted(files - want)
    sbin = os.path.join(dest, "usr/sbin/switchboard")
    assert os.stat(sbin).st_mode & 0o777 == 0o755
    for rel, src in (("usr/share/man/man8/switchboard.8", "man/switchboard.8"),
                     ("usr/share/man/man5/switchboard.conf.5", "man/switchboard.conf.5"),
                     ("usr/etc/switchboard/switchboard.yaml.sample", "conf/switchboard.yaml")):
        with open(os.path.join(dest, rel), "rb") as a, open(os.path.join(ROOT, src), "rb") as b:
            assert a.read() == b.read(), rel
        assert os.stat(os.path.join(dest, rel)).st_mode & 0o777 == 0o644, rel
    v = subprocess.run([sbin, "-V"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    assert v.returncode == 0 and v.stdout.startswith(b"switchboard "), v
test_make_install_destdir.timeout = 300
