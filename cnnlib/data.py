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
``cifar10`` / ``cifar100``
    CIFAR (Krizhevsky 2009), 50,000 + 10,000 colour images of 32×32, through torchvision into
    ``$CNNLIB_DATA`` (default ``~/.cache/cnnlib/data``). The default in the full profile.

Photos for filter and receptive-field demos come from scikit-image's bundled images (``photo``).
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import profile as _profile

DATASETS = ("digits", "cifar10", "cifar100")
PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "horse", "brick", "grass")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor downloadable; the message says where to put it."""


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
         download: bool = True) -> ImageData:
    """Load a dataset as normalized tensors on ``device`` (default: the profile's device).

    ``name`` defaults to the profile's dataset (digits in quick, CIFAR-10 in full); ``size``
    resamples the images to ``size``×``size``.
    """
    prof = _profile.current()
    name = (name or prof.data).lower()
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if name == "digits":
        data = _digits()
    else:
        data = _cifar(name, data_root(), download)
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
