"""Helpers for the exercises' hidden tests: values compared by exact type, blocks compared by what
they compute, reference code kept out of the answer.

- ``assert_same(actual, expected)``: equal *and* of exactly the expected type, recursively — an
  ``int`` subclass whose ``__eq__`` always says yes is not an ``int``; tensors and arrays by type,
  dtype, shape and value. (Its name starts with ``assert`` so the grader's negative canaries
  perturb its expected value: a kernel where it always passes is caught as tampered.)
- ``randomize(module, seed)`` and ``copy_weights(src, dst)``: give a reference block random
  weights *and* BatchNorm statistics, copy them into the student's block in registration order,
  then compare outputs on a fixed input — a block that computes the wrong function (ReLU for SiLU,
  an added instead of a multiplied gate) fails even when every shape is right.
- ``not_calling(*refs)``: a context in which calling any of the given reference functions,
  classes or modules of ``cnnlib`` fails the test ("write it yourself" enforced, not requested).
  It watches Python calls with ``sys.setprofile`` and matches code objects by file and line, so
  an alias (``from cnnlib.lesion import delete_blocks as mine``) is caught as well.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import sys
import threading
import types

import numpy as np
import torch

__all__ = ["assert_same", "copy_weights", "not_calling", "randomize"]


def _where(path: str) -> str:
    return f" at {path}" if path else ""


def assert_same(actual, expected, *, rtol: float | None = None, atol: float | None = None,
                msg: str = "", _path: str = "") -> None:
    """Raise AssertionError unless ``actual`` equals ``expected`` and has exactly its type.

    Containers (tuple, list, dict) are compared element by element; tensors by type, dtype,
    shape, device and value (``torch.testing.assert_close``; exact for integer and bool dtypes
    unless tolerances are given); NumPy arrays likewise; floats with ``math.isclose`` (defaults
    ``rtol = atol = 1e-7``); everything else with ``==`` after the type check (so the comparison
    is the built-in type's own).
    """
    prefix = f"{msg}: " if msg else ""
    if type(actual) is not type(expected):
        raise AssertionError(f"{prefix}expected a {type(expected).__qualname__}{_where(_path)}, "
                             f"got a {type(actual).__qualname__}")
    if isinstance(expected, (tuple, list)):
        if len(actual) != len(expected):
            raise AssertionError(f"{prefix}expected {len(expected)} items{_where(_path)}, got {len(actual)}")
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, rtol=rtol, atol=atol, msg=msg, _path=f"{_path}[{i}]")
    elif isinstance(expected, dict):
        if set(actual) != set(expected):
            raise AssertionError(f"{prefix}expected the keys {sorted(map(str, expected))}{_where(_path)}, "
                                 f"got {sorted(map(str, actual))}")
        for k in expected:
            assert_same(actual[k], expected[k], rtol=rtol, atol=atol, msg=msg, _path=f"{_path}[{k!r}]")
    elif isinstance(expected, torch.Tensor):
        for what in ("dtype", "shape", "device"):
            if getattr(actual, what) != getattr(expected, what):
                raise AssertionError(f"{prefix}expected {what} {getattr(expected, what)}{_where(_path)}, "
                                     f"got {getattr(actual, what)}")
        exact = rtol is None and atol is None and not (expected.is_floating_point() or expected.is_complex())
        try:
            torch.testing.assert_close(actual.detach(), expected.detach(), rtol=0 if exact else rtol,
                                       atol=0 if exact else atol, equal_nan=True)
        except AssertionError as err:
            raise AssertionError(f"{prefix}values differ{_where(_path)}: {err}") from None
    elif isinstance(expected, np.ndarray):
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            raise AssertionError(f"{prefix}expected {expected.dtype} {expected.shape}{_where(_path)}, "
                                 f"got {actual.dtype} {actual.shape}")
        if np.issubdtype(expected.dtype, np.inexact):
            np.testing.assert_allclose(actual, expected, rtol=1e-7 if rtol is None else rtol,
                                       atol=0 if atol is None else atol, err_msg=prefix + _path)
        else:
            np.testing.assert_array_equal(actual, expected, err_msg=prefix + _path)
    elif isinstance(expected, float):
        if not (math.isclose(actual, expected, rel_tol=1e-7 if rtol is None else rtol,
                             abs_tol=1e-7 if atol is None else atol) or (math.isnan(actual) and math.isnan(expected))):
            raise AssertionError(f"{prefix}expected {expected!r}{_where(_path)}, got {actual!r}")
    elif not actual == expected:
        raise AssertionError(f"{prefix}expected {expected!r}{_where(_path)}, got {actual!r}")


# ---------------------------------------------------------------------------- blocks by function

def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter with N(0, 0.5²) and every BatchNorm's running mean with N(0, 0.5²)
    and running variance with U(0.5, 2), reproducibly; returns ``module``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(m.running_var.shape, generator=g))
    return module


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module, order_hint: str = "") -> torch.nn.Module:
    """Copy ``src``'s parameters and floating-point buffers into ``dst`` in registration order;
    an AssertionError names the first pair whose shapes differ (the layers are missing, extra or
    declared in another order). Returns ``dst``."""
    hint = f" (the reference's order: {order_hint})" if order_hint else ""
    pairs = [(list(src.named_parameters()), list(dst.named_parameters()), "parameters"),
             ([b for b in src.named_buffers() if b[1].is_floating_point()],
              [b for b in dst.named_buffers() if b[1].is_floating_point()], "BatchNorm statistics")]
    with torch.no_grad():
        for theirs, mine, what in pairs:
            if len(theirs) != len(mine):
                raise AssertionError(f"the block has {len(mine)} {what}, the reference {len(theirs)}{hint}")
            for (name, a), (my_name, b) in zip(theirs, mine):
                if a.shape != b.shape:
                    raise AssertionError(f"{what}: your {my_name} has shape {tuple(b.shape)} where the "
                                         f"reference's {name} has {tuple(a.shape)}{hint}")
                b.copy_(a)
    return dst


# ---------------------------------------------------------------------------- reference code kept out

def _codes(ref) -> set[tuple[str, int]]:
    """(file, first line) of every function in ``ref``: a function, a class (its methods and those
    it inherits from its own package, not ``nn.Module``'s or ``nn.Sequential``'s), or a module or
    package (the functions and classes of it and its loaded submodules)."""
    out = set()

    def add_function(f):
        f = inspect.unwrap(getattr(f, "__func__", f))
        code = getattr(f, "__code__", None)
        if code is not None and not code.co_filename.startswith("<"):  # not generated code (dataclasses)
            out.add((code.co_filename, code.co_firstlineno))

    def add_class(cls):
        package = cls.__module__.split(".")[0]
        for klass in cls.__mro__:  # inherited methods count where they come from the same package
            if klass is not cls and (klass in (object, torch.nn.Module) or klass.__module__.split(".")[0] != package):
                continue
            for value in vars(klass).values():
                if isinstance(value, property):
                    for f in (value.fget, value.fset):
                        if f is not None:
                            add_function(f)
                elif callable(value) or isinstance(value, (staticmethod, classmethod)):
                    add_function(value)

    if isinstance(ref, types.ModuleType):  # a package: all its loaded submodules too
        for name, module in list(sys.modules.items()):
            if module is None or not (name == ref.__name__ or name.startswith(ref.__name__ + ".")):
                continue
            for value in list(vars(module).values()):
                if getattr(value, "__module__", None) == name:
                    (add_class if isinstance(value, type) else add_function)(value)
    elif isinstance(ref, type):
        add_class(ref)
    else:
        add_function(ref)
    return out


@contextlib.contextmanager
def not_calling(*refs, what: str = "this exercise"):
    """Fail (AssertionError) when code run inside the ``with`` block calls any of ``refs``
    (functions, classes, modules): the answer must compute the result itself."""
    codes = set().union(*(_codes(r) for r in refs))
    seen = []

    def watch(frame, event, arg):
        if event == "call" and not seen:
            code = frame.f_code
            if (code.co_filename, code.co_firstlineno) in codes:
                seen.append(getattr(code, "co_qualname", code.co_name))

    previous, previous_threads = sys.getprofile(), threading.getprofile()
    sys.setprofile(watch)
    threading.setprofile(watch)  # threads the answer starts are watched too
    try:
        yield
    finally:
        still = sys.getprofile()
        sys.setprofile(previous)
        threading.setprofile(previous_threads)
    if still is not watch:
        raise AssertionError("the answer replaced the profile function the test uses to watch it")
    if seen:
        raise AssertionError(f"the answer calls the course's reference implementation ({seen[0]}): "
                             f"{what} asks you to write it yourself")
