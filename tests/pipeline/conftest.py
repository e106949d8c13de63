import json
import os

import pytest
import torch


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One cache of built tasks for every pipeline test (building MNIST-M takes seconds)."""
    return str(tmp_path_factory.mktemp("grl_data"))


@pytest.fixture
def assert_same_outputs():
    """assert_same_outputs(out_a, out_b): two run folders hold the same final weights,
    metrics and accuracies (a resumed run against an uninterrupted one)."""
    return _same_outputs


def _final_state(out):
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)
    return ckpt["method"]["networks"]


def _same_outputs(out_a, out_b):
    a, b = _final_state(out_a), _final_state(out_b)
    for net in a:
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    strip = lambda rec: {k: v for k, v in rec.items() if k not in ("train_seconds",)}  # noqa: E731
    lines_a = [strip(json.loads(x)) for x in open(os.path.join(out_a, "metrics.jsonl"))]
    lines_b = [strip(json.loads(x)) for x in open(os.path.join(out_b, "metrics.jsonl"))]
    assert lines_a == lines_b
    sa, sb = json.load(open(os.path.join(out_a, "summary.json"))), json.load(open(os.path.join(out_b, "summary.json")))
    assert sa["target_test_acc"] == sb["target_test_acc"] and sa["source_test_acc"] == sb["source_test_acc"]
