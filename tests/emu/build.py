"""Build grl_cuda._C_emu: csrc/cuda/kernels_cuda.cu, unchanged, compiled as host C++
against the CUDA emulator (cuda_emu.h) with AddressSanitizer and UBSan.

    python tests/emu/build.py                      # -> grl_cuda/_C_emu*.so
    python tests/emu/build.py --source X.cu --out DIR   # another copy of the kernels (planted defects)

Test-only: setup.py never builds it. Loading it needs the ASan runtime first in the
process (LD_PRELOAD=$(gcc -print-file-name=libasan.so)); `bash .ci/emu` does that.
Objects are cached under build/emu/ by a hash of their inputs and flags, so a
rebuild after editing only the .cu recompiles only the kernels.
"""

import argparse
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
KERNELS = os.path.join(ROOT, "csrc", "cuda", "kernels_cuda.cu")
CACHE = os.path.join(ROOT, "build", "emu")

# ---- the source rewrite: the three CUDA constructs a macro cannot express ----------------------

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:\s*<[^<>;(){}]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
_SHARED = re.compile(r"(?<!\w)(extern\s+)?__shared__\s+([^;\[]+?)\s+(\w+)\s*((?:\[[^\]]*\]\s*)*);")
_BOUNDS = re.compile(r"__launch_bounds__\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)")


def _skip_comment(text, i):
    """Index past a comment or string starting at i, or i if none starts there."""
    if text.startswith("//", i):
        j = text.find("\n", i)
        return len(text) if j < 0 else j
    if text.startswith("/*", i):
        j = text.find("*/", i + 2)
        return len(text) if j < 0 else j + 2
    if text[i] in "\"'":
        q, j = text[i], i + 1
        while j < len(text) and text[j] != q:
            j += 2 if text[j] == "\\" else 1
        return j + 1
    return i


def kernel_bodies(text):
    """(name, launch-bounds expression or None, index just past the body's '{') of
    every __global__ function definition, in source order."""
    out = []
    for m in re.finditer(r"\b__global__\b", text):
        i, depth, opens = m.end(), 0, []
        while i < len(text):
            j = _skip_comment(text, i)
            if j != i:
                i = j
                continue
            c = text[i]
            if c == "(":
                if depth == 0:
                    opens.append(i)
                depth += 1
            elif c == ")":
                depth -= 1
            elif depth == 0 and c == ";":
                break  # a declaration, not a definition
            elif depth == 0 and c == "{":
                signature = text[m.end():i]
                bounds = _BOUNDS.search(signature)
                name = re.search(r"(\w+)\s*$", text[:opens[-1]]).group(1) if opens else "?"
                out.append((name, bounds.group(1) if bounds else None, i + 1))
                break
            i += 1
    return out


def insert_at_kernel_tops(text, make_statement):
    """Inserts make_statement(name, bounds) right after each kernel body's '{', on
    the same line (line numbers stay those of the original file)."""
    for name, bounds, at in reversed(kernel_bodies(text)):
        text = text[:at] + " " + make_statement(name, bounds) + text[at:]
    return text


def emulate_source(text, path):
    """The .cu text rewritten for the emulator, with #line so that diagnostics and
    sanitizer reports name the original file and lines."""
    if not kernel_bodies(text) and "__global__" in text:
        raise ValueError(f"{path}: found __global__ but no kernel definition")
    text = insert_at_kernel_tops(
        text, lambda name, bounds: f'::grl_emu::kernel_entry({bounds or 0}, "{name}", __FILE__, __LINE__);')

    def launch(m):
        name, config = m.group(1), m.group(2)
        rest = text_ref[0][m.end():]
        no_args = re.match(r"\s*\)", rest) is not None
        label = " ".join(name.split())
        return f'::grl_emu::Launch("{label}", {config})({name}' + ("" if no_args else ", ")

    text_ref = [text]
    text = _LAUNCH.sub(launch, text)

    def shared(m):
        if m.group(1):
            raise ValueError(f"{path}: extern __shared__ (dynamic shared memory) is not emulated yet")
        typ, name, dims = m.group(2).strip(), m.group(3), "".join(m.group(4).split())
        if dims:
            return (f"{typ} (&{name}){dims} = *static_cast<{typ}(*){dims}>(::grl_emu::block_shared("
                    f"__FILE__, __LINE__, sizeof({typ}{dims}), alignof({typ})));")
        return (f"{typ}& {name} = *static_cast<{typ}*>(::grl_emu::block_shared(__FILE__, __LINE__, sizeof({typ}), "
                f"alignof({typ})));")

    text = _SHARED.sub(shared, text)
    if "<<<" in text:
        raise ValueError(f"{path}: a kernel launch was not rewritten")
    return f'#line 1 "{os.path.abspath(path)}"\n' + text


# ---- compiling --------------------------------------------------------------------------------

def _torch_paths():
    import torch
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return cpp_extension.include_paths(), cpp_extension.library_paths(), abi


SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def _flags(abi, includes, extra_quote=()):
    flags = ["-std=c++20", "-fPIC", "-g", "-O1", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-sign-compare",
             *SANITIZE, "-DGRL_WITH_CUDA", "-DGRL_CUDA_EMU", "-DTORCH_API_INCLUDE_EXTENSION_H",
             "-DTORCH_EXTENSION_NAME=_C_emu", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
             "-I", os.path.join(HERE, "include"), "-I", HERE]  # the c10/cuda stand-ins come first
    # Units compile from copies in build/emu: quoted includes resolve from the originals' folders.
    for q in list(extra_quote) + [HERE]:
        flags += ["-iquote", q]
    for inc in includes + [sysconfig.get_paths()["include"]]:
        flags += ["-isystem", inc]
    return flags


def _compile(source_text, name, flags, verbose):
    """Compiles source text (written to the cache) to an object; cached by content."""
    os.makedirs(CACHE, exist_ok=True)
    headers = [os.path.join(d, f) for d, _, fs in sorted(os.walk(HERE)) for f in sorted(fs) if f.endswith(".h")]
    headers += [os.path.join(ROOT, "csrc", f) for f in ("grl_math.h", "kernels.h")]
    deps = "".join(open(h).read() for h in headers)
    key = hashlib.sha256((source_text + deps + " ".join(flags)).encode()).hexdigest()[:16]
    obj = os.path.join(CACHE, f"{name}-{key}.o")
    if os.path.exists(obj):
        return obj, False
    src = os.path.join(CACHE, f"{name}-{key}.cpp")
    with open(src, "w") as f:
        f.write(source_text)
    cmd = ["g++", *flags, "-c", src, "-o", obj + ".tmp"]
    if verbose:
        print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    os.replace(obj + ".tmp", obj)
    return obj, True


def build(source=KERNELS, out_dir=None, jobs=None, verbose=False):
    """Builds the extension from `source` (a kernels .cu) and returns the .so path."""
    t0 = time.time()
    includes, libdirs, abi = _torch_paths()
    kernels_dir = os.path.dirname(os.path.abspath(KERNELS))  # "../grl_math.h" resolves from csrc/cuda
    base = _flags(abi, includes)
    kernel_flags = _flags(abi, includes, extra_quote=[kernels_dir]) + [
        "-include", os.path.join(HERE, "cuda_emu.h"), "-include", os.path.join(HERE, "device_math.h")]
    selftest_flags = _flags(abi, includes) + ["-include", os.path.join(HERE, "cuda_emu.h")]
    with open(source) as f:
        kernels = emulate_source(f.read(), source)
    with open(os.path.join(HERE, "selftest.cu")) as f:
        selftest = emulate_source(f.read(), os.path.join(HERE, "selftest.cu"))
    with open(os.path.join(HERE, "cuda_emu.cpp")) as f:
        runtime = f'#line 1 "{os.path.join(HERE, "cuda_emu.cpp")}"\n' + f.read()
    with open(os.path.join(HERE, "driver.cpp")) as f:
        driver = f'#line 1 "{os.path.join(HERE, "driver.cpp")}"\n' + f.read()
    units = [(kernels, "kernels", kernel_flags), (selftest, "selftest", selftest_flags),
             (runtime, "runtime", base), (driver, "driver", base)]
    jobs = jobs or int(os.environ.get("MAX_JOBS", "2"))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(lambda u: _compile(u[0], u[1], u[2], verbose), units))
    out_dir = out_dir or os.path.join(ROOT, "grl_cuda")
    os.makedirs(out_dir, exist_ok=True)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    so = os.path.join(out_dir, "_C_emu" + suffix)
    cmd = ["g++", "-shared", *SANITIZE, *[o for o, _ in results], "-o", so + ".tmp"]
    for d in libdirs:
        cmd += ["-L", d, f"-Wl,-rpath,{d}"]
    cmd += ["-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]
    subprocess.run(cmd, check=True)
    os.replace(so + ".tmp", so)
    rebuilt = [u[1] for u, (_, fresh) in zip(units, results) if fresh]
    print(f"built {so} in {time.time() - t0:.0f} s (compiled: {', '.join(rebuilt) or 'nothing, all cached'})",
          flush=True)
    return so


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=KERNELS, help="the kernels .cu to build (default: csrc/cuda/kernels_cuda.cu)")
    parser.add_argument("--out", help="folder for _C_emu*.so (default: grl_cuda/)")
    parser.add_argument("--jobs", type=int, help="parallel compiles (default: $MAX_JOBS or 2)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    build(args.source, args.out, args.jobs, args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
