"""Training and evaluation: ``fit()``, ``evaluate()`` and the ``History`` they leave behind.

The recipe is the standard one for CIFAR-style classification (He et al. 2016; airbench):
SGD with Nesterov momentum, weight decay on weights (not on biases and normalization
parameters), a short linear warm-up followed by cosine decay of the learning rate, optional
label smoothing, batch-wise augmentation on the device. On a GPU it adds bf16 autocast; on a GPU
and on the CPU it trains in the channels-last memory layout (oneDNN's NHWC convolutions trained
the course's networks 1.2–1.4× faster on a 2-core CPU than NCHW). Data never leaves the device
during training.

Same seed, same machine → the same ``History`` (tested on the CPU).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import cache as _cache
from . import distributed as _dist
from . import profile as _profile
from .data import ImageData, augment, batches
from .models import eval_mode

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "time")


@dataclass
class History:
    """Per-epoch metrics of one training run; ``time`` is cumulative training wall time (s)."""

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)

    def append(self, epoch: int, **metrics: float) -> None:
        self.epoch.append(epoch)
        for name in METRICS:
            getattr(self, name).append(float(metrics[name]))

    def __len__(self) -> int:
        return len(self.epoch)

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's metrics (test accuracy, losses, total time...)."""
        return {name: getattr(self, name)[-1] for name in METRICS} if self.epoch else {}

    def to_dict(self) -> dict:
        return {"epoch": list(self.epoch), **{m: list(getattr(self, m)) for m in METRICS}}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**{k: list(v) for k, v in d.items()})

    def same_metrics(self, other: "History") -> bool:
        """Equal in everything but wall time (the determinism criterion)."""
        keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
        same = lambda a, b: a == b or (math.isnan(a) and math.isnan(b))  # NaN: not evaluated, or diverged
        return all(len(getattr(self, k)) == len(getattr(other, k))
                   and all(map(same, getattr(self, k), getattr(other, k))) for k in keys)

    def __repr__(self) -> str:
        if not self.epoch:
            return "History(empty)"
        f = self.final
        return (f"History({len(self)} epochs, train loss {f['train_loss']:.3f} acc {f['train_acc']:.1%}, "
                f"test loss {f['test_loss']:.3f} acc {f['test_acc']:.1%}, {f['time']:.1f}s)")

    def plot(self, axes=None, label: str | None = None, color=None):
        """Loss (left) and error (right) per epoch: training dashed, test solid. Returns the axes."""
        from .plots import plot_history
        return plot_history(self, axes=axes, label=label, color=color)


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return os.environ.get("CNNLIB_PROGRESS", "1") not in ("0", "off", "false")


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


def lr_at(step: int, total: int, peak: float, warmup: float = 0.1) -> float:
    """Linear warm-up over the first ``warmup`` fraction of steps, then cosine decay to zero."""
    w = max(1, round(warmup * total))
    if step < w:
        return peak * (step + 1) / w
    return peak * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def _split(data, split: str) -> tuple[Tensor, Tensor]:
    if isinstance(data, ImageData):
        return getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    x, y = data
    return x, y


@contextlib.contextmanager
def _channels_last(model: nn.Module, enabled: bool):
    """``model``'s 4-D weights in channels-last layout for the block, then back as they were."""
    kernels = [p for p in model.parameters() if p.ndim == 4]
    was = bool(kernels) and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    convert = enabled and kernels and not was
    if convert:
        with torch.no_grad():
            model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if convert:
            with torch.no_grad():
                model.to(memory_format=torch.contiguous_format)


def evaluate(model: nn.Module, data, split: str = "test", batch_size: int = 1024,
             amp: bool | None = None, channels_last: bool | None = None) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on a split of ``data``.

    ``data`` is an ``ImageData`` (``split`` picks train or test) or an ``(x, y)`` pair of tensors.
    ``channels_last`` (default: on for the CPU and CUDA, as in ``fit``) runs images and kernels in
    channels-last layout: 1.35–2.3× faster evaluation on the CPU, the same numbers to float rounding
    (``bench/train.py --hot-loop``). The model's train/eval mode and layout are restored afterwards.
    """
    x, y = _split(data, split)
    device = x.device
    amp = device.type == "cuda" if amp is None else amp
    channels_last = (device.type in ("cuda", "cpu") if channels_last is None else channels_last) and x.ndim == 4
    total_loss, correct = 0.0, 0
    # the layout changes outside inference mode: weights converted inside it could not train again
    with eval_mode(model), _channels_last(model, channels_last), torch.inference_mode():
        for xb, yb in batches(x, y, batch_size):
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp):
                out = model(xb)
            total_loss += F.cross_entropy(out.float(), yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
    return {"loss": total_loss / len(x), "acc": correct / len(x)}


def _param_groups(model: nn.Module, weight_decay: float):
    """Weight decay on weight matrices and kernels only, not on biases or BN/LN parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _state_hash(model: nn.Module) -> str:
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()[:16]


def fit(model: nn.Module, data: ImageData, *, epochs: int, lr: float = 0.05, batch_size: int = 128,
        momentum: float = 0.9, weight_decay: float = 5e-4, label_smoothing: float = 0.0,
        warmup: float = 0.1, augment_data: bool = True, seed: int | None = None,
        amp: bool | None = None, channels_last: bool | None = None, eval_every: int = 1,
        progress: bool | None = None, desc: str | None = None, cache: bool = True) -> History:
    """Train ``model`` on ``data`` in place and return its ``History``.

    SGD + Nesterov momentum, cosine schedule with linear warm-up (see ``lr_at``), weight decay
    on weights only, optional label smoothing, flip/translate augmentation on the device.
    ``amp`` (bf16 autocast) defaults to on for CUDA; ``channels_last`` to on for CUDA and the CPU
    (not for Apple's MPS). The test set is evaluated after every ``eval_every``-th epoch and
    after the last one; the other epochs record NaN test metrics. Evaluation draws no random
    numbers and changes no weights, so ``eval_every`` leaves the training itself bit for bit
    the same (with ``eval_every=epochs`` only the final test metrics are computed).

    With ``cache=True`` (default) the trained weights and history are stored on disk under a key
    made of the model's architecture and initial weights, the data, every hyper-parameter and the
    code version; an identical call later loads them instead of training (see ``cnnlib.cache``).

    Under ``torchrun --nproc_per_node=N`` it trains data-parallel (``cnnlib.distributed``): every
    rank draws the same shuffled, augmented batch and trains ``DistributedDataParallel`` on its
    ``batch_size / N`` slice (``batch_size`` must be a multiple of N), so the effective batch and
    the learning-rate schedule are one process's; BatchNorm normalizes each slice by its own
    statistics, and its running statistics are averaged over the ranks before each evaluation
    (``distributed.sync_buffers``). Each rank evaluates a slice of the test set, the sums are
    added up: every rank returns the same ``History`` and holds the same weights. Rank 0 shows
    the progress bar and alone reads and writes the cache; the key then holds N. Inside
    ``distributed.sweep`` it trains on this rank alone, as without torchrun.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be at least 1, got {eval_every}")
    seed = _profile.current().seed if seed is None else seed
    world = _dist.world_size() if _dist.data_parallel() and _dist.init() else 1
    if _dist.is_distributed():  # data-parallel, or one run of a sweep on this rank
        data = _torchrun_checks(data, batch_size, world)
    if not _dist.is_main():
        progress = False  # one progress bar, one "loaded from cache" line: rank 0's
    device = data.device
    amp = device.type == "cuda" if amp is None else amp
    channels_last = device.type in ("cuda", "cpu") if channels_last is None else channels_last
    model.to(device)

    hyper = dict(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum,
                 weight_decay=weight_decay, label_smoothing=label_smoothing, warmup=warmup,
                 augment_data=augment_data, seed=seed, amp=amp, channels_last=channels_last,
                 eval_every=eval_every)
    if world > 1:  # keyed: BatchNorm sees batch_size / world examples, not batch_size
        hyper["world_size"] = world
        _dist.broadcast_state(model)  # rank 0's initial weights everywhere (and in the key)
    if not cache or _cache.cache_dir() is None:
        return _train(model, data, desc=desc, progress=progress, **hyper)

    config = (repr(model), _state_hash(model), data.fingerprint(),  # no device: see cnnlib.cache
              {**hyper, "amp": None if amp == (device.type == "cuda") else amp,
               "channels_last": None if channels_last == (device.type in ("cuda", "cpu")) else channels_last})
    trained = {}

    def compute():
        history = _train(model, data, desc=desc, progress=progress, **hyper)
        trained["done"] = True
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return {"state": state, "history": history.to_dict()}

    entry = (_dist.cached if world > 1 else _cache.cached)("fit", config, compute)
    if not trained:
        model.load_state_dict(entry["state"])
        if _progress_enabled(progress):
            print(f"{desc or type(model).__name__}: loaded from cache "
                  f"({entry['history']['epoch'][-1]} epochs, "
                  f"test acc {entry['history']['test_acc'][-1]:.1%}"
                  f"{_cache.origin_note('fit', config, device)})")
    return History.from_dict(entry["history"])


def _train(model, data, *, epochs, lr, batch_size, momentum, weight_decay, label_smoothing,
           warmup, augment_data, seed, amp, channels_last, eval_every, desc, progress,
           world_size=1) -> History:
    from tqdm.auto import tqdm

    device = data.device
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # under torchrun: DDP averages the gradients; the caller's model stays a plain module
    net = _dist.wrap(model) if world_size > 1 else model
    part = _dist.rank() if world_size > 1 else 0
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout, stochastic depth and other in-model randomness
    opt = torch.optim.SGD(_param_groups(model, weight_decay), lr=lr, momentum=momentum,
                          nesterov=momentum > 0)
    x, y = data.x_train, data.y_train
    steps_per_epoch = max(1, len(x) // batch_size)
    total = epochs * steps_per_epoch
    history = History()
    bar = tqdm(total=total, desc=desc or type(model).__name__, leave=True,
               disable=not _progress_enabled(progress), unit="step")
    step, elapsed = 0, 0.0
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            start = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.long)
            seen = 0
            for xb, yb in batches(x, y, batch_size, shuffle=True, generator=generator,
                                  drop_last=True):
                if augment_data:
                    xb = augment(xb, flip=data.flip, pad=data.pad, generator=generator)
                share = 1.0
                if world_size > 1:  # every rank drew the same global batch: train on its slice
                    n = len(yb)
                    xb, yb = xb.tensor_split(world_size)[part], yb.tensor_split(world_size)[part]
                    share = len(yb) * world_size / n  # 1 unless the only batch is short
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, lr, warmup)
                with _autocast(device, amp):
                    out = net(xb)
                    if isinstance(out, tuple):  # GoogLeNet's auxiliary classifiers, weighted 0.3
                        out, *aux = out
                    else:
                        aux = []
                    loss = F.cross_entropy(out.float(), yb, label_smoothing=label_smoothing)
                    for a in aux:
                        loss = loss + 0.3 * F.cross_entropy(a.float(), yb,
                                                            label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                (loss if share == 1.0 else loss * share).backward()
                opt.step()
                loss_sum += loss.detach() * len(yb)
                correct += (out.argmax(1) == yb).sum()
                seen += len(yb)
                step += 1
                bar.update(1)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - start
            if world_size > 1:  # the global batch's metrics, the slowest rank's time
                loss_total, n_correct, seen = _dist.all_reduce(
                    [loss_sum.item(), correct.item(), seen], device=device)
                elapsed = _dist.all_reduce([elapsed], "max", device=device)[0]
                _dist.sync_buffers(model)
            else:
                loss_total, n_correct = loss_sum.item(), correct.item()
            train_loss = loss_total / seen
            diverged = not math.isfinite(train_loss)
            scheduled = epoch % eval_every == 0 or epoch == epochs
            test = (_evaluate_shards(model, data, amp, world_size) if scheduled and not diverged
                    else {"loss": math.nan, "acc": math.nan})
            history.append(epoch, train_loss=train_loss, train_acc=n_correct / seen,
                           test_loss=test["loss"], test_acc=test["acc"],
                           lr=opt.param_groups[0]["lr"], time=elapsed)
            bar.set_postfix_str(f"epoch {epoch}/{epochs} train {train_loss:.3f}"
                                + (f" test acc {test['acc']:.1%}" if math.isfinite(test["acc"]) else ""))
            if diverged:  # a result worth showing (e.g. no BatchNorm at a high lr), not a crash
                warnings.warn(f"{desc or type(model).__name__}: training diverged in epoch "
                              f"{epoch} (loss {train_loss}); stopped early", RuntimeWarning)
                break
    finally:
        bar.close()
        del net  # DDP's gradient hooks go with it
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history


def _evaluate_shards(model, data, amp, world_size):
    """``evaluate`` on the test set; under torchrun each rank takes a slice and the sums are
    added up, so every rank gets the same numbers."""
    if world_size == 1:
        return evaluate(model, data, amp=amp)
    part = _dist.rank()
    x, y = data.x_test.tensor_split(world_size)[part], data.y_test.tensor_split(world_size)[part]
    mine = evaluate(model, (x, y), amp=amp) if len(x) else {"loss": 0.0, "acc": 0.0}
    loss, correct, n = _dist.all_reduce([mine["loss"] * len(x), round(mine["acc"] * len(x)), len(x)],
                                        device=data.device)
    return {"loss": loss / n, "acc": correct / n}


def _torchrun_checks(data: ImageData, batch_size: int, world: int) -> ImageData:
    """``fit`` under torchrun: a batch that splits evenly, and the data on this rank's device."""
    if world > 1 and batch_size % world:
        raise ValueError(f"batch_size={batch_size} does not split over {world} processes: under "
                         f"torchrun every rank trains on batch_size / {world} examples of each "
                         f"batch; choose a multiple of {world}")
    if len(data.x_train) < world:
        raise ValueError(f"{len(data.x_train)} training examples cannot be spread over {world} processes")
    want = _dist.device()
    if data.device.type == "cuda" and data.device != want:
        warnings.warn(f"fit under torchrun: the data is on {data.device}, this rank's GPU is {want}; "
                      f"copying it there (call cnnlib.distributed.init() before loading data to "
                      f"avoid the copy)", RuntimeWarning, stacklevel=3)
        data = data.to(want)
    return data
