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
    python bench/train.py --only-gflops   # just the "how close to the machine" table
    python bench/train.py --hot-loop      # torch.compile, BN folding, channels-last: what each gains
    python bench/train.py --width-vs-depth  # thin-and-deep vs wide-and-shallow step times (Lecture 03)

It then reports how close the training loop comes to the machine: for the medium profile's
networks, the achieved GFLOP/s of ``cnnlib.fit`` (forward FLOPs per image × 3 for forward and
backward, × images per second, from ``cnnlib.flops``) beside the GFLOP/s of a large float32
matrix product measured in the same run — the fraction of the machine's dense peak it reaches.
"""
from __future__ import annotations

import argparse
import copy
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


# The medium profile's hot loops: (label, model spec, image side); Fashion-MNIST is 1 channel.
MEDIUM_WORKLOAD = {
    "LeNet-5, 32 px (L01)": (dict(name="lenet5"), 32),
    "AlexNet-small, 32 px (L01)": (dict(name="alexnet", small=True), 32),
    "ZFNet-small, 32 px (L01)": (dict(name="zfnet", small=True), 32),
    "VGG-11-small, 32 px (L01)": (dict(name="vgg11", small=True), 32),
    "ResNet-20 w16, 16 px (L02)": (dict(name="resnet_cifar", depth=20, width=16), 16),
    "ResNet-32 w8, 16 px (L08)": (dict(name="resnet_cifar", depth=32, width=8), 16),
}


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of an n×n float32 matrix product on the CPU: the machine's dense peak, in practice."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = cnnlib.measure.median_time(lambda: a @ b, torch.device("cpu"), repeats=repeats)
    return 2 * n ** 3 / seconds / 1e9


def _train_images_per_second(net, data, epochs: int) -> float:
    history = cnnlib.fit(net, data, epochs=epochs, lr=0.05, batch_size=128, progress=False, cache=False)
    return epochs * (len(data.x_train) // 128) * 128 / history.final["time"]


def achieved_gflops(images: int = 4096, epochs: int = 2) -> cnnlib.report.Table:
    """Training GFLOP/s of cnnlib.fit on each medium-profile network, as a fraction of a matmul's."""
    fashion = cnnlib.load("fashion-mnist", device="cpu", subset=(images, 256)) \
        if cnnlib.data.fashion_mnist_available() else None
    source = fashion or cnnlib.load("digits", device="cpu")
    peak = matmul_gflops()
    rows = []
    for label, (spec, side) in MEDIUM_WORKLOAD.items():
        data = source.resize(side)
        net = build(spec, data, SEED)
        flops = cnnlib.flops(net, (1, data.in_channels, side, side))
        per_second = _train_images_per_second(net, data, epochs)
        gflops = 3 * flops * per_second / 1e9
        rows.append((label, f"{flops / 1e6:.1f}", f"{per_second:,.0f}", f"{gflops:.1f}", f"{gflops / peak:.0%}"))
        print(f"{label:28s} {per_second:8,.0f} images/s  {gflops:6.1f} GFLOP/s  {gflops / peak:4.0%} of the matmul's",
              flush=True)
    return cnnlib.report.Table(["network", "forward MFLOPs / image", "training images/s", "GFLOP/s",
                                "of a 2048² matmul"], rows,
                               title=f"How close to the machine: cnnlib.fit on {source.name}, batch 128; "
                                     f"float32 matmul peak {peak:.0f} GFLOP/s, "
                                     f"{torch.get_num_threads()} threads")


def _eval_images_per_second(net, x, repeats: int = 3) -> float:
    """Inference-mode forward passes over ``x`` in batches of 1,024, as ``cnnlib.evaluate`` runs them."""
    def run():
        with torch.inference_mode():
            for i in range(0, len(x), 1024):
                net(x[i:i + 1024])
    return len(x) / cnnlib.measure.median_time(run, torch.device("cpu"), repeats=repeats, warmup=1)


def hot_loop_variants(images: int = 4096, epochs: int = 2, networks=("VGG-11-small, 32 px (L01)",
                                                                    "ResNet-20 w16, 16 px (L02)")):
    """What the hot loop gains from torch.compile (training), and evaluation from BN folding
    (``torch.fx.experimental.optimization.fuse``: each BatchNorm folded into the convolution before it),
    channels-last inputs and torch.compile. Fraction of a matmul's GFLOP/s, before and after."""
    import torch._dynamo
    from torch.fx.experimental.optimization import fuse

    fashion = cnnlib.load("fashion-mnist", device="cpu", subset=(images, 2048)) \
        if cnnlib.data.fashion_mnist_available() else None
    source = fashion or cnnlib.load("digits", device="cpu")
    peak = matmul_gflops()
    train_rows, eval_rows = [], []
    for label in networks:
        spec, side = MEDIUM_WORKLOAD[label]
        data = source.resize(side)
        flops = cnnlib.flops(build(spec, data, SEED), (1, data.in_channels, side, side))
        to_gflops = lambda per_s, k: f"{k * flops * per_s / 1e9:.1f} ({k * flops * per_s / 1e9 / peak:.0%})"

        eager = _train_images_per_second(build(spec, data, SEED), data, epochs)
        torch._dynamo.reset()
        compiled = torch.compile(build(spec, data, SEED))
        start = time.perf_counter()
        first = _train_images_per_second(compiled, data, 1)  # includes compiling forward and backward
        first_epoch = time.perf_counter() - start
        steady = _train_images_per_second(compiled, data, epochs)
        compile_s = first_epoch - (len(data.x_train) // 128) * 128 / steady
        train_rows.append((label, f"{eager:,.0f}", to_gflops(eager, 3), f"{steady:,.0f}", to_gflops(steady, 3),
                           f"{steady / eager:.2f}×", f"{compile_s:.0f}"))
        print(f"{label}: training eager {eager:,.0f} img/s, compiled {steady:,.0f} img/s "
              f"(first epoch {first:,.0f} img/s; compiling ≈ {compile_s:.0f} s)", flush=True)

        net = build(spec, data, SEED)
        cnnlib.fit(net, data, epochs=1, lr=0.05, batch_size=128, progress=False, cache=False)
        net.eval()
        x = data.x_test
        variants = {"eager (as cnnlib.evaluate)": (net, x),
                    "BN folded": (fuse(net), x),
                    "channels-last": (copy.deepcopy(net).to(memory_format=torch.channels_last),
                                      x.contiguous(memory_format=torch.channels_last)),
                    "BN folded + channels-last": (fuse(net).to(memory_format=torch.channels_last),
                                                  x.contiguous(memory_format=torch.channels_last))}
        torch._dynamo.reset()
        variants["torch.compile"] = (torch.compile(copy.deepcopy(net)), x)
        with torch.inference_mode():
            reference = net(x[:512])
        base = None
        for name, (model, inputs) in variants.items():
            with torch.inference_mode():
                diff = (model(inputs[:512]) - reference).abs().max().item()
            per_s = _eval_images_per_second(model, inputs)
            base = base or per_s
            eval_rows.append((label, name, f"{per_s:,.0f}", to_gflops(per_s, 1), f"{per_s / base:.2f}×", f"{diff:.1e}"))
            print(f"  eval {name:28s} {per_s:9,.0f} img/s  {per_s / base:.2f}×  max |Δ logit| {diff:.1e}", flush=True)
    threads = torch.get_num_threads()
    return (cnnlib.report.Table(["network", "eager images/s", "GFLOP/s (of matmul)", "compiled images/s",
                                 "GFLOP/s (of matmul)", "speed-up", "compile time (s)"], train_rows,
                                title=f"Training, cnnlib.fit on {source.name} ({len(source.x_train)} images), "
                                      f"batch 128, eager vs torch.compile; matmul {peak:.0f} GFLOP/s, {threads} threads"),
            cnnlib.report.Table(["network", "evaluation", "images/s", "GFLOP/s (of matmul)", "vs eager",
                                 "max |Δ logit|"], eval_rows,
                                title=f"Evaluation, {len(source.x_test)} test images, batches of 1,024, inference mode"))


WIDTH_VS_DEPTH = [  # (thin and deep, wide and shallow) at about the same parameter count, 16 px inputs
    (("ResNet-20 w8", dict(name="resnet_cifar", depth=20, width=8)),
     ("WRN-16-2 w5", dict(name="wide_resnet_cifar", depth=16, widen=2, width=5))),
    (("ResNet-44 w5", dict(name="resnet_cifar", depth=44, width=5)),
     ("WRN-16-2 w5", dict(name="wide_resnet_cifar", depth=16, widen=2, width=5))),
    (("ResNet-110 w5", dict(name="resnet_cifar", depth=110, width=5)),
     ("WRN-16-4 w4", dict(name="wide_resnet_cifar", depth=16, widen=4, width=4))),
]


def width_vs_depth(steps: int = 20, batch: int = 128, side: int = 16) -> cnnlib.report.Table:
    """Training-step times (forward, backward, SGD update) of a thin, deep ResNet against a wide, shallow
    WRN at about its parameter count, on one random batch, the two taking turns so that machine noise
    hits both alike; in PyTorch's default layout and in channels-last. Lecture 03's WRN claim: at a
    similar parameter count the wide network trains several times faster (Zagoruyko & Komodakis 2016)."""
    rows = []
    for (thin_label, thin_spec), (wide_label, wide_spec) in WIDTH_VS_DEPTH:
        row = [f"{thin_label} vs {wide_label}"]
        for layout in (torch.contiguous_format, torch.channels_last):
            nets = {}
            for label, spec in ((thin_label, thin_spec), (wide_label, wide_spec)):
                torch.manual_seed(SEED)
                nets[label] = models.create(**spec, num_classes=10, in_channels=1).to(memory_format=layout)
            if layout is torch.contiguous_format:
                row += [f"{cnnlib.count_params(n):,}" for n in nets.values()]
            xb = torch.randn(batch, 1, side, side).contiguous(memory_format=layout)
            times = cnnlib.measure.step_times(nets, xb, torch.randint(0, 10, (batch,)), steps=steps)
            t_thin, t_wide = (1000 * statistics.median(times[k]) for k in (thin_label, wide_label))
            row += [f"{t_thin:.1f}", f"{t_wide:.1f}", f"{t_thin / t_wide:.2f}×"]
            print(f"{thin_label} vs {wide_label}, {'channels-last' if layout is torch.channels_last else 'default'}"
                  f" layout: {t_thin:.1f} vs {t_wide:.1f} ms per step ({t_thin / t_wide:.2f}×)", flush=True)
        rows.append(tuple(row))
    return cnnlib.report.Table(
        ["pair", "parameters: thin", "parameters: wide", "ms/step thin", "ms/step wide", "wide faster by",
         "ms/step thin (ch.-last)", "ms/step wide (ch.-last)", "wide faster by (ch.-last)"], rows,
        title=f"Thin and deep vs wide and shallow: median of {steps} training steps, batch {batch}, "
              f"{side}×{side} grey inputs, {torch.get_num_threads()} threads")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds per network (accuracies on 360 test images scatter by several "
                             "points between seeds, so equal accuracy is judged on the mean)")
    parser.add_argument("--only-gflops", action="store_true", help="skip the textbook-loop comparison")
    parser.add_argument("--hot-loop", action="store_true",
                        help="only: torch.compile for training; BN folding, channels-last, compile for evaluation")
    parser.add_argument("--width-vs-depth", action="store_true",
                        help="only: step times of thin-and-deep against wide-and-shallow networks")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.width_vs_depth:
        cnnlib.setup(seed=SEED, profile="medium", device="cpu")
        print(width_vs_depth())
        return
    if args.hot_loop:
        cnnlib.setup(seed=SEED, profile="medium", device="cpu")
        for table in hot_loop_variants():
            print(table)
        return
    if args.only_gflops:
        cnnlib.setup(seed=SEED, profile="medium", device="cpu")
        print(achieved_gflops())
        return

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
    print(f"accuracy difference cnnlib − textbook: {100 * gap:+.1f} points\n")
    print(achieved_gflops())


if __name__ == "__main__":
    main()
