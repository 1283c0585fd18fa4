"""A disk cache for trained models and experiment results, keyed by a hash of their config.

A lecture that trains six networks should be instant the second time it runs, and a GPU run's
checkpoints should be reusable — on the same machine and, through ``cnn-course cache export`` /
``import`` (``cnnlib.course.results``), on a student's laptop. Every entry is keyed by a hash of

* the caller's config (anything ``repr``-able: hyper-parameters, a model's repr, a data fingerprint),
* the code version: a hash of every ``cnnlib`` source file, so changing the library invalidates
  results computed with the old code instead of silently reusing them.

An entry is the file ``<name>-<key>.pt`` (``entry_file``) in ``cache_dir()``, a ``torch.save`` of
``{"config": repr(config), "value": value, "meta": {...}}``. ``meta`` says where the value came
from: the cache ``name``, the active profile (``profile``: quick/medium/full, and ``data``: its
dataset), the profile's ``device`` type, the ``code_version``, the ``torch`` version and when it
was ``created`` (UTC). It is provenance only, never part of the key: export selects entries by it
(the full profile's, of this code version) and ``fit`` says "trained on cuda" when it loads a
model another device trained (``origin_note``). Entries written before ``meta`` existed have
none; they are still read, but cannot be exported (their profile and code version are unknown).

Writes are atomic (temporary file + ``os.replace``), so an interrupted run never leaves a
half-written entry behind; an entry that cannot be read anyway (truncated, corrupt, foreign) is
reported with a warning, deleted and recomputed — never trusted.

Which keys carry the device
---------------------------
A result computed on a GPU is worth sharing only if a CPU can find it, so a key holds the device
only where the result is *about* the device. The device changes float rounding (bf16 autocast,
channels-last kernels, another reduction order), not what a recipe computes:

* ``fit`` (``cnnlib.train``): the model's repr and initial weights, the data's fingerprint and the
  hyper-parameters. Not the device, and ``amp``/``channels_last`` as the caller gave them:
  ``None`` (also a value equal to the device's default) means "the device's default" — bf16 and
  channels-last on CUDA, fp32 and channels-last on the CPU — so a default GPU run and a default
  CPU run share one entry; a value that departs from the device's default (``amp=False`` on
  CUDA) is keyed as given. Under torchrun the key also holds the number of processes (BatchNorm
  sees a smaller batch; ``cnnlib.distributed``). The history's wall times are those of the
  machine that trained.
* ``landscape`` (``cnnlib.landscape.surface``): a digest of the tensors' bytes (centre weights,
  directions, evaluation images) plus the model's repr, split and BatchNorm mode — no device
  (the stored ``meta["device"]`` only records where it ran). The directions are hashed by value;
  ``random_direction`` draws and normalizes them on the CPU, so they are the same bits on every
  device. Directions a caller computes on the GPU can differ in the last bits, and the CPU then
  misses and recomputes the surface; it never reads a wrong one.
* ``neb`` (``cnnlib.connectivity.autoneb``), ``nas-proxy`` and ``nas-darts``
  (``cnnlib.search``): digests of the end points, data fingerprints and settings — no device.
  The proxy's measured cost is the computing machine's, replayed as measured.
* ``curve`` (``cnnlib.connectivity.curves``): digests of the two ends and the starting bend, the
  data fingerprint and the hyper-parameters — no device (float32 everywhere, as ``fit``).
* the lectures' own ``cnnlib.cache.cached`` calls (Lecture 09's ``l09-hessian``,
  ``l09-ratio-maps``) key on the profile's name, dataset, seed and cfg — no device.

A data fingerprint hashes the tensors' bytes, so data resampled on the device
(``ImageData.resize`` to another size, as Lecture 05's resolution scaling does) may differ in
the last bits between devices, and its entries then miss on the other device in the same way.

``$CNNLIB_CACHE`` sets the folder (default ``~/.cache/cnnlib/runs``); ``CNNLIB_CACHE=off``
switches caching off.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

ENTRY_FILE = re.compile(r"^[a-z0-9_.-]+-[0-9a-f]{20}\.pt$")
"""What an entry's file name looks like (only such files are exported or imported)."""


def cache_dir() -> Path | None:
    """The cache folder, or None when ``CNNLIB_CACHE=off``."""
    value = os.environ.get("CNNLIB_CACHE", "")
    if value.lower() in ("off", "0", "false", "no"):
        return None
    return Path(value or Path.home() / ".cache" / "cnnlib" / "runs").expanduser()


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the library's source code: results computed by other code are not reused."""
    h = hashlib.sha1()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def key(config: Any) -> str:
    """The cache key of a config: a hash of its ``repr`` and of the code version."""
    return hashlib.sha1(f"{code_version()}|{config!r}".encode()).hexdigest()[:20]


def entry_file(name: str, config_repr: str, version: str | None = None) -> str:
    """The file name of the entry ``(name, config)``, given ``repr(config)``: ``name-<key>.pt``
    with ``key((name, config))`` of code version ``version`` (default: this one). An import
    checks with it that every entry lies under the key its own config gives."""
    digest = hashlib.sha1(f"{version or code_version()}|({name!r}, {config_repr})".encode())
    return f"{name}-{digest.hexdigest()[:20]}.pt"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def provenance(name: str) -> dict:
    """The ``meta`` stored with a new entry of cache ``name``: the active profile (name,
    dataset, device type), the code and torch versions, and the time (UTC, ISO 8601)."""
    from . import profile as _profile

    try:
        prof = _profile.current()
        where = {"profile": prof.name, "data": str(getattr(prof, "data", "")), "device": prof.device.type}
    except ValueError:  # a mistyped CNNLIB_PROFILE: the computation stands, its origin is unknown
        where = {"profile": "unknown", "data": "", "device": ""}
    # plain str values only: the entry is read back with torch.load(weights_only=True), which
    # refuses str subclasses such as torch.__version__'s TorchVersion
    return {"name": name, **where, "code_version": code_version(), "torch": str(torch.__version__),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


_ORIGINS: dict[str, dict] = {}  # file name -> meta of the entry cached() last returned for it


def origin(name: str, config: Any) -> dict:
    """The ``meta`` of the entry the last ``cached(name, config, ...)`` of this process read or
    wrote: ``{}`` if there was none or the entry predates provenance."""
    return dict(_ORIGINS.get(entry_file(name, repr(config)), {}))


def origin_note(name: str, config: Any, device: torch.device | str) -> str:
    """``", trained on cuda"`` when the entry of ``(name, config)`` was computed on another
    device type than ``device`` (for "loaded from cache" messages); ``""`` otherwise."""
    there = origin(name, config).get("device")
    here = torch.device(device).type
    return f", trained on {there}" if there and there != here else ""


def cached(name: str, config: Any, compute: Callable[[], Any]) -> Any:
    """Return the stored result for (``name``, ``config``), or ``compute()`` it and store it.

    The result must be something ``torch.save`` can write (tensors, dicts, lists, numbers).
    ``name`` should match ``ENTRY_FILE`` (lower-case letters, digits, ``_.-``) for the entry to
    travel in a results archive.
    """
    folder = cache_dir()
    if folder is None:
        return compute()
    path = folder / entry_file(name, repr(config))
    if path.exists():
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(entry, dict) and entry.get("config") == repr(config):
                meta = entry.get("meta")
                _ORIGINS[path.name] = dict(meta) if isinstance(meta, dict) else {}
                return entry["value"]
            problem = "it belongs to a different config"
        except Exception as err:  # truncated, corrupt, or not a cache file at all
            problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        warnings.warn(f"cnnlib cache: ignoring unreadable entry {path} ({problem}); recomputing",
                      RuntimeWarning, stacklevel=2)
        path.unlink(missing_ok=True)
    value = compute()
    meta = provenance(name)
    atomic_save({"config": repr(config), "value": value, "meta": meta}, path)
    _ORIGINS[path.name] = meta
    return value
