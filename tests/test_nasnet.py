"""The NASNet cell search space: operations, genotypes, validity, sampling, mutation, networks."""
import math
import random

import matplotlib.pyplot as plt
from matplotlib.colors import same_color
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
import pytest
import torch
import torch.nn as nn

import cnnlib
from cnnlib.models import create, nasnet
from cnnlib.models.nasnet import (AMOEBANET_A, NASNET_A, NASNET_SPACE, OPS, Block, Genotype, NASNet,
                                  SearchSpace, make_op, mutate, random_genotype, unused_blocks)


def test_the_space_has_the_lectures_thirteen_operations():
    assert len(OPS) == len(set(OPS)) == 13
    assert {"identity", "conv_1x3_3x1", "conv_1x7_7x1", "dil_conv_3x3", "sep_conv_3x3", "sep_conv_5x5",
            "sep_conv_7x7", "conv_1x1", "conv_3x3", "avg_pool_3x3", "max_pool_3x3", "max_pool_5x5",
            "max_pool_7x7"} == set(OPS)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("size", [8, 7])
def test_every_operation_keeps_channels_and_halves_the_size_with_stride_2(op, size):
    x = torch.randn(2, 6, size, size)
    assert make_op(op, 6, 1)(x).shape == (2, 6, size, size)
    assert make_op(op, 6, 2)(x).shape == (2, 6, math.ceil(size / 2), math.ceil(size / 2))


def test_operation_parameter_counts_follow_their_definitions():
    c = 8
    bn = 2 * c
    assert cnnlib.count_params(make_op("conv_3x3", c)) == 9 * c * c + bn
    assert cnnlib.count_params(make_op("conv_1x1", c)) == c * c + bn
    assert cnnlib.count_params(make_op("dil_conv_3x3", c)) == 9 * c * c + bn
    assert cnnlib.count_params(make_op("conv_1x7_7x1", c)) == 2 * 7 * c * c + bn      # 14C² instead of 49C²
    assert cnnlib.count_params(make_op("sep_conv_5x5", c)) == 2 * (25 * c + c * c + bn)  # applied twice
    for op in nasnet.PARAMETER_FREE:
        assert cnnlib.count_params(make_op(op, c)) == 0
    assert cnnlib.count_params(make_op("identity", c, stride=2)) == 2 * c * (c // 2) + bn  # FactorizedReduce


def test_dilated_conv_is_a_5x5_receptive_field_with_9_taps():
    op = make_op("dil_conv_3x3", 1)
    conv = op[1]
    assert conv.dilation == (2, 2) and conv.kernel_size == (3, 3)
    assert cnnlib.receptive_field(nn.Sequential(conv), (1, 1, 15, 15)) == (5, 5)


def test_unknown_operation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown operation 'conv_9x9'"):
        make_op("conv_9x9", 8)
    # only the lecture's 13 names: no 9×9 separable conv, no truncated names, no 4×4 pooling
    for name in ("sep_conv_9x9", "sep_conv_3", "max_pool_4x4", "max_pool_3", "identity "):
        with pytest.raises(ValueError, match=f"unknown operation {name!r}; the NASNet operations are"):
            make_op(name, 8)
    with pytest.raises(ValueError, match="unknown operation"):
        Block((0, 1), ("conv_9x9", "identity"))


def test_blocks_reject_inputs_and_ops_of_the_wrong_type():
    ops = ("identity", "conv_3x3")
    for inputs in (0, (0.5, 1), (0, 1, 1), (True, 0), "01", None):
        with pytest.raises(TypeError, match="inputs must be a pair of state indices"):
            Block(inputs, ops)
    for bad_ops in ("identity", ("identity",), ("identity", 3), None):
        with pytest.raises(TypeError, match="ops must be a pair of operation names"):
            Block((0, 1), bad_ops)
    assert Block([0, 1], ["identity", "conv_3x3"]) == Block((0, 1), ops)   # lists are fine
    with pytest.raises(TypeError, match="normal cell must be a sequence of Blocks"):
        Genotype(5, (Block((0, 1), ops),))
    with pytest.raises(TypeError, match="reduce cell must be a sequence of Blocks"):
        Genotype((Block((0, 1), ops),), ("not a block",))


def test_out_of_range_inputs_say_what_the_block_may_use():
    ok = Block((0, 1), ("identity", "conv_3x3"))
    with pytest.raises(ValueError, match=r"block 0 may use 0 \(h\[i-1\]\) or 1 \(h\[i\]\); there is no earlier block$"):
        Genotype((Block((0, 2), ("identity", "conv_3x3")),), (ok,))
    with pytest.raises(ValueError, match=r"block 1 may use 0 \(h\[i-1\]\), 1 \(h\[i\]\) or 2 \(block 0\)$"):
        Genotype((ok, Block((3, 0), ("identity", "conv_3x3"))), (ok, ok))
    with pytest.raises(ValueError,
                       match=r"input index 5 is out of range; block 3 may use .* \(2\.\.4 for blocks 0\.\.2\)"):
        Genotype((ok, ok, ok, Block((5, 0), ("identity", "conv_3x3"))), (ok,) * 4)


def test_search_space_errors_name_the_broken_rule():
    with pytest.raises(ValueError, match="unknown combiner 'multiply'; the combiners are"):
        SearchSpace(combiners=("add", "multiply"))
    with pytest.raises(ValueError, match="at least one combiner"):
        SearchSpace(combiners=())
    with pytest.raises(ValueError, match="unknown operation 'conv_9x9'"):
        SearchSpace(ops=("identity", "conv_9x9"))
    with pytest.raises(ValueError, match="at least one operation"):
        SearchSpace(ops=())
    for blocks in (0, 2.5, "3"):
        with pytest.raises(ValueError, match="whole number of blocks"):
            SearchSpace(blocks=blocks)


def test_invalid_genotypes_raise_on_construction():
    ok = Block((0, 1), ("identity", "conv_3x3"))
    with pytest.raises(ValueError, match="input index 2 is out of range"):
        Genotype((Block((0, 2), ("identity", "conv_3x3")),), (ok,))
    with pytest.raises(ValueError, match="input index -1"):
        Genotype((ok,), (Block((-1, 0), ("identity", "conv_3x3")),))
    with pytest.raises(ValueError, match="same number of blocks"):
        Genotype((ok, ok), (ok,))
    with pytest.raises(ValueError, match="no blocks"):
        Genotype((), ())
    with pytest.raises(ValueError, match="unknown combiner"):
        Block((0, 1), ("identity", "identity"), "multiply")
    with pytest.raises(ValueError, match="has 5 blocks per cell, the genotype has 1"):
        NASNET_SPACE.validate(Genotype((ok,), (ok,)))
    with pytest.raises(ValueError, match="'conv_3x3' is not in this space"):
        SearchSpace(blocks=1, ops=("identity",)).validate(Genotype((ok,), (ok,)))


def test_genotypes_are_hashable_printable_values():
    g = random_genotype(random.Random(3))
    same = Genotype(tuple(list(b.__dict__.values()) for b in g.normal), g.reduce)  # lists are normalized
    assert g == same and hash(g) == hash(same) and len({g, same}) == 1
    text = str(g)
    assert text.count("\n") == 2 * 5 + 1 and "normal cell" in text and "reduce cell" in text
    assert eval(repr(g), vars(nasnet)) == g  # the repr is a faithful (cache-key) description


def test_nasnet_a_and_amoebanet_a_are_points_of_the_space():
    for g in (NASNET_A, AMOEBANET_A):
        assert NASNET_SPACE.validate(g) is g
    assert unused_blocks(NASNET_A.normal) == [0, 1, 2, 3, 4]   # DARTS' normal_concat [2..6]
    assert unused_blocks(NASNET_A.reduce) == [2, 3, 4]         # reduce_concat [4, 5, 6]
    assert unused_blocks(AMOEBANET_A.reduce) == [1, 2, 4]      # reduce_concat [3, 4, 6]


# quark0/darts, cnn/genotypes.py (commit a00cad0 and later), verbatim
_DARTS_REPO = {
    "DARTS_V1": dict(
        normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1),
                ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)],
        normal_concat=[2, 3, 4, 5],
        reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0),
                ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)],
        reduce_concat=[2, 3, 4, 5]),
    "DARTS_V2": dict(
        normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
                ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)],
        normal_concat=[2, 3, 4, 5],
        reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1),
                ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)],
        reduce_concat=[2, 3, 4, 5]),
}


def _as_darts_pairs(blocks):
    names = {"identity": "skip_connect", "conv_1x7_7x1": "conv_7x1_1x7"}
    return [(names.get(op, op), i) for b in blocks for op, i in zip(b.ops, b.inputs)]


@pytest.mark.parametrize("name", ["DARTS_V1", "DARTS_V2"])
def test_darts_genotypes_match_the_darts_repository(name):
    g, want = getattr(nasnet, name), _DARTS_REPO[name]
    assert _as_darts_pairs(g.normal) == want["normal"]
    assert _as_darts_pairs(g.reduce) == want["reduce"]
    assert list(g.normal_concat) == want["normal_concat"] and list(g.reduce_concat) == want["reduce_concat"]
    assert all(b.combine == "add" for b in g.normal + g.reduce)
    assert nasnet.DARTS is nasnet.DARTS_V2 != nasnet.DARTS_V1
    assert eval(repr(g), vars(nasnet)) == g


def test_a_darts_cell_concatenates_all_its_blocks():
    g = nasnet.DARTS_V2
    assert g.concat("normal") == g.concat("reduce") == [0, 1, 2, 3]
    assert unused_blocks(g.normal) == [1, 2, 3]   # b3 reads b0, which DARTS still concatenates
    assert "output = b0 ‖ b1 ‖ b2 ‖ b3" in str(g)
    net = NASNet(g, num_classes=10, in_channels=1, channels=4, cells_per_stage=1, stages=2)
    assert all(c.concat == [0, 1, 2, 3] and c.out_channels == 4 * c.pre1[1].out_channels for c in net.cells)
    out = net(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10)
    child = mutate(g, 0, SearchSpace(blocks=4))
    assert child != g and (child.normal_concat, child.reduce_concat) == (g.normal_concat, g.reduce_concat)
    assert NASNET_A.concat("reduce") == unused_blocks(NASNET_A.reduce)   # no concat given: the unused blocks
    with pytest.raises(ValueError, match="not a block output"):
        Genotype(g.normal, g.reduce, normal_concat=(2, 6))
    with pytest.raises(ValueError, match="empty"):
        Genotype(g.normal, g.reduce, reduce_concat=())


def test_search_space_size_is_counted_from_its_choices():
    # block b: (b + 2)² input pairs × 13² op pairs × 2 combiners; two cells
    per_cell = 1
    for b in range(5):
        per_cell *= (b + 2) ** 2 * 13 ** 2 * 2
    assert NASNET_SPACE.size() == per_cell ** 2
    tiny = SearchSpace(blocks=1, ops=("identity", "conv_3x3"), combiners=("add",))
    assert tiny.size() == (4 * 4) ** 2
    # brute force on the tiny space: every genotype counted once
    cells = [Block((i, j), (a, b)) for i in range(2) for j in range(2) for a in tiny.ops for b in tiny.ops]
    assert len({Genotype((n,), (r,)) for n in cells for r in cells}) == tiny.size()


@pytest.mark.parametrize("space", [NASNET_SPACE, SearchSpace(blocks=2, ops=("identity", "avg_pool_3x3"),
                                                            combiners=("add",))])
def test_random_and_mutated_genotypes_are_valid_and_mutation_changes_exactly_one_choice(space):
    for seed in range(300):
        rng = random.Random(seed)
        g = space.random(rng)
        assert space.validate(g) is g
        child = space.mutate(g, rng)
        assert space.validate(child) is child and child != g
        diffs = [(kind, b, field) for kind in ("normal", "reduce")
                 for b, (x, y) in enumerate(zip(getattr(g, kind), getattr(child, kind)))
                 for field in ("inputs", "ops", "combine") if getattr(x, field) != getattr(y, field)]
        assert len(diffs) == 1
        if diffs[0][2] != "combine":
            kind, b, field = diffs[0]
            x, y = getattr(getattr(g, kind)[b], field), getattr(getattr(child, kind)[b], field)
            assert sum(u != v for u, v in zip(x, y)) == 1


def test_module_level_helpers_use_the_paper_space_and_are_seeded():
    assert random_genotype(random.Random(7)) == random_genotype(random.Random(7))
    g = random_genotype(random.Random(7))
    assert g.blocks == 5 and mutate(g, random.Random(0)) == mutate(g, random.Random(0))


def test_an_int_seed_works_wherever_a_random_generator_does():
    assert random_genotype(0) == random_genotype(random.Random(0))
    assert random_genotype(0) != random_genotype(1)
    g = random_genotype(7)
    assert mutate(g, 3) == mutate(g, random.Random(3)) != g
    assert SearchSpace(blocks=2).random(5) == SearchSpace(blocks=2).random(random.Random(5))
    for bad in (1.5, "0", None, True):
        with pytest.raises(TypeError, match="rng must be a random.Random or an int seed"):
            random_genotype(bad)
        with pytest.raises(TypeError, match="rng must be a random.Random or an int seed"):
            mutate(g, bad)


def test_random_sampling_covers_every_operation_and_combiner():
    rng = random.Random(0)
    seen = set()
    for _ in range(50):
        g = random_genotype(rng)
        seen |= set(g.ops()) | {b.combine for b in g.normal + g.reduce}
    assert seen == set(OPS) | {"add", "concat"}


def test_cell_output_concatenates_the_unused_blocks():
    g = random_genotype(random.Random(11))
    cell = nasnet.Cell(g.normal, 12, 20, 6, reduction=False, reduction_prev=False)
    out = cell(torch.randn(2, 12, 8, 8), torch.randn(2, 20, 8, 8))
    assert out.shape == (2, 6 * len(unused_blocks(g.normal)), 8, 8) == (2, cell.out_channels, 8, 8)
    red = nasnet.Cell(g.reduce, 20, 20, 6, reduction=True, reduction_prev=False)
    assert red(torch.randn(2, 20, 8, 8), torch.randn(2, 20, 8, 8)).shape[-2:] == (4, 4)


@pytest.mark.parametrize("seed", range(4))
def test_networks_built_from_random_genotypes_run_forward_and_backward(seed):
    g = random_genotype(random.Random(seed))
    net = NASNet(g, num_classes=10, in_channels=1, channels=4, cells_per_stage=1)
    out = net(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_registry_builds_nasnet_a_and_stages_reduce_the_size():
    net = create("nasnet", num_classes=10, in_channels=3, channels=8, cells_per_stage=1)
    assert net.genotype == NASNET_A and len(net.cells) == 5
    assert sum(c.reduction for c in net.cells) == 2
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    two = NASNet(NASNET_A, 10, 1, channels=8, cells_per_stage=1, stages=2)
    assert [c.reduction for c in two.cells] == [False, True, False]


def test_network_config_errors_are_clear():
    with pytest.raises(ValueError, match="channels must be even"):
        NASNet(NASNET_A, channels=7)
    with pytest.raises(ValueError, match="genotype must be a Genotype"):
        NASNet("NASNet-A")


def _inside(point, box, margin=1e-9):
    x, y = point
    return (box.get_x() - margin <= x <= box.get_x() + box.get_width() + margin
            and box.get_y() - margin <= y <= box.get_y() + box.get_height() + margin)


@pytest.mark.parametrize("genotype", [AMOEBANET_A, NASNET_A, nasnet.residual_genotype(3), nasnet.DARTS_V2])
def test_draw_cell_draws_one_box_per_state_and_one_coloured_arrow_per_edge(genotype):
    for kind in ("normal", "reduce"):
        ax = nasnet.draw_cell(genotype, kind)
        blocks = getattr(genotype, kind)
        names = [r"$h_{i-1}$", r"$h_i$"] + [f"b{b}  {'+' if blk.combine == 'add' else '‖'}"
                                             for b, blk in enumerate(blocks)] + ["concat\n$h_{i+1}$"]
        assert [t.get_text() for t in ax.texts if t.get_text() in names] == names
        boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
        assert len(boxes) == len(names)
        arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
        assert len(arrows) == 2 * len(blocks) + len(genotype.concat(kind))
        # every arrow starts on its source box's edge and its head stops outside every box
        for arrow in arrows:
            start, end = arrow.get_path().vertices[0], arrow.get_path().vertices[-1]
            assert any(_inside(start, box) for box in boxes)
            assert not any(_inside(end, box) for box in boxes)
        labels = [t for t in ax.texts if t.get_text().replace(" ", "_") in OPS]
        ops = [op for b in blocks for op in b.ops]
        assert sorted(t.get_text() for t in labels) == sorted(op.replace("_", " ") for op in ops)
        # an operation's arrow and label share its colour: blue with weights, brown without
        for t in labels:
            want = nasnet.PARAMETER_FREE_COLOR if t.get_text().replace(" ", "_") in nasnet.PARAMETER_FREE \
                else nasnet.WEIGHTED_COLOR
            assert same_color(t.get_color(), want)
        colours = sorted(nasnet.PARAMETER_FREE_COLOR if op in nasnet.PARAMETER_FREE else nasnet.WEIGHTED_COLOR
                         for op in ops)
        op_arrows = [a for a in arrows if a.get_linestyle() == "-"]
        assert len(op_arrows) == len(ops)
        assert sum(same_color(a.get_edgecolor(), nasnet.WEIGHTED_COLOR) for a in op_arrows) == \
            colours.count(nasnet.WEIGHTED_COLOR)
        plt.close(ax.figure)
    with pytest.raises(ValueError, match="kind must be"):
        nasnet.draw_cell(genotype, "middle")


def test_draw_cell_labels_do_not_overlap_each_other():
    ax = nasnet.draw_cell(NASNET_A, "normal")
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t.get_window_extent(renderer) for t in ax.texts if t.get_text().replace(" ", "_") in OPS]
    assert len(labels) == 10
    clashes = [(a, b) for k, a in enumerate(labels) for b in labels[k + 1:] if a.overlaps(b)]
    assert not clashes
    plt.close(fig)


def test_residual_baseline_is_a_chain_of_conv_plus_skip():
    g = nasnet.residual_genotype(3)
    assert [b.inputs for b in g.normal] == [(1, 1), (2, 2), (3, 3)]
    assert all(b.ops == ("conv_3x3", "identity") and b.combine == "add" for b in g.normal + g.reduce)
    assert unused_blocks(g.normal) == [2]
    NASNET_SPACE.validate(nasnet.residual_genotype(5))


def test_match_channels_finds_the_closest_size():
    target_net = NASNet(NASNET_A, 10, 1, channels=12, cells_per_stage=1)
    target = cnnlib.count_params(target_net)
    base = nasnet.residual_genotype(5)
    c = nasnet.match_channels(base, target, num_classes=10, in_channels=1, cells_per_stage=1)
    sizes = {k: cnnlib.count_params(NASNet(base, 10, 1, channels=k, cells_per_stage=1)) for k in (c - 2, c, c + 2)}
    assert c % 2 == 0 and min(sizes, key=lambda k: abs(sizes[k] - target)) == c
