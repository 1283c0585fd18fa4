import pytest
import torch
import torch.nn as nn

import cnnlib
from cnnlib import measure
from cnnlib.models import create


def test_conv_flops_are_two_per_multiply_add():
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    macs = 8 * 16 * 9 * 10 * 10
    assert measure.flops(conv, (1, 8, 10, 10)) == 2 * macs
    assert measure.macs(conv, (1, 8, 10, 10)) == macs


def test_three_stacked_3x3_convs_see_7x7_with_27_instead_of_49_c_squared_weights():
    c = 16
    stack = nn.Sequential(*[nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.ReLU())
                            for _ in range(3)])
    single = nn.Conv2d(c, c, 7, padding=3, bias=False)
    assert measure.receptive_field(stack, (1, c, 21, 21)) == (7, 7)
    assert measure.receptive_field(single, (1, c, 21, 21)) == (7, 7)
    assert cnnlib.count_params(stack) == 27 * c * c and cnnlib.count_params(single) == 49 * c * c


def test_receptive_field_formula_matches_the_measurement():
    layers = [(3, 1, 1), (3, 2, 1), (3, 1, 2), (3, 1, 4)]
    net = nn.Sequential(*[nn.Conv2d(1, 1, k, s, padding=d * (k // 2), dilation=d) for k, s, d in layers])
    r = measure.receptive_field_formula(layers)
    assert r == 1 + 2 * 1 * 1 + 2 * 1 * 1 + 2 * 2 * 2 + 2 * 4 * 2 == 29  # (k-1)·d·jump, summed
    assert measure.receptive_field(net, (1, 1, 65, 65)) == (r, r)


def test_alexnet_receptive_field_matches_the_formula():
    feats = create("alexnet").features
    layers = [(11, 4), (3, 2), (5, 1), (3, 2), (3, 1), (3, 1), (3, 1), (3, 2)]
    assert measure.receptive_field_formula(layers) == 195
    assert measure.receptive_field(feats, (1, 3, 451, 451)) == (195, 195)


def test_receptive_field_through_branches_takes_the_widest_path():
    inception = create("googlenet", variant="paper").inception["3a"]
    assert measure.receptive_field(inception, (1, 192, 15, 15)) == (5, 5)


def test_receptive_field_on_too_small_an_input_is_a_clear_error():
    with pytest.raises(ValueError, match="too small.*the field is 7×7"):
        measure.receptive_field(nn.Conv2d(1, 1, 7, padding=3), (1, 1, 5, 5))


def _dilated_stack(dilation, n):
    return nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=dilation, dilation=dilation) for _ in range(n)])


@pytest.mark.parametrize("dilation,n,field,small,large", [(2, 4, 17, 15, 35), (2, 4, 17, 17, 19),
                                                          (4, 3, 25, 20, 41)])
def test_a_gridded_field_cut_off_by_the_border_is_an_error_not_a_smaller_field(dilation, n, field, small,
                                                                               large):
    # one dilation everywhere reads every d-th pixel: the field's outer rows can fall into the padding
    # while the rows at the border are holes, so the support alone does not show the cut
    stack = _dilated_stack(dilation, n)
    assert measure.receptive_field_formula([(3, 1, dilation)] * n) == field
    with pytest.raises(ValueError, match=f"input is too small.*{small}×{small} input.*the field is "
                                         f"{field}×{field}.*input_size=\\(1, 1, \\d+, \\d+\\)"):
        measure.receptive_field(stack, (1, 1, small, small))
    assert measure.receptive_field(stack, (1, 1, large, large)) == (field, field)


def test_the_suggested_input_size_is_large_enough():
    stack = _dilated_stack(4, 3)
    with pytest.raises(ValueError) as error:
        measure.receptive_field(stack, (1, 1, 20, 20))
    suggested = eval(str(error.value).rsplit("input_size=", 1)[1])
    assert measure.receptive_field(stack, suggested) == (25, 25)


def test_padded_ceil_mode_pooling_keeps_the_field_and_the_error():
    pool = nn.Sequential(nn.Conv2d(1, 1, 3, padding=2, dilation=2), nn.MaxPool2d(3, 2, padding=1, ceil_mode=True))
    assert measure.receptive_field(pool, (1, 1, 21, 21)) == (7, 7)
    with pytest.raises(ValueError, match="too small"):
        measure.receptive_field(pool, (1, 1, 6, 6))


def test_count_params_and_forward_time():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert cnnlib.count_params(net) == 3 * 4 * 9 + 4 + 8
    net[1].weight.requires_grad_(False)
    assert cnnlib.count_params(net, trainable_only=True) == 3 * 4 * 9 + 4 + 4
    assert measure.forward_time(net, (1, 3, 8, 8), repeats=3) > 0


def test_flops_by_module_adds_up():
    net = create("vgg11", num_classes=10, in_channels=1, small=True)
    parts = measure.flops_by_module(net, (1, 1, 32, 32))
    assert set(parts) == {"features", "avgpool", "classifier"}
    assert sum(parts.values()) == measure.flops(net, (1, 1, 32, 32)) and parts["features"] > 0


def test_median_time_calls_warmup_plus_repeats_times_and_takes_the_median():
    from cnnlib.measure import median_time

    calls = []
    t = median_time(lambda: calls.append(1), torch.device("cpu"), repeats=3, warmup=2)
    assert len(calls) == 5 and t >= 0
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        median_time(lambda: None, torch.device("cpu"), repeats=0)


def test_step_times_trains_copies_in_turns_and_leaves_the_models_as_they_were():
    torch.manual_seed(0)
    nets = {"a": nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), "b": nn.Sequential(nn.Flatten(), nn.Linear(12, 3))}
    nets["b"].eval()
    before = {k: [p.clone() for p in n.parameters()] for k, n in nets.items()}
    calls = []
    nets["a"].register_forward_hook(lambda *_: calls.append("a"))      # copied with the module
    nets["b"].register_forward_hook(lambda *_: calls.append("b"))
    x, y = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    times = measure.step_times(nets, x, y, steps=3, warmup=2)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3} and all(t >= 0 for v in times.values() for t in v)
    assert calls == ["a", "b"] * 5                                      # warm-up + timed rounds, in turns
    assert all(torch.equal(p, q) for k, n in nets.items() for p, q in zip(n.parameters(), before[k]))
    assert not nets["b"].training                                      # the caller's mode is kept too
    with pytest.raises(ValueError, match="steps must be at least 1"):
        measure.step_times(nets, x, y, steps=0)
