"""Proof that the emulated suite finds kernel defects: plants each defect in a copy of
csrc/cuda/kernels_cuda.cu, builds that copy against the emulator (only the kernels
unit recompiles; the rest comes from build/emu's cache), runs tests/emu on it and
requires a failure. Prints, and writes to build/emu/defects/report.md, which test
caught each defect, how many tests fail, and how (wrong values, an emulator error, an
ASan report).

    python tests/emu/plant_defects.py [--only NAME,...]

Exit status 1 when a defect goes uncaught or cannot be planted (the source changed
shape): the check never passes vacuously. `bash .ci/emu` runs it.
"""

import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import build  # noqa: E402

OUT = os.path.join(build.ROOT, "build", "emu", "defects")


def _sub_all(pattern, repl, text, what):
    new, count = re.subn(pattern, repl, text)
    if count == 0:
        raise ValueError(f"cannot plant {what}: pattern {pattern!r} not found")
    return new


def skip_thread(text):
    """Thread 1 of block 0 returns at the top of every kernel."""
    if not build.kernel_bodies(text):
        raise ValueError("cannot plant skip_thread: no kernel found")
    return build.insert_at_kernel_tops(text, lambda name, bounds: "if (blockIdx.x == 0 && threadIdx.x == 1) return;")


def no_syncthreads(text):
    """Every __syncthreads() removed."""
    return _sub_all(r"__syncthreads\(\)\s*;", ";", text, "no_syncthreads")


TAIL = r"(for \(int64_t i = n_vec \* kVec \+ tid; i )<( n;)"


def tail_past_end(text):
    """The vectorised kernel's scalar tail runs one element past the end (i <= n)."""
    return _sub_all(TAIL, r"\1<=\2", text, "tail_past_end")


def tail_short(text):
    """The vectorised kernel's scalar tail stops one element early (i < n - 1)."""
    return _sub_all(TAIL, r"\1< n - 1;", text, "tail_short")


DEFECTS = {f.__name__: f for f in (skip_thread, no_syncthreads, tail_past_end, tail_short)}


def _summary(output):
    """(failing test functions, how they failed) from pytest -v -s -rf output."""
    failed = re.findall(r"^FAILED tests/emu/test_emu_kernels.py::(\S+)", output, re.M)
    if not re.search(r"^=+ .*(passed|failed)", output, re.M):  # no final line: the process aborted
        started = re.findall(r"^tests/emu/test_emu_kernels.py::(\S+) ", output, re.M)
        done = set(re.findall(r"^tests/emu/test_emu_kernels.py::(\S+) (?:PASSED|FAILED|SKIPPED)", output, re.M))
        crashed = [t for t in started if t not in done]
        failed.append((crashed[-1] if crashed else "?") + " (aborted the process)")
    how = [label for label, marker in (("ASan report", "AddressSanitizer"), ("UBSan report", "runtime error:"),
                                       ("emulator error", "grl_emu: kernel"), ("wrong values", "AssertionError"))
           if marker in output]
    functions = []
    for test in failed:
        name = test.split("[")[0]
        if name not in functions:
            functions.append(name)
    return failed, functions, how


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma list of: " + ", ".join(DEFECTS))
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(DEFECTS)
    with open(build.KERNELS) as f:
        original = f.read()
    env = dict(os.environ)
    asan = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    stdcxx = subprocess.run(["g++", "-print-file-name=libstdc++.so"], capture_output=True, text=True).stdout.strip()
    env.update(LD_PRELOAD=f"{asan} {stdcxx}", ASAN_OPTIONS="detect_leaks=0", GRL_CUDA_EMU="1",
               GRL_EMU_SCHEDULE="forward")
    rows, uncaught = [], []
    for name in names:
        t0 = time.time()
        folder = os.path.join(OUT, name)
        os.makedirs(folder, exist_ok=True)
        planted = DEFECTS[name](original)
        assert planted != original
        source = os.path.join(folder, "kernels_cuda.cu")
        with open(source, "w") as f:
            f.write(planted)
        so = build.build(source, folder)
        # The whole suite, less the emulator's own self-tests (they do not run this file's
        # kernels); -s so that a sanitizer report that aborts the process is not swallowed.
        proc = subprocess.run([sys.executable, "-m", "pytest", os.path.join(HERE, "test_emu_kernels.py"), "-v", "-s",
                               "-rf", "-p", "no:cacheprovider", "-k", "not TestEmulator"],
                              env={**env, "GRL_EMU_LIB": so}, capture_output=True, text=True, cwd=build.ROOT)
        output = proc.stdout + proc.stderr
        with open(os.path.join(folder, "pytest.log"), "w") as f:
            f.write(output)
        failed, functions, how = _summary(output)
        if proc.returncode == 0 or not failed:
            uncaught.append(name)
            rows.append((name, DEFECTS[name].__doc__, "NOT CAUGHT", "", "", time.time() - t0))
        else:
            rows.append((name, DEFECTS[name].__doc__, failed[0], f"{len(failed)}: " + ", ".join(functions),
                         ", ".join(how), time.time() - t0))
        print(f"planted {name}: first caught by {rows[-1][2]}; failing tests {rows[-1][3]} ({rows[-1][4]}), "
              f"{rows[-1][5]:.0f} s", flush=True)
    lines = ["| defect | planted | first test that fails | failing tests (count: functions) | how | seconds |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {d} | `{t}` | {f} | {h} | {s:.0f} |" for n, d, t, f, h, s in rows]
    report = "\n".join(lines)
    with open(os.path.join(OUT, "report.md"), "w") as f:
        f.write(report + "\n")
    print(report)
    if uncaught:
        print(f"planted defects NOT caught by the emulated suite: {', '.join(uncaught)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
