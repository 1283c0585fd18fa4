"""Building blocks shared by several model families.

Each layer cites the paper and equation it implements.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def _window_sum(x: Tensor, n: int, reverse: bool = False) -> Tensor:
    """Σ of ``x`` over each channel's window of ``n`` channels, zeros beyond the edges: channels
    ``i − n//2 … i + n − 1 − n//2`` (``reverse``: the mirrored window, the same for odd n)."""
    channels, half = x.shape[1], n // 2
    before, after = (n - 1 - half, half) if reverse else (half, n - 1 - half)
    padded = F.pad(x, (0, 0, 0, 0, before, after))  # zero-pad the channel axis
    total = padded[:, :channels].clone()
    for i in range(1, n):
        total += padded[:, i:i + channels]
    return total


class _LocalResponseNormFunction(torch.autograd.Function):
    """LRN with its gradient written out, which costs one power per element instead of autograd's
    three (LRN was half of ZFNet-small's training time). With s_i = Σ_{j∈W(i)} a_j²,
    d_i = k + α s_i and b_i = a_i d_i^{−β}:

        ∂L/∂a_j = g_j d_j^{−β} − 2αβ a_j Σ_{i: j∈W(i)} g_i b_i / d_i

    (the window of i contains j iff j's mirrored window contains i). Checked with gradcheck."""

    generate_vmap_rule = True  # plain tensor ops only, so torch.func.vmap works through it

    @staticmethod
    def forward(a, n, alpha, beta, k):
        d = _window_sum(a * a, n).mul_(alpha).add_(k)
        scale = d.pow(-beta)
        return a * scale, scale, d

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, n, alpha, beta, _ = inputs
        b, scale, d = output
        ctx.save_for_backward(a, b, scale, d)
        ctx.n, ctx.alpha, ctx.beta = n, alpha, beta
        ctx.mark_non_differentiable(scale, d)

    @staticmethod
    def backward(ctx, g, _scale_grad, _d_grad):
        a, b, scale, d = ctx.saved_tensors
        inner = _window_sum(g * b / d, ctx.n, reverse=True)
        return g * scale - (2 * ctx.alpha * ctx.beta) * a * inner, None, None, None, None


class LocalResponseNorm(nn.Module):
    """Local response normalization across channels (Krizhevsky et al. 2012, Sec. 3.3):

        b^i = a^i / (k + α · Σ_{j=max(0, i−n/2)}^{min(N−1, i+n/2)} (a^j)²)^β

    with the paper's constants k=2, n=5, α=1e-4, β=0.75 as defaults. Note the paper's α
    multiplies the plain sum; ``torch.nn.LocalResponseNorm`` divides its α by n, so this layer
    equals ``nn.LocalResponseNorm(n, alpha=α·n, beta=β, k=k)`` (checked in the tests). The
    gradient is computed in closed form (``_LocalResponseNormFunction``), 2× faster than autograd's.
    """

    def __init__(self, n: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        self.n, self.alpha, self.beta, self.k = n, alpha, beta, k

    def forward(self, a: Tensor) -> Tensor:
        return _LocalResponseNormFunction.apply(a, self.n, self.alpha, self.beta, self.k)[0]

    def extra_repr(self) -> str:
        return f"n={self.n}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


def init_weights(model: nn.Module) -> None:
    """He initialization (He et al. 2015, "Delving deep into rectifiers") for convolutions and
    linear layers, zero biases, BatchNorm at the identity. Without it, deep ReLU nets without
    BatchNorm (AlexNet, VGG, GoogLeNet) start with vanishing activations and barely move."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")  # fan-in: keeps forward variance
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# Deformable convolution (Dai et al. 2017; v2: Zhu et al. 2019)
# --------------------------------------------------------------------------------------------

def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Side length of a convolution's output (floor rounding, as in PyTorch)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def deform_sampling_points(offset: Tensor, kernel_size, stride=1, padding=0, dilation=1) -> Tensor:
    """Where a deformable convolution reads its input: ``p0 + p_n + Δp_n`` (Dai et al. 2017, Eq. 2).

    ``offset`` has shape ``(B, 2·G·K, H_out, W_out)`` in torchvision's layout: for offset group ``g``
    and kernel tap ``n`` (row-major over the ``kh×kw`` kernel) channel ``2(gK + n)`` holds Δy and
    ``2(gK + n) + 1`` holds Δx. Returns ``(B, G, K, H_out, W_out, 2)`` absolute ``(y, x)`` positions in
    input pixels, so that zero offsets give the regular (dilated) grid of an ordinary convolution.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel_size, stride, padding, dilation))
    b, c, h_out, w_out = offset.shape
    k = kh * kw
    if c % (2 * k):
        raise ValueError(f"offset has {c} channels; it needs 2·offset_groups·kh·kw (a multiple of {2 * k})")
    groups = c // (2 * k)
    dev, dt = offset.device, offset.dtype
    # p0: top-left corner of each output unit's window; p_n: the tap's place inside the window
    p0_y = (torch.arange(h_out, device=dev, dtype=dt) * sh - ph).view(1, 1, h_out, 1)
    p0_x = (torch.arange(w_out, device=dev, dtype=dt) * sw - pw).view(1, 1, 1, w_out)
    pn_y = (torch.arange(kh, device=dev, dtype=dt) * dh).view(kh, 1, 1, 1)
    pn_x = (torch.arange(kw, device=dev, dtype=dt) * dw).view(1, kw, 1, 1)
    grid_y = (p0_y + pn_y).expand(kh, kw, h_out, w_out).reshape(k, h_out, w_out)
    grid_x = (p0_x + pn_x).expand(kh, kw, h_out, w_out).reshape(k, h_out, w_out)
    regular = torch.stack([grid_y, grid_x], dim=-1)                         # (K, H_out, W_out, 2)
    delta = offset.view(b, groups, k, 2, h_out, w_out).permute(0, 1, 2, 4, 5, 3)
    return regular + delta


def bilinear_sample(x: Tensor, points: Tensor) -> Tensor:
    """Values of ``x`` (N, C, H, W) at fractional ``(y, x)`` positions ``points`` (N, ..., 2).

    Bilinear interpolation between the four neighbouring pixels (Dai et al. 2017, Eq. 3–4), with
    zeros outside the image. Returns ``(N, C, ...)``. Computed in pixel coordinates, so that an
    integer position reads exactly one pixel: the corners are ``⌊p⌋`` and ``⌊p⌋ + 1`` and the upper
    corner's weight is ``p − ⌊p⌋``, as in ``torchvision.ops.deform_conv2d``. This fixes the
    gradient w.r.t. the position where the interpolation has a kink, at integer positions (zero
    offsets, where training starts): it is the right-sided one, ``x[⌊p⌋ + 1] − x[⌊p⌋]``, as in
    torchvision. (``F.grid_sample`` would need coordinates normalized to [−1, 1]; on a side that
    is not a power of two the rounding lands an integer position just below the integer, and the
    gradient becomes the left-sided one.)
    """
    n, c, h, w = x.shape
    shape = points.shape[1:-1]
    y, xx = points.reshape(n, -1, 2).unbind(-1)               # (N, P) positions, in pixels
    y0, x0 = y.detach().floor(), xx.detach().floor()          # the top-left corner
    ly, lx = y - y0, xx - x0                                  # in [0, 1): the far corners' weights
    # a frame of zeros around the image: a corner outside it reads from the frame (clamped), i.e. 0
    frame = F.pad(x, (1, 1, 1, 1)).reshape(n, c, (h + 2) * (w + 2))

    def corner(dy: int, dx: int) -> Tensor:                   # x at (y0 + dy, x0 + dx): (N, C, P)
        row = (y0 + dy).clamp(-1, h).long() + 1
        col = (x0 + dx).clamp(-1, w).long() + 1
        return frame.gather(2, (row * (w + 2) + col).unsqueeze(1).expand(n, c, -1))

    out = (((1 - ly) * (1 - lx)).unsqueeze(1) * corner(0, 0) + ((1 - ly) * lx).unsqueeze(1) * corner(0, 1)
           + (ly * (1 - lx)).unsqueeze(1) * corner(1, 0) + (ly * lx).unsqueeze(1) * corner(1, 1))
    return out.view(n, c, *shape)


def deform_conv2d(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                  padding=0, dilation=1, mask: Tensor | None = None) -> Tensor:
    """Deformable convolution written to be read; same signature and layout as
    ``torchvision.ops.deform_conv2d`` (and equal to it, see the tests).

    Dai et al. (2017), Eq. 2, with the modulation Δm_n of DCNv2 (Zhu et al. 2019, Eq. 1)::

        y(p0) = Σ_n w(p_n) · x(p0 + p_n + Δp_n) · Δm_n

    Three steps: (1) sample every input channel bilinearly at the K shifted taps of each output
    position ("deformable im2col"), (2) multiply by the mask, (3) contract the samples with the
    kernel — an ordinary convolution on the gathered columns. The ``groups`` of the convolution
    follow from ``weight`` (``C_in / weight.shape[1]``); the offset groups (input channels that
    share one offset field) from ``offset`` (``offset.shape[1] / 2K``).
    """
    if x.ndim != 4 or offset.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"deform_conv2d works on batches: x (N, C, H, W), offset (N, 2·G·K, H_out, W_out) "
                         f"and weight (C_out, C_in/groups, kh, kw) must be 4-D; got x {tuple(x.shape)}, "
                         f"offset {tuple(offset.shape)}, weight {tuple(weight.shape)} (for one image "
                         f"use x[None])")
    b, c, h, w = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    k = kh * kw
    if k == 0:
        raise ValueError(f"the kernel must be at least 1×1; weight has shape {tuple(weight.shape)}")
    (sh, sw), (ph, pw), (dh, dw) = map(_pair, (stride, padding, dilation))
    h_out, w_out = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
    if c % c_per_group or c_out % (c // c_per_group):
        raise ValueError(f"weight {tuple(weight.shape)} does not split {c} input channels into groups "
                         f"that also divide {c_out} output channels")
    if offset.shape[0] != b or offset.shape[2:] != (h_out, w_out) or offset.shape[1] % (2 * k):
        raise ValueError(f"offset must have shape ({b}, 2·offset_groups·{k}, {h_out}, {w_out}); "
                         f"got {tuple(offset.shape)}")
    offset_groups, groups = offset.shape[1] // (2 * k), c // c_per_group
    if c % offset_groups:
        raise ValueError(f"{offset_groups} offset groups do not divide {c} input channels")
    if mask is not None and tuple(mask.shape) != (b, offset_groups * k, h_out, w_out):
        raise ValueError(f"mask must have shape ({b}, {offset_groups * k}, {h_out}, {w_out}); "
                         f"got {tuple(mask.shape)}")

    points = deform_sampling_points(offset, (kh, kw), stride, padding, dilation)  # (B, G, K, Ho, Wo, 2)
    # (1) deformable im2col: every channel of an offset group read at that group's K taps
    columns = bilinear_sample(x.reshape(b * offset_groups, c // offset_groups, h, w),
                              points.reshape(b * offset_groups, k, h_out, w_out, 2))
    columns = columns.view(b, offset_groups, c // offset_groups, k, h_out, w_out)
    # (2) DCNv2 modulation: one scalar per tap and position, shared by the group's channels
    if mask is not None:
        columns = columns * mask.view(b, offset_groups, 1, k, h_out, w_out)
    # (3) the convolution proper: weighted sum over each group's input channels and the K taps
    columns = columns.reshape(b, groups, c_per_group, k, h_out, w_out)
    kernel = weight.reshape(groups, c_out // groups, c_per_group, k)
    out = torch.einsum("bgckhw,gock->bgohw", columns, kernel).reshape(b, c_out, h_out, w_out)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


DEFORM_OPS = ("readable", "torchvision")


class DeformConv2d(nn.Module):
    """A deformable convolution with its sibling offset convolution (Dai et al. 2017, Fig. 2).

    The offset branch is an ordinary convolution with the same kernel, stride, padding and dilation
    that predicts ``2·K`` offsets (and, with ``modulated=True``, ``K`` mask logits; DCNv2) for each of
    the ``offset_groups``. It is zero-initialized, so training starts from a regular convolution
    (with mask σ(0) = 0.5 in the modulated case, as in DCNv2). ``op`` picks the implementation of
    the same function: ``"readable"`` (``deform_conv2d`` above) or ``"torchvision"``
    (``torchvision.ops.deform_conv2d``, a fused kernel: the one to use on a GPU; on a CPU the
    readable one is several times faster, see ``bench/deform.py``).
    A model-wide initializer that visits every ``nn.Conv2d`` (such as ``init_weights``) also
    re-initializes ``offset_conv``: call ``reset_parameters()`` after it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0,
                 dilation=1, groups: int = 1, offset_groups: int = 1, bias: bool = True,
                 modulated: bool = False, op: str = "readable"):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        if in_channels % offset_groups:
            raise ValueError(f"offset_groups={offset_groups} must divide in_channels={in_channels}")
        if op not in DEFORM_OPS:
            raise ValueError(f"op={op!r} is not an implementation; choose one of {DEFORM_OPS}")
        if min(_pair(kernel_size) + _pair(stride) + _pair(dilation)) < 1:
            raise ValueError(f"kernel_size, stride and dilation must be at least 1; got kernel_size="
                             f"{kernel_size}, stride={stride}, dilation={dilation}")
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups, self.offset_groups = groups, offset_groups
        self.modulated, self.op = modulated, op
        k = self.kernel_size[0] * self.kernel_size[1]
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.offset_conv = nn.Conv2d(in_channels, (3 if modulated else 2) * offset_groups * k,
                                     self.kernel_size, self.stride, self.padding, self.dilation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The main kernel as ``nn.Conv2d`` initializes it; the offset branch at zero."""
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if self.bias is not None:
            bound = 1 / (self.weight[0].numel() ** 0.5)
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def offsets(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The offset field Δp (B, 2·G·K, H_out, W_out) and the mask Δm ∈ (0, 1) (or None)."""
        out = self.offset_conv(x)
        if not self.modulated:
            return out, None
        n = 2 * self.offset_groups * self.kernel_size[0] * self.kernel_size[1]
        return out[:, :n], torch.sigmoid(out[:, n:])

    def sampling_points(self, x: Tensor) -> Tensor:
        """Absolute ``(y, x)`` input positions read for every output unit: (B, G, K, H_out, W_out, 2)."""
        offset, _ = self.offsets(x)
        return deform_sampling_points(offset, self.kernel_size, self.stride, self.padding, self.dilation)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"DeformConv2d works on batches (N, C, H, W); got shape {tuple(x.shape)} "
                             f"(for one image use x[None])")
        offset, mask = self.offsets(x)
        if self.op == "torchvision":
            from torchvision.ops import deform_conv2d as conv
        else:
            conv = deform_conv2d
        return conv(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask=mask)

    def extra_repr(self) -> str:
        c_out, c_in_g = self.weight.shape[:2]
        return (f"{c_in_g * self.groups}, {c_out}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"offset_groups={self.offset_groups}, bias={self.bias is not None}, "
                f"modulated={self.modulated}, op={self.op!r}")


# --------------------------------------------------------------------------------------------
# Attention modules: Squeeze-and-Excitation (Hu et al. 2018), CBAM (Woo et al. 2018)
# --------------------------------------------------------------------------------------------
# Both take the number of channels as their first argument, so ``functools.partial(CBAM,
# reduction=8)`` is an ``attention`` factory for the course's ResNets (channels -> module).

def _bottleneck_mlp(channels: int, reduction: int) -> nn.Sequential:
    """C → C/r → ReLU → C as 1×1 convolutions (fully connected layers on a (B, C, 1, 1) tensor)."""
    if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
        raise ValueError(f"reduction ratio r must be an integer of at least 1 (the hidden layer has C // r "
                         f"units), got {reduction!r}")
    hidden = max(1, channels // reduction)
    return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, channels, 1))


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation block (Hu et al. 2018, Sec. 3):

        squeeze     z_c = 1/(H·W) Σ_ij u_c(i, j)            (global average pooling, Eq. 2)
        excitation  s = σ(W_2 δ(W_1 z)),  W_1 ∈ R^{C/r×C}, W_2 ∈ R^{C×C/r}            (Eq. 3)
        scale       x̃_c = s_c · u_c                                                   (Eq. 4)

    Extra parameters: 2C²/r weights (the paper's Eq. 5 counts only these) plus C/r + C biases.
    The hidden width is ``max(1, C // r)``. ``excitation`` outputs the channel weights s (B, C, 1, 1).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.excitation = nn.Sequential(*_bottleneck_mlp(channels, reduction), nn.Sigmoid())

    def forward(self, u: Tensor) -> Tensor:
        return u * self.excitation(self.squeeze(u))


class ChannelAttention(nn.Module):
    """CBAM's channel attention map (Woo et al. 2018, Eq. 2), "what" to attend to:

        M_c(F) = σ(MLP(AvgPool(F)) + MLP(MaxPool(F)))      — one MLP shared by both descriptors.

    Returns the map (B, C, 1, 1); same parameters as an SE block of the same C and r.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.mlp = _bottleneck_mlp(channels, reduction)

    def forward(self, f: Tensor) -> Tensor:
        avg = f.mean(dim=(2, 3), keepdim=True)
        peak = f.amax(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(peak))


class SpatialAttention(nn.Module):
    """CBAM's spatial attention map (Woo et al. 2018, Eq. 3), "where" to attend:

        M_s(F) = σ(f^{7×7}([AvgPool_c(F); MaxPool_c(F)]))  — pooling across channels, then one conv.

    Returns the map (B, 1, H, W); 2·k² + 1 parameters (the official code uses BatchNorm instead of
    the bias, which is the same function at inference).
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd to keep the map's size, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, f: Tensor) -> Tensor:
        pooled = torch.cat([f.mean(dim=1, keepdim=True), f.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018, Eq. 1): channel, then spatial attention,

        F' = M_c(F) ⊗ F,    F'' = M_s(F') ⊗ F'.

    Extra parameters: those of SE (2C²/r + C/r + C) plus 2·k² + 1 for the spatial convolution.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, f: Tensor) -> Tensor:
        f = f * self.channel(f)
        return f * self.spatial(f)
