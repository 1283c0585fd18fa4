"""A disk cache for trained models and experiment results, keyed by a hash of their config.

A lecture that trains six networks should be instant the second time it runs, and a GPU run's
checkpoints should be reusable. Every entry is keyed by a hash of

* the caller's config (anything ``repr``-able: hyper-parameters, a model's repr, a data fingerprint),
* the code version: a hash of every ``cnnlib`` source file, so changing the library invalidates
  results computed with the old code instead of silently reusing them.

Writes are atomic (temporary file + ``os.replace``), so an interrupted run never leaves a
half-written entry behind; an entry that cannot be read anyway (truncated, corrupt, foreign) is
reported with a warning, deleted and recomputed — never trusted.

``$CNNLIB_CACHE`` sets the folder (default ``~/.cache/cnnlib/runs``); ``CNNLIB_CACHE=off``
switches caching off.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch


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


def cached(name: str, config: Any, compute: Callable[[], Any]) -> Any:
    """Return the stored result for (``name``, ``config``), or ``compute()`` it and store it.

    The result must be something ``torch.save`` can write (tensors, dicts, lists, numbers).
    """
    folder = cache_dir()
    if folder is None:
        return compute()
    path = folder / f"{name}-{key((name, config))}.pt"
    if path.exists():
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(entry, dict) and entry.get("config") == repr(config):
                return entry["value"]
            problem = "it belongs to a different config"
        except Exception as err:  # truncated, corrupt, or not a cache file at all
            problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        warnings.warn(f"cnnlib cache: ignoring unreadable entry {path} ({problem}); recomputing",
                      RuntimeWarning, stacklevel=2)
        path.unlink(missing_ok=True)
    value = compute()
    atomic_save({"config": repr(config), "value": value}, path)
    return value
