"""test_fuzz.py - builds the libFuzzer target (`make fuzz`: clang, ASan +
UBSan, build/fuzz/fuzz_proxy) and runs it for a bounded time over a copy of
the seed corpus tests/fuzz/corpus/. New inputs go to a temporary directory:
the committed corpus never grows by itself.

It fails on anything libFuzzer reports - a crash, a sanitizer report, a
leak (LeakSanitizer), a timeout (-timeout=5 per input), memory beyond
-rss_limit_mb - with the reproducer's bytes and the report; and it prints
libFuzzer's final "#N DONE" line and stat::number_of_executed_units, the
number of inputs run.

The fuzz build carries its own sanitizers, so running it once per `make
test` is enough: it runs only for the release build (SB_BUILD ending in
"release"), not again in the ASan pass. SB_FUZZ_SECONDS overrides the 60 s.
"""

import os
import re
import shutil
import subprocess
import tempfile

from harness import ROOT, build_dir

SECONDS = int(os.environ.get("SB_FUZZ_SECONDS", "60"))
TIMEOUT = SECONDS + 600         # the build (clang, sanitizers) comes first
FUZZ_BIN = os.path.join(ROOT, "build", "fuzz", "fuzz_proxy")
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")
DICT = os.path.join(ROOT, "tests", "fuzz", "http.dict")


def test_fuzz_proxy():
    if os.path.basename(os.path.normpath(build_dir())) != "release":
        print("skipped: the fuzzer runs once, with the release build's suite "
              "(SB_BUILD=%s)" % build_dir())
        return
    build = subprocess.run(["make", "-s", "fuzz"], cwd=ROOT, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=540)
    out = build.stdout.decode("utf-8", "replace")
    assert build.returncode == 0, "make fuzz failed:\n%s" % out[-6000:]
    assert os.path.exists(FUZZ_BIN), FUZZ_BIN

    work = tempfile.mkdtemp(prefix="sb-fuzz-", dir=os.environ.get("SB_TMPDIR") or None)
    try:
        seeds = os.path.join(work, "seeds")
        shutil.copytree(CORPUS, seeds)
        new = os.path.join(work, "new")
        os.mkdir(new)
        env = dict(os.environ)
        # The fuzz binary is sanitized whatever build the suite tests.
        env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
        argv = [FUZZ_BIN, "-max_total_time=%d" % SECONDS, "-timeout=5",
                "-rss_limit_mb=2048", "-max_len=16384", "-print_final_stats=1",
                "-artifact_prefix=%s/" % work, "-dict=%s" % DICT, new, seeds]
        print("$ " + " ".join(argv))
        run = subprocess.run(argv, cwd=work, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=SECONDS + 240)
        log = run.stdout.decode("utf-8", "replace")
        done = re.findall(r"^#(\d+)\s+DONE.*$", log, re.M)
        units = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
        for line in log.splitlines():
            if re.match(r"#\d+\s+DONE", line) or line.startswith("stat::"):
                print(line)
        artifacts = [f for f in os.listdir(work)
                     if f.startswith(("crash-", "leak-", "timeout-", "oom-", "slow-unit-"))]
        problems = []
        if run.returncode != 0:
            problems.append("fuzz_proxy exited with %d" % run.returncode)
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                       "ERROR: libFuzzer", "==ERROR"):
            if marker in log:
                problems.append("report: %s" % marker)
        if artifacts:
            problems.append("artifacts: %s" % ", ".join(sorted(artifacts)))
        if not done:
            problems.append("no final '#N DONE' line")
        if problems:
            # Keep the reproducers: build/fuzz/failures/ (not committed).
            # Replay one with: build/fuzz/fuzz_proxy FILE
            saved = os.path.join(ROOT, "build", "fuzz", "failures")
            os.makedirs(saved, exist_ok=True)
            detail = []
            for a in sorted(artifacts):
                shutil.copy(os.path.join(work, a), saved)
                with open(os.path.join(work, a), "rb") as f:
                    detail.append("%s: %r" % (a, f.read()[:2000]))
            start = max(0, min((log.find(m) for m in ("==ERROR", "ERROR:", "runtime error:")
                                if m in log), default=0) - 200)
            report = log[start:start + 12000]
            print("--- fuzzer output ---\n%s\n--- reproducers ---\n%s" % (report, "\n".join(detail)))
            raise AssertionError("fuzzing found a problem: %s%s\n%s\n%s" % (
                "; ".join(problems),
                " (reproducers in build/fuzz/failures/)" if artifacts else "",
                "\n".join(detail)[:4000], "\n".join(report.splitlines()[:40])))
        print("fuzz_proxy: %s inputs executed in %d s (%d seeds, %d new inputs kept in a "
              "temporary corpus)" % (units[-1] if units else done[-1], SECONDS,
                                     len(os.listdir(seeds)), len(os.listdir(new))))
    finally:
        shutil.rmtree(work, ignore_errors=True)
