"""Where a network looks: Grad-CAM, and the maps that attention modules compute.

Grad-CAM (Selvaraju et al. 2017) explains one class score ``y^c`` with the feature maps ``A^k`` of a
chosen layer (usually the last convolutional one):

    α_k^c = 1/Z Σ_ij ∂y^c / ∂A^k_ij                  (Eq. 1: how much map k matters for class c)
    L^c   = ReLU(Σ_k α_k^c A^k)                      (Eq. 2: keep what speaks *for* the class)

The coarse map ``L^c`` (the layer's resolution) is upsampled to the image and scaled to [0, 1] for
display, as the paper's figures and the ``grad-cam`` package do (tested against that package).

Attention modules (``SqueezeExcitation``, ``CBAM`` in ``cnnlib.models.layers``) compute their maps
as outputs of sub-modules; ``capture`` records any sub-module's output with forward hooks.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .models import eval_mode


def capture(model: nn.Module, x: Tensor, modules: dict[str, nn.Module]) -> dict[str, Tensor]:
    """Run ``model(x)`` in eval mode without gradients and return the outputs of ``modules``
    (name -> sub-module), e.g. the channel weights of every SE block. A module that runs more
    than once keeps its last output. The model's train/eval mode is restored."""
    outputs: dict[str, Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach()))
               for name, m in modules.items()]
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return outputs


def normalize_map(maps: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Upsample maps (B, h, w) bilinearly to ``size`` (if given) and scale each to [0, 1]."""
    if size is not None:
        maps = F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear",
                             align_corners=False).squeeze(1)
    lo = maps.flatten(1).amin(1).view(-1, 1, 1)
    hi = maps.flatten(1).amax(1).view(-1, 1, 1)
    return (maps - lo) / (hi - lo + 1e-7)


def _targets(logits: Tensor, target) -> Tensor:
    """One class index per image: the predicted ones (None), one index for all, or one per image."""
    if logits.ndim != 2:
        raise ValueError(f"Grad-CAM explains a class score: the model must output (N, classes); got shape "
                         f"{tuple(logits.shape)}")
    n, classes = logits.shape
    if target is None:
        return logits.argmax(1)
    target = torch.as_tensor(target, device=logits.device)
    if target.ndim > 1 or (target.ndim == 1 and len(target) != n):
        raise ValueError(f"target must be one class index or one index per image ({n} images); "
                         f"got shape {tuple(target.shape)}")
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must hold integer class indices; got dtype {target.dtype}")
    if ((target < 0) | (target >= classes)).any():
        raise ValueError(f"target classes must be in 0 … {classes - 1} (the model has {classes} outputs); "
                         f"got {target.tolist()}")
    return target.expand(n)


def grad_cam(model: nn.Module, layer: nn.Module, x: Tensor, target=None,
             size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Grad-CAM maps of ``layer`` for the class ``target`` (Selvaraju et al. 2017, Eq. 1–2).

    ``target``: None (each image's predicted class), one class index, or a tensor of one index per
    image. Returns ``(maps, target)``: the raw maps ``ReLU(Σ_k α_k A^k)`` at the layer's resolution
    (B, h, w), or, with ``size``, upsampled to ``size`` and scaled to [0, 1] per image. The model runs
    in eval mode (BatchNorm uses its running statistics); its mode is restored. ``layer``'s output
    must not be modified in place later in the forward pass.
    """
    stored: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: stored.append(out))
    try:
        with eval_mode(model), torch.enable_grad():
            logits = model(x)
            if not stored:
                raise ValueError("the chosen layer did not run in model(x); pick a module of the model")
            activations = stored[-1]
            if not isinstance(activations, Tensor) or activations.ndim != 4:
                shape = tuple(activations.shape) if isinstance(activations, Tensor) else type(activations).__name__
                raise ValueError(f"Grad-CAM needs a convolutional layer whose output is a feature map "
                                 f"(N, C, H, W); the chosen layer outputs {shape} (pick e.g. the last block "
                                 f"before global pooling)")
            target = _targets(logits, target)
            score = logits.gather(1, target.view(-1, 1)).sum()  # images are independent in eval mode
            (grads,) = torch.autograd.grad(score, activations)
    finally:
        handle.remove()
    alpha = grads.mean(dim=(2, 3), keepdim=True)                        # Eq. 1: pooled gradients
    maps = F.relu((alpha * activations).sum(1)).detach()                # Eq. 2
    return (maps if size is None else normalize_map(maps, size)), target


def overlay(image: Tensor, heat: Tensor, alpha: float = 0.6, cmap: str = "jet") -> np.ndarray:
    """Blend a heat map (H, W) in [0, 1] over an image (C, H, W) in [0, 1]; returns (H, W, 3) RGB.

    The colour's weight grows with the heat (``alpha · heat``), so cold regions show the image itself."""
    import matplotlib

    img = image.detach().float().cpu()
    img = img.expand(3, -1, -1) if img.shape[0] == 1 else img[:3]
    heat = heat.detach().float().cpu().clamp(0, 1).numpy()
    colors = matplotlib.colormaps[cmap](heat)[..., :3]
    weight = alpha * heat[..., None]
    return np.clip((1 - weight) * img.permute(1, 2, 0).clamp(0, 1).numpy() + weight * colors, 0, 1)


def plot_overlays(images: Tensor, maps: Tensor, titles=None, alpha: float = 0.6, axes=None):
    """A row of images (B, C, H, W) in [0, 1] with their maps (B, h, w) overlaid (upsampled and
    scaled to [0, 1] here); one column per image. Maps with one channel, (B, 1, h, w) — what
    ``capture`` records for CBAM's spatial attention — are accepted too. Returns the axes."""
    import matplotlib.pyplot as plt

    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3 or len(maps) != len(images):
        raise ValueError(f"maps must be (B, h, w) or (B, 1, h, w) with one map per image ({len(images)} "
                         f"images); got shape {tuple(maps.shape)}")
    n = len(images)
    if axes is None:
        _, axes = plt.subplots(1, n, figsize=(1.6 * n, 1.9), constrained_layout=True, squeeze=False)
        axes = axes[0]
    heat = normalize_map(maps.float(), images.shape[-2:])
    for i, ax in enumerate(axes):
        ax.imshow(overlay(images[i], heat[i], alpha))
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    return axes
