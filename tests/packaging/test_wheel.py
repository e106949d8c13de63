"""Packaging: one version, the build's local label, `python -m grl_cuda`, and the refusal
to load the compiled core into a torch it was not built for. Runs from the source tree and
against an installed wheel (.ci/wheel); the setup.py checks only from the source tree."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import grl_cuda
from grl_cuda import _version
from grl_cuda.__main__ import kernels_for_gpu

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(grl_cuda.__file__)))
SETUP_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "setup.py")


def _run_python(code_or_args):
    """A fresh interpreter that imports this very copy of grl_cuda."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PACKAGE_PARENT, os.environ.get("PYTHONPATH", "")]))
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def _setup_module():
    if not os.path.isfile(SETUP_PY):
        pytest.skip("setup.py is not here (an installed wheel)")
    spec = importlib.util.spec_from_file_location("grl_setup", SETUP_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # main() only runs under __main__
    return module


def test_version_is_pep440():
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", grl_cuda.__version__)


def test_setup_reads_the_one_version():
    assert _setup_module().read_version() == grl_cuda.__version__


def test_build_version_names_the_torch_it_was_built_for():
    info = grl_cuda.build_info()
    if "version" not in info:
        pytest.skip("built before setup.py recorded the version")
    public, _, label = info["version"].partition("+")
    assert public == grl_cuda.__version__
    if label and os.environ.get("GRL_LOCAL_VERSION", "auto") == "auto":
        release = info["torch_version"].split("+")[0].replace(".", "")
        variant = "cu" + info["torch_cuda"].replace(".", "") if info["with_cuda"] else "cpu"
        assert label == f"pt{release}{variant}"


def test_local_label_and_arch_flags(monkeypatch, tmp_path):
    setup = _setup_module()
    monkeypatch.delenv("GRL_LOCAL_VERSION", raising=False)
    monkeypatch.delenv("PIP_BUILD_TRACKER", raising=False)
    cuda = {"torch_version": "2.14.1+cu130", "torch_cuda": "13.0", "with_cuda": True}
    cpu = {"torch_version": "2.13.0+cpu", "torch_cuda": None, "with_cuda": False}
    assert setup.local_label(cuda) == "pt2141cu130"
    assert setup.local_label(cpu) == "pt2130cpu"
    assert setup.local_label(dict(cuda, with_cuda=False)) == "pt2141cpu"  # GRL_CUDA=0 on a CUDA torch
    # pip refuses a wheel built from an index's sdist unless it keeps the sdist's version
    (tmp_path / "PKG-INFO").write_text("Version: 0.2.0\n")
    monkeypatch.setattr(setup, "HERE", str(tmp_path))
    monkeypatch.setenv("PIP_BUILD_TRACKER", str(tmp_path))
    assert setup.local_label(cuda) == ""
    monkeypatch.delenv("PIP_BUILD_TRACKER")
    assert setup.local_label(cuda) == "pt2141cu130"  # python -m build also builds from the sdist
    monkeypatch.setenv("GRL_LOCAL_VERSION", "none")
    assert setup.local_label(cuda) == ""
    assert setup.cuda_arch_flags("7.5;8.0 9.0a;12.0+PTX") == ["sm_75", "sm_80", "sm_90a", "sm_120", "compute_120"]


def test_python_m_grl_cuda_reports_the_build():
    done = _run_python(["-m", "grl_cuda"])
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"grl_cuda {grl_cuda.build_info().get('version', grl_cuda.__version__)}" in text
    assert f"torch    {torch.__version__}" in text
    assert re.search(r"^CPU +kernels", text, re.M) and re.search(r"^CUDA +kernels", text, re.M), text
    assert "GPU" in text
    facts = json.loads(_run_python(["-m", "grl_cuda", "--json"]).stdout)
    assert facts["grl_cuda"] == grl_cuda.__version__
    assert facts["cuda_compiled"] == grl_cuda._C.cuda_compiled()
    assert facts["cuda_available"] == torch.cuda.is_available()
    if facts["cuda_compiled"]:
        assert facts["cuda_arch_flags"], "a CUDA build records its architectures"


def test_import_refuses_a_build_for_another_torch():
    # the build record of a wheel made for another torch, in front of the real one
    fake = {"torch_version": "1.13.0+cu117", "torch_cuda": "11.7", "with_cuda": True, "version": "0.2.0+pt1130cu117"}
    code = (
        "import sys, types\n"
        "m = types.ModuleType('grl_cuda._build_config')\n"
        f"m.BUILD_CONFIG = {fake!r}\n"
        "sys.modules['grl_cuda._build_config'] = m\n"
        "import grl_cuda\n"
    )
    done = _run_python(code)
    assert done.returncode != 0, "grl_cuda imported although it was built for another torch"
    assert "ImportError" in done.stderr
    assert "1.13.0+cu117" in done.stderr and str(torch.__version__) in done.stderr, done.stderr
    assert 'pip install "torch==1.13.0" --index-url https://download.pytorch.org/whl/cu117' in done.stderr
    assert "pip install --no-build-isolation" in done.stderr


def test_torch_mismatch_rules():
    cuda_build = {"torch_version": "2.14.1+cu130", "torch_cuda": "13.0", "with_cuda": True}
    cpu_build = {"torch_version": "2.13.0+cpu", "torch_cuda": None, "with_cuda": False}
    assert _version.torch_mismatch(cuda_build, "2.14.1+cu130", "13.0") is None
    assert _version.torch_mismatch(cuda_build, "2.14.1+cu131", "13.1") is None  # same libcudart.so.13
    assert "CPU-only" in _version.torch_mismatch(cuda_build, "2.14.1+cpu", None)
    assert "CUDA 12.8" in _version.torch_mismatch(cuda_build, "2.14.1+cu128", "12.8")
    assert "2.14.0" in _version.torch_mismatch(cuda_build, "2.14.0+cu130", "13.0")  # C++ symbols change
    assert _version.torch_mismatch(cpu_build, "2.13.0+cu128", "12.8") is None  # CPU kernels: any variant
    assert _version.torch_mismatch(cpu_build, "2.14.1+cpu", None) is not None
    assert _version.torch_mismatch({}, "2.14.1", None) is None  # nothing recorded, nothing to compare
    with pytest.raises(ImportError, match=r'pip install "torch==2.13.0"\n'):
        _version.check_torch(cpu_build, "2.14.1+cpu", None)


@pytest.mark.parametrize(
    "flags, capability, runs",
    [
        (["sm_75", "sm_80", "sm_90", "compute_120"], (9, 0), "sm_90 machine code"),
        (["sm_80", "sm_86"], (8, 9), "sm_86 machine code"),  # same major, older minor runs
        (["sm_80", "compute_80"], (9, 0), "compute_80 PTX, compiled by the driver at first use"),
        (["sm_80", "compute_120"], (7, 5), None),
        (["sm_90a"], (9, 0), "sm_90a machine code"),
    ],
)
def test_kernels_for_gpu(flags, capability, runs):
    assert kernels_for_gpu(flags, capability) == runs


def test_metadata_runs_leave_the_build_record_alone(monkeypatch):
    # a frontend runs `setup.py egg_info` in the source folder before making an sdist; with
    # another torch there, rewriting grl_cuda/_build_config.py would make the folder's own
    # build refuse to import
    setup = _setup_module()
    for argv, compiles in [(["egg_info"], False), (["dist_info"], False), (["sdist"], False),
                           (["bdist_wheel"], True), (["editable_wheel"], True), (["build_ext", "--inplace"], True)]:
        monkeypatch.setattr(sys, "argv", ["setup.py", *argv])
        assert setup.compiling() == compiles, argv
