"""The build: CUDA kernels are compiled whenever they can be, and build_info says so."""

import importlib.util
import os
import sys

import pytest
import torch

import grl_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_setup_helpers():
    spec = importlib.util.spec_from_file_location("grl_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # main() only runs under __main__
    return module


def test_build_info_reports_backends():
    info = grl_cuda.build_info()
    assert isinstance(info["cuda_compiled"], bool)
    assert info["torch_runtime_version"] == torch.__version__
    assert "with_cuda" in info, "setup.py records its resolved configuration"
    assert info["with_cuda"] == info["cuda_compiled"]


def test_cuda_kernels_built_whenever_possible():
    setup = _load_setup_helpers()
    toolkit = setup.find_cuda_home()
    if torch.version.cuda is None or toolkit is None or os.environ.get("GRL_CUDA") == "0":
        pytest.skip("no CUDA build of torch or no CUDA toolkit here: nothing to compile")
    assert grl_cuda.build_info()["cuda_compiled"], (
        f"torch is a CUDA build and a toolkit is at {toolkit}, but the CUDA kernels were not compiled"
    )


def test_the_library_imports_and_runs_without_numpy():
    # torch is the library's one runtime dependency (numpy is the pipeline's)
    import subprocess
    import sys

    code = ("import sys; sys.modules['numpy'] = None\n"
            "import torch, grl_cuda\n"
            "x = torch.ones(3, requires_grad=True)\n"
            "grl_cuda.grad_reverse(x, 0.5).sum().backward()\n"
            "assert x.grad.tolist() == [-0.5] * 3\n"
            "grl_cuda.GradientReversal(0.3).set_lambda(0.4)\n")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
