"""Search strategies: budgets, random search, regularized evolution, DARTS, proxy task, caching."""
import math
import random
import time
from collections import deque

import pytest
import torch
import torch.nn.functional as F

import cnnlib
from cnnlib import search
from cnnlib.models.nasnet import Block, Genotype, SearchSpace
from cnnlib.search import Budget, SearchHistory, Trial

SPACE = SearchSpace(blocks=2)


def fake_evaluate(genotype):
    """A deterministic stand-in for training: accuracy = share of sep convs, cost = 1 s."""
    ops = genotype.ops()
    return Trial(genotype, sum(op.startswith("sep_conv") for op in ops) / len(ops), 1.0, 0)


@pytest.fixture(scope="module")
def digits_split():
    cnnlib.setup(seed=0, verbose=False)
    return search.validation_split(cnnlib.load("digits"), val_size=64, train_size=128)


def test_budget_needs_a_limit_and_counts_both():
    with pytest.raises(ValueError, match="needs evaluations"):
        Budget()
    for bad in (0, -3, 2.5, 3.0, True, "4"):
        with pytest.raises(ValueError, match="evaluations must be a whole number, at least 1"):
            Budget(evaluations=bad)
    for bad in (0, -1.0, math.nan, math.inf, "10"):
        with pytest.raises(ValueError, match="seconds must be a positive, finite number"):
            Budget(seconds=bad)
    b = Budget(evaluations=3, seconds=10)
    assert b.allows(2, 9.9) and not b.allows(3, 0) and not b.allows(0, 10)


def test_strategies_spend_exactly_the_budget():
    for run in (lambda b: search.random_search(SPACE, fake_evaluate, b, seed=1),
                lambda b: search.regularized_evolution(SPACE, fake_evaluate, b, population_size=5,
                                                       sample_size=2, seed=1)):
        assert len(run(Budget(evaluations=12))) == 12
        assert len(run(Budget(seconds=7.5))) == 8           # each trial costs 1 s: stops at 8 ≥ 7.5
        assert len(run(Budget(evaluations=4, seconds=100))) == 4
        assert run(Budget(evaluations=3)).unit == "architectures"


def test_darts_reads_the_same_budget_as_supernet_epochs(digits_split, quiet):
    space = SearchSpace(blocks=1, ops=("identity", "conv_3x3"), combiners=("add",))
    task = search.ProxyTask(digits_split, channels=4)
    darts = lambda b: search.darts_search(space, task, b, arch_lr=0.05, batch_size=32)[0]  # noqa: E731
    three = darts(Budget(evaluations=3))
    assert len(three) == 3 and three.unit == "supernet epochs" and "3 supernet epochs" in repr(three)
    assert all(t.cost > 0 for t in three)
    # a seconds budget as for the others: it stops before the first epoch that would start over it
    assert len(darts(Budget(seconds=1e-9))) == 1
    long = darts(Budget(evaluations=2, seconds=1e6))
    assert len(long) == 2
    limit = three.cumulative_cost()[1]                    # spent after two epochs, as measured
    assert len(darts(Budget(evaluations=50, seconds=limit * 1e-3))) == 1


def test_compute_clock_counts_this_process_working_not_waiting():
    cpu = torch.device("cpu")
    start = search.compute_clock(cpu)
    time.sleep(0.3)                                       # another program's turn on a busy machine
    assert search.compute_clock(cpu) - start < 0.1
    start = search.compute_clock(cpu)
    x = torch.randn(256, 256)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.5:                 # working: counted (even with a share of a core)
        x = torch.tanh(x @ x / 256)
    assert search.compute_clock(cpu) - start > 0.05


def test_history_best_so_far_and_cumulative_cost():
    g = SPACE.random(random.Random(0))
    h = SearchHistory("x", [Trial(g, a, c, 0) for a, c in [(0.2, 1), (0.5, 2), (0.3, 1), (0.6, 0.5)]])
    assert h.best_so_far() == [0.2, 0.5, 0.5, 0.6]
    assert h.cumulative_cost() == [1, 3, 4, 4.5] and h.total_cost == 4.5
    assert h.best.accuracy == 0.6
    with pytest.raises(ValueError, match="no architecture"):
        SearchHistory("empty").best


def test_random_search_samples_independent_valid_genotypes():
    h = search.random_search(SPACE, fake_evaluate, Budget(evaluations=30), seed=3)
    assert all(SPACE.validate(t.genotype) for t in h)
    assert len({t.genotype for t in h}) == 30
    assert [t.genotype for t in h] == [t.genotype for t in search.random_search(
        SPACE, fake_evaluate, Budget(evaluations=30), seed=3)]


def test_evolution_starts_from_random_searchs_samples_then_mutates_and_climbs():
    rnd = search.random_search(SPACE, fake_evaluate, Budget(evaluations=200), seed=0)
    evo = search.regularized_evolution(SPACE, fake_evaluate, Budget(evaluations=200), population_size=20,
                                       sample_size=5, seed=0)
    assert [t.genotype for t in evo.trials[:20]] == [t.genotype for t in rnd.trials[:20]]
    assert evo.best_so_far()[-1] > rnd.best_so_far()[-1]  # selection works on a learnable signal
    assert evo.best.accuracy >= 0.75      # 6 of the 8 ops are sep convs


def test_mean_accuracy_counts_the_trials_from_start_on():
    rng = random.Random(0)
    h = SearchHistory("x", [Trial(SPACE.random(rng), acc, 1.0, 0) for acc in (0.2, 0.4, 0.6, 1.0)])
    assert h.mean_accuracy() == pytest.approx(0.55)
    assert h.mean_accuracy(start=2) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no trial from evaluation 5 on"):
        h.mean_accuracy(start=4)


def test_evolution_spends_its_budget_on_better_architectures_than_random_search():
    rnd = search.random_search(SPACE, fake_evaluate, Budget(evaluations=60), seed=0)
    evo = search.regularized_evolution(SPACE, fake_evaluate, Budget(evaluations=60), population_size=10,
                                       sample_size=3, seed=0)
    assert evo.mean_accuracy(start=10) > rnd.mean_accuracy(start=10) + 0.15   # random: about 3 sep convs in 13 ops
    assert evo.mean_accuracy(0) == pytest.approx((sum(t.accuracy for t in rnd.trials[:10])
                                                  + 50 * evo.mean_accuracy(10)) / 60)


def test_evolution_step_removes_the_oldest_not_the_worst():
    rng = random.Random(0)
    gs = [SPACE.random(rng) for _ in range(4)]
    population = deque(Trial(g, acc, 1.0, 0) for g, acc in zip(gs, [0.1, 0.9, 0.2, 0.3]))
    child = search.evolution_step(population, SPACE, fake_evaluate, random.Random(1), sample_size=4)
    assert list(population)[:3] == [Trial(g, acc, 1.0, 0) for g, acc in zip(gs[1:], [0.9, 0.2, 0.3])]
    assert population[-1] is child
    parent = gs[1]  # with sample_size = population size the best (0.9) is the parent
    diffs = sum(x != y for x, y in zip(parent.normal + parent.reduce, child.genotype.normal + child.genotype.reduce))
    assert diffs == 1


def test_evolution_rejects_bad_sizes():
    with pytest.raises(ValueError, match="sample_size"):
        search.regularized_evolution(SPACE, fake_evaluate, Budget(evaluations=3), population_size=2, sample_size=3)


def test_validation_split_holds_out_training_images_and_never_the_test_set(digits_split):
    data = cnnlib.load("digits")
    split = digits_split
    assert len(split.x_test) == 64 and len(split.x_train) == 128
    train_rows = {tuple(r.flatten().tolist()) for r in data.x_train}
    assert all(tuple(r.flatten().tolist()) in train_rows for r in split.x_test)
    assert all(tuple(r.flatten().tolist()) in train_rows for r in split.x_train)
    with pytest.raises(ValueError, match="val_size"):
        search.validation_split(data, val_size=len(data.x_train))


def test_proxy_task_trains_caches_and_reports_cost(digits_split, quiet):
    task = search.ProxyTask(digits_split, channels=4, epochs=1, batch_size=32)
    g = SPACE.random(random.Random(0))
    first = task(g)
    assert 0 <= first.accuracy <= 1 and first.cost > 0 and first.params == cnnlib.count_params(task.build(g))
    start = time.perf_counter()
    again = task(g)
    assert again == first  # from the cache: same accuracy and the originally measured cost
    assert time.perf_counter() - start < first.cost  # although reading it took less than that


def test_evolution_shares_random_searchs_first_evaluations_and_both_histories_count_them(digits_split, quiet):
    task = search.ProxyTask(digits_split, channels=4, epochs=1, batch_size=32)
    rnd = search.random_search(SPACE, task, Budget(evaluations=3), seed=0)
    evo = search.regularized_evolution(SPACE, task, Budget(evaluations=4), population_size=3, sample_size=2, seed=0)
    assert evo.trials[:3] == rnd.trials    # the same architectures, read from the cache with their cost
    distinct = {t.genotype: t for t in rnd.trials + evo.trials}
    assert len(distinct) == 4
    assert sum(t.cost for t in distinct.values()) == pytest.approx(rnd.total_cost + evo.trials[3].cost)


def test_mixed_op_is_the_softmax_weighted_sum_of_its_operations():
    torch.manual_seed(0)
    ops = ("identity", "conv_3x3", "max_pool_3x3", search.ZERO)
    mixed = search.MixedOp(ops, 4, 1).eval()
    x = torch.randn(2, 4, 6, 6)
    w = F.softmax(torch.randn(len(ops)), 0)
    expected = sum(wi * op(x) for wi, op in zip(w, mixed.ops))
    torch.testing.assert_close(mixed(x, w), expected)
    one_hot = torch.tensor([0.0, 1.0, 0.0, 0.0])
    torch.testing.assert_close(mixed(x, one_hot), mixed.ops[1](x))
    assert mixed.ops[3](x).abs().sum() == 0 and mixed.ops[3](x).shape == x.shape


def test_discretize_keeps_the_two_strongest_edges_and_ignores_zero():
    ops = ("identity", "conv_3x3", search.ZERO)
    alpha = torch.full((search.edge_count(2), 3), -5.0)
    # node 0: edges from h[i-1], h[i]; node 1: edges from h[i-1], h[i], b0
    alpha[0, 2] = 9.0; alpha[0, 0] = 1.0          # zero dominates edge 0; its best real op: identity
    alpha[1, 1] = 3.0
    alpha[2, 1] = 0.5; alpha[3, 0] = 4.0; alpha[4, 1] = 5.0
    cell = search.discretize(alpha, ops, 2)
    assert cell[0] == Block((0, 1), ("identity", "conv_3x3"))
    assert cell[1] == Block((1, 2), ("identity", "conv_3x3"))


def test_supernet_alphas_get_gradients_only_from_their_own_cells():
    ops = ("identity", "sep_conv_3x3", "max_pool_3x3", search.ZERO)
    net = search.SuperNet(ops, 2, num_classes=10, in_channels=1, channels=4, cells_per_stage=1, stages=2)
    assert net.alpha_normal.shape == (search.edge_count(2), 4)
    F.cross_entropy(net(torch.randn(4, 1, 8, 8)), torch.arange(4)).backward()
    assert net.alpha_normal.grad.abs().sum() > 0 and net.alpha_reduce.grad.abs().sum() > 0
    assert {id(p) for p in net.weight_parameters()}.isdisjoint({id(p) for p in net.arch_parameters()})


def test_darts_search_returns_a_valid_genotype_per_epoch_and_is_cached(digits_split, quiet):
    space = SearchSpace(blocks=2, ops=("identity", "conv_3x3", "max_pool_3x3"), combiners=("add",))
    task = search.ProxyTask(digits_split, channels=4)
    history, result = search.darts_search(space, task, Budget(evaluations=2), arch_lr=0.05, batch_size=32)
    assert len(history) == 2 and result["weights_normal"].shape == (2, search.edge_count(2), 4)
    assert history.unit == "supernet epochs"
    assert all(space.validate(t.genotype) for t in history)
    assert result["genotype"] == history.trials[-1].genotype
    torch.testing.assert_close(result["weights_normal"].sum(-1), torch.ones(2, search.edge_count(2)))
    again, _ = search.darts_search(space, task, Budget(evaluations=2), arch_lr=0.05, batch_size=32)
    assert again.trials == history.trials
    with pytest.raises(ValueError, match="'add' combiner"):
        search.darts_search(SearchSpace(blocks=2, combiners=("concat",)), task, Budget(evaluations=1))


def test_parameter_free_share():
    g = Genotype((Block((0, 1), ("identity", "conv_3x3")),), (Block((0, 1), ("max_pool_3x3", "avg_pool_3x3")),))
    assert search.parameter_free_share(g) == 0.75
    assert search.parameter_free_share(g, "normal") == 0.5


def test_best_so_far_plot_draws_one_line_per_seed_and_a_mean(quiet):
    import matplotlib.pyplot as plt
    runs = [search.random_search(SPACE, fake_evaluate, Budget(evaluations=5), seed=s) for s in range(3)]
    ax = search.plot_best_so_far({"random": runs, "single": runs[0]})
    assert len(ax.lines) == 3 + 1 + 1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["random (mean of 3 seeds)", "single"]
    ax = search.plot_best_so_far({"random": runs}, x="cost")        # no mean against cost: the first seed is labelled
    assert len(ax.lines) == 3 and [t.get_text() for t in ax.get_legend().get_texts()] == ["random (3 seeds)"]
    plt.close("all")


def test_evaluations_plot_shows_every_trial_and_each_strategys_mean(quiet):
    import matplotlib.pyplot as plt
    runs = {"random": [search.random_search(SPACE, fake_evaluate, Budget(evaluations=6), seed=s) for s in range(3)],
            "evolution": [search.regularized_evolution(SPACE, fake_evaluate, Budget(evaluations=6), 3, 2, seed=s)
                          for s in range(3)]}
    ax = search.plot_evaluations(runs, start=3)
    assert [len(c.get_offsets()) for c in ax.collections[::2]] == [18, 18]     # dots, then the mean line
    means = [100 * sum(r.mean_accuracy(3) for r in rs) / 3 for rs in runs.values()]
    assert [seg.get_segments()[0][0][1] for seg in ax.collections[1::2]] == pytest.approx(means)
    assert all("evaluations 4–6" in t.get_text() for t in ax.get_legend().get_texts())
    plt.close(ax.figure)


def test_the_published_darts_cells_are_mostly_parameter_free_in_their_reduction_cells():
    from cnnlib.models.nasnet import DARTS, DARTS_V1, DARTS_V2
    assert DARTS is DARTS_V2
    for g in (DARTS_V1, DARTS_V2):
        SearchSpace(blocks=4).validate(g)
        assert search.parameter_free_share(g, "reduce") == 1.0
    assert search.parameter_free_share(DARTS_V1, "normal") == 3 / 8
    assert search.parameter_free_share(DARTS_V2, "normal") == 2 / 8
    assert search.parameter_free_share(DARTS_V1) == 11 / 16
    assert search.parameter_free_share(DARTS_V2) == 10 / 16
    # the reduction cells' op types: V1 has one average pooling, V2 only max-poolings and identities
    assert set(op for b in DARTS_V1.reduce for op in b.ops) == {"max_pool_3x3", "identity", "avg_pool_3x3"}
    assert set(op for b in DARTS_V2.reduce for op in b.ops) == {"max_pool_3x3", "identity"}
    assert set(op for b in DARTS_V2.normal for op in b.ops) == {"sep_conv_3x3", "identity", "dil_conv_3x3"}
