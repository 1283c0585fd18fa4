"""``cnnlib.fit`` and ``cnnlib.distributed.sweep`` under torchrun: 2 gloo processes on the CPU.

The workers are started the way a user starts them, ``python -m torch.distributed.run
--standalone --nproc_per_node=2 worker.py`` (torchrun), with one thread each; the serial
reference is the same worker script run by plain Python. Each worker saves what it saw to
``rank<r>`` files that the tests compare.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import cnnlib
from cnnlib import distributed, train

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent('''
    import contextlib, io, sys
    from pathlib import Path

    import torch
    import torch.nn as nn

    import cnnlib
    from cnnlib import cache, distributed, models, train

    scenario, out = sys.argv[1], Path(sys.argv[2])
    with contextlib.redirect_stdout(io.StringIO()) as said:
        cnnlib.setup(profile="quick", device="cpu")
    data = cnnlib.load("digits").subset(256, 99)   # 8 steps of 32; 99 test images: uneven halves
    rank, world = distributed.rank(), distributed.world_size()
    tag = f"{'ddp' if distributed.is_distributed() else 'serial'}-rank{rank}"
    result = {"world": world, "setup_line": said.getvalue()}


    def small(bn, width=8, seed=0):
        if seed is not None:
            torch.manual_seed(seed)
        layers = [nn.Conv2d(1, width, 3, padding=1)] + ([nn.BatchNorm2d(width)] if bn else [])
        return nn.Sequential(*layers, nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(4 * width, 10))


    def digest(net):
        return train._state_hash(net)


    if scenario == "fit":
        for name, make in [("plain", lambda: small(bn=False)), ("bn", lambda: small(bn=True)),
                           ("stochastic_depth", lambda: models.create(
                               "resnet_cifar", num_classes=10, in_channels=1, depth=8, width=4,
                               survival_prob=0.5))]:
            net = make()
            hist = cnnlib.fit(net, data, epochs=2, lr=0.05, batch_size=32, cache=False)
            result[name] = {"state": net.state_dict(), "history": hist.to_dict(),
                            "type": type(net).__name__}
        # after fit the model is a plain module again: no DDP hook averages this gradient
        net = small(bn=False)
        net(torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(rank))).sum().backward()
        result["grad_after"] = net[0].weight.grad.clone()

        def run(i):  # independent runs of different widths; the sweep seeds each item
            net = small(bn=True, width=2 + i, seed=None)  # initial weights from the sweep's seed
            hist = cnnlib.fit(net, data, epochs=1, lr=0.05, batch_size=32, cache=False)
            return {k: v for k, v in hist.to_dict().items() if k != "time"}, digest(net)

        result["sweep"] = distributed.sweep(run, range(5))
        result["after_sweep"] = torch.rand(3)

        def fail(i):
            if i == 3:
                raise ValueError("item three is broken")
            return i

        try:
            distributed.sweep(fail, range(5))
        except (RuntimeError, ValueError) as err:
            result["error"] = f"{type(err).__name__}: {err}"

    elif scenario == "cache":
        calls = {"train": 0, "save": 0}
        real_train, real_save = train._train, cache.atomic_save

        def counting_train(*a, **k):
            calls["train"] += 1
            return real_train(*a, **k)

        def counting_save(*a, **k):
            calls["save"] += 1
            return real_save(*a, **k)

        train._train, cache.atomic_save = counting_train, counting_save
        for run in ("first", "again"):
            net = small(bn=True)
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(err):
                hist = cnnlib.fit(net, data, epochs=1, lr=0.05, batch_size=32, progress=True)
            result[run] = {"calls": dict(calls), "state": net.state_dict(), "history": hist.to_dict(),
                           "printed": printed.getvalue(), "bar": "step" in err.getvalue(),
                           "files": sorted(p.name for p in cache.cache_dir().iterdir())}

    torch.save(result, out / f"{scenario}-{tag}.pt")
''')


def _env(cache_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT", "GROUP_RANK", "TORCHELASTIC_RUN_ID")}
    env.update(OMP_NUM_THREADS="1", CNNLIB_PROGRESS="0", CNNLIB_PROFILE="quick", CNNLIB_OFFLINE="1",
               CNNLIB_CACHE=str(cache_dir), PYTHONPATH=os.pathsep.join(
                   [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    return env


def _launch(folder: Path, scenario: str, torchrun: bool) -> None:
    script = folder / "worker.py"
    script.write_text(WORKER)
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
                if torchrun else [sys.executable])
    proc = subprocess.run(launcher + [str(script), scenario, str(folder)], cwd=folder,
                          env=_env(folder / f"cache-{scenario}"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"{' '.join(launcher)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def _load(folder: Path, name: str) -> dict:
    return torch.load(folder / f"{name}.pt", weights_only=False)


@pytest.fixture(scope="module")
def fit_runs(tmp_path_factory):
    """The "fit" scenario under torchrun (2 ranks) and serially."""
    folder = tmp_path_factory.mktemp("distributed-fit")
    _launch(folder, "fit", torchrun=True)
    _launch(folder, "fit", torchrun=False)
    return {name: _load(folder, f"fit-{name}") for name in ("ddp-rank0", "ddp-rank1", "serial-rank0")}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model", ["plain", "bn", "stochastic_depth"])
def test_ranks_end_with_identical_weights_and_history(fit_runs, model):
    r0, r1 = fit_runs["ddp-rank0"], fit_runs["ddp-rank1"]
    assert r0["world"] == r1["world"] == 2 and fit_runs["serial-rank0"]["world"] == 1
    assert _same_state(r0[model]["state"], r1[model]["state"])  # weights and BN statistics
    assert r0[model]["history"] == r1[model]["history"]  # wall time included: the slowest rank's
    assert r0[model]["type"] == "Sequential" or model == "stochastic_depth"  # unwrapped, not DDP
    hist = r0[model]["history"]
    assert hist["epoch"] == [1, 2] and hist["train_loss"][1] < hist["train_loss"][0]


def test_data_parallel_training_matches_serial_training_without_batchnorm(fit_runs):
    """Same shuffle, same augmentation, half of each batch per rank, averaged gradients: the
    serial run up to float rounding (with BatchNorm, each rank normalizes its own half)."""
    ddp, serial = fit_runs["ddp-rank0"]["plain"], fit_runs["serial-rank0"]["plain"]
    for k, v in serial["state"].items():
        torch.testing.assert_close(ddp["state"][k], v, rtol=1e-4, atol=1e-5)
    for metric in ("train_loss", "test_loss", "train_acc", "test_acc", "lr"):
        assert ddp["history"][metric] == pytest.approx(serial["history"][metric], rel=1e-4, abs=1e-6)
    # and the model is a plain module again: a later backward is not averaged over the ranks
    assert not torch.equal(fit_runs["ddp-rank0"]["grad_after"], fit_runs["ddp-rank1"]["grad_after"])


def test_a_sharded_sweep_returns_the_serial_results_on_every_rank(fit_runs):
    r0, r1, serial = (fit_runs[k] for k in ("ddp-rank0", "ddp-rank1", "serial-rank0"))
    assert len(serial["sweep"]) == 5  # 5 items on 2 ranks: 3 on rank 0, 2 on rank 1
    assert r0["sweep"] == r1["sweep"] == serial["sweep"]  # histories and weight hashes, exactly
    assert len({h for _, h in serial["sweep"]}) == 5
    assert torch.equal(r0["after_sweep"], r1["after_sweep"])  # generators alike afterwards
    assert torch.equal(r0["after_sweep"], serial["after_sweep"])


def test_the_setup_line_is_printed_once_by_rank_0(fit_runs):
    assert fit_runs["ddp-rank0"]["setup_line"].startswith("cnnlib: profile=quick device=cpu")
    assert fit_runs["ddp-rank1"]["setup_line"] == ""
    assert fit_runs["serial-rank0"]["setup_line"] == fit_runs["ddp-rank0"]["setup_line"]


def test_a_failing_item_raises_on_every_rank(fit_runs):
    for name in ("ddp-rank0", "ddp-rank1"):
        assert fit_runs[name]["error"].startswith("RuntimeError: sweep: fail(3) failed on rank 1")
        assert "item three is broken" in fit_runs[name]["error"]
    assert fit_runs["serial-rank0"]["error"] == "ValueError: item three is broken"


def test_under_torchrun_rank_0_alone_writes_the_cache_and_every_rank_loads_it(tmp_path):
    _launch(tmp_path, "cache", torchrun=True)
    r0, r1 = _load(tmp_path, "cache-ddp-rank0"), _load(tmp_path, "cache-ddp-rank1")
    # first call: both ranks train together, rank 0 writes the one entry, rank 1 writes nothing
    assert r0["first"]["calls"] == {"train": 1, "save": 1}
    assert r1["first"]["calls"] == {"train": 1, "save": 0}
    assert len(r0["first"]["files"]) == 1 and r0["first"]["files"][0].startswith("fit-")
    assert r1["first"]["files"] == r0["first"]["files"]  # already on disk when rank 1 returns
    assert r0["first"]["bar"] and not r1["first"]["bar"]  # one progress bar: rank 0's
    # the same call again: nobody trains or writes, every rank has the stored weights
    for r in (r0, r1):
        assert r["again"]["calls"] == r["first"]["calls"]
        assert _same_state(r["again"]["state"], r0["first"]["state"])
        assert r["again"]["history"] == r0["first"]["history"]
    assert "loaded from cache" in r0["again"]["printed"] and r1["again"]["printed"] == ""
    assert _same_state(r0["first"]["state"], r1["first"]["state"])


def test_without_torchrun_sweep_is_a_seeded_map_and_starts_no_process_group(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert not distributed.is_distributed() and not distributed.init()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.sweep(lambda x: x * x, [3, 1, 2]) == [9, 1, 4]
    draws = distributed.sweep(lambda _: torch.rand(2), range(3), seed=7)
    for i, d in enumerate(draws):  # item i starts from seed + i, whatever ran before it
        torch.manual_seed(7 + i)
        assert torch.equal(d, torch.rand(2))
    with pytest.raises(ZeroDivisionError):  # serially an error is just the error
        distributed.sweep(lambda x: 1 / x, [1, 0])
    assert not torch.distributed.is_initialized()


def test_a_batch_that_does_not_split_over_the_ranks_is_refused(monkeypatch):
    cnnlib.setup(profile="quick", device="cpu", verbose=False)
    data = cnnlib.load("digits").subset(64, 16)
    monkeypatch.setattr(distributed, "data_parallel", lambda: True)
    monkeypatch.setattr(distributed, "init", lambda: True)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ValueError, match="batch_size=32 does not split over 3 processes"):
        train.fit(torch.nn.Linear(64, 10), data, epochs=1, batch_size=32, cache=False)
