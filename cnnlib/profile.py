"""Run profiles: how big an experiment is, on which device, with which seed.

Every notebook starts with ``P = cnnlib.setup()``. That one call

* picks the profile — ``quick`` (embedded digits, tiny models: proves the code runs, ≤ 90 s per
  notebook on 2 cores), ``medium`` (a laptop CPU: Fashion-MNIST, sized for each lecture's headline
  effect to rise above noise within about 6 minutes, where that budget can show it) or ``full`` (one GPU, CIFAR-10, the papers' model
  sizes). ``CNNLIB_PROFILE`` overrides the automatic choice: ``full`` when CUDA is present, else
  ``medium`` when Fashion-MNIST is on disk, else ``quick`` (with a hint on how to get it);
* picks the dataset: the profile's own (``DEFAULT_DATA``) unless ``CNNLIB_DATASET`` (or
  ``setup(data=...)``) names another — e.g. the full profile on Fashion-MNIST where CIFAR-10
  cannot be downloaded. Every lecture loads ``P.data``; its cfg sizes the run (subsets, resolution,
  depths) per profile, not per dataset;
* picks the device and seeds Python, NumPy and PyTorch;
* prints one line saying all of that, so a reader always knows what scale they are looking at.

An experiment states its scale in one visible place::

    cfg = P.choose(quick=dict(depths=(8, 20), epochs=4),
                   medium=dict(depths=(8, 20), epochs=8, size=16),
                   full=dict(depths=(20, 56), epochs=40))
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

PROFILES = ("quick", "medium", "full")
DEFAULT_DATA = {"quick": "digits", "medium": "fashion-mnist", "full": "cifar10"}
MEDIUM_HINT = ("cnnlib: the quick profile shows that the code runs, rarely the papers' effects; for those "
               "on this CPU get Fashion-MNIST (`sudo apt-get install dataset-fashion-mnist`, or "
               "cnnlib.load('fashion-mnist') once with internet) and rerun: the medium profile is then the default.")


@dataclass(frozen=True)
class Profile:
    """The scale an experiment runs at. ``name`` is ``"quick"``, ``"medium"`` or ``"full"``."""

    name: str
    device: torch.device
    seed: int
    data: str

    @property
    def quick(self) -> bool:
        return self.name == "quick"

    def choose(self, *, quick, medium, full):
        """Return ``quick``, ``medium`` or ``full`` according to this profile (all three are
        required: every experiment states its scale at every profile)."""
        return {"quick": quick, "medium": medium, "full": full}[self.name]

    def __str__(self) -> str:
        return f"profile={self.name} device={self.device} data={self.data} seed={self.seed}"


def resolve_profile_name(env: dict | None = None, cuda: bool | None = None,
                         fashion_mnist: bool | None = None) -> str:
    """The profile this process runs in: ``CNNLIB_PROFILE`` if set; else ``full`` with CUDA;
    else ``medium`` if Fashion-MNIST is on disk (``data.fashion_mnist_available``); else ``quick``."""
    env = os.environ if env is None else env
    name = env.get("CNNLIB_PROFILE", "").strip().lower()
    if name:
        if name not in PROFILES:
            raise ValueError(f"CNNLIB_PROFILE={name!r} is not a profile; choose one of {PROFILES}")
        return name
    if torch.cuda.is_available() if cuda is None else cuda:
        return "full"
    if fashion_mnist is None:
        from .data import fashion_mnist_available
        fashion_mnist = fashion_mnist_available()
    return "medium" if fashion_mnist else "quick"


def resolve_dataset(profile: str, data: str | None = None, env: dict | None = None) -> str:
    """The dataset a profile runs on: ``data`` if given, else ``CNNLIB_DATASET``, else the
    profile's default (``DEFAULT_DATA``). An unknown name is an error listing the known ones."""
    from .data import DATASETS

    env = os.environ if env is None else env
    given = data if data is not None else env.get("CNNLIB_DATASET", "")
    name = given.strip().lower().replace("_", "-") or DEFAULT_DATA[profile]
    if name not in DATASETS:
        source = "data" if data is not None else "CNNLIB_DATASET"
        raise ValueError(f"{source}={given!r} is not a dataset cnnlib knows; choose one of "
                         f"{', '.join(DATASETS)}")
    return name


def default_device() -> torch.device:
    """CUDA if present, then Apple's MPS, else the CPU. ``CNNLIB_DEVICE`` overrides."""
    if os.environ.get("CNNLIB_DEVICE"):
        return torch.device(os.environ["CNNLIB_DEVICE"])
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so a rerun draws the same numbers."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_current: Profile | None = None


def current() -> Profile:
    """The active profile (the one ``setup`` chose, or the automatic one if it was never called)."""
    global _current
    if _current is None:
        name = resolve_profile_name()
        _current = Profile(name, default_device(), 0, resolve_dataset(name))
    return _current


def setup(seed: int = 0, profile: str | None = None, device: str | torch.device | None = None,
          verbose: bool = True, data: str | None = None) -> Profile:
    """Choose profile, dataset and device, seed every generator, print what was chosen, return
    the Profile.

    ``profile``/``device``/``data`` override the environment (``CNNLIB_PROFILE``,
    ``CNNLIB_DEVICE``, ``CNNLIB_DATASET``) for this process.
    """
    global _current
    if profile is not None and profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not a profile; choose one of {PROFILES}")
    name = profile or resolve_profile_name()
    dev = torch.device(device) if device is not None else default_device()
    seed_everything(seed)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    _current = Profile(name, dev, seed, resolve_dataset(name, data))
    from .distributed import is_main

    if verbose and is_main():  # under torchrun: one line, rank 0's
        threads = f" threads={torch.get_num_threads()}" if dev.type == "cpu" else ""
        print(f"cnnlib: {_current}{threads} torch={torch.__version__}")
        if name == "quick" and profile is None and not os.environ.get("CNNLIB_PROFILE"):
            print(MEDIUM_HINT)  # quick was chosen for want of data, not asked for
    return _current


def choose(*, quick, medium, full):
    """Module-level shortcut for ``current().choose(quick=..., medium=..., full=...)``."""
    return current().choose(quick=quick, medium=medium, full=full)
