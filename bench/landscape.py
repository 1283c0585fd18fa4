"""Benchmark: a 2D loss surface computed the way the reference code does it, and by cnnlib.

Two models, each on a fixed evaluation set and the same filter-normalized random plane
(Li et al. 2018), a ``--grid``×``--grid`` grid of points (default 21×21):

* ``quick`` — Lecture 09's quick-profile network: the ResNet-20 of width 8 on 8×8 digits,
  trained as in the lecture (cached), evaluated on the lecture's 150 training images;
* ``resnet20`` — the CIFAR ResNet-20 (width 16, 0.27M parameters) on ``--images`` 32×32 colour
  images: CIFAR-10's test images when a copy is on disk, else seeded synthetic ones (the cost
  does not depend on the pixels), BatchNorm statistics estimated on them.

(a) **reference**: what ``plot_surface.py`` of Li et al.'s loss-landscape code does for every grid
point — write ``θ* + α·δ + β·η`` into the model (``set_weights``), then run the whole evaluation
set through a torchvision-style ``Dataset`` (PIL images, per-sample ``ToTensor`` + ``Normalize``)
and a ``DataLoader`` (batch 128), moving each batch to the device. (b) **cnnlib**:
``landscape.surface`` with its defaults — tensors preloaded on the device, inference mode, the
channels-last memory layout, and on a GPU ``vmap`` over chunks of grid points. Both run in this
process on the same data and directions; the script prints both times, the ratio and the
largest relative difference of the two loss surfaces. On a GPU it also times cnnlib's per-point
loop against its vmap path.

    python bench/landscape.py                        # both models, 21×21
    python bench/landscape.py --models quick --grid 31
    python bench/landscape.py --images 1000          # a larger evaluation set (GPU)
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import cnnlib
from cnnlib import landscape as L
from cnnlib import models

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class ImageFolderLike(Dataset):
    """Images kept as PIL images and transformed one sample at a time (torchvision style)."""

    def __init__(self, pixels: np.ndarray, targets, mean, std):
        mode = "L" if pixels.ndim == 3 else "RGB"
        self.images = [Image.fromarray(np.ascontiguousarray(p), mode=mode) for p in pixels]
        self.targets = list(targets)
        self.transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.targets[i]


def reference_surface(net, loader, directions, alphas, betas, device):
    """Li et al.'s loop: set the weights of every grid point, then a full pass of the loader."""
    names = [k for k, _ in net.named_parameters()]
    base = [p.detach().clone() for p in net.parameters()]
    d1, d2 = ([d[k] for k in names] for d in directions)
    loss = np.zeros((len(alphas), len(betas)))
    acc = np.zeros_like(loss)
    net.eval()
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            for p, w, u, v in zip(net.parameters(), base, d1, d2):  # net_plotter.set_weights
                p.data = w + a * u + b * v
            total, correct, seen = 0.0, 0, 0
            with torch.no_grad():  # evaluation.eval_loss
                for xb, yb in loader:
                    xb, yb = xb.to(device), yb.to(device)
                    out = net(xb)
                    total += F.cross_entropy(out, yb).item() * len(yb)
                    correct += (out.argmax(1) == yb).sum().item()
                    seen += len(yb)
            loss[i, j], acc[i, j] = total / seen, correct / seen
    for p, w in zip(net.parameters(), base):
        p.data = w
    return loss, acc


def quick_model(device):
    """Lecture 09's quick ResNet-20 (trained with its settings) and its 150 evaluation images,
    as uint8 pixels."""
    data = cnnlib.load("digits", device=device)
    torch.manual_seed(0)
    net = models.create("resnet_cifar", depth=20, width=8, in_channels=1, num_classes=10)
    cnnlib.fit(net, data, epochs=12, lr=0.1, batch_size=128, progress=False)
    ev = data.subset(train=150, seed=0)
    mean, std = data.mean[0], data.std[0]
    pixels = (ev.x_train[:, 0].cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return net.eval(), pixels.numpy(), ev.y_train.cpu().tolist(), (mean,), (std,)


def resnet20_model(device, n_images):
    """The CIFAR ResNet-20 and ``n_images`` CIFAR-10 test images (or seeded synthetic ones)."""
    try:
        data = cnnlib.load("cifar10", download=False)
        pixels = data.denormalize(data.x_test[:n_images].cpu()).clamp(0, 1)
        pixels = pixels.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        targets, source = data.y_test[:n_images].tolist(), "CIFAR-10 test images"
    except Exception:
        g = np.random.default_rng(0)
        pixels = g.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8)
        targets, source = g.integers(0, 10, n_images).tolist(), "synthetic 32×32 images"
    torch.manual_seed(0)
    net = models.create("resnet20", num_classes=10, in_channels=3).to(device)
    return net.eval(), pixels, targets, CIFAR_MEAN, CIFAR_STD, source


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def rel_diff(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))


def run(name, net, pixels, targets, mean, std, args, device):
    dataset = ImageFolderLike(pixels, targets, mean, std)
    loader = DataLoader(dataset, batch_size=128, shuffle=False, num_workers=args.workers)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))]).to(device)  # same numbers
    y = torch.tensor(targets, device=device)
    net = net.to(device)
    if name == "resnet20":  # an untrained network: statistics of its own evaluation set
        L.recompute_bn(net, x)
    d1, d2 = L.random_direction(net, seed=1), L.random_direction(net, seed=2)
    g = L.grid(1.0, args.grid)
    print(f"\n== {name}: {cnnlib.count_params(net):,} parameters, {len(x)} images "
          f"{tuple(x.shape[1:])}, {args.grid}×{args.grid} grid on {device}")
    print("estimate:", L.estimate(net, (x, y), args.grid ** 2, [d1, d2]))
    (ref_loss, ref_acc), t_ref = timed(
        lambda: reference_surface(net, loader, (d1, d2), g, g, device), device)
    ours, t_ours = timed(lambda: L.surface(net, (x, y), [d1, d2], g, g, progress=False), device)
    print(f"(a) reference (Dataset/DataLoader, per point): {t_ref:8.2f} s")
    print(f"(b) cnnlib ({ours.meta['strategy']}):                      {t_ours:8.2f} s")
    print(f"    speed-up (a)/(b): {t_ref / t_ours:.2f}×   max relative difference of the loss "
          f"surfaces: {rel_diff(ref_loss, ours.loss):.2e}   accuracy differs at "
          f"{int((ref_acc != ours.acc).sum())} of {ref_acc.size} points")
    if device.type == "cuda":
        loop, t_loop = timed(lambda: L.surface(net, (x, y), [d1, d2], g, g, strategy="loop",
                                               progress=False), device)
        vm, t_vm = timed(lambda: L.surface(net, (x, y), [d1, d2], g, g, strategy="vmap",
                                           progress=False), device)
        print(f"    cnnlib loop {t_loop:.2f} s, vmap {t_vm:.2f} s: vmap speed-up "
              f"{t_loop / t_vm:.2f}× (max relative difference {rel_diff(loop.loss, vm.loss):.2e})")
    elif args.variants:
        s, t = timed(lambda: L.surface(net, (x, y), [d1, d2], g, g, strategy="vmap",
                                       progress=False), device)
        print(f"    cnnlib vmap over grid points: {t:.2f} s ({t_ref / t:.2f}× the reference, "
              f"max relative difference {rel_diff(ref_loss, s.loss):.1e})")
    return t_ref / t_ours


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["quick", "resnet20"],
                        choices=["quick", "resnet20"])
    parser.add_argument("--grid", type=int, default=21, help="points per axis (default 21)")
    parser.add_argument("--images", type=int, default=None,
                        help="ResNet-20 evaluation images (default 64 on a CPU, 1000 on a GPU)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--variants", action="store_true",
                        help="on a CPU, also time cnnlib's vmap path (slower there)")
    args = parser.parse_args()
    P = cnnlib.setup(seed=0)
    device = P.device
    n_images = args.images or (1000 if device.type == "cuda" else 64)
    for name in args.models:
        if name == "quick":
            net, pixels, targets, mean, std = quick_model(device)
        else:
            net, pixels, targets, mean, std, source = resnet20_model(device, n_images)
            print(f"(ResNet-20 evaluation set: {source})")
        run(name, net, pixels, targets, mean, std, args, device)


if __name__ == "__main__":
    main()
