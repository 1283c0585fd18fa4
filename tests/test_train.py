import math

import pytest
import torch
import torch.nn as nn

import cnnlib
from cnnlib import cache, train
from cnnlib.models.classic import LeNet5


@pytest.fixture(scope="module")
def digits32():
    cnnlib.setup(verbose=False)
    return cnnlib.load("digits").resize(32)


def _lenet(seed=0):
    torch.manual_seed(seed)
    return LeNet5(10, 1)


def test_fit_learns_digits_and_records_every_epoch(digits32, quiet):
    net = _lenet()
    before = cnnlib.evaluate(net, digits32)["acc"]
    hist = cnnlib.fit(net, digits32, epochs=3, lr=0.05, batch_size=64, cache=False)
    assert len(hist) == 3 and hist.epoch == [1, 2, 3]
    assert hist.final["test_acc"] > 0.7 > before + 0.3
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert all(t2 > t1 for t1, t2 in zip(hist.time, hist.time[1:]))
    assert cnnlib.evaluate(net, digits32)["acc"] == pytest.approx(hist.final["test_acc"])


def test_same_seed_gives_an_identical_history_on_cpu(digits32, quiet):
    runs = [cnnlib.fit(_lenet(), digits32, epochs=2, batch_size=64, seed=5, cache=False)
            for _ in range(2)]
    assert runs[0].same_metrics(runs[1])
    other = cnnlib.fit(_lenet(), digits32, epochs=2, batch_size=64, seed=6, cache=False)
    assert not runs[0].same_metrics(other)


def test_eval_every_skips_test_evaluations_and_leaves_training_bit_identical(digits32, quiet):
    every = cnnlib.fit(_lenet(), digits32, epochs=5, batch_size=64, seed=5, cache=False)
    sparse_net = _lenet()
    sparse = cnnlib.fit(sparse_net, digits32, epochs=5, batch_size=64, seed=5, eval_every=2, cache=False)
    evaluated = [e for e, acc in zip(sparse.epoch, sparse.test_acc) if not math.isnan(acc)]
    assert evaluated == [2, 4, 5]                                  # every 2nd epoch, and the last
    assert all(math.isnan(sparse.test_loss[e - 1]) for e in (1, 3))
    assert sparse.train_loss == every.train_loss and sparse.lr == every.lr   # same training, bit for bit
    assert [sparse.test_acc[e - 1] for e in evaluated] == [every.test_acc[e - 1] for e in evaluated]
    assert sparse.final["test_acc"] == cnnlib.evaluate(sparse_net, digits32)["acc"]
    assert not sparse.same_metrics(every) and sparse.same_metrics(sparse)   # NaN == NaN for histories
    once = cnnlib.fit(_lenet(), digits32, epochs=5, batch_size=64, seed=5, eval_every=5, cache=False)
    assert sum(not math.isnan(a) for a in once.test_acc) == 1 and once.final == sparse.final | {"time": once.final["time"]}


def test_label_smoothing_raises_the_loss_floor(digits32, quiet):
    plain = cnnlib.fit(_lenet(), digits32, epochs=2, batch_size=64, cache=False)
    smooth = cnnlib.fit(_lenet(), digits32, epochs=2, batch_size=64, label_smoothing=0.2, cache=False)
    assert smooth.final["train_loss"] > plain.final["train_loss"]


def test_learning_rate_schedule_warms_up_then_decays_to_zero():
    lrs = [train.lr_at(s, 100, 1.0, warmup=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 0.01


def test_divergence_stops_early_with_a_warning_not_a_crash(digits32, quiet):
    net = _lenet()
    with pytest.warns(RuntimeWarning, match="diverged"):
        hist = cnnlib.fit(net, digits32, epochs=3, lr=1e6, batch_size=64, cache=False)
    assert len(hist) < 3 and math.isnan(hist.final["train_loss"])


def test_bad_arguments_are_clear_errors(digits32):
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        cnnlib.fit(_lenet(), digits32, epochs=0)
    with pytest.raises(ValueError, match="eval_every must be at least 1"):
        cnnlib.fit(_lenet(), digits32, epochs=1, eval_every=0)


def test_history_round_trips_and_plots(digits32, quiet):
    hist = cnnlib.fit(_lenet(), digits32, epochs=2, batch_size=64, cache=False)
    again = cnnlib.History.from_dict(hist.to_dict())
    assert again.same_metrics(hist) and again.time == hist.time
    axes = hist.plot(label="LeNet-5")
    assert axes[0].get_xlabel() == "epoch" and axes[1].get_ylabel() == "error (%)"
    assert "LeNet-5" in [t.get_text() for t in axes[1].get_legend().get_texts()][0]


def test_fit_with_cache_trains_once_then_loads(digits32, quiet, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLIB_CACHE", str(tmp_path))
    net = _lenet()
    first = cnnlib.fit(net, digits32, epochs=2, batch_size=64)
    trained = {k: v.clone() for k, v in net.state_dict().items()}

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(train, "_train", no_training)
    net2 = _lenet()
    second = cnnlib.fit(net2, digits32, epochs=2, batch_size=64)
    assert second.same_metrics(first) and second.time == first.time
    assert all(torch.equal(trained[k], v) for k, v in net2.state_dict().items())
    with pytest.raises(AssertionError, match="trained again"):  # other hyper-parameters: a miss
        cnnlib.fit(_lenet(), digits32, epochs=2, batch_size=64, lr=0.01)
    with pytest.raises(AssertionError, match="trained again"):  # other initial weights: a miss
        cnnlib.fit(_lenet(seed=1), digits32, epochs=2, batch_size=64)


def test_corrupt_cache_entry_is_reported_and_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLIB_CACHE", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"value": torch.arange(3)}

    assert torch.equal(cache.cached("demo", {"a": 1}, compute)["value"], torch.arange(3))
    assert torch.equal(cache.cached("demo", {"a": 1}, compute)["value"], torch.arange(3))
    assert len(calls) == 1
    (entry,) = tmp_path.glob("demo-*.pt")
    entry.write_bytes(entry.read_bytes()[:20])  # truncate it, as a killed write would
    with pytest.warns(RuntimeWarning, match="unreadable entry"):
        assert torch.equal(cache.cached("demo", {"a": 1}, compute)["value"], torch.arange(3))
    assert len(calls) == 2
    assert torch.equal(cache.cached("demo", {"a": 1}, compute)["value"], torch.arange(3))
    assert len(calls) == 2 and not list(tmp_path.glob(".*.tmp"))


def test_cache_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("CNNLIB_CACHE", "off")
    calls = []
    for _ in range(2):
        cache.cached("demo", 1, lambda: calls.append(1))
    assert len(calls) == 2


def test_googlenet_auxiliary_logits_are_trained_with_weight_0_3(digits32, quiet):
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))

        def forward(self, x):
            out = self.body(x)
            return (out, out) if self.training else out

    hist = cnnlib.fit(Aux(), digits32.subset(train=256), epochs=1, batch_size=64, cache=False)
    # main + 0.3 * aux of the same logits: the reported loss is 1.3 × the cross-entropy
    assert hist.final["train_loss"] > 1.3 * 1.5


def test_evaluate_in_channels_last_matches_the_plain_layout_and_restores_it(digits32):
    torch.manual_seed(0)
    net = cnnlib.models.create("resnet_cifar", depth=8, width=8, num_classes=10, in_channels=1)
    net.eval()
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    plain = cnnlib.evaluate(net, digits32, channels_last=False)
    fast = cnnlib.evaluate(net, digits32, channels_last=True)
    assert fast["acc"] == plain["acc"]
    assert fast["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert all(p.is_contiguous() for p in net.parameters())  # the layout it had
    assert not any(p.is_inference() for p in net.parameters())  # ... and it still trains
    net.train()
    torch.nn.functional.cross_entropy(net(digits32.x_train[:8]), digits32.y_train[:8]).backward()
    net.to(memory_format=torch.channels_last)
    cnnlib.evaluate(net, digits32)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters() if p.ndim == 4)
