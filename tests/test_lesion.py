"""cnnlib.lesion: block deletion and re-ordering, path statistics (Veit et al. 2016)."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnlib import landscape, lesion, models


def _net(depth=8, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("width", 4)
    net = models.create("resnet_cifar", depth=depth, in_channels=1, num_classes=10, **kw)
    landscape.recompute_bn(net, torch.randn(32, 1, 8, 8))
    return net.eval()


def _x(n=6, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_deleting_a_block_replaces_it_by_its_shortcut_and_leaves_the_original_alone():
    net = _net(depth=14)  # 6 blocks: 0 1 | 2* 3 | 4* 5   (* downsamples)
    x = _x()
    with torch.no_grad():
        before = net(x)
        for i in (1, 2):
            lesioned = lesion.delete_blocks(net, [i])
            h = net.stem(x)
            for j, b in enumerate(net.blocks):
                h = F.relu(b.shortcut(h)) if j == i else b(h)
            torch.testing.assert_close(lesioned(x), net.head(h))
            assert isinstance(lesioned.blocks[i], lesion.DeletedBlock)
            assert lesioned.blocks[i].downsample == (i == 2)
        torch.testing.assert_close(net(x), before)
    assert not any(isinstance(b, lesion.DeletedBlock) for b in net.blocks)
    assert lesion.downsampling(net) == [False, False, True, False, True, False]
    assert lesion.stage_of_blocks(net) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="out of range"):
        lesion.delete_blocks(net, [6])


def test_a_block_whose_residual_branch_is_zero_can_be_deleted_for_free():
    for shortcut in ("A", "B"):
        net = _net(depth=14, shortcut=shortcut)
        with torch.no_grad():
            for i in (3, 4):  # an identity block and a downsampling one
                last_bn = net.blocks[i].residual[-1]
                last_bn.weight.zero_()
                last_bn.bias.zero_()
            torch.testing.assert_close(lesion.delete_blocks(net, [3, 4])(_x()), net(_x()))


def test_plain_network_blocks_become_identity_or_zero_padding():
    net = _net(depth=14, plain=True)
    assert lesion.is_plain(net) and not lesion.is_plain(_net(depth=14))
    lesioned = lesion.delete_blocks(net, [1, 2, 4])
    assert isinstance(lesioned.blocks[1].shortcut, nn.Identity)
    pad = lesioned.blocks[2].shortcut
    assert (pad.cin, pad.cout, pad.stride) == (4, 8, 2)
    with torch.no_grad():
        assert lesioned(_x()).shape == (6, 10)
        h = torch.rand(2, 4, 8, 8)
        torch.testing.assert_close(lesioned.blocks[2](h)[:, 2:6], h[:, :, ::2, ::2])
        assert lesioned.blocks[2](h)[:, :2].abs().sum() == 0


def test_reordering_moves_only_interchangeable_blocks():
    net = _net(depth=20)  # 9 blocks, downsampling at 3 and 6
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(lesion.reorder_blocks(net, range(9))(x), net(x))
        swapped = lesion.reorder_blocks(net, [1, 0, 2, 3, 4, 5, 6, 8, 7])
        h = net.stem(x)
        for j in (1, 0, 2, 3, 4, 5, 6, 8, 7):
            h = net.blocks[j](h)
        torch.testing.assert_close(swapped(x), net.head(h))
    with pytest.raises(ValueError, match="same stage"):
        lesion.reorder_blocks(net, [0, 1, 4, 3, 2, 5, 6, 7, 8])  # 2 -> stage 1
    with pytest.raises(ValueError, match="same stage"):
        lesion.reorder_blocks(net, [0, 1, 2, 4, 3, 5, 6, 7, 8])  # 3 downsamples
    with pytest.raises(ValueError, match="permutation"):
        lesion.reorder_blocks(net, [0, 0, 2, 3, 4, 5, 6, 7, 8])
    for swaps in (1, 3, 10):
        order = lesion.random_order(net, swaps, seed=swaps)
        assert sorted(order) == list(range(9))
        assert [order[i] for i in (3, 6)] == [3, 6]
        assert [lesion.stage_of_blocks(net)[j] for j in order] == lesion.stage_of_blocks(net)
        lesion.reorder_blocks(net, order)  # valid


def test_kendall_tau_matches_scipy():
    from scipy.stats import kendalltau

    assert lesion.kendall_tau(range(7)) == 1.0
    assert lesion.kendall_tau(range(6, -1, -1)) == -1.0
    rng = np.random.default_rng(0)
    for _ in range(5):
        order = list(rng.permutation(9))
        assert lesion.kendall_tau(order) == pytest.approx(kendalltau(range(9), order).statistic)


def test_path_lengths_are_binomial():
    for n in (1, 3, 9):
        p = lesion.path_length_distribution(n)
        counts = np.bincount([sum(bits) for bits in itertools.product((0, 1), repeat=n)],
                             minlength=n + 1)
        np.testing.assert_allclose(p, counts / 2 ** n)
        assert (p * np.arange(n + 1)).sum() == pytest.approx(n / 2)
    # ResNet-110 has 54 blocks: the most common path passes 27 of them
    assert lesion.path_length_distribution(54).argmax() == 27


@pytest.mark.parametrize("kind", ["A", "B", "preact"])
def test_the_gradients_of_all_paths_add_up_to_the_whole_gradient(kind):
    torch.manual_seed(0)
    if kind == "preact":
        net = models.create("preact_resnet_cifar", depth=8, width=4, in_channels=1).eval()
    else:
        net = _net(depth=8, shortcut=kind).eval()
    x, y = _x(5), torch.randint(0, 10, (5,))
    h = net.stem(x).detach().requires_grad_(True)
    (whole,) = torch.autograd.grad(F.cross_entropy(net.head(net.blocks(h)), y), h)
    n = len(net.blocks)
    paths = [lesion.path_gradient(net, x, y, [i for i in range(n) if bits[i]])
             for bits in itertools.product((0, 1), repeat=n)]
    torch.testing.assert_close(sum(paths), whole, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="plain"):
        lesion.path_gradient(_net(plain=True), x, y, [0])


def test_path_gradient_statistics():
    net = _net(depth=14)
    x, y = _x(40), torch.randint(0, 10, (40,))
    pg = lesion.path_gradients(net, x, y, samples=3, batch_size=16)
    assert list(pg.lengths) == list(range(7))
    assert all(len(v) == 3 for v in pg.norms) and np.all(pg.mean > 0)
    np.testing.assert_allclose(pg.distribution, lesion.path_length_distribution(6))
    assert pg.total.sum() == pytest.approx(1)
    lo, hi = pg.effective_range(0.9)
    assert 0 <= lo <= hi <= 6
    assert pg.total[lo:hi + 1].sum() >= 0.9 - 1e-9
    assert net.training is False


def test_lesion_experiments_return_one_number_per_setting():
    net = _net(depth=14)
    data = (_x(30), torch.randint(0, 10, (30,)))
    single = lesion.single_deletions(net, data)
    assert single.errors.shape == (6,) and single.downsample.tolist() == lesion.downsampling(net)
    assert 0 <= single.baseline <= 1
    multi = lesion.multiple_deletions(net, data, counts=[0, 1, 4], trials=3)
    assert multi[0].tolist() == [single.baseline]
    assert len(multi[1]) == 3 and len(multi[4]) == 1  # all four deletable blocks: one way
    with pytest.raises(ValueError, match="deletable"):
        lesion.multiple_deletions(net, data, counts=[5])
    taus, errors = lesion.reorderings(net, data, swaps=[0, 1, 2], trials=2)
    assert len(taus) == len(errors) == 5 and taus[0] == 1.0 and errors[0] == single.baseline


def test_spared_blocks_are_never_deleted(monkeypatch):
    net = _net(depth=14)  # deletable: 0 1 3 5
    data = (_x(20), torch.randint(0, 10, (20,)))
    deleted = []
    real = lesion.delete_blocks

    def record(n, indices):
        deleted.append(set(indices))
        return real(n, indices)

    monkeypatch.setattr(lesion, "delete_blocks", record)
    multi = lesion.multiple_deletions(net, data, counts=[1, 2, 3], trials=6, spare=[0])
    assert deleted and all(0 not in d for d in deleted)
    assert set().union(*deleted) == {1, 3, 5}
    assert len(multi[3]) == 1  # all three remaining deletable blocks: one way
    with pytest.raises(ValueError, match="out of range"):
        lesion.multiple_deletions(net, data, counts=[1], spare=[6])


# ------------------------------------------------------------------------------------------
# A plain VGG network: deleting single layers
# ------------------------------------------------------------------------------------------


def _vgg(batch_norm=False, seed=0):
    torch.manual_seed(seed)
    net = models.create("vgg11", num_classes=10, in_channels=3, small=True, batch_norm=batch_norm)
    if batch_norm:
        landscape.recompute_bn(net, torch.randn(16, 3, 32, 32))
    return net.eval()


def test_vgg_layers_that_keep_their_shape_are_the_deletable_ones():
    layers = lesion.conv_layers(_vgg())  # channels 8 16 32 32 64 64 64 64 (VGG-11 at 1/8 width)
    assert [(l.in_channels, l.out_channels) for l in layers][:4] == [(3, 8), (8, 16), (16, 32), (32, 32)]
    assert [i for i, l in enumerate(layers) if l.deletable] == [3, 5, 6, 7]
    assert "channels (8 → 16)" in layers[1].why_not
    bn_layers = lesion.conv_layers(_vgg(batch_norm=True))
    assert all(l.stop - l.start == 3 for l in bn_layers)  # conv, BatchNorm, ReLU
    strided = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(4, 4, 3), nn.ReLU())
    holder = nn.Module()
    holder.features = strided
    assert [l.why_not for l in lesion.conv_layers(holder)] == [
        "it has stride (2, 2)", "its padding changes the image size"]
    with pytest.raises(ValueError, match="VGG-style network"):
        lesion.conv_layers(_net())


@pytest.mark.parametrize("batch_norm", [False, True])
def test_deleting_a_vgg_layer_makes_it_the_identity_and_leaves_the_original_alone(batch_norm):
    net = _vgg(batch_norm)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = net(x)
        lesioned = lesion.delete_layers(net, [3, 5])
        layers = lesion.conv_layers(net)
        h = x
        for j, m in enumerate(net.features):  # the same forward pass, skipping the two layers
            if not any(layers[i].start <= j < layers[i].stop for i in (3, 5)):
                h = m(h)
        expected = net.classifier(torch.flatten(net.avgpool(h), 1))
        torch.testing.assert_close(lesioned(x), expected)
        assert not torch.allclose(lesioned(x), before)
        torch.testing.assert_close(net(x), before)
    assert sum(isinstance(m, nn.Identity) for m in lesioned.features) == (6 if batch_norm else 4)
    assert not any(isinstance(m, nn.Identity) for m in net.features)
    with pytest.raises(ValueError, match=r"layer 2 cannot be deleted: it changes the number of "
                                         r"channels \(16 → 32\)"):
        lesion.delete_layers(net, [2])
    with pytest.raises(ValueError, match="out of range"):
        lesion.delete_layers(net, [8])


def test_a_vgg_layer_that_computes_the_identity_can_be_deleted_for_free():
    net = _vgg()
    conv = lesion.conv_layers(net)[5]
    with torch.no_grad():
        nn.init.dirac_(net.features[conv.start].weight)  # conv(x) = x, and relu(x) = x for x ≥ 0
        net.features[conv.start].bias.zero_()
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(lesion.delete_layers(net, [5])(x), net(x))


def test_single_layer_deletions_report_every_layer():
    net = _vgg()
    data = (torch.randn(12, 3, 32, 32), torch.randint(0, 10, (12,)))
    result = lesion.single_layer_deletions(net, data)
    assert result.layers.tolist() == [3, 5, 6, 7] and result.errors.shape == (4,)
    assert set(result.not_deletable) == {0, 1, 2, 4}
    assert 0 <= result.baseline <= 1 and np.all((0 <= result.errors) & (result.errors <= 1))
