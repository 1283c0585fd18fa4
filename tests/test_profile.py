import os
import re

import pytest
import torch

import cnnlib
from cnnlib import profile


def test_this_test_run_is_in_the_quick_profile():
    # Notebooks executed by nbval inherit os.environ: they must see the quick profile too.
    assert os.environ.get("CNNLIB_PROFILE") == "quick"
    assert profile.resolve_profile_name() == "quick"
    assert cnnlib.setup(verbose=False).name == "quick"


def test_profile_is_full_with_cuda_then_medium_with_fashion_mnist_then_quick():
    assert profile.resolve_profile_name(env={}, cuda=True, fashion_mnist=True) == "full"
    assert profile.resolve_profile_name(env={}, cuda=False, fashion_mnist=True) == "medium"
    assert profile.resolve_profile_name(env={}, cuda=False, fashion_mnist=False) == "quick"
    assert profile.resolve_profile_name(env={"CNNLIB_PROFILE": "full"}, cuda=False) == "full"
    assert profile.resolve_profile_name(env={"CNNLIB_PROFILE": " Medium "}, cuda=True) == "medium"


def test_quick_by_default_prints_how_to_get_the_medium_profile(monkeypatch, capsys):
    monkeypatch.delenv("CNNLIB_PROFILE")
    monkeypatch.setattr(profile.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cnnlib.data, "fashion_mnist_available", lambda root=None: False)
    assert cnnlib.setup().name == "quick"
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().out
    monkeypatch.setenv("CNNLIB_PROFILE", "quick")
    cnnlib.setup()
    assert "apt-get" not in capsys.readouterr().out  # asked for: no hint


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="'huge' is not a profile; choose one of"):
        profile.resolve_profile_name(env={"CNNLIB_PROFILE": "huge"})
    with pytest.raises(ValueError, match="not a profile"):
        cnnlib.setup(profile="huge", verbose=False)


def test_choose_follows_the_profile():
    for name, value, data in (("quick", 1, "digits"), ("medium", 2, "fashion-mnist"), ("full", 3, "cifar10")):
        p = cnnlib.setup(profile=name, device="cpu", verbose=False)
        assert p.choose(quick=1, medium=2, full=3) == value == cnnlib.choose(quick=1, medium=2, full=3)
        assert p.data == data and p.name == name
    with pytest.raises(TypeError, match="medium"):
        p.choose(quick=1, full=3)  # every experiment states all three scales
    cnnlib.setup(verbose=False)


def test_setup_seeds_and_prints(capsys):
    cnnlib.setup(seed=3)
    a = torch.rand(3)
    cnnlib.setup(seed=3)
    assert torch.equal(a, torch.rand(3))
    out = capsys.readouterr().out
    assert "profile=quick" in out and "device=cpu" in out and "data=digits" in out and "seed=3" in out


def test_the_dataset_follows_the_profile_unless_overridden(monkeypatch):
    monkeypatch.delenv("CNNLIB_DATASET", raising=False)
    assert cnnlib.setup(profile="full", device="cpu", verbose=False).data == "cifar10"
    monkeypatch.setenv("CNNLIB_DATASET", "Fashion_MNIST")
    p = cnnlib.setup(profile="full", device="cpu", verbose=False)
    assert p.data == "fashion-mnist" and p.name == "full"
    assert cnnlib.setup(profile="full", device="cpu", verbose=False, data="digits").data == "digits"
    monkeypatch.setenv("CNNLIB_DATASET", "imagenet")
    with pytest.raises(ValueError, match="CNNLIB_DATASET='imagenet' is not a dataset cnnlib knows; "
                                         "choose one of digits, fashion-mnist, cifar10, cifar100"):
        cnnlib.setup(profile="quick", device="cpu", verbose=False)
    with pytest.raises(ValueError, match="data='svhn' is not a dataset"):
        cnnlib.setup(profile="quick", device="cpu", verbose=False, data="svhn")
    monkeypatch.delenv("CNNLIB_DATASET")
    cnnlib.setup(profile="quick", device="cpu", verbose=False)


def test_every_lecture_loads_the_profiles_dataset():
    """No lecture spells a dataset in its cfg: each loads ``P.data``, so ``CNNLIB_DATASET`` reaches
    all of them (the full profile on Fashion-MNIST where CIFAR-10 cannot be downloaded)."""
    import nbformat
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "lectures").glob("*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                         if c.cell_type == "code")
        assert "cnnlib.load(P.data" in code, path.name
        assert not re.search(r"""data=["'](digits|fashion-mnist|cifar10)""", code), path.name
