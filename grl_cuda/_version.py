"""The package version (the one place it is written; setup.py reads it as text) and the
import-time check that the compiled core was built for the torch it is about to load into."""

__version__ = "0.2.0"


def _release(version):
    """'2.14.1+cu130' -> '2.14.1' (the public part: what the C++ ABI follows)."""
    return str(version).split("+", 1)[0]


def torch_mismatch(build, torch_version, torch_cuda):
    """Why a build described by `build` (setup.py's BUILD_CONFIG) cannot load into torch
    `torch_version` (with CUDA `torch_cuda`, None for a CPU build), or None when it can.

    The compiled core links against libtorch's C++ symbols, which change between torch
    releases, so the release must match exactly. CUDA kernels also link the CUDA runtime
    torch was built with (libcudart.so.<major>), so they need a CUDA torch of the same
    major CUDA version. CPU kernels load into any variant of the release."""
    built_for = build.get("torch_version")
    if not built_for:
        return None  # a build from before setup.py recorded it: nothing to compare
    if _release(built_for) != _release(torch_version):
        return f"it was built for torch {built_for}, but this environment has torch {torch_version}"
    if build.get("with_cuda"):
        built_cuda = build.get("torch_cuda")
        if torch_cuda is None:
            return (
                f"it holds CUDA kernels built for torch {built_for} (CUDA {built_cuda}), but this "
                f"environment has torch {torch_version}, a CPU-only build"
            )
        if built_cuda and str(built_cuda).split(".")[0] != str(torch_cuda).split(".")[0]:
            return (
                f"it holds CUDA kernels built for torch {built_for} (CUDA {built_cuda}), but this "
                f"environment has torch {torch_version} (CUDA {torch_cuda})"
            )
    return None


def torch_install_command(build):
    """The pip command that installs the torch `build` was made for."""
    release = _release(build["torch_version"])
    if build.get("with_cuda") and build.get("torch_cuda"):
        variant = "cu" + str(build["torch_cuda"]).replace(".", "")
        return f'pip install "torch=={release}" --index-url https://download.pytorch.org/whl/{variant}'
    return f'pip install "torch=={release}"'


def check_torch(build, torch_version, torch_cuda):
    """Raise ImportError, naming both versions and the commands that fix it, when the
    compiled core cannot load into this torch (loading it anyway fails with undefined
    symbols at best)."""
    why = torch_mismatch(build, torch_version, torch_cuda)
    if why is None:
        return
    ours = build.get("version") or __version__
    raise ImportError(
        f"grl_cuda {ours} cannot be imported: {why}. Either install the torch it was built for:\n"
        f"    {torch_install_command(build)}\n"
        f"or install a grl_cuda built for torch {torch_version}: its wheel (local version "
        f"+pt{_release(torch_version).replace('.', '')}..., made by tools/build_wheels.sh), or compile "
        f"it against this torch from the source folder or sdist:\n"
        f"    pip install --no-build-isolation --force-reinstall --no-deps <grl_cuda source or sdist>"
    )
