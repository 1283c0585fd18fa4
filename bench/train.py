"""Benchmark: ``cnnlib.fit`` against a textbook PyTorch training loop, in the same process.

The workload is Lecture 01's quick profile: digits resized to 32×32, its four networks, 8 epochs,
batch 64, lr 0.02, seed 0, a test evaluation after every epoch. The baseline is what the PyTorch
tutorials teach: a torchvision-style ``Dataset`` that keeps PIL images and applies per-sample
transforms (Resize, RandomCrop with padding, ToTensor, Normalize), a ``DataLoader``, and a
``.to(device)`` per batch. Both loops use the same optimizer (SGD + Nesterov, weight decay on
weights only) and the same warm-up + cosine schedule, so the difference is the data pipeline and
loop overhead, not the recipe.

    python bench/train.py                 # both loops, all four networks, 3 seeds each
    python bench/train.py --seeds 1       # one seed (about 40 s)
    python bench/train.py --workers 2     # give the DataLoader worker processes
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import cnnlib
from cnnlib import models
from cnnlib.train import _param_groups, lr_at

EPOCHS, LR, BATCH, SIZE, SEED = 8, 0.02, 64, 32, 0
NETWORKS = {
    "LeNet-5": dict(name="lenet5"),
    "AlexNet-small": dict(name="alexnet", small=True),
    "ZFNet-small": dict(name="zfnet", small=True),
    "VGG-11-small": dict(name="vgg11", small=True),
}


class DigitImages(Dataset):
    """Digits as 8×8 grayscale PIL images, transformed one sample at a time (torchvision style)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean: float, std: float, train: bool):
        pixels = (x[:, 0] * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        self.images = [Image.fromarray(np.ascontiguousarray(p), mode="L") for p in pixels]
        self.targets = y.tolist()
        steps = [transforms.Resize(SIZE)]
        if train:
            steps.append(transforms.RandomCrop(SIZE, padding=1))
        steps += [transforms.ToTensor(), transforms.Normalize((mean,), (std,))]
        self.transform = transforms.Compose(steps)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.targets[i]


def textbook_fit(model, train_loader, test_loader, device):
    opt = torch.optim.SGD(_param_groups(model, 5e-4), lr=LR, momentum=0.9, nesterov=True)
    total, step = EPOCHS * len(train_loader), 0
    for _ in range(EPOCHS):
        model.train()
        for xb, yb in train_loader:
            xb, yb = xb.to(device), yb.to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, LR)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in test_loader:
                correct += (model(xb.to(device)).argmax(1) == yb.to(device)).sum().item()
        acc = correct / len(test_loader.dataset)
    return acc


def build(spec, data, seed):
    torch.manual_seed(seed)
    spec = dict(spec)
    return models.create(spec.pop("name"), num_classes=data.num_classes, in_channels=1, **spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds per network (accuracies on 360 test images scatter by several "
                             "points between seeds, so equal accuracy is judged on the mean)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    P = cnnlib.setup(seed=SEED, profile="quick")
    raw = cnnlib.load("digits")
    data = raw.resize(SIZE).to(P.device)
    mean, std = raw.mean[0], raw.std[0]
    train_set = DigitImages(raw.x_train, raw.y_train, mean, std, train=True)
    test_loader = DataLoader(DigitImages(raw.x_test, raw.y_test, mean, std, train=False),
                             batch_size=1024, num_workers=args.workers)

    seeds = range(SEED, SEED + args.seeds)
    rows, t_base, t_ours, accs = [], 0.0, 0.0, {"textbook": [], "cnnlib": []}
    for label, spec in NETWORKS.items():
        base = ours = 0.0
        acc_base, acc_ours = [], []
        for seed in seeds:  # the two loops alternate, so machine noise hits both alike
            train_loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, drop_last=True,
                                      generator=torch.Generator().manual_seed(seed),
                                      num_workers=args.workers)
            net = build(spec, data, seed)
            start = time.perf_counter()
            acc_base.append(textbook_fit(net, train_loader, test_loader, P.device))
            base += time.perf_counter() - start

            net = build(spec, data, seed)
            start = time.perf_counter()
            acc_ours.append(cnnlib.fit(net, data, epochs=EPOCHS, lr=LR, batch_size=BATCH, seed=seed,
                                       progress=False, cache=False).final["test_acc"])
            ours += time.perf_counter() - start
        t_base, t_ours = t_base + base, t_ours + ours
        accs["textbook"] += acc_base
        accs["cnnlib"] += acc_ours
        a, b = statistics.mean(acc_base), statistics.mean(acc_ours)
        rows.append((label, f"{base:.1f}", f"{ours:.1f}", f"{base / ours:.2f}×", f"{a:.1%}", f"{b:.1%}"))
        print(f"{label:14s} textbook {base:6.1f} s  cnnlib {ours:6.1f} s  ratio {base / ours:4.2f}×  "
              f"mean test acc {a:.1%} vs {b:.1%}", flush=True)

    print()
    print(cnnlib.report.Table(["network", "textbook loop (s)", "cnnlib.fit (s)", "speed-up",
                               "textbook test acc", "cnnlib test acc"], rows,
                              title=f"{len(seeds)} seed(s) per network; times summed, accuracies averaged"))
    print(f"\ntotal: textbook {t_base:.1f} s, cnnlib {t_ours:.1f} s → cnnlib.fit is "
          f"{t_base / t_ours:.2f}× faster (DataLoader workers: {args.workers}, "
          f"torch threads: {torch.get_num_threads()})")
    for name, values in accs.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{name:>8s}: mean test accuracy {statistics.mean(values):.1%} over {len(values)} runs "
              f"(standard deviation of one run {spread:.1%}; of the mean "
              f"{spread / len(values) ** 0.5:.1%})")
    gap = statistics.mean(accs["cnnlib"]) - statistics.mean(accs["textbook"])
    print(f"accuracy difference cnnlib − textbook: {100 * gap:+.1f} points")


if __name__ == "__main__":
    main()
