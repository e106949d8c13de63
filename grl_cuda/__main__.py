"""python -m grl_cuda (or grl-cuda-info): what this installation is, what it was built
with, which kernels it holds and which of them this machine will run.

    python -m grl_cuda           # readable report
    python -m grl_cuda --json    # the same facts as JSON
"""

import argparse
import json
import os
import platform
import sys


def cpu_has_avx2_fma():
    """Whether this CPU has AVX2, FMA and F16C, the test the compiled core makes (CPUID) before
    taking its AVX2 path. /proc/cpuinfo where there is one, else torch's own dispatch level."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return "avx2" in flags and "fma" in flags and "f16c" in flags
    except OSError:
        pass
    import torch

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def kernels_for_gpu(arch_flags, capability):
    """Which of the compiled CUDA code a GPU of compute capability (major, minor) runs:
    machine code (sm_XY) runs on the same major with minor >= Y; PTX (compute_XY) is
    compiled by the driver for any GPU of capability >= X.Y. None when neither fits."""
    major, minor = capability
    best_sass, best_ptx = None, None
    for flag in arch_flags:
        kind, _, digits = flag.partition("_")
        digits = digits.rstrip("abcdefghijklmnopqrstuvwxyz")
        if not digits.isdigit() or len(digits) < 2:
            continue
        f_major, f_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and f_major == major and f_minor <= minor:
            if best_sass is None or f_minor > best_sass[1]:
                best_sass = (flag, f_minor)
        elif kind == "compute" and (f_major, f_minor) <= (major, minor):
            if best_ptx is None or (f_major, f_minor) > best_ptx[1]:
                best_ptx = (flag, (f_major, f_minor))
    if best_sass:
        return f"{best_sass[0]} machine code"
    if best_ptx:
        return f"{best_ptx[0]} PTX, compiled by the driver at first use"
    return None


def collect():
    import torch

    import grl_cuda

    info = grl_cuda.build_info()
    facts = {
        "grl_cuda": grl_cuda.__version__,
        "build": info.get("version"),
        "location": os.path.dirname(os.path.abspath(grl_cuda.__file__)),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torch_cuda": torch.version.cuda,
        "built_against_torch": info.get("torch_version"),
        "cpu_isa_paths": info.get("cpu_isa_paths"),
        "cpu_avx2_fma": cpu_has_avx2_fma(),
        "cuda_compiled": info["cuda_compiled"],
        "why_no_cuda": info.get("why_no_cuda") or None,
        "cuda_arch_flags": info.get("cuda_arch_flags"),
        "nvcc_version": info.get("nvcc_version"),
        "cuda_available": info["cuda_available"],
        "gpus": [],
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            capability = torch.cuda.get_device_capability(index)
            runs = kernels_for_gpu(info.get("cuda_arch_flags") or [], capability) if info["cuda_compiled"] else None
            facts["gpus"].append(
                {
                    "index": index,
                    "name": torch.cuda.get_device_name(index),
                    "capability": f"{capability[0]}.{capability[1]}",
                    "runs": runs,
                }
            )
    return facts


def report(facts):
    lines = [f"grl_cuda {facts['build'] or facts['grl_cuda']}  ({facts['location']})"]
    lines.append(f"python   {facts['python']}")
    torch_line = f"torch    {facts['torch']}"
    if facts["torch_cuda"]:
        torch_line += f" (CUDA {facts['torch_cuda']})"
    if facts["built_against_torch"]:
        torch_line += f"; built against torch {facts['built_against_torch']}"
    lines.append(torch_line)

    paths = facts["cpu_isa_paths"]
    if paths is None:
        lines.append("CPU      kernels compiled (code paths not recorded by this build)")
    else:
        chosen = "avx2+fma" if "avx2+fma" in paths and facts["cpu_avx2_fma"] else "baseline"
        lines.append(f"CPU      kernels: {', '.join(paths)} (chosen at run time; this CPU: {chosen})")

    if facts["cuda_compiled"]:
        archs = ", ".join(facts["cuda_arch_flags"] or []) or "(not recorded)"
        toolkit = f" with nvcc {facts['nvcc_version']}" if facts["nvcc_version"] else ""
        lines.append(f"CUDA     kernels compiled{toolkit} for: {archs}")
    else:
        why = f": {facts['why_no_cuda']}" if facts["why_no_cuda"] else ""
        lines.append(f"CUDA     kernels not compiled{why}")

    if not facts["cuda_available"]:
        lines.append("GPU      none visible (torch.cuda.is_available() is False): CUDA tensors cannot be used")
    for gpu in facts["gpus"]:
        if not facts["cuda_compiled"]:
            runs = "no grl_cuda kernels (CUDA not compiled in)"
        elif gpu["runs"] is None:
            runs = "NO kernel fits this GPU: rebuild with TORCH_CUDA_ARCH_LIST=" + gpu["capability"]
        else:
            runs = "runs the " + gpu["runs"]
        lines.append(f"GPU {gpu['index']}    {gpu['name']} (compute capability {gpu['capability']}): {runs}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m grl_cuda", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = parser.parse_args(argv)
    facts = collect()
    print(json.dumps(facts, indent=2) if args.json else report(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
