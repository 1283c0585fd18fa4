"""Benchmark: Hessian-vector products, forward-over-reverse (``jvp`` of ``grad``) against
reverse-over-reverse (``vjp`` of ``grad``), both through ``torch.func``, in the same process, with
one plain backward pass as the unit.

    python bench/hessian.py                    # ResNet-20 w8 (no shortcuts) on 128 digits, CPU
    python bench/hessian.py --images 512 --depth 56
"""
import argparse

import torch
import torch.nn.functional as F

import cnnlib
from cnnlib import landscape as L, models


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    P = cnnlib.setup(seed=0, profile="quick")
    data = cnnlib.load("digits", device=P.device)
    x, y = data.x_train[:args.images], data.y_train[:args.images]
    net = models.create("resnet_cifar", num_classes=10, in_channels=1, depth=args.depth, width=args.width,
                        plain=True).to(P.device).eval()
    v = torch.randn(sum(p.numel() for p in net.parameters()), device=P.device)
    backward = cnnlib.measure.median_time(lambda: F.cross_entropy(net(x), y).backward(), P.device, args.repeats)
    times, products = {}, {}
    for mode in ("forward", "reverse"):
        H = L.hessian(net, (x, y), mode=mode)
        times[mode] = cnnlib.measure.median_time(lambda: H(v), P.device, args.repeats)
        products[mode] = H(v)
    diff = (products["forward"] - products["reverse"]).abs().max().item()
    print(f"ResNet-{args.depth} w{args.width} no-short, {args.images} images, {P.device}: one backward "
          f"{1e3 * backward:.0f} ms; HVP forward-over-reverse {1e3 * times['forward']:.0f} ms "
          f"({times['forward'] / backward:.1f} backwards), reverse-over-reverse {1e3 * times['reverse']:.0f} ms "
          f"({times['reverse'] / backward:.1f} backwards); reverse is {times['forward'] / times['reverse']:.2f}× "
          f"faster; max |difference| {diff:.1e}")


if __name__ == "__main__":
    main()
