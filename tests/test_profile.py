import os

import pytest
import torch

import cnnlib
from cnnlib import profile


def test_this_test_run_is_in_the_quick_profile():
    # Notebooks executed by nbval inherit os.environ: they must see the quick profile too.
    assert os.environ.get("CNNLIB_PROFILE") == "quick"
    assert profile.resolve_profile_name() == "quick"
    assert cnnlib.setup(verbose=False).name == "quick"


def test_profile_is_full_with_cuda_and_quick_without():
    assert profile.resolve_profile_name(env={}, cuda=True) == "full"
    assert profile.resolve_profile_name(env={}, cuda=False) == "quick"
    assert profile.resolve_profile_name(env={"CNNLIB_PROFILE": "full"}, cuda=False) == "full"


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="'huge' is not a profile; choose one of"):
        profile.resolve_profile_name(env={"CNNLIB_PROFILE": "huge"})
    with pytest.raises(ValueError, match="not a profile"):
        cnnlib.setup(profile="huge", verbose=False)


def test_choose_follows_the_profile():
    quick = cnnlib.setup(profile="quick", verbose=False)
    assert quick.choose(quick=1, full=2) == 1 and cnnlib.choose(quick=1, full=2) == 1
    full = cnnlib.setup(profile="full", device="cpu", verbose=False)
    assert full.choose(quick=1, full=2) == 2 and cnnlib.choose(quick=1, full=2) == 2
    assert full.data == "cifar10" and quick.data == "digits"
    cnnlib.setup(verbose=False)


def test_setup_seeds_and_prints(capsys):
    cnnlib.setup(seed=3)
    a = torch.rand(3)
    cnnlib.setup(seed=3)
    assert torch.equal(a, torch.rand(3))
    out = capsys.readouterr().out
    assert "profile=quick" in out and "device=cpu" in out and "data=digits" in out and "seed=3" in out
