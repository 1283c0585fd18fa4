"""Curves between two networks (Garipov et al. 2018, "Loss surfaces, mode connectivity, and fast
ensembling of DNNs").

``train_curve`` trains the bend θ_c of a quadratic Bezier curve ``(1−t)²θ₁ + 2t(1−t)θ_c + t²θ₂``
or of a polygonal chain θ₁ → θ_c → θ₂ with the two ends fixed, by minimizing the average loss
along it, ``E_{t∼U(0,1)} L(φ(t))``. The trained curve has (almost) no barrier.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .paths import Path, _digest, _point, _training_data, bezier_coefficients, chain_coefficients

CURVE_KINDS = ("bezier", "polychain")


def train_curve(model: nn.Module, a, b, data, *, kind: str = "bezier", epochs: int = 10,
                lr: float = 0.05, batch_size: int = 128, momentum: float = 0.9,
                weight_decay: float = 5e-4, warmup: float = 0.1, augment_data: bool | None = None,
                bend=None, seed: int = 0, progress: bool | None = None, desc: str | None = None,
                cache: bool = True) -> Path:
    """Train the bend θ_c of a curve between two fixed networks (Garipov et al. 2018).

    The loss of a curve is the average loss along it, ``E_{t∼U(0,1)} L(φ_θ(t))``; it
    is minimized by SGD where every mini-batch draws its own ``t ∼ U(0, 1)`` and takes one step
    on ``L(φ_θ(t))`` with respect to θ_c only — an unbiased estimate of the gradient of the
    average. ``kind`` is ``"bezier"`` or ``"polychain"``. The bend starts at the
    midpoint ``(θ₁ + θ₂)/2`` (or at ``bend``), so the untrained curve is the straight line.

    BatchNorm layers normalize with the batch statistics during this training, as in ordinary
    training; evaluate the curve with ``bn="recompute"``. The optimizer and schedule are
    ``fit``'s (SGD + Nesterov momentum, warm-up and cosine decay, weight decay on weights only,
    the same augmentation). ``data`` is an ``ImageData`` (its training split, augmented as it
    says unless ``augment_data=False``) or an ``(x, y)`` pair of training tensors (used as they
    are: a pair does not say which flips and shifts keep its labels). Only parameters move; a
    bend's BatchNorm buffers stay at their starting value. Returns the curve as a ``Path`` with
    the mean training loss of every epoch in ``path.meta["history"]``; cached on disk like
    ``fit``.
    """
    from .. import cache as _cache
    from .. import profile as _profile
    from ..data import augment, batches
    from ..train import _progress_enabled, lr_at

    if kind not in CURVE_KINDS:
        raise ValueError(f"kind must be one of {CURVE_KINDS} (a trainable curve), got {kind!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    x, y, fingerprint, augmentation = _training_data(data)
    if augment_data is None:
        augment_data = augmentation is not None
    elif augment_data and augmentation is None:
        raise ValueError("augment_data=True needs an ImageData, which says which flips and shifts "
                         "keep the labels; an (x, y) pair does not — pass augment_data=False")
    pa, pb = _point(a), _point(b)
    if pa.keys() != pb.keys():
        raise ValueError("the two ends do not have the same parameter names")
    names = [k for k, _ in model.named_parameters()]
    missing = [k for k in names if k not in pa]
    if missing:
        raise ValueError(f"the ends lack parameters of the model, e.g. {missing[0]!r}")
    start_bend = ({k: (pa[k] + pb[k]) / 2 for k in pa} if bend is None
                  else {**{k: (pa[k] + pb[k]) / 2 for k in pa}, **_point(bend)})
    hyper = dict(kind=kind, epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                 weight_decay=weight_decay, warmup=warmup, augment_data=augment_data, seed=seed)

    def compute() -> dict:
        net = copy.deepcopy(model).to(x.device).train()
        theta = {k: start_bend[k].detach().clone().to(x.device).requires_grad_(True)
                 for k in names}
        ends = [{k: p[k].to(x.device) for k in names} for p in (pa, pb)]
        decay = [p for p in theta.values() if p.ndim > 1]
        rest = [p for p in theta.values() if p.ndim <= 1]
        opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                               {"params": rest, "weight_decay": 0.0}],
                              lr=lr, momentum=momentum, nesterov=momentum > 0)
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        steps = max(1, len(x) // batch_size)
        total, step, history = epochs * steps, 0, []
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=desc or f"{kind} curve", unit="step",
                   disable=not _progress_enabled(progress))
        for _ in range(epochs):
            loss_sum, seen = 0.0, 0
            for xb, yb in batches(x, y, batch_size, shuffle=True, generator=gen, drop_last=True):
                if augment_data:
                    xb = augment(xb, generator=gen, **augmentation)
                t = float(torch.rand((), generator=gen))
                w = (bezier_coefficients(t)[0] if kind == "bezier"
                     else chain_coefficients(t, [0.0, 0.5, 1.0])[0])
                params = {k: w[0] * ends[0][k] + w[1] * theta[k] + w[2] * ends[1][k] for k in names}
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, lr, warmup)
                out = torch.func.functional_call(net, params, (xb,))
                loss = F.cross_entropy(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(yb)
                seen += len(yb)
                step += 1
                bar.update(1)
            history.append(loss_sum / max(seen, 1))
        bar.close()
        bend_point = {k: v.detach().cpu().clone() for k, v in start_bend.items()}
        bend_point.update({k: v.detach().cpu().clone() for k, v in theta.items()})
        return {"bend": bend_point, "history": history}

    if cache and _cache.cache_dir() is not None:
        # No device in the key (as in ``fit``): the recipe is float32 on every device, so a curve
        # trained on a GPU box replays on a laptop after ``cnn-course cache import``.
        config = ("curve", repr(model), _digest(pa, pb, start_bend), fingerprint, hyper)
        entry = _cache.cached("curve", config, compute)
    else:
        entry = compute()
    device = next(iter(pa.values())).device
    bend_point = {k: v.to(device) for k, v in entry["bend"].items()}
    path = Path(kind, [pa, bend_point, pb])
    path.meta.update(history=list(entry["history"]), **hyper)
    return path
