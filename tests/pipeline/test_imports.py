"""The library and the pipeline are separate rooms: ``import grl_cuda`` loads none of
the pipeline or its heavy dependencies, and the pipeline uses only the library's
public API."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIPELINE = os.path.join(ROOT, "grl_cuda", "pipeline")
PUBLIC = {"grl_cuda", "grl_cuda.schedules"}  # what the pipeline may import from the library


def _loaded_after(statement):
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return set(out.stdout.split())


@pytest.mark.slow
def test_import_grl_cuda_loads_no_pipeline():
    loaded = _loaded_after("import grl_cuda")
    by_torch = _loaded_after("import torch")  # torch 2.14 itself imports tqdm
    assert not {m for m in loaded if m.startswith("grl_cuda.pipeline") or m == "grl_cuda.models"}
    heavy = {m for m in loaded - by_torch if m.split(".")[0] in ("matplotlib", "sklearn", "tqdm", "mlxtend")}
    assert not heavy


def test_pipeline_imports_only_the_public_api():
    for folder, _, files in os.walk(PIPELINE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    if node.module.startswith("grl_cuda") and not node.module.startswith("grl_cuda.pipeline"):
                        assert node.module in PUBLIC, f"{path}: from {node.module} import ..."
                if isinstance(node, ast.ImportFrom) and node.level > 0:
                    depth = os.path.relpath(folder, PIPELINE).count(os.sep) + (os.path.relpath(folder, PIPELINE) != ".")
                    assert node.level <= depth + 1, f"{path}: a relative import leaves the pipeline"
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.startswith("grl_cuda") and not alias.name.startswith("grl_cuda.pipeline"):
                            assert alias.name in PUBLIC, f"{path}: import {alias.name}"
