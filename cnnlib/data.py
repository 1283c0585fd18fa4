"""Datasets as tensors on the device, and batch-wise augmentation.

Small image datasets fit in memory many times over, so instead of a per-sample ``DataLoader``
we keep the whole dataset as one normalized tensor on the training device and cut mini-batches
out of it with index tensors (the approach of Keller Jordan's *airbench*). Augmentation
(random flip, pad-and-crop) is done on the whole batch at once.

Datasets
--------
``digits``
    scikit-learn's 1,797 handwritten digits (8×8 grey levels, 10 classes), shipped inside the
    installed scikit-learn package: no download, ever. The default in the quick profile.
``fashion-mnist``
    Zalando's Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 grey 28×28 photos of clothes in
    10 classes. Found, in this order, in ``$CNNLIB_DATA/FashionMNIST/raw`` (torchvision's layout),
    in Debian's package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), or
    downloaded by torchvision into ``$CNNLIB_DATA``. The default in the medium profile.
``cifar10`` / ``cifar100``
    CIFAR (Krizhevsky 2009), 50,000 + 10,000 colour images of 32×32, through torchvision into
    ``$CNNLIB_DATA`` (default ``~/.cache/cnnlib/data``). The default in the full profile.

Photos for filter and receptive-field demos come from scikit-image's bundled images (``photo``).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import struct
import urllib.error
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import profile as _profile

DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100")
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "horse", "brick", "grass")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says where to put it."""


class CorruptDatasetError(ValueError):
    """A dataset file is on disk but unreadable (truncated, not the format); the message names it."""


@dataclass(frozen=True)
class ImageData:
    """A labelled image dataset held as normalized tensors ``(N, C, H, W)`` on one device.

    ``flip`` says whether a horizontal flip preserves labels (true for CIFAR, not for digits);
    ``pad`` is the translation range of pad-and-crop augmentation in pixels.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    pad: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def device(self) -> torch.device:
        return self.x_train.device

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (f"ImageData({self.name}: {len(self.x_train)} train / {len(self.x_test)} test, "
                f"{c}×{h}×{w}, {self.num_classes} classes, on {self.device})")

    def to(self, device) -> "ImageData":
        device = torch.device(device)
        return replace(self, **{k: getattr(self, k).to(device) for k in _TENSORS})

    def subset(self, train: int | None = None, test: int | None = None, seed: int = 0) -> "ImageData":
        """A random (seeded, class-mixed) subset with at most ``train``/``test`` examples."""
        g = torch.Generator().manual_seed(seed)
        parts = {}
        for split, n in (("train", train), ("test", test)):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if n is not None and n < len(x):
                idx = torch.randperm(len(x), generator=g)[:n].to(x.device)
                x, y = x[idx], y[idx]
            parts[f"x_{split}"], parts[f"y_{split}"] = x, y
        return replace(self, **parts)

    def resize(self, size: int) -> "ImageData":
        """Resample every image to ``size``×``size`` (bilinear, antialiased when shrinking).

        The augmentation's translation range ``pad`` stays in pixels of the new size."""
        def rs(x):
            return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=size < x.shape[-1])
        return replace(self, x_train=rs(self.x_train), x_test=rs(self.x_test))

    def denormalize(self, x: Tensor) -> Tensor:
        """Undo the per-channel normalization, giving values in roughly [0, 1] for display."""
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return x * std + mean

    def fingerprint(self) -> str:
        """A short hash identifying the contents (used in cache keys)."""
        h = hashlib.sha1(repr((self.name, tuple(self.x_train.shape), tuple(self.x_test.shape),
                               self.flip, self.pad)).encode())
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


_TENSORS = ("x_train", "y_train", "x_test", "y_test")


def data_root() -> Path:
    """Where downloadable datasets live: ``$CNNLIB_DATA``, else ``~/.cache/cnnlib/data``."""
    return Path(os.environ.get("CNNLIB_DATA", Path.home() / ".cache" / "cnnlib" / "data")).expanduser()


def load(name: str | None = None, *, device=None, size: int | None = None,
         subset: tuple[int | None, int | None] | None = None, download: bool = True) -> ImageData:
    """Load a dataset as normalized tensors on ``device`` (default: the profile's device).

    ``name`` defaults to the profile's dataset (digits in quick, Fashion-MNIST in medium,
    CIFAR-10 in full); ``size`` resamples the images to ``size``×``size``; ``subset=(n_train,
    n_test)`` keeps a seeded random subset of each split (``None``: all of it).
    """
    prof = _profile.current()
    name = (name or prof.data).lower().replace("_", "-")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if name == "digits":
        data = _digits()
    elif name == "fashion-mnist":
        data = _fashion_mnist(data_root(), download)
    else:
        data = _cifar(name, data_root(), download)
    if subset is not None:
        data = data.subset(*subset)
    data = data.to(device if device is not None else prof.device)
    return data.resize(size) if size is not None else data


def _normalized(name, x_train, y_train, x_test, y_test, classes, flip, pad) -> ImageData:
    """Build an ImageData from float images in [0, 1], normalizing with the training statistics."""
    mean = x_train.mean(dim=(0, 2, 3))
    std = x_train.std(dim=(0, 2, 3))
    view = (1, -1, 1, 1)
    return ImageData(name, (x_train - mean.view(view)) / std.view(view), y_train,
                     (x_test - mean.view(view)) / std.view(view), y_test, tuple(classes),
                     tuple(mean.tolist()), tuple(std.tolist()), flip, pad)


def _digits() -> ImageData:
    """scikit-learn's digits with a fixed, stratified 80/20 split (1,437 train / 360 test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0
    idx_train, idx_test = train_test_split(np.arange(len(x)), test_size=0.2, random_state=0,
                                           stratify=digits.target)
    t = torch.from_numpy(x).unsqueeze(1)
    y = torch.from_numpy(digits.target).long()
    return _normalized("digits", t[idx_train], y[idx_train], t[idx_test], y[idx_test],
                       [str(i) for i in range(10)], flip=False, pad=1)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST: IDX files from $CNNLIB_DATA, Debian's package, or torchvision's download
# --------------------------------------------------------------------------------------------

FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (LeCun's MNIST format, gzip'd if the name ends in ``.gz``) as uint8 array.

    The header is two zero bytes, the element type (0x08: unsigned byte), the number of
    dimensions, then each dimension as a big-endian 32-bit integer; the data follow row-major.
    A file that is truncated or not in this format raises ``CorruptDatasetError`` naming it."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (EOFError, OSError, gzip.BadGzipFile) as err:  # truncated or not gzip
        raise CorruptDatasetError(f"{path} is unreadable ({err}); delete it and get it again") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise CorruptDatasetError(f"{path} is not an IDX file of unsigned bytes (header {raw[:4].hex()}); "
                                  f"delete it and get it again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else ()
    if len(raw) != header + math.prod(dims) or not dims:
        raise CorruptDatasetError(f"{path} holds {len(raw):,} bytes but its header promises "
                                  f"{header + math.prod(dims):,} (dimensions {dims}): truncated? "
                                  f"Delete it and get it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_mnist_folders(root: Path) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: torchvision's layout under ``root``, Debian's."""
    return [root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]


def _fashion_mnist_folder(root: Path) -> Path | None:
    for folder in _fashion_mnist_folders(root):
        if all(_idx_file(folder, stem) for pair in FASHION_MNIST_FILES.values() for stem in pair):
            return folder
    return None


def fashion_mnist_available(root: Path | None = None) -> bool:
    """Is a complete copy of Fashion-MNIST on disk (no download needed)?"""
    return _fashion_mnist_folder(data_root() if root is None else root) is not None


@functools.lru_cache(maxsize=2)
def _read_fashion_mnist(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for split, (images, labels) in FASHION_MNIST_FILES.items():
        x, y = read_idx(_idx_file(folder, images)), read_idx(_idx_file(folder, labels))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or (y.size and y.max() >= 10):
            raise CorruptDatasetError(
                f"{folder}: {images} has shape {x.shape} and {labels} shape {y.shape} (labels up to "
                f"{y.max() if y.size else None}); expected N×28×28 images and N labels in 0–9")
        out[split] = x, y
    return out


def _fashion_mnist(root: Path, download: bool) -> ImageData:
    """Fashion-MNIST from disk (see ``_fashion_mnist_folders``), else torchvision's download."""
    folder = _fashion_mnist_folder(root)
    if folder is None:
        from torchvision import datasets

        if not download or os.environ.get("CNNLIB_OFFLINE"):
            raise _fashion_mnist_missing(root, "downloading is switched off")
        try:
            datasets.FashionMNIST(str(root), train=True, download=True)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            raise _fashion_mnist_missing(root, f"the download failed: {err}") from None
        folder = _fashion_mnist_folder(root)
    arrays = _read_fashion_mnist(folder)

    def tensors(split):
        x, y = arrays[split]
        return torch.from_numpy(x.copy()).unsqueeze(1).float().div_(255), torch.from_numpy(y.astype(np.int64))

    return _normalized("fashion-mnist", *tensors("train"), *tensors("test"), FASHION_MNIST_CLASSES,
                       flip=True, pad=2)


def _fashion_mnist_missing(root: Path, why: str) -> DatasetNotFoundError:
    mine, debian = _fashion_mnist_folders(root)
    files = ", ".join(stem + ".gz" for pair in FASHION_MNIST_FILES.values() for stem in pair)
    return DatasetNotFoundError(
        f"Fashion-MNIST is not on this machine and {why}. Any one of these provides it:\n"
        f"  1. Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (puts the files in {debian});\n"
        f"  2. copy the four files ({files}) into {mine} (or point CNNLIB_DATA at a folder whose "
        f"FashionMNIST/raw/ has them);\n"
        f"  3. with internet: cnnlib.load('fashion-mnist') downloads them there through torchvision.\n"
        f"Without it, the quick profile runs on the embedded digits: CNNLIB_PROFILE=quick or load('digits').")


def _cifar(name: str, root: Path, download: bool) -> ImageData:
    """CIFAR-10/100 through torchvision; a clear error if it is missing and cannot be downloaded."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted."
        if not download or os.environ.get("CNNLIB_OFFLINE"):
            raise _cifar_missing(cls, root, "downloading is switched off") from None
        try:
            train = cls(str(root), train=True, download=True)
            test = cls(str(root), train=False)
        except (urllib.error.URLError, OSError, RuntimeError) as err:
            raise _cifar_missing(cls, root, f"download failed: {err}") from None

    def tensors(ds):
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255)
        return x, torch.tensor(ds.targets, dtype=torch.long)

    return _normalized(name, *tensors(train), *tensors(test), train.classes, flip=True, pad=4)


def _cifar_missing(cls, root: Path, why: str) -> DatasetNotFoundError:
    folder = root / cls.base_folder
    return DatasetNotFoundError(
        f"{cls.__name__} is not in {folder} and {why}.\n"
        f"Put a copy there: download {cls.url} on a machine with internet and unpack it into "
        f"{root} (so that {folder} holds the batch files), or point CNNLIB_DATA at a folder that "
        f"already has it. Without CIFAR, use the embedded data: CNNLIB_PROFILE=quick or load('digits').")


# --------------------------------------------------------------------------------------------
# Mini-batches and augmentation, on the device
# --------------------------------------------------------------------------------------------

def batches(x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = False,
            generator: torch.Generator | None = None, drop_last: bool = False):
    """Yield ``(x, y)`` mini-batches by slicing (or shuffled indexing) tensors already on the device."""
    n = len(x)
    if shuffle:
        order = torch.randperm(n, generator=generator).to(x.device)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        if shuffle:
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]
        else:
            yield x[i:i + batch_size], y[i:i + batch_size]


def augment(x: Tensor, *, flip: bool, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Random horizontal flip (if ``flip``) and random translation by up to ``pad`` pixels.

    Pad-and-crop is one gather: zero-pad the batch, then index every image's own window.
    Random numbers are drawn on the CPU generator, so CPU and GPU runs see the same augmentations.
    """
    n, c, h, w = x.shape
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
        x = torch.where(mask, x.flip(3), x)
    if pad > 0:
        shifts = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (shifts[0].view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (shifts[1].view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
        x = padded[batch, chan, rows, cols]
    return x


# --------------------------------------------------------------------------------------------
# Photos for filter / receptive-field / deformable demos
# --------------------------------------------------------------------------------------------

def photo(name: str = "astronaut", size: int | None = None, gray: bool = False) -> Tensor:
    """One of scikit-image's bundled photos as a float tensor ``(C, H, W)`` in [0, 1].

    ``size`` resizes the shorter side to ``size`` pixels and centre-crops to a square.
    """
    from skimage import data as skdata

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; bundled photos: {', '.join(PHOTOS)}")
    img = getattr(skdata, name)()
    t = torch.from_numpy(np.ascontiguousarray(img)).float()
    t = t / 255.0 if img.dtype == np.uint8 else t / float(t.max())
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)[:3]
    if gray and t.shape[0] == 3:
        t = (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2]).unsqueeze(0)
    if not gray and t.shape[0] == 1:
        t = t.expand(3, -1, -1).contiguous()
    if size is not None:
        h, w = t.shape[1:]
        s = min(h, w)
        t = t[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        t = F.interpolate(t.unsqueeze(0), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)[0].clamp(0, 1)
    return t
