"""Static GPU checks that need no GPU: compile the CUDA kernels with `-Xptxas -v`
and read the SASS with cuobjdump.

Reports, per architecture and kernel: registers, spill stores/loads (must be 0),
stack frame bytes (must be 0), block barriers (`BAR.SYNC`: the block-reducing loss
kernels must have them, or their shared-memory tree is gone), and whether the
elementwise kernels (the reversal's scale and the copy) use 128-bit global loads
and stores (`LDG.E.128` / `STG.E.128`).

    python -m bench.static_gpu --archs 80,90
"""

import argparse
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "csrc", "cuda", "kernels_cuda.cu")
VECTORISED_KERNELS = ("elementwise_vec_kernel",)  # must use 128-bit global accesses
BLOCK_REDUCING_KERNELS = ("domain_bce_partials_kernel", "domain_cross_entropy_partials_kernel", "reduce_final_kernel")


def _setup_helpers():
    spec = importlib.util.spec_from_file_location("grl_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_tool(name):
    """cuobjdump/nvdisasm: the toolkit's, else the copies shipped in triton's wheel."""
    setup = _setup_helpers()
    cuda_home = setup.find_cuda_home()
    candidates = []
    if cuda_home:
        candidates.append(os.path.join(cuda_home, "bin", name))
    site = sysconfig.get_paths()["purelib"]
    candidates += glob.glob(os.path.join(site, "triton", "backends", "nvidia", "bin", name))
    found = shutil.which(name)
    if found:
        candidates.append(found)
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def compile_object(archs, out_dir):
    """Returns (object path, ptxas -v output)."""
    setup = _setup_helpers()
    cuda_home = setup.find_cuda_home()
    if cuda_home is None:
        raise FileNotFoundError("no CUDA toolkit found (set CUDA_HOME)")
    from torch.utils.cpp_extension import include_paths

    includes = include_paths("cuda") + setup.nvidia_wheel_includes() + [sysconfig.get_paths()["include"]]
    obj = os.path.join(out_dir, "kernels_cuda.o")
    cmd = [os.path.join(cuda_home, "bin", "nvcc"), "-c", SOURCE, "-o", obj, "-O3", "-std=c++20",
           "--expt-relaxed-constexpr", "-DGRL_WITH_CUDA", "-Xptxas", "-v",
           "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
           "-D__CUDA_NO_HALF2_OPERATORS__", "--compiler-options", "-fPIC"]
    for arch in archs:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    for inc in includes:
        cmd += ["-I", inc]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError("nvcc failed:\n" + result.stderr[-4000:])
    return obj, result.stdout + result.stderr


def _demangle_short(name):
    m = re.search(r"(elementwise_vec_kernel|elementwise_scalar_kernel|domain_bce_partials_kernel|"
                  r"domain_cross_entropy_partials_kernel|reduce_final_kernel)", name)
    kernel = m.group(1) if m else name
    dtype = next((t for t, key in (("half", "Half"), ("bfloat16", "BFloat16"), ("float", "kernelIf"),
                                   ("double", "kernelId")) if key in name), "")
    op = "neg_scale" if "NegScaleOp" in name else "copy" if "CopyOp" in name else ""
    return "/".join(x for x in (kernel, op, dtype) if x)


def parse_ptxas(log):
    """{(arch, mangled kernel): {registers, spill_stores, spill_loads}}."""
    out = {}
    current = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for 'sm_(\d+)'", line)
        if m:
            current = (m.group(2), m.group(1))
            out[current] = {"registers": None, "spill_stores": None, "spill_loads": None, "stack_frame": None}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[current]["spill_stores"] = int(m.group(1))
            out[current]["spill_loads"] = int(m.group(2))
        m = re.search(r"(\d+) bytes stack frame", line)
        if m:
            out[current]["stack_frame"] = int(m.group(1))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[current]["registers"] = int(m.group(1))
    return out


def parse_sass(sass):
    """{(arch, mangled kernel): {ldg128, stg128, barriers}} from `cuobjdump -sass`."""
    out = {}
    arch = None
    current = None
    for line in sass.splitlines():
        m = re.search(r"arch = sm_(\d+)", line)
        if m:
            arch = m.group(1)
        m = re.search(r"Function : (\S+)", line)
        if m:
            current = (arch, m.group(1))
            out[current] = {"ldg128": False, "stg128": False, "barriers": 0}
            continue
        if current is not None:
            if re.search(r"\bLDG\.E[.\w]*\.128\b", line):
                out[current]["ldg128"] = True
            if re.search(r"\bSTG\.E[.\w]*\.128\b", line):
                out[current]["stg128"] = True
            if re.search(r"\bBAR\.SYNC", line):
                out[current]["barriers"] += 1
    return out


def run(archs=("80", "90")):
    """Compile and inspect; returns a list of per-kernel records."""
    cuobjdump = find_tool("cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        obj, log = compile_object(archs, tmp)
        sass = subprocess.run([cuobjdump, "-sass", obj], capture_output=True, text=True, check=True).stdout if cuobjdump else ""
    ptxas = parse_ptxas(log)
    sass_info = parse_sass(sass)
    records = []
    for (arch, name), info in sorted(ptxas.items()):
        rec = {"arch": f"sm_{arch}", "kernel": _demangle_short(name), "mangled": name, **info}
        s = sass_info.get((arch, name))
        rec["ldg128"] = s["ldg128"] if s else None
        rec["stg128"] = s["stg128"] if s else None
        rec["barriers"] = s["barriers"] if s else None
        rec["block_reducing"] = any(k in name for k in BLOCK_REDUCING_KERNELS)
        rec["must_vectorise"] = any(k in name for k in VECTORISED_KERNELS)
        records.append(rec)
    return records, bool(cuobjdump)


def to_markdown(records):
    lines = ["| arch | kernel | registers | spill stores | spill loads | stack frame | BAR.SYNC | LDG.E.128 | STG.E.128 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['arch']} | {r['kernel']} | {r['registers']} | {r['spill_stores']} | {r['spill_loads']} | "
                     f"{r['stack_frame']} | {r['barriers']} | {r['ldg128']} | {r['stg128']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="80,90", help="comma-separated SM versions (default: 80,90)")
    parser.add_argument("--json", help="also write the records to this JSON file")
    args = parser.parse_args(argv)
    records, have_sass = run(tuple(a.strip() for a in args.archs.split(",")))
    print(to_markdown(records))
    if not have_sass:
        print("\n(cuobjdump not found: SASS columns empty)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    bad = [r for r in records if r["spill_stores"] or r["spill_loads"] or r["stack_frame"] or
           (r["block_reducing"] and have_sass and not r["barriers"]) or
           (r["must_vectorise"] and have_sass and not (r["ldg128"] and r["stg128"]))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
