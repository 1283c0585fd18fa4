"""Dilated and deformable convolution: the readable implementation against torchvision's op."""
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from cnnlib import measure
from cnnlib.models.layers import (DeformConv2d, bilinear_sample, conv_output_size, deform_conv2d,
                                  deform_sampling_points)


def _random_config(rng: random.Random) -> dict:
    groups = rng.choice([1, 1, 2])
    offset_groups = rng.choice([1, 2])
    c_in = groups * offset_groups * rng.choice([1, 2, 3])
    kh, kw = rng.choice([(3, 3), (3, 3), (1, 1), (2, 3), (5, 5)])
    dh, dw = rng.choice([1, 2]), rng.choice([1, 3])
    return dict(batch=rng.choice([1, 2]), c_in=c_in, c_out=groups * rng.choice([1, 2, 3]), groups=groups,
                offset_groups=offset_groups, kernel=(kh, kw), stride=(rng.choice([1, 2]), rng.choice([1, 2])),
                padding=(rng.choice([0, 1, 2]), rng.choice([0, 1])), dilation=(dh, dw),
                size=(dh * (kh - 1) + rng.randint(1, 8), dw * (kw - 1) + rng.randint(1, 8)),  # output ≥ 1×1
                mask=rng.random() < 0.5, bias=rng.random() < 0.7)


def _tensors(cfg, gen):
    b, c_in, c_out, g = cfg["batch"], cfg["c_in"], cfg["c_out"], cfg["groups"]
    (kh, kw), (h, w) = cfg["kernel"], cfg["size"]
    h_out = conv_output_size(h, kh, cfg["stride"][0], cfg["padding"][0], cfg["dilation"][0])
    w_out = conv_output_size(w, kw, cfg["stride"][1], cfg["padding"][1], cfg["dilation"][1])
    k, og = kh * kw, cfg["offset_groups"]
    t = dict(x=torch.randn(b, c_in, h, w, generator=gen),
             offset=2 * torch.randn(b, 2 * og * k, h_out, w_out, generator=gen),  # many taps leave the image
             weight=torch.randn(c_out, c_in // g, kh, kw, generator=gen),
             bias=torch.randn(c_out, generator=gen) if cfg["bias"] else None,
             mask=torch.rand(b, og * k, h_out, w_out, generator=gen) if cfg["mask"] else None)
    return {name: v.requires_grad_(True) if v is not None else None for name, v in t.items()}


def _run(op, t, cfg):
    return op(t["x"], t["offset"], t["weight"], t["bias"], stride=cfg["stride"], padding=cfg["padding"],
              dilation=cfg["dilation"], mask=t["mask"])


def _assert_matches_torchvision(ours_t, cfg, gen):
    """Our op and torchvision's on copies of the same tensors: equal outputs and equal gradients
    w.r.t. every input, for one random upstream gradient."""
    ref_t = {n: v.detach().clone().requires_grad_(True) if v is not None else None for n, v in ours_t.items()}
    ours, ref = _run(deform_conv2d, ours_t, cfg), _run(tv_deform_conv2d, ref_t, cfg)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    upstream = torch.randn(ref.shape, generator=gen)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for name in ("x", "offset", "weight", "bias", "mask"):
        if ours_t[name] is not None:
            torch.testing.assert_close(ours_t[name].grad, ref_t[name].grad, atol=1e-4, rtol=1e-4,
                                       msg=lambda m, name=name: f"gradient w.r.t. {name}: {m}")


CONFIGS = [_random_config(random.Random(seed)) for seed in range(40)]


@pytest.mark.parametrize("seed", range(len(CONFIGS)), ids=[f"cfg{i}" for i in range(len(CONFIGS))])
def test_random_offsets_match_torchvision_in_forward_and_every_gradient(seed):
    cfg, gen = CONFIGS[seed], torch.Generator().manual_seed(seed)
    ours_t = _tensors(cfg, gen)
    _assert_matches_torchvision(ours_t, cfg, gen)


# Integer sampling positions (zero offsets, where training starts, or whole-pixel offsets) sit on the
# kinks of the bilinear interpolation: the offset gradient there is a one-sided derivative, and
# torchvision's is the right-sided one (corners ⌊p⌋ and ⌊p⌋ + 1). On maps whose side is not a power
# of two, normalized grid_sample coordinates used to land just below the integer (left-sided).
INTEGER_CONFIGS = [
    dict(batch=2, c_in=3, c_out=4, groups=1, offset_groups=1, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
         dilation=(1, 1), mask=True, bias=True),
    dict(batch=1, c_in=4, c_out=2, groups=2, offset_groups=2, kernel=(3, 3), stride=(2, 1), padding=(2, 0),
         dilation=(2, 1), mask=False, bias=False),
    dict(batch=2, c_in=2, c_out=3, groups=1, offset_groups=2, kernel=(2, 3), stride=(1, 2), padding=(0, 1),
         dilation=(1, 3), mask=True, bias=True),
]


@pytest.mark.parametrize("offsets", ["zero", "integer"])
@pytest.mark.parametrize("size", [(20, 20), (23, 23), (28, 28), (20, 23)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("which", range(len(INTEGER_CONFIGS)), ids=[f"int{i}" for i in range(len(INTEGER_CONFIGS))])
def test_integer_offsets_match_torchvision_on_maps_that_are_not_a_power_of_two(which, size, offsets):
    cfg, gen = dict(INTEGER_CONFIGS[which], size=size), torch.Generator().manual_seed(100 + size[0] + size[1])
    ours_t = _tensors(cfg, gen)
    with torch.no_grad():
        if offsets == "zero":
            ours_t["offset"].zero_()
        else:   # whole pixels, many of them leaving the image
            ours_t["offset"].copy_(torch.randint(-3, 4, ours_t["offset"].shape, generator=gen).float())
    _assert_matches_torchvision(ours_t, cfg, gen)


@pytest.mark.parametrize("size", [20, 23, 32])
def test_the_offset_gradient_at_zero_offset_is_the_right_sided_difference(size):
    # a 1×1 kernel of weight 1 reads x at its own pixel: d y / d Δy = x[i + 1, j] − x[i, j] (x past
    # the last row is 0), and d y / d Δx = x[i, j + 1] − x[i, j]
    x = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(size))
    offset = torch.zeros(1, 2, size, size, requires_grad=True)
    deform_conv2d(x, offset, torch.ones(1, 1, 1, 1)).sum().backward()
    below, right = F.pad(x, (0, 0, 0, 1))[..., 1:, :], F.pad(x, (0, 1, 0, 0))[..., :, 1:]
    torch.testing.assert_close(offset.grad[0, 0], (below - x)[0, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(offset.grad[0, 1], (right - x)[0, 0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("cfg", CONFIGS[:12], ids=[f"cfg{i}" for i in range(12)])
def test_zero_offsets_give_the_ordinary_convolution(cfg):
    t = _tensors(cfg, torch.Generator().manual_seed(1))
    with torch.no_grad():
        t["offset"].zero_()
        ours = deform_conv2d(t["x"], t["offset"], t["weight"], t["bias"], cfg["stride"], cfg["padding"],
                             cfg["dilation"])
        ref = F.conv2d(t["x"], t["weight"], t["bias"], cfg["stride"], cfg["padding"], cfg["dilation"],
                       cfg["groups"])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d", [2, 3, 5])
def test_a_dilated_convolution_is_a_deformable_one_with_the_kernel_scaled_about_its_centre(d):
    x, w = torch.randn(2, 3, 17, 15), torch.randn(4, 3, 3, 3)
    h_out, w_out = 17, 15
    taps = torch.stack(torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij"), -1).view(9, 2)
    delta = (d - 1) * (taps - 1)                                        # Δp_n = (d − 1)(p_n − centre)
    offset = delta.reshape(18, 1, 1).expand(1, 18, h_out, w_out).repeat(2, 1, 1, 1)
    torch.testing.assert_close(deform_conv2d(x, offset, w, padding=1),
                               F.conv2d(x, w, padding=d, dilation=d), atol=1e-4, rtol=1e-4)


def test_sampling_points_of_zero_offsets_are_the_regular_grid():
    offset = torch.zeros(1, 2 * 9, 4, 5)
    pts = deform_sampling_points(offset, 3, stride=2, padding=1, dilation=2)
    assert pts.shape == (1, 1, 9, 4, 5, 2)
    # output unit (1, 2): window starts at (1·2 − 1, 2·2 − 1) = (1, 3); taps every 2 pixels
    assert pts[0, 0, :, 1, 2].tolist() == [[1 + 2 * a, 3 + 2 * b] for a in range(3) for b in range(3)]


def test_bilinear_sample_interpolates_and_is_zero_outside():
    x = torch.arange(12.0).view(1, 1, 3, 4)                 # x[i, j] = 4i + j: linear, so exact
    pts = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [0.5, 1.25], [1.7, 2.9], [-1.0, 0.0], [0.0, 4.0],
                         [-0.5, 1.0]]])
    got = bilinear_sample(x, pts)[0, 0]
    expected = torch.tensor([0.0, 6.0, 3.25, 9.7, 0.0, 0.0, 0.5])  # last: half-way to the zeros above
    torch.testing.assert_close(got, expected)


def test_module_starts_as_a_regular_convolution_and_both_ops_are_the_same_function():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 9)
    for kw in (dict(), dict(stride=2, dilation=2, groups=2, offset_groups=2)):
        m = DeformConv2d(4, 6, 3, padding=2 if kw else 1, **kw)
        conv = nn.Conv2d(4, 6, 3, padding=2 if kw else 1, stride=kw.get("stride", 1),
                         dilation=kw.get("dilation", 1), groups=kw.get("groups", 1))
        conv.load_state_dict({"weight": m.weight, "bias": m.bias})
        torch.testing.assert_close(m(x), conv(x), atol=1e-5, rtol=1e-5)
    # train the offsets a little so they are not zero, then compare both code paths
    m = DeformConv2d(4, 6, 3, padding=1, offset_groups=2, modulated=True)
    nn.init.normal_(m.offset_conv.weight, std=0.3)
    fast = DeformConv2d(4, 6, 3, padding=1, offset_groups=2, modulated=True, op="torchvision")
    fast.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x), fast(x), atol=1e-4, rtol=1e-4)
    m(x).square().sum().backward()
    fast(x).square().sum().backward()
    for (name, p), q in zip(m.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-3, rtol=1e-4, msg=lambda s, n=name: f"{n}: {s}")


def test_modulated_module_starts_at_half_the_regular_convolution():
    m = DeformConv2d(3, 5, 3, padding=1, modulated=True, bias=False)
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(m(x), 0.5 * F.conv2d(x, m.weight, padding=1), atol=1e-5, rtol=1e-5)


def test_parameter_count_is_the_kernel_plus_the_offset_branch():
    c_in, c_out, k, g = 16, 32, 3, 2
    m = DeformConv2d(c_in, c_out, k, offset_groups=g, modulated=True)
    kernel = c_out * c_in * k * k + c_out
    offsets = (3 * g * k * k) * (c_in * k * k + 1)            # 2K offsets + K mask logits per group
    assert sum(p.numel() for p in m.parameters()) == kernel + offsets
    assert m.offset_conv.out_channels == 3 * g * k * k


def test_invalid_configurations_are_clear_errors():
    with pytest.raises(ValueError, match="groups=3 must divide"):
        DeformConv2d(4, 6, 3, groups=3)
    with pytest.raises(ValueError, match="offset_groups=3 must divide"):
        DeformConv2d(4, 6, 3, offset_groups=3)
    with pytest.raises(ValueError, match="choose one of \\('readable', 'torchvision'\\)"):
        DeformConv2d(4, 6, 3, op="fast")
    x, w = torch.randn(1, 4, 6, 6), torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="offset must have shape"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), w)        # no padding: the output is 4×4
    with pytest.raises(ValueError, match="mask must have shape"):
        deform_conv2d(x, torch.zeros(1, 18, 4, 4), w, mask=torch.ones(1, 8, 4, 4))
    with pytest.raises(ValueError, match="kernel_size, stride and dilation must be at least 1"):
        DeformConv2d(4, 6, 0)
    with pytest.raises(ValueError, match="kernel must be at least 1×1"):
        deform_conv2d(x, torch.zeros(1, 0, 6, 6), torch.randn(2, 4, 0, 3))
    with pytest.raises(ValueError, match="works on batches.*x\\[None\\]"):
        deform_conv2d(x[0], torch.zeros(1, 18, 4, 4), w)     # one image without its batch axis


@pytest.mark.parametrize("op", ["readable", "torchvision"])
def test_an_image_without_a_batch_axis_is_a_clear_error(op):
    m = DeformConv2d(4, 6, 3, padding=1, op=op)
    with pytest.raises(ValueError, match="works on batches \\(N, C, H, W\\); got shape \\(4, 8, 8\\)"):
        m(torch.randn(4, 8, 8))
    assert m(torch.randn(4, 8, 8)[None]).shape == (1, 6, 8, 8)


def test_receptive_field_refuses_deformable_layers():
    # the linear surrogate would give the offset branch positive weights and report a meaningless field
    stack = nn.Sequential(DeformConv2d(1, 1, 3, padding=1), DeformConv2d(1, 1, 3, padding=1))
    with pytest.raises(TypeError, match="not supported for deformable layers.*depends on the input"):
        measure.receptive_field(stack, (1, 1, 41, 41))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_dilations_1_2_4_grow_the_receptive_field_exponentially(n):
    dilations = [2 ** i for i in range(n)]
    stack = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=d, dilation=d) for d in dilations])
    r = measure.receptive_field_formula([(3, 1, d) for d in dilations])
    assert r == 2 ** (n + 1) - 1                         # Yu & Koltun 2016: (2^{i+2} − 1) after layer i+1
    assert measure.receptive_field(stack, (1, 1, 2 * r + 1, 2 * r + 1)) == (r, r)
    assert sum(p.numel() for p in stack.parameters()) == 10 * n   # constant parameters per layer
