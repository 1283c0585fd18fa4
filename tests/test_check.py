"""cnnlib.course.check: the hidden tests' helpers judge by exact type and by what a block computes,
and keep the course's reference code out of an answer."""
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from cnnlib import lesion, models
from cnnlib.course.check import assert_same, copy_weights, not_calling, randomize
from cnnlib.models import efficientnet as E
from cnnlib.models.resnet import BasicBlock


class Yes(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


@pytest.mark.parametrize("actual, expected", [
    (3, 3), (True, True), ("a", "a"), (None, None), (0.1 + 0.2, 0.3), ([1, (2, 3.0)], [1, (2, 3.0)]),
    ({"b": 1, "a": 2}, {"a": 2, "b": 1}), (torch.arange(3), torch.arange(3)),
    (torch.tensor([1.0, 2.0]) + 1e-7, torch.tensor([1.0, 2.0])), (np.arange(3.0), np.arange(3.0)),
])
def test_equal_values_of_the_same_type_pass(actual, expected):
    assert_same(actual, expected)


@pytest.mark.parametrize("actual, expected, message", [
    (Yes(7), 3, "expected a int, got a Yes"),
    (3.0, 3, "expected a int, got a float"),
    (np.float64(0.5), 0.5, "expected a float, got a float64"),
    (True, 1, "expected a int, got a bool"),
    ([1, Yes(2)], [1, 5], r"expected a int at \[1\], got a Yes"),
    ((1, 2), [1, 2], "expected a list, got a tuple"),
    ([1, 2], [1, 2, 3], "expected 3 items, got 2"),
    ({"a": 1}, {"b": 1}, "expected the keys"),
    (4, 5, "expected 5, got 4"),
    (0.31, 0.3, "expected 0.3, got 0.31"),
    (torch.arange(3.0), torch.arange(3), "expected dtype torch.int64"),
    (torch.zeros(2, 3), torch.zeros(3, 2), "expected shape"),
    (torch.tensor([1, 2]), torch.tensor([1, 3]), "values differ"),
    (torch.tensor([1.0, 2.1]), torch.tensor([1.0, 2.0]), "values differ"),
    (nn.Parameter(torch.zeros(2)), torch.zeros(2), "expected a Tensor, got a Parameter"),
    (np.arange(3), np.arange(3.0), "expected float64"),
])
def test_a_different_type_or_value_fails_with_a_message_naming_it(actual, expected, message):
    with pytest.raises(AssertionError, match=message):
        assert_same(actual, expected)


def test_tolerances_are_passed_on():
    assert_same(torch.tensor([1.0, 2.01]), torch.tensor([1.0, 2.0]), atol=0.02, rtol=0)
    assert_same(1.001, 1.0, rtol=1e-2)
    with pytest.raises(AssertionError, match="cell 3: expected"):
        assert_same(1.001, 1.0, msg="cell 3")


def _mbconv(c_in, c_out, expand, kernel, stride, act=nn.SiLU, gate=nn.Sigmoid):
    """A block laid out like the exercise's solution, with the activations replaceable."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            mid = c_in * expand
            layers = [nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), act()] if expand > 1 else []
            self.pre = nn.Sequential(*layers, nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
                                     nn.BatchNorm2d(mid), act())
            sq = max(1, int(c_in * 0.25))
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, sq, 1), act(), nn.Conv2d(sq, mid, 1), gate())
            self.project = nn.Sequential(nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
            self.residual = stride == 1 and c_in == c_out

        def forward(self, x):
            h = self.pre(x)
            out = self.project(h * self.se(h))
            return out + x if self.residual else out

    return Block()


def test_copied_weights_make_a_correct_block_compute_what_the_reference_computes():
    ref = randomize(E.MBConv(8, 8, 4, 3, 1), seed=3).eval()
    x = torch.randn(2, 8, 6, 6)
    good = copy_weights(ref, _mbconv(8, 8, 4, 3, 1)).eval()
    with torch.no_grad():
        assert_same(good(x), ref(x), atol=1e-5, rtol=1e-5)
        for wrong in (_mbconv(8, 8, 4, 3, 1, act=nn.ReLU), _mbconv(8, 8, 4, 3, 1, gate=nn.Hardtanh)):
            with pytest.raises(AssertionError, match="values differ"):
                assert_same(copy_weights(ref, wrong).eval()(x), ref(x), atol=1e-5, rtol=1e-5)


def test_randomize_moves_the_batchnorm_statistics_too():
    bn = randomize(nn.BatchNorm2d(5), seed=1)
    assert not torch.equal(bn.running_mean, torch.zeros(5)) and (bn.running_var >= 0.5).all()
    assert torch.equal(randomize(nn.BatchNorm2d(5), seed=1).weight, bn.weight)


def test_copy_weights_names_the_first_layer_out_of_order():
    ref = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with pytest.raises(AssertionError, match=r"your 0.weight has shape \(4,\) where the reference's 0.weight "
                                             r"has \(4, 3, 1, 1\) \(the reference's order: conv, BN\)"):
        copy_weights(ref, nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(3, 4, 1)), "conv, BN")
    with pytest.raises(AssertionError, match="the block has 2 parameters, the reference 4"):
        copy_weights(ref, nn.Conv2d(3, 4, 1))


def _net():
    torch.manual_seed(0)
    return models.create("resnet_cifar", depth=8, width=4, in_channels=1).eval()


def test_calling_a_forbidden_reference_fails_also_through_an_alias():
    net, x = _net(), torch.randn(2, 1, 8, 8)
    mine = lesion.delete_blocks
    for ref in (lesion.delete_blocks, lesion):  # the function, or its whole module
        with pytest.raises(AssertionError, match=r"reference implementation \(delete_blocks\)"):
            with not_calling(ref, what="forward_without"):
                mine(net, [0])(x)
    with not_calling(lesion.delete_blocks):
        net(x)  # the network's own blocks (also cnnlib code) are allowed
    assert sys.getprofile() is None


def test_a_forbidden_class_covers_its_methods():
    block = BasicBlock(4, 4)
    with pytest.raises(AssertionError, match=r"BasicBlock\.forward"):
        with not_calling(BasicBlock):
            block(torch.randn(1, 4, 3, 3))


def test_an_answer_that_removes_the_watch_is_caught():
    with pytest.raises(AssertionError, match="replaced the profile function"):
        with not_calling(lesion.delete_blocks):
            sys.setprofile(None)
            lesion.delete_blocks(_net(), [0])


def test_a_forbidden_package_covers_its_submodules():
    from cnnlib import models as package
    from cnnlib.models.layers import conv_output_size
    with pytest.raises(AssertionError, match=r"\(conv_output_size\)"):
        with not_calling(package):
            conv_output_size(32, 3)


def test_torch_base_classes_of_a_reference_stay_allowed():
    with not_calling(E):  # E.ConvBNAct is an nn.Sequential: the answer may build its own Sequential
        nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU())(torch.randn(1, 1, 2, 2))


def test_work_done_in_a_thread_is_watched_too():
    from concurrent.futures import ThreadPoolExecutor
    with pytest.raises(AssertionError, match=r"\(delete_blocks\)"):
        with not_calling(lesion), ThreadPoolExecutor(1) as pool:
            pool.submit(lesion.delete_blocks, _net(), [0]).result()


def test_generated_code_of_a_reference_dataclass_is_not_watched():
    # a dataclass's __init__ is compiled from a string: its "<string>" file and line would
    # match every other dataclass the answer builds
    from cnnlib.course.check import _codes
    from cnnlib.models.nasnet import SearchSpace
    codes = _codes(SearchSpace)
    assert codes and not [f for f, _ in codes if f.startswith("<")]
