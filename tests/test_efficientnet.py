"""EfficientNet: MBConv, rounding rules, B0–B7 against torchvision, FLOPs, compound scaling."""
import math

import matplotlib.pyplot as plt
import pytest
import torch
import torchvision
from matplotlib.container import ErrorbarContainer
from torchvision.ops import SqueezeExcitation, stochastic_depth

import cnnlib
from cnnlib import scaling
from cnnlib.models import create
from cnnlib.models import efficientnet as E


@pytest.mark.parametrize("name", list(E.EFFICIENTNET))
def test_parameter_counts_equal_torchvision(name):
    with torch.device("meta"):
        ours = create(f"efficientnet_{name}")
        theirs = getattr(torchvision.models, f"efficientnet_{name}")()
    assert cnnlib.count_params(ours) == cnnlib.count_params(theirs)
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]


def test_b0_computes_the_same_function_as_torchvision_with_the_same_weights():
    torch.manual_seed(0)
    theirs = torchvision.models.efficientnet_b0().eval()
    ours = create("efficientnet_b0").eval()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert a.shape == b.shape, name
        a.copy_(b)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_b0_multiply_adds_are_within_2_percent_of_the_papers_039_billion():
    with torch.device("meta"):
        b0 = create("efficientnet_b0")
    macs = cnnlib.macs(b0, (1, 3, 224, 224))      # FlopCounterMode: FLOPs = 2 × multiply-adds
    assert cnnlib.flops(b0, (1, 3, 224, 224)) == 2 * macs
    assert abs(macs / 0.39e9 - 1) < 0.02


@pytest.mark.parametrize("name,res", [("b0", 224), ("b3", 300), ("b7", 600)])
def test_count_macs_equals_the_flop_counter(name, res):
    with torch.device("meta"):
        net = create(f"efficientnet_{name}")
    assert E.count_macs(net, res) == cnnlib.macs(net, (1, 3, res, res))
    mini = E.efficientnet_mini(10, 1, width=1.3, depth=2.0)
    for r in (5, 6, 8, 11):
        assert E.count_macs(mini, r) == cnnlib.macs(mini, (1, 1, r, r))


def test_round_filters_follows_the_reference_rule():
    assert E.round_filters(32, 1.0) == 32
    assert E.round_filters(32, 1.1) == 32        # 35.2 → 32 (within 10%)
    assert E.round_filters(40, 1.1) == 48        # 44 → 48 (ties round up)
    assert E.round_filters(1280, 1.8) == 2304
    assert E.round_filters(3, 1.0) == 8          # never below the divisor
    assert E.round_filters(13.2, 1.0, divisor=2) == 14
    for c in range(8, 400, 4):                   # always a multiple of 8 and ≥ 90% of the exact value
        for w in (1.0, 1.1, 1.4, 1.8):
            r = E.round_filters(c, w)
            assert r % 8 == 0 and r >= 0.9 * c * w


def test_round_repeats_rounds_up():
    assert [E.round_repeats(r, 1.1) for r in (1, 2, 3, 4)] == [2, 3, 4, 5]
    assert [E.round_repeats(r, 1.0) for r in (1, 2, 3, 4)] == [1, 2, 3, 4]


def test_block_table_scaling_reproduces_b7():
    stages = E.scale_stages(E.B0_STAGES, width=2.0, depth=3.1)
    assert [s.channels for s in stages] == [32, 48, 80, 160, 224, 384, 640]
    assert [s.repeats for s in stages] == [4, 7, 7, 10, 10, 13, 4]
    assert sum(s.repeats for s in stages) == 55


def test_mbconv_structure_residual_and_squeeze():
    block = E.MBConv(24, 24, expand=6, kernel=5, stride=1)
    assert block.residual
    se = [m for m in block.modules() if isinstance(m, E.SqueezeExcite)][0]
    assert se.reduce.out_channels == 6 and se.reduce.in_channels == 144   # squeeze from the input width
    assert not E.MBConv(24, 40, 6, 5, 1).residual and not E.MBConv(24, 24, 6, 3, 2).residual
    assert len(E.MBConv(32, 16, 1, 3, 1).block) == 3            # no expansion conv for e = 1
    x = torch.randn(2, 24, 9, 9)
    assert E.MBConv(24, 40, 6, 5, 2)(x).shape == (2, 40, 5, 5)
    with pytest.raises(ValueError, match="stride"):
        E.MBConv(8, 8, 6, 3, 3)


def test_squeeze_excite_equals_torchvisions():
    ours, theirs = E.SqueezeExcite(16, 4), SqueezeExcitation(16, 4, activation=torch.nn.SiLU)
    theirs.load_state_dict({"fc1.weight": ours.reduce.weight, "fc1.bias": ours.reduce.bias,
                            "fc2.weight": ours.expand.weight, "fc2.bias": ours.expand.bias})
    x = torch.randn(3, 16, 5, 5)
    torch.testing.assert_close(ours(x), theirs(x))


def test_stochastic_depth_drops_whole_samples_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(20000, 3, 2, 2)
    y = E.drop_path(x, 0.3, training=True)
    per_sample = y.flatten(1)
    assert per_sample.unique().tolist() == pytest.approx([0.0, 1 / 0.7])
    assert (per_sample == per_sample[:, :1]).all()               # all or nothing per sample
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.3) < 0.02
    assert abs(y.mean().item() - 1.0) < 0.02
    assert E.drop_path(x, 0.3, training=False) is x


def test_stochastic_depth_with_p_1_drops_everything_like_torchvision():
    x = torch.randn(8, 3, 2, 2)
    y = E.drop_path(x, 1.0, training=True)
    assert torch.isfinite(y).all() and torch.equal(y, torch.zeros_like(x))
    assert torch.equal(y, stochastic_depth(x, 1.0, "row", training=True))
    assert E.drop_path(x, 1.0, training=False) is x
    for p in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="drop probability p must be between 0 and 1"):
            E.drop_path(x, p, training=True)


def test_drop_probabilities_grow_linearly_to_the_configured_rate():
    net = create("efficientnet_b0")
    probs = [m.drop_prob for m in net.modules() if isinstance(m, E.MBConv)]
    assert len(probs) == 16 and probs[0] == 0.0
    assert probs == pytest.approx([0.2 * i / 16 for i in range(16)])


def test_compound_multipliers_and_the_flops_constraint():
    d, w, r = E.compound_multipliers(1)
    assert (d, w, r) == (1.2, 1.1, 1.15)
    assert E.flops_factor(d, w, r) == pytest.approx(1.92, abs=1e-3)           # α·β²·γ² ≈ 2
    one = E.flops_factor(d, w, r)
    assert E.flops_factor(*E.compound_multipliers(3)) == pytest.approx(one ** 3)   # (αβ²γ²)^φ
    with pytest.raises(ValueError, match="≥ 1"):
        E.compound_multipliers(1, 0.9, 1.1, 1.1)


def test_phi_must_be_finite_and_in_range():
    lo, hi = E.PHI_RANGE
    assert (lo, hi) == (0.0, 10.0)
    assert E.compound_multipliers(lo) == (1.0, 1.0, 1.0) and E.compound_multipliers(hi)[0] == pytest.approx(1.2 ** 10)
    for phi in (math.nan, math.inf, -math.inf, -30, -0.5, 10.5, "2", None, True):
        with pytest.raises(ValueError, match="φ must be a finite number between 0 and 10"):
            E.compound_multipliers(phi)
    with pytest.raises(ValueError, match="φ must be a finite number"):
        scaling.compound_summary(math.nan)      # not "cannot convert float NaN to integer"
    with pytest.raises(ValueError, match="φ must be a finite number"):
        scaling.compound_summary(-30.0)         # not a silent 3×3 input


def test_constrained_grid_solves_gamma_from_the_constraint():
    grid = E.constrained_grid((1.0, 1.2, 1.4), (1.0, 1.1, 1.2))
    assert all(a * b * b * g * g == pytest.approx(2.0) and g >= 1 for a, b, g in grid)
    assert (1.4, 1.2) not in [(a, b) for a, b, _ in grid]           # would need γ < 1
    assert len(grid) == 8


def test_measured_flops_grow_like_d_w2_r2_on_b0():
    with torch.device("meta"):
        base = E.count_macs(E.EfficientNet(), 224)
        for d, w, r in [(2.0, 1.0, 1.0), (1.0, 2.0, 1.0), (1.0, 1.0, 2.0)]:
            macs = E.count_macs(E.EfficientNet(width=w, depth=d), round(224 * r))
            # the stem, head and depthwise convolutions scale differently: close, not exact
            assert macs / base == pytest.approx(E.flops_factor(d, w, r), rel=0.07)
        # small depth multipliers are rounded up per stage: 1.2 × 16 blocks becomes 23, not 19
        net = E.EfficientNet(width=1.1, depth=1.2)
        blocks = sum(s.repeats for s in net.stages)
        assert blocks == 23
        measured = E.count_macs(net, 258) / base
        assert measured > 1.3 * E.flops_factor(1.2, 1.1, 1.15)
        assert measured == pytest.approx(E.flops_factor(blocks / 16, 1.1, 258 / 224), rel=0.15)


def test_scaling_multipliers_all_aim_at_2_to_the_phi():
    for kind in scaling.SCALINGS[:3]:
        assert E.flops_factor(*scaling.multipliers(kind, 2)) == pytest.approx(4.0)
    assert E.flops_factor(*scaling.multipliers("compound", 2)) == pytest.approx((1.2 * 1.1**2 * 1.15**2) ** 2)
    with pytest.raises(ValueError, match="unknown scaling"):
        scaling.multipliers("height", 1)


def test_compound_summary_and_the_slider_figure_change_with_phi():
    s0, s2 = scaling.compound_summary(0.0), scaling.compound_summary(2.0)
    with torch.device("meta"):
        assert s0["params"] == cnnlib.count_params(create("efficientnet_b0"))
    assert s0["resolution"] == 224 and s2["resolution"] == round(224 * 1.15 ** 2)
    assert s2["macs"] > 3 * s0["macs"] and s0["macs_vs_b0"] == 1.0
    assert "φ = 2" in scaling.describe(s2)
    figures = []
    for phi in (0.0, 2.0):
        scaling.show_compound_scaling(phi)
        fig = plt.gcf()
        figures.append([t.get_text() for ax in fig.axes for t in [ax.title]])
        plt.close(fig)
    assert figures[0] != figures[1]
    assert figures[1][1] == r"cost grows like $2^{\varphi}$"      # mathtext, not a literal "2^φ"


def test_the_slider_figure_is_deterministic():
    import io
    images = []
    for _ in range(2):
        scaling.show_compound_scaling(3.0)
        buffer = io.BytesIO()
        plt.gcf().savefig(buffer, format="png")
        plt.close(plt.gcf())
        images.append(buffer.getvalue())
    assert images[0] == images[1]


def _result(acc, macs, n=400):
    return {"acc": acc, "macs": macs, "n_test": n}


def test_compare_scalings_reads_the_last_points_with_noise_and_cost():
    base = _result(0.80, 1000)
    curves = {"depth": [base, _result(0.70, 3000)], "width": [base, _result(0.86, 3500)],
              "resolution": [base, _result(0.88, 2500)], "compound": [base, _result(0.90, 4000)]}
    cmp = scaling.compare_scalings(curves)
    assert cmp["ranking"] == ["compound", "resolution", "width", "depth"] and cmp["single"] == "resolution"
    se = lambda a: (a * (1 - a) / 400) ** 0.5  # noqa: E731
    assert cmp["noise"] == pytest.approx(2 * (se(0.90) ** 2 + se(0.88) ** 2) ** 0.5)
    assert cmp["verdict"] == "within noise of resolution"                 # 2 points < 2 s.e. ≈ 4.4
    assert cmp["cost"] == {"depth": 3.0, "width": 3.5, "resolution": 2.5, "compound": 4.0}
    curves["compound"][-1] = _result(0.97, 4000)
    assert scaling.compare_scalings(curves)["verdict"] == "better than resolution by 9.0 points"
    curves["compound"][-1] = _result(0.75, 4000)
    assert scaling.compare_scalings(curves)["verdict"] == "worse than resolution by 13.0 points"


def test_scaling_plot_has_plain_ticks_and_two_standard_error_bars():
    base = _result(0.80, 20_000)
    curves = {k: [base, _result(0.8 + 0.02 * i, 20_000 * (i + 2))] for i, k in enumerate(scaling.SCALINGS)}
    ax = scaling.plot_scaling_curves(curves)
    ax.figure.canvas.draw()
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert ticks and all(t.replace(".", "").isdigit() for t in ticks)    # "20", "50", not "2×10¹"
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 4
    _, caps, (segments,) = bars[0]
    lows, highs = zip(*[(seg[0][1], seg[1][1]) for seg in segments.get_segments()])
    assert highs[0] - lows[0] == pytest.approx(4 * 100 * scaling.standard_error(base))   # ±2 s.e., in %
    plt.close(ax.figure)


def test_train_scaled_reports_the_rounded_architecture(quiet):
    cnnlib.setup(seed=0, verbose=False)
    data = cnnlib.load("digits").subset(train=64, test=32)
    r = scaling.train_scaled(data, 2.0, 1.5, 1.2, base_resolution=6, epochs=1, batch_size=32)
    assert r["resolution"] == 7 and r["blocks"] == 6 and r["channels"] == (6, 12, 18)
    assert r["macs"] == E.count_macs(E.efficientnet_mini(10, 1, 1.5, 2.0), 7) and 0 <= r["acc"] <= 1
    assert r["n_test"] == 32


def test_grid_search_ranks_on_a_validation_split_and_only_reports_the_test_accuracy(quiet, monkeypatch):
    # validation and test disagree on purpose: by validation the order is α = 1.0, 1.5, 2.5;
    # by test accuracy it is the reverse. The ranking must follow validation.
    data = cnnlib.load("digits").subset(train=100, test=40)
    val_score = {1: 0.9, 2: 0.8, 3: 0.7}      # by blocks per stage: α = 1.0 → 1, 1.5 → 2, 2.5 → 3
    test_score = {1: 0.5, 2: 0.6, 3: 0.95}
    seen = []

    def is_test(split):
        return split.x_test.shape[0] == len(data.y_test) and torch.equal(split.y_test, data.y_test)

    def score(net, split):
        blocks_per_stage = sum(st.repeats for st in net.stages) // len(net.stages)
        return (test_score if is_test(split) else val_score)[blocks_per_stage]

    def fake_fit(net, split, **kw):
        seen.append(split)
        hist = cnnlib.History()
        a = score(net, split)
        hist.append(1, train_loss=1.0, train_acc=a, test_loss=1.0, test_acc=a, lr=0.1, time=0.0)
        return hist

    monkeypatch.setattr(scaling, "fit", fake_fit)
    monkeypatch.setattr(scaling, "evaluate", lambda net, split, **kw: {"loss": 1.0, "acc": score(net, split)},
                        raising=False)
    candidates = [(1.5, 1.0, 1.0), (1.0, 1.0, 1.0), (2.5, 1.0, 1.0)]
    grid = scaling.grid_search(data, candidates, base_resolution=6, epochs=1, val_size=20)
    blocks = [g["blocks"] for g in grid]
    assert [val_score[b // 3] for b in blocks] == sorted(val_score.values(), reverse=True)
    assert [g["alpha"] for g in grid] == [1.0, 1.5, 2.5]
    for g in grid:
        assert g["acc"] == g["val_acc"] == val_score[g["blocks"] // 3] and g["n_val"] == 20
        assert g["test_acc"] == test_score[g["blocks"] // 3] and g["n_test"] == 40
        assert {"alpha", "beta", "gamma", "resolution", "macs", "params", "channels"} <= set(g)
    # training never saw the test set, and the validation images came out of the training set
    for split in seen:
        assert not is_test(split) and len(split.x_train) == 80 and len(split.x_test) == 20
    assert scaling.standard_error(grid[0]) == pytest.approx((0.9 * 0.1 / 20) ** 0.5)
    assert scaling.standard_error(grid[0], "test_acc") == pytest.approx((0.5 * 0.5 / 40) ** 0.5)


def test_unknown_efficientnet_name():
    with pytest.raises(ValueError, match="unknown EfficientNet 'b9'"):
        E.efficientnet("b9")
    assert E.resolution("efficientnet_b4") == 380
