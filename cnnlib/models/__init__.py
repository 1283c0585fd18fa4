"""Model zoo: one family per module, a small registry to build them by name.

Every constructor takes ``num_classes`` and ``in_channels`` first, then family-specific options::

    from cnnlib import models
    net = models.create("vgg16", num_classes=10)
    models.available()          # every registered name
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make ``fn`` buildable as ``create(fn.__name__, ...)``."""
    _REGISTRY[fn.__name__] = fn
    return fn


def available() -> list[str]:
    """Names ``create`` accepts."""
    return sorted(_REGISTRY)


def create(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name; an unknown name raises an error listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(available())}")
    return _REGISTRY[name](**kwargs)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(net): ...`` runs ``net`` in eval mode (BatchNorm on its running statistics,
    no dropout) and restores its train/eval mode afterwards, whatever happens inside."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


from . import classic  # noqa: E402,F401  (registers its models)
from . import resnet  # noqa: E402,F401
from . import densenet  # noqa: E402,F401
from . import nasnet  # noqa: E402,F401
from . import efficientnet  # noqa: E402,F401
