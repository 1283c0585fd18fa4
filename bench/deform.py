"""Deformable convolution: the readable pure-PyTorch ``deform_conv2d`` vs torchvision's fused op.

Both compute the same function (tests/test_deformable.py checks forward and gradients), so the
ratio is the price of readability. Measured in one process on the same inputs, forward + backward,
median of several repeats::

    python bench/deform.py                 # default: a mid-network layer, 64→64 channels, 32×32
    python bench/deform.py --batch 64 --size 16
"""
from __future__ import annotations

import argparse

import torch
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

from cnnlib.measure import median_time
from cnnlib.models.layers import conv_output_size, deform_conv2d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--offset-groups", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    b, c, s, k = args.batch, args.channels, args.size, 3
    out = conv_output_size(s, k, 1, 1)
    x = torch.randn(b, c, s, s, generator=g).to(device).requires_grad_(True)
    offset = torch.randn(b, 2 * args.offset_groups * k * k, out, out, generator=g).to(device).requires_grad_(True)
    mask = torch.rand(b, args.offset_groups * k * k, out, out, generator=g).to(device).requires_grad_(True)
    weight = torch.randn(c, c, k, k, generator=g).to(device).requires_grad_(True)

    def step(op):
        def run():
            y = op(x, offset, weight, None, 1, 1, 1, mask=mask)
            y.sum().backward()
        return run

    readable = median_time(step(deform_conv2d), device, args.repeats)
    fused = median_time(step(torchvision_deform_conv2d), device, args.repeats)
    print(f"deformable 3×3 conv, {c}→{c} channels, {b}×{s}×{s}, {args.offset_groups} offset group(s), "
          f"modulated, forward+backward on {device} ({torch.get_num_threads()} threads)")
    print(f"  pure PyTorch (gather + einsum):      {1e3 * readable:8.1f} ms")
    print(f"  torchvision.ops.deform_conv2d:       {1e3 * fused:8.1f} ms")
    print(f"  ratio pure PyTorch / torchvision:    {readable / fused:8.2f}×  "
          f"(the {'readable' if readable < fused else 'torchvision'} op is "
          f"{max(readable, fused) / min(readable, fused):.1f}× faster here)")


if __name__ == "__main__":
    main()
