#!/usr/bin/env python3
"""run.py - Switchboard's test runner (Python 3 standard library only).

    python3 tests/run.py --build build/release [--build build/asan]
                         [-k SUBSTRING] [--unit-only | --integration-only]

For each build directory, in the order given:

  unit tests         every executable <build>/tests/unit/**/test_*; each prints
                     "PASS name" / "FAIL name: reason" lines (tests/unit/check.h),
                     each line is one test. A binary that exits non-zero or
                     dies without a FAIL line is one more failed test named
                     after it. 120 s per binary.
  integration tests  every tests/integration/test_*.py; each top-level
                     function test_* (source order) runs in a child process
                     of its own with SB_BUILD set to the build dir, then
                     harness.cleanup() runs there, pass or fail. Time limit:
                     fn.timeout, else the module's TIMEOUT, else 120 s; the
                     child raises TestTimeout in the test at the limit, and
                     the runner kills the child's whole process group if it
                     has still not finished 90 s later.

A sanitized build (found by looking for the ASan runtime in its binaries)
runs with ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 and
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1, for unit binaries and
for every process an integration test starts.

Output: one line per test, "PASS [release] unit/conf/test_conf::name" or
"FAIL [asan] integration/test_x.py::test_y (3.2s): reason" followed by
indented detail; the last line is "N passed, N failed". Exit status 0 if
nothing failed, 1 otherwise (and 1 if no test ran).

The runner re-invokes itself with --child MODULE TEST for each integration
test; that mode is internal.
"""

import argparse
import ast
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTEGRATION_DIR = os.path.join(ROOT, "tests", "integration")
UNIT_TIMEOUT = 120
DEFAULT_TIMEOUT = 120
# After a test's limit, for its own timeout and cleanup (override for
# checking the runner itself).
KILL_GRACE = int(os.environ.get("SB_TEST_KILL_GRACE", "90"))
TAIL_LINES = 20

sys.dont_write_bytecode = True


class TestTimeout(Exception):
    pass

# ---------------------------------------------------------------- output


class Totals:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def report(self, ok, label, name, reason="", detail="", elapsed=None):
        when = " (%.1fs)" % elapsed if elapsed is not None else ""
        if ok:
            self.passed += 1
            print("PASS [%s] %s%s" % (label, name, when), flush=True)
            return
        self.failed += 1
        first = (reason or "failed").strip().splitlines()[0] if (reason or "").strip() else "failed"
        print("FAIL [%s] %s%s: %s" % (label, name, when, first), flush=True)
        detail = (detail or "").rstrip()
        if detail:
            print("\n".join("    " + line for line in detail.splitlines()), flush=True)


def tail(text, lines=TAIL_LINES):
    return "\n".join(text.rstrip().splitlines()[-lines:])


def describe_exit(rc):
    if rc is None:
        return "did not exit"
    if rc < 0:
        try:
            return "killed by %s" % signal.Signals(-rc).name
        except ValueError:
            return "killed by signal %d" % -rc
    return "exited with status %d" % rc

# ---------------------------------------------------------------- environment


def is_sanitized(build):
    sys.path.insert(0, INTEGRATION_DIR)
    try:
        import harness
    finally:
        sys.path.pop(0)
    return harness._detect_sanitized(build)


def build_env(build, sanitized):
    env = dict(os.environ)
    env["SB_BUILD"] = build
    env["SB_SANITIZED"] = "1" if sanitized else "0"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if sanitized:
        env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
        # ThreadSanitizer: report every race (exit status 66 at the end).
        env["TSAN_OPTIONS"] = "halt_on_error=0:second_deadlock_stack=1"
    return env

# ---------------------------------------------------------------- unit tests


def find_unit_binaries(build):
    base = os.path.join(build, "tests", "unit")
    found = []
    for dirpath, dirnames, files in os.walk(base):
        dirnames.sort()
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            if f.startswith("test_") and "." not in f and os.access(path, os.X_OK):
                found.append(path)
    return found


def wanted(filters, name):
    """True when `name` passes every filter: a filter is a list of
    substrings, of which the name must contain one (-k, and a build's
    =K1,K2 subset)."""
    return all(any(k in name for k in f) for f in filters)


def run_unit_binary(path, build, label, env, keyword, totals):
    rel = os.path.relpath(path, os.path.join(build, "tests", "unit"))
    bin_name = "unit/" + rel
    timed_out = False
    try:
        proc = subprocess.run([path], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=UNIT_TIMEOUT)
        out, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as e:
        out, rc, timed_out = e.stdout or b"", None, True
    text = out.decode("utf-8", "replace")

    saw_fail = False
    matched = wanted(keyword, bin_name)
    for line in text.splitlines():
        if line.startswith("PASS "):
            name, ok, reason = line[5:].strip(), True, ""
        elif line.startswith("FAIL "):
            name, _, reason = line[5:].partition(":")
            name, ok, reason = name.strip(), False, reason.strip()
            saw_fail = True
        else:
            continue
        full = "%s::%s" % (bin_name, name)
        if not wanted(keyword, full):
            continue
        matched = True
        totals.report(ok, label, full, reason)

    if not matched:
        return
    if timed_out:
        totals.report(False, label, bin_name, "timed out after %ds" % UNIT_TIMEOUT,
                      "output (last %d lines):\n%s" % (TAIL_LINES, tail(text)))
    elif rc != 0 and not saw_fail:
        totals.report(False, label, bin_name, describe_exit(rc) + " without a FAIL line",
                      "output (last %d lines):\n%s" % (TAIL_LINES, tail(text)))

# ---------------------------------------------------------------- integration


def literal_number(node):
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def collect_tests(path):
    """[(name, timeout)] of the module's top-level test_* functions in source
    order, read without importing it (TIMEOUT and fn.timeout literals)."""
    with open(path, "rb") as f:
        tree = ast.parse(f.read(), filename=path)
    module_timeout = DEFAULT_TIMEOUT
    fn_timeouts = {}
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
            names.append(node.name)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            value = literal_number(node.value)
            if value is None:
                continue
            if isinstance(target, ast.Name) and target.id == "TIMEOUT":
                module_timeout = value
            elif (isinstance(target, ast.Attribute) and target.attr == "timeout"
                  and isinstance(target.value, ast.Name)):
                fn_timeouts[target.value.id] = value
    seen, tests = set(), []
    for name in names:      # a redefinition replaces, as on import
        if name not in seen:
            seen.add(name)
            tests.append((name, fn_timeouts.get(name, module_timeout)))
    return tests


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_integration_test(module_path, test, timeout, label, env, totals):
    name = "integration/%s::%s" % (os.path.basename(module_path), test)
    with tempfile.TemporaryDirectory(prefix="sb-run-") as tmpdir:
        out_path = os.path.join(tmpdir, "output.log")
        work = os.path.join(tmpdir, "work")
        os.mkdir(work)
        child_env = dict(env)
        read_fd, write_fd = os.pipe()
        child_env["SB_RESULT_FD"] = str(write_fd)
        child_env["SB_TMPDIR"] = work
        start = time.monotonic()
        with open(out_path, "wb") as out:
            child = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--child", module_path, test],
                cwd=ROOT, env=child_env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, pass_fds=[write_fd], start_new_session=True)
        os.close(write_fd)

        messages, data = [], b""
        deadline = start + timeout + KILL_GRACE
        killed = False
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    kill_group(child.pid)
                    killed = True
                    break
                ready, _, _ = select.select([read_fd], [], [], min(left, 1.0))
                if not ready:
                    continue
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                data += chunk
                while b"\n" in data:
                    line, data = data.split(b"\n", 1)
                    msg = json.loads(line)
                    messages.append(msg)
                    if "timeout" in msg:
                        deadline = start + msg["timeout"] + KILL_GRACE
        except BaseException:
            kill_group(child.pid)
            raise
        finally:
            os.close(read_fd)
        try:
            rc = child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(child.pid)
            rc = child.wait(timeout=30)
        # Anything the test left running in its process group goes too.
        kill_group(child.pid)
        elapsed = time.monotonic() - start

        with open(out_path, "rb") as f:
            output = f.read().decode("utf-8", "replace")
        output_tail = ("output (last %d lines):\n%s" % (TAIL_LINES, tail(output))
                       if output.strip() else "")
        results = [m for m in messages if "ok" in m]
        if killed:
            limit = next((m["timeout"] for m in messages if "timeout" in m), timeout)
            totals.report(False, label, name, "timed out after %ss; test process killed" % limit,
                          output_tail, elapsed)
        elif not results:
            totals.report(False, label, name, "test process %s without a result" % describe_exit(rc),
                          output_tail, elapsed)
        else:
            r = results[-1]
            detail = r.get("detail", "")
            if not r["ok"] and output_tail:
                detail += "\n" + output_tail
            totals.report(r["ok"], label, name, r.get("reason", ""), detail, elapsed)


def run_integration(label, env, keyword, totals):
    modules = sorted(f for f in os.listdir(INTEGRATION_DIR)
                     if f.startswith("test_") and f.endswith(".py"))
    for module in modules:
        path = os.path.join(INTEGRATION_DIR, module)
        try:
            tests = collect_tests(path)
        except SyntaxError as e:
            name = "integration/%s" % module
            if wanted(keyword, name):
                totals.report(False, label, name, "cannot parse: %s" % e)
            continue
        for test, timeout in tests:
            name = "integration/%s::%s" % (module, test)
            if not wanted(keyword, name):
                continue
            run_integration_test(path, test, timeout, label, env, totals)

# ---------------------------------------------------------------- child mode


def failure_reason(exc, module_path):
    if isinstance(exc, TestTimeout):
        return str(exc)
    message = str(exc).strip()
    if message:
        first = message.splitlines()[0]
        return first if isinstance(exc, AssertionError) else "%s: %s" % (type(exc).__name__, first)
    # A bare assert: say where, and show the line.
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if os.path.abspath(f.filename) == os.path.abspath(module_path)]
    frame = (mine or frames or [None])[-1]
    if frame is None:
        return type(exc).__name__
    return "%s at %s:%d: %s" % (type(exc).__name__, os.path.basename(frame.filename),
                                frame.lineno, (frame.line or "").strip())


def child_main(module_path, test):
    result_fd = int(os.environ["SB_RESULT_FD"])

    def send(msg):
        os.write(result_fd, (json.dumps(msg) + "\n").encode())

    sys.path.insert(0, os.path.dirname(os.path.abspath(module_path)))
    import harness

    ok, reason, detail = True, "", ""
    start = time.monotonic()
    try:
        modname = os.path.splitext(os.path.basename(module_path))[0]
        spec = importlib.util.spec_from_file_location(modname, module_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        spec.loader.exec_module(module)
        fn = getattr(module, test)
        limit = getattr(fn, "timeout", getattr(module, "TIMEOUT", DEFAULT_TIMEOUT))
        send({"timeout": limit})

        def on_alarm(signum, frame):
            raise TestTimeout("timed out after %ss" % limit)

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as exc:  # noqa: BLE001 - every failure is a result
        ok = False
        reason = failure_reason(exc, module_path)
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        detail = tail("".join(tb), 30)
        context = harness.failure_context()
        if context:
            detail += "\n" + context
    try:
        harness.cleanup()
    except BaseException as exc:  # noqa: BLE001
        if ok:
            ok, reason = False, failure_reason(exc, module_path)
            detail = str(exc)
        else:
            detail += "\ncleanup: %s" % exc
    send({"ok": ok, "reason": reason, "detail": detail,
          "elapsed": time.monotonic() - start})
    return 0

# ---------------------------------------------------------------- main


def main(argv):
    if len(argv) >= 1 and argv[0] == "--child":
        if len(argv) != 3:
            print("usage: run.py --child MODULE TEST", file=sys.stderr)
            return 2
        return child_main(argv[1], argv[2])

    ap = argparse.ArgumentParser(description="Run Switchboard's unit and integration tests.")
    ap.add_argument("--build", action="append", metavar="DIR[=K1,K2]",
                    help="build directory to test (repeatable; default build/release); "
                         "=K1,K2 runs only the tests of that build whose names contain "
                         "one of them")
    ap.add_argument("-k", dest="keyword", metavar="SUBSTRING", action="append",
                    help="only tests whose full name contains SUBSTRING (repeatable: any)")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--unit-only", action="store_true")
    group.add_argument("--integration-only", action="store_true")
    args = ap.parse_args(argv)

    os.chdir(ROOT)
    totals = Totals()
    try:
        for spec in args.build or ["build/release"]:
            build, _, only = spec.partition("=")
            build = os.path.abspath(build)
            keyword = [args.keyword] if args.keyword else []
            if only:
                keyword.append([k.strip() for k in only.split(",") if k.strip()])
            label = os.path.basename(os.path.normpath(build))
            if not os.path.isdir(build):
                print("note: build directory %s does not exist" % build, flush=True)
            sanitized = is_sanitized(build)
            env = build_env(build, sanitized)
            print("== %s%s ==" % (os.path.relpath(build, ROOT),
                                  " (sanitized)" if sanitized else ""), flush=True)
            if not args.integration_only:
                for path in find_unit_binaries(build):
                    run_unit_binary(path, build, label, env, keyword, totals)
            if not args.unit_only:
                run_integration(label, env, keyword, totals)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        print("%d passed, %d failed" % (totals.passed, totals.failed + 1), flush=True)
        return 1

    if totals.passed + totals.failed == 0:
        print("no test ran", flush=True)
        print("0 passed, 0 failed", flush=True)
        return 1
    print("%d passed, %d failed" % (totals.passed, totals.failed), flush=True)
    return 0 if totals.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
