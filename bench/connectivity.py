"""Benchmark: one (Auto)NEB step on a network — the pivots one at a time, and all at once.

Every step of the nudged elastic band needs the loss and its gradient at every pivot of the chain.
The reference implementation of Draxler et al. (PyTorch-AutoNEB) writes each pivot's coordinates
into the model and runs forward and backward once per pivot; ``connectivity.network_energy`` can
also stack the pivots and compute all gradients in one batched call (``torch.func.vmap`` of
``grad``). This script times both on the same pivots and the same mini-batch, in this process,
and prints the times, their ratio and the largest difference of the two results:

* ``quick`` — Lecture 10's quick-profile network (a small VGG-style CNN with BatchNorm, width 8)
  on 8×8 digits;
* ``resnet20`` — the CIFAR ResNet-20 (width 16) on 32×32 colour images (seeded synthetic pixels:
  the cost does not depend on them).

    python bench/connectivity.py                       # both, 8 pivots, batch 128
    python bench/connectivity.py --models resnet20 --pivots 16 --repeats 5
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn

import cnnlib
from cnnlib import connectivity as C
from cnnlib import landscape, models


def quick_net(width: int = 8) -> nn.Module:
    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10))


def setting(name: str, device: torch.device):
    torch.manual_seed(0)
    if name == "quick":
        return quick_net().to(device), cnnlib.load("digits", device=device)
    net = models.create("resnet20", num_classes=10, in_channels=3).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (2048,), generator=g).to(device)
    return net, (x, y)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """Seconds per call, and the result of the first (warm-up) call."""
    first = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["quick", "resnet20"], choices=["quick", "resnet20"])
    parser.add_argument("--pivots", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = cnnlib.setup(seed=0).device
    for name in args.models:
        net, data = setting(name, device)
        flat = C._Flat(net)
        center = flat.vector(landscape.weights(net))
        g = torch.Generator().manual_seed(1)
        noise = torch.randn(args.pivots, center.numel(), generator=g).to(device)
        points = center + 0.01 * center.norm() / center.numel() ** 0.5 * noise
        results = {}
        for strategy in ("loop", "vmap"):
            # the same seed: the first (compared) call of both sees the same mini-batch
            energy_grad, _, _ = C.network_energy(net, data, batch_size=args.batch_size, seed=2,
                                                 strategy=strategy)
            results[strategy] = timed(lambda: energy_grad(points), device, args.repeats)
        (t_loop, (e_loop, g_loop)), (t_vmap, (e_vmap, g_vmap)) = results["loop"], results["vmap"]
        diff = float((g_loop - g_vmap).abs().max() / g_loop.abs().max())
        print(f"{name}: {args.pivots} pivots × batch {args.batch_size} on {device}, "
              f"{center.numel():,} parameters")
        print(f"  pivots one at a time (reference): {1000 * t_loop:8.1f} ms per NEB step")
        print(f"  all pivots at once (vmap):        {1000 * t_vmap:8.1f} ms per NEB step")
        print(f"  ratio loop / vmap: {t_loop / t_vmap:.2f}×   "
              f"largest relative difference of the gradients: {diff:.1e}, "
              f"of the losses: {float((e_loop - e_vmap).abs().max()):.1e}")


if __name__ == "__main__":
    main()
