"""Loss landscapes: directions in weight space, and the loss evaluated on lines and planes.

Li et al. (2018), "Visualizing the loss landscape of neural nets", plot

    f(α)    = L(θ* + α·δ)                 (1D)
    f(α, β) = L(θ* + α·δ + β·η)           (2D, Sec. 3)

around a trained point θ*, with random Gaussian directions δ, η rescaled filter by filter,

    δ_{i,j} ← δ_{i,j} / ‖δ_{i,j}‖ · ‖θ_{i,j}‖      (filter j of layer i, Sec. 4),

so that a direction moves every filter by as much as the filter itself weighs. Without that
rescaling, networks that compute the same function with differently scaled weights (ReLU and
BatchNorm make the scale arbitrary; ``rescaled_copy`` builds such a pair) would look sharper or
flatter for no reason.

Everything here works for any ``nn.Module`` and any loss. The vocabulary:

``Point``
    a ``dict`` from parameter (and optionally buffer) names to tensors — a position in weight
    space, e.g. ``weights(model)``. A *direction* is a ``Point`` too: the same names, the step to
    take. A point and a direction may cover only some names; the others stay at the centre.
directions
    ``random_direction`` (filter/layer/no normalization; biases and BatchNorm parameters zeroed
    or included), ``direction_between`` (from one model to another: linear interpolation,
    Goodfellow et al. 2015), ``plane`` (through three models, Garipov et al. 2018) and
    ``pca_directions`` (principal directions of a training trajectory, Li et al. Sec. 7).
evaluation
    ``surface`` evaluates a 1D or 2D grid and returns a ``Surface`` (save, load, plot);
    ``evaluate_points`` evaluates arbitrary points ``θ* + Σ_k c_k d_k``. Two strategies sit
    behind both calls: ``"loop"`` writes each point's weights into a working copy of the model
    (channels-last for images) and runs the evaluation set through it — the fastest on a CPU;
    ``"vmap"`` evaluates a chunk of grid points at once with ``torch.func.functional_call`` +
    ``vmap`` — for a GPU, which one small model leaves mostly idle — chunked to a memory budget.
    ``"auto"`` picks per device; ``estimate`` states the cost before the run. (On a 2-core CPU
    vmap over convolution weights ran 2–4× slower than the loop, folding BatchNorm into the
    convolutions gained nothing measurable and ``torch.compile`` under 10% for ~15 s of
    compilation, so the loop has none of them; see ``bench/landscape.py``.)
BatchNorm statistics
    ``bn="keep"`` evaluates with the centre's running statistics (moved along a direction only
    if the direction has entries for them — ``direction_between(..., buffers=True)``);
    ``bn="recompute"`` re-estimates them at every point from training images
    (``recompute_bn``), as mode-connectivity studies must (Garipov et al. 2018).

The evaluation set is held as tensors on the device (an ``ImageData`` split or an ``(x, y)``
pair): no per-sample ``Dataset``/``DataLoader`` work per grid point.

The modules, one idea each: ``directions`` (points and directions), ``evaluate`` (the loss at
many points, and its cost), ``surface`` (the ``Surface`` result and the calls that make one),
``plots`` (drawing surfaces) and ``curvature`` (the Hessian: eigenvalues, trace, density). Every
name is importable from ``cnnlib.landscape`` itself.
"""
from __future__ import annotations

from .directions import (BIAS_BN, EPS, NORMS, Plane, Point, TrajectoryPCA, _as_point,
                         _conv_bn_pairs, _orthonormal_pair, combine, direction_between, dot,
                         norm, normalize_direction, pca_directions, plane, random_direction,
                         rescaled_copy, weights)
from .evaluate import (BN_MODES, STRATEGIES, Estimate, _accumulate, _bn_images, _default_budget,
                       _device_of, _eval_tensors, _evaluate_vmap, _forward_profile, _LoopRunner,
                       _prepare, _resolve_strategy, _stack_points, _VmapRunner, estimate,
                       evaluate_points, recompute_bn)
from .surface import (METRICS, Surface, _check_metric, _digest, curvatures, grid, random_surface,
                      surface)
from .plots import _contour_levels, plot_surface, plot_surfaces
from .curvature import (Density, HessianOperator, Ratio, RatioMap, eigen_ratio, eigen_ratio_map,
                        eigenvalues, hessian, lanczos, power_iteration, spectral_density, trace)
