"""Build grl_cuda's compiled core against the torch already installed.

    pip install --no-build-isolation .                  # install from source
    python -m build --no-isolation                      # sdist + wheel (tools/build_wheels.sh: every supported torch)

CPU kernels are always built. CUDA kernels are built whenever torch is a CUDA
build and a CUDA toolkit (nvcc) is found, whether or not a GPU is visible: a
GPU-less build machine still produces CUDA kernels.

Environment switches:
    GRL_CUDA=auto|1|0       build CUDA kernels: when possible (default), always (fail if impossible), never
    CUDA_HOME               the CUDA toolkit folder (holding bin/nvcc and include/); found automatically if unset
    TORCH_CUDA_ARCH_LIST    GPU architectures, e.g. "9.0" or "8.0;9.0+PTX" (default: see DEFAULT_CUDA_ARCHS)
    MAX_JOBS                parallel compile jobs (ninja)
    GRL_LOCAL_VERSION       the wheel's local version label: auto (default: what it was built against,
                            e.g. 0.2.0+pt2141cu130), none, or a label of your own

A wheel (or any binary build) requires exactly the torch release it was compiled against;
the sdist only the oldest torch the sources support.
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig

from setuptools import find_packages, setup

# Turing to Blackwell, plus PTX of the newest for future GPUs. CUDA 13 dropped
# architectures older than Turing.
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
HERE = os.path.dirname(os.path.abspath(__file__))
MIN_TORCH = "2.4"


def read_version():
    """grl_cuda/_version.py holds the version; read as text, since importing the package
    needs its compiled core."""
    with open(os.path.join(HERE, "grl_cuda", "_version.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def building_sdist():
    return "sdist" in sys.argv[1:]


def compiling():
    """Whether this run builds the package (and so must record what it builds). Build
    frontends also run setup.py for metadata only (egg_info, dist_info), for instance in
    the source folder before making an sdist: those must not overwrite the record of the
    folder's own build."""
    commands = {"build", "build_ext", "build_py", "bdist_wheel", "editable_wheel", "develop", "install"}
    return bool(commands & set(sys.argv[1:]))


def torch_release(version):
    return str(version).split("+", 1)[0]


def local_label(config):
    """'pt2141cu130': the torch release and, when CUDA kernels are in, the CUDA version
    they need; 'pt2130cpu' for CPU kernels only."""
    setting = os.environ.get("GRL_LOCAL_VERSION", "auto").strip()
    if setting.lower() in ("", "none", "0"):
        return ""
    if setting.lower() != "auto":
        return setting
    # pip checks that a wheel it builds from an sdist found on an index keeps the
    # sdist's version, so a source build by pip from an sdist gets no label.
    if os.path.isfile(os.path.join(HERE, "PKG-INFO")) and "PIP_BUILD_TRACKER" in os.environ:
        return ""
    label = "pt" + torch_release(config["torch_version"]).replace(".", "")
    if config["with_cuda"]:
        return label + "cu" + str(config["torch_cuda"]).replace(".", "")
    return label + "cpu"


def cpu_isa_paths():
    """The CPU code paths compiled in: csrc/cpu/bce_avx2.cpp adds an AVX2 + FMA (+ F16C)
    copy of the fused losses' loops on x86-64 (chosen at run time by CPUID)."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return ["baseline", "avx2+fma"]
    return ["baseline"]


def cuda_arch_flags(archs):
    """'8.0;9.0+PTX' -> ['sm_80', 'sm_90', 'compute_90']: the machine code (sm_) and the
    PTX (compute_, compiled by the driver for newer GPUs) in the binary."""
    flags = []
    for entry in re.split(r"[;\s,]+", archs.strip()):
        if not entry:
            continue
        number, _, ptx = entry.partition("+")
        digits = number.replace(".", "")
        if not re.fullmatch(r"\d+[a-z]?", digits):
            flags.append(entry)  # a name such as "Hopper": torch resolves it; report as given
            continue
        flags.append("sm_" + digits)
        if ptx.upper() == "PTX":
            flags.append("compute_" + digits)
    return flags


def nvcc_version(cuda_home):
    try:
        out = subprocess.run(
            [os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def _is_cuda_toolkit(folder):
    return bool(folder) and os.path.isfile(os.path.join(folder, "bin", "nvcc")) and os.path.isfile(
        os.path.join(folder, "include", "cuda_runtime_api.h")
    )


def find_cuda_home():
    """The CUDA toolkit folder. An `nvcc` on PATH may be a wrapper script in
    /usr/local/bin, so candidates must hold the toolkit's headers too."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # a wrapper script: look for the path it execs
            with open(nvcc, "r", errors="ignore") as f:
                for word in f.read().split():
                    if word.endswith("/bin/nvcc"):
                        candidates.append(os.path.dirname(os.path.dirname(word)))
        except OSError:
            pass
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for folder in candidates:
        if _is_cuda_toolkit(folder):
            return os.path.abspath(folder)
    return None


def nvidia_wheel_includes():
    """Headers shipped by the `nvidia-*` wheels that CUDA builds of torch install;
    they complete a partial toolkit."""
    site = sysconfig.get_paths()["purelib"]
    return sorted(p for p in glob.glob(os.path.join(site, "nvidia", "*", "include")) if os.path.isdir(p))


def resolve_config():
    mode = os.environ.get("GRL_CUDA", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        sys.exit(f"GRL_CUDA must be auto, 1 or 0, got {mode!r}")
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
    import torch

    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a CPU-only build")
    if cuda_home is None:
        reasons.append("no CUDA toolkit found (set CUDA_HOME to the folder holding bin/nvcc)")
    with_cuda = mode == "1" or (mode == "auto" and not reasons)
    if mode == "1" and reasons:
        sys.exit("GRL_CUDA=1 but CUDA kernels cannot be built: " + "; ".join(reasons))
    if mode == "0":
        reasons = ["GRL_CUDA=0"]
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    config = {
        "with_cuda": with_cuda,
        "why_no_cuda": "; ".join(reasons) if not with_cuda else "",
        "cuda_home": cuda_home if with_cuda else None,
        "cuda_archs": archs if with_cuda else None,
        "cuda_arch_flags": cuda_arch_flags(archs) if with_cuda else [],
        "nvcc_version": nvcc_version(cuda_home) if with_cuda else None,
        "torch_version": str(torch.__version__),
        "torch_cuda": torch.version.cuda,
        "cpu_isa_paths": cpu_isa_paths(),
        "python": platform.python_version(),
    }
    label = local_label(config)
    config["version"] = read_version() + ("+" + label if label else "")
    return config


def write_build_config(config):
    """grl_cuda/_build_config.py records what was built; grl_cuda.build_info() reads it."""
    path = os.path.join(HERE, "grl_cuda", "_build_config.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py at build time. Do not edit.\n")
        f.write(f"BUILD_CONFIG = {config!r}\n")


def openmp_compile_flags():
    """["-fopenmp"] when torch runs its CPU threads on OpenMP and the compiler accepts the flag.

    ATen's at::parallel_for is an OpenMP pragma in its headers: compiled without -fopenmp,
    every CPU loop of ours ran on one thread whatever torch.set_num_threads said. Only the
    compile flag: not linking an OpenMP runtime leaves the GOMP_* calls to the runtime torch
    has loaded (its libtorch_cpu depends on it, whatever its file is called), so there is one
    thread pool and torch.set_num_threads governs our loops too."""
    import torch

    if sys.platform != "linux" or "OpenMP" not in torch.__config__.parallel_info():
        return []
    import tempfile

    compiler = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.cpp")
        with open(src, "w") as f:
            f.write("int main() {\n  int n = 0;\n#pragma omp parallel reduction(+ : n)\n  n += 1;\n  return n > 0 ? 0 : 1;\n}\n")
        probe = subprocess.run([compiler, "-fopenmp", "-c", src, "-o", os.path.join(tmp, "omp.o")],
                               capture_output=True, text=True)
    if probe.returncode != 0:
        print(f"grl_cuda: {compiler} does not accept -fopenmp; the CPU loops will run on one thread",
              file=sys.stderr)
        return []
    return ["-fopenmp"]


def extensions(config):
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = ["csrc/ops.cpp", "csrc/bindings.cpp", "csrc/cpu/kernels_cpu.cpp", "csrc/cpu/bce_avx2.cpp",
               "csrc/cpu/reverse_avx2.cpp"]
    # -fno-trapping-math lets the compiler if-convert (and so vectorise) the loss
    # loop's selects; it changes no result, only assumes FP exceptions do not trap.
    # -g0: no debug info (Python's default flags add -g), a third less compile time and a smaller wheel.
    cxx_flags = ["-O3", "-fno-trapping-math", "-g0"]
    cxx_flags += openmp_compile_flags()
    if not config["with_cuda"]:
        return [CppExtension("grl_cuda._C", sources, extra_compile_args={"cxx": cxx_flags})]
    sources.append("csrc/cuda/kernels_cuda.cu")
    return [
        CUDAExtension(
            "grl_cuda._C",
            sources,
            include_dirs=nvidia_wheel_includes(),
            define_macros=[("GRL_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        )
    ]


def main():
    packages = find_packages(include=["grl_cuda", "grl_cuda.*"])  # bench/ runs from a checkout
    if building_sdist():  # sources only (MANIFEST.in): no torch needed, nothing compiled
        setup(version=read_version(), packages=packages, install_requires=[f"torch>={MIN_TORCH}"])
        return
    config = resolve_config()
    print("grl_cuda build configuration:")
    for key, value in config.items():
        print(f"  {key:15s} {value}")
    if compiling():
        write_build_config(config)
    from torch.utils.cpp_extension import BuildExtension

    setup(
        version=config["version"],
        packages=packages,
        # the compiled core links libtorch's C++ API: only this torch release can load it
        install_requires=[f"torch=={torch_release(config['torch_version'])}"],
        ext_modules=extensions(config),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
