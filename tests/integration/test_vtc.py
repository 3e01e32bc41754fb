"""test_vtc.py - runs the VTC scripts of tests/vtc/ with Debian's varnishtest
(package varnish; `make deps` installs it), each against the switchboard
binary of the build under test (SB_BUILD).

Every script gets two macros: sb_bin (the binary) and sb_port (a free port
for the proxy to listen on). A script is run as

    varnishtest -q -t 30 -Dsb_bin=... -Dsb_port=... FILE

and fails the test when varnishtest does; since -q reports only that a
script failed, a failing script is run once more with -v, and that log
(every byte each side sent and received, and the expectation that broke)
is the failure's detail.

One test function per script (tests/run.py collects functions by reading
the source, so they are written out); test_vtc_scripts_not_listed runs any
script added to tests/vtc/ without a function of its own here.
"""

import glob
import os
import shutil
import subprocess

from harness import ROOT, bin_path, free_port, is_sanitized

TIMEOUT = 120
VTC_DIR = os.path.join(ROOT, "tests", "vtc")
LISTED = {
    "truncated_body.vtc", "pipelining.vtc", "expect_100_continue.vtc",
    "connection_close.vtc", "chunked_reframed.vtc", "cl_te_refused.vtc",
    "bad_response.vtc",
}


def _varnishtest(path, *flags):
    argv = ["varnishtest", *flags, "-t", "60" if is_sanitized() else "30",
            "-Dsb_bin=%s" % bin_path("switchboard"), "-Dsb_port=%d" % free_port(), path]
    proc = subprocess.run(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=100)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def _run(name):
    if not shutil.which("varnishtest"):
        raise AssertionError("varnishtest not found: apt-get install varnish (make deps)")
    if not os.path.exists(bin_path("switchboard")):
        raise AssertionError("%s does not exist (build it first)" % bin_path("switchboard"))
    path = os.path.join(VTC_DIR, name)
    rc, out = _varnishtest(path, "-q")
    print(out.strip() or "%s passed" % name)
    if rc == 0:
        return
    rc2, log = _varnishtest(path, "-v")
    failed = [line for line in log.splitlines() if line.startswith("---- ")]
    raise AssertionError("%s failed (varnishtest exit %d): %s\n%s\n--- re-run with -v "
                         "(exit %d) ---\n%s" % (name, rc, "; ".join(failed[:3]) or out.strip(),
                                                out.strip(), rc2, log[-20000:]))


def test_vtc_truncated_body():
    _run("truncated_body.vtc")


def test_vtc_pipelining():
    _run("pipelining.vtc")


def test_vtc_expect_100_continue():
    _run("expect_100_continue.vtc")


def test_vtc_connection_close():
    _run("connection_close.vtc")


def test_vtc_chunked_reframed():
    _run("chunked_reframed.vtc")


def test_vtc_cl_te_refused():
    _run("cl_te_refused.vtc")


def test_vtc_bad_response():
    _run("bad_response.vtc")


def test_vtc_scripts_not_listed():
    extra = sorted(os.path.basename(p) for p in glob.glob(os.path.join(VTC_DIR, "*.vtc"))
                   if os.path.basename(p) not in LISTED)
    failures = []
    for name in extra:
        try:
            _run(name)
        except AssertionError as e:
            failures.append(str(e))
    print("%d unlisted script(s): %s" % (len(extra), ", ".join(extra) or "none"))
    assert not failures, "\n\n".join(failures)
