"""Tests for synth_torch.loop.rules. Expected numbers are computed by hand from the formulas."""

from __future__ import annotations

import doctest
import io
import math

import pytest
import torch

from synth_torch.loop import rules
from synth_torch.loop.rules import RULES, SliceReweighter, SliceStats

NAN = float("nan")


def stats(loss, count=100.0) -> SliceStats:
    loss_t = torch.tensor(loss, dtype=torch.float64)
    if isinstance(count, (int, float)):
        count_t = torch.full_like(loss_t, count)
    else:
        count_t = torch.tensor(count, dtype=torch.float64)
    return SliceStats(loss_t, count_t)


def plain(k: int, rule: str, **kw) -> SliceReweighter:
    """All safeguards off unless given."""
    cfg = dict(floor=0.0, max_change=None, min_samples=0, patience=None)
    cfg.update(kw)
    return SliceReweighter(k, rule, **cfg)


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


def adversarial_rounds(k: int, n: int, seed: int):
    """Huge, tiny, negative, NaN losses and zero counts, from an explicit generator."""
    g = torch.Generator().manual_seed(seed)
    for t in range(n):
        loss = torch.randn(k, generator=g, dtype=torch.float64) * 10.0 ** float(torch.randint(-3, 7, (), generator=g))
        loss[t % k] = 1e6 if t % 3 else -1e6
        loss[torch.rand(k, generator=g) < 0.2] = NAN
        count = torch.randint(0, 200, (k,), generator=g).double()
        count[torch.rand(k, generator=g) < 0.1] = 0.0
        yield SliceStats(loss, count)


# ---------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("floor", [0.0, 0.05, 0.3])
def test_floor_and_normalisation_under_adversarial_losses(rule, floor):
    k = 5
    rw = SliceReweighter(k, rule, floor=floor, max_change=None, min_samples=5, patience=2)
    for s in adversarial_rounds(k, 60, seed=1):
        p = rw.update(s)
        assert torch.isfinite(p).all()
        assert float(p.min()) >= floor / k * (1 - 1e-12)
        assert abs(float(p.sum()) - 1.0) < 1e-12
        assert torch.equal(p, rw.probs)


@pytest.mark.parametrize("rule", RULES)
def test_max_change_caps_total_variation(rule):
    cap = 0.03
    rw = SliceReweighter(4, rule, eta=1.0, floor=0.1, max_change=cap, min_samples=0, patience=None)
    free = SliceReweighter(4, rule, eta=1.0, floor=0.1, max_change=None, min_samples=0, patience=None)
    binding = 0
    for t in range(20):
        s = stats([3.0 - 0.1 * t, 0.1, 2.0 * (t % 2), 1.0 + 0.05 * t])
        free.load_state_dict(rw.state_dict())
        before = rw.probs
        after = rw.update(s)
        unconstrained = free.update(s)
        assert tv(after, before) <= cap + 1e-12
        if tv(unconstrained, before) > cap + 1e-9:
            binding += 1
            assert tv(after, before) == pytest.approx(cap, rel=1e-9)
    assert binding > 0  # the cap was exercised


@pytest.mark.parametrize("rule", RULES)
def test_min_samples_blocks_gain(rule):
    rw = SliceReweighter(3, rule, floor=0.05, max_change=None, min_samples=20, patience=None)
    rw.update(stats([1.0, 1.0, 1.0], 50.0))
    for t in range(8):
        before = rw.probs
        # slice 0 looks worst (and is "improving" fast for exp3) but has too few samples
        after = rw.update(stats([50.0 - 5 * t, 2.0 - 0.2 * t, 0.1], [5.0, 50.0, 50.0]))
        assert float(after[0]) <= float(before[0]) + 1e-12
    assert float(rw.probs[1]) > float(rw.probs[2])  # informed slices still move


@pytest.mark.parametrize("rule", RULES)
def test_slice_without_information_never_gains(rule):
    rw = SliceReweighter(3, rule, floor=0.05, max_change=None, min_samples=0, patience=None)
    for t in range(6):
        before = rw.probs
        after = rw.update(stats([1.0 + t, NAN, 0.5 - 0.05 * t], [100.0, 100.0, 100.0]))
        assert float(after[1]) <= float(before[1]) + 1e-12


# ---------------------------------------------------------------------------- group DRO


def test_group_dro_matches_hand_computed_updates():
    eta, c, eps = 0.5, 1.0, 0.1
    loss, count = [1.0, 2.0, 0.5], [100.0, 25.0, 400.0]
    rw = SliceReweighter(3, "group_dro", eta=eta, generalization_adjustment=c, floor=eps,
                         max_change=None, min_samples=0, patience=None)

    # step 1 from uniform: q_s ~ (1/3) exp(eta (l_s + C / sqrt(n_s))), n = [100, 25, 400]
    w = [math.exp(0.5 * (1.0 + 1.0 / 10.0)), math.exp(0.5 * (2.0 + 1.0 / 5.0)), math.exp(0.5 * (0.5 + 1.0 / 20.0))]
    q1 = [x / sum(w) for x in w]
    p1 = [0.9 * x + 0.1 / 3 for x in q1]
    got = rw.update(stats(loss, count))
    assert got.tolist() == pytest.approx(p1, rel=1e-12)
    assert int(torch.argmax(got)) == 1  # toward the highest-loss slice

    # step 2 multiplies the sampling probabilities p1 (fixed share), cumulative n = [200, 50, 800]
    w2 = [
        p1[0] * math.exp(0.5 * (1.0 + 1.0 / math.sqrt(200.0))),
        p1[1] * math.exp(0.5 * (2.0 + 1.0 / math.sqrt(50.0))),
        p1[2] * math.exp(0.5 * (0.5 + 1.0 / math.sqrt(800.0))),
    ]
    p2 = [0.9 * x / sum(w2) + 0.1 / 3 for x in w2]
    assert rw.update(stats(loss, count)).tolist() == pytest.approx(p2, rel=1e-12)


def test_group_dro_moves_toward_highest_loss_slice():
    rw = SliceReweighter(4, "group_dro", eta=0.2, floor=0.05, max_change=0.05, min_samples=1, patience=None)
    previous = rw.probs
    for _ in range(30):
        p = rw.update(stats([0.2, 0.4, 1.5, 0.3]))
        assert float(p[2]) >= float(previous[2]) - 1e-12
        previous = p
    assert int(torch.argmax(p)) == 2 and float(p[2]) > 0.8


def test_group_dro_nan_slice_keeps_its_share():
    rw = plain(3, "group_dro", eta=1.0)
    p = rw.update(stats([0.0, math.log(3.0), NAN]))
    # the informed mass 2/3 is split 1:3 by exp(eta * loss); slice 2 keeps 1/3
    assert p.tolist() == pytest.approx([2 / 3 * 1 / 4, 2 / 3 * 3 / 4, 1 / 3], rel=1e-12)


# ---------------------------------------------------------------------------- PLR


def test_plr_rank_prioritisation_hand_computed():
    rw = plain(4, "plr", beta=1.0, rho=0.0)
    p = rw.update(stats([0.3, 0.9, 0.1, 0.5]))  # ranks 3, 1, 4, 2 -> h = 1/rank
    h = [1 / 3, 1.0, 1 / 4, 1 / 2]
    assert p.tolist() == pytest.approx([x / sum(h) for x in h], rel=1e-12)
    assert torch.argsort(p, descending=True).tolist() == [1, 3, 0, 2]


def test_plr_ties_share_average_rank_and_beta_sharpens():
    p = plain(3, "plr", beta=1.0, rho=0.0).update(stats([1.0, 1.0, 0.0]))
    h = [1 / 1.5, 1 / 1.5, 1 / 3]
    assert p.tolist() == pytest.approx([x / sum(h) for x in h], rel=1e-12)
    sharp = plain(3, "plr", beta=0.25, rho=0.0).update(stats([0.0, 2.0, 1.0]))
    h = [3.0**-4, 1.0, 2.0**-4]
    assert sharp.tolist() == pytest.approx([x / sum(h) for x in h], rel=1e-12)


def test_plr_staleness_term_hand_computed():
    rw = plain(3, "plr", rho=1.0, min_samples=1)
    assert rw.update(stats([1.0, 2.0, 3.0])).tolist() == pytest.approx([1 / 3] * 3)  # all staleness 1
    # slice 2 not evaluated: staleness [1, 1, 2] but a slice without samples may not gain
    p = rw.update(stats([1.0, 2.0, NAN], [100.0, 100.0, 0.0]))
    assert p.tolist() == pytest.approx([1 / 3] * 3)
    # evaluated again: staleness [1, 1, 2] -> proposal [1/4, 1/4, 1/2]
    assert rw.update(stats([1.0, 2.0, 3.0])).tolist() == pytest.approx([0.25, 0.25, 0.5])


# ---------------------------------------------------------------------------- EXP3


def test_exp3_favours_slice_with_learning_progress():
    rw = SliceReweighter(3, "exp3", gamma=0.1, floor=0.02, max_change=0.2, min_samples=1, patience=None)
    for t in range(25):
        p = rw.update(stats([0.8, 2.0 - 0.05 * t, 0.8]))  # only slice 1 makes progress
    assert int(torch.argmax(p)) == 1
    assert float(p[1]) > 0.6
    assert float(p[0]) == pytest.approx(float(p[2]), rel=1e-12)


def test_exp3_first_update_hand_computed():
    # Classic EXP3 step eta = gamma / K, reward |dl| / max|dl| importance-weighted by 1/p (p uniform).
    gamma, k = 0.3, 2
    rw = plain(k, "exp3", gamma=gamma)
    rw.update(stats([1.0, 1.0]))  # first evaluation: no progress measurable yet
    assert rw.probs.tolist() == pytest.approx([0.5, 0.5])
    p = rw.update(stats([0.5, 0.75]))  # rewards 0.5, 0.25 -> normalised 1, 0.5 -> x = 2, 1
    w = [math.exp(gamma / k * 2.0), math.exp(gamma / k * 1.0)]
    expected = [(1 - gamma) * x / sum(w) + gamma / k for x in w]
    assert p.tolist() == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------- impossible slices


@pytest.mark.parametrize("rule", ["group_dro", "plr"])
def test_stalled_detection_for_constant_high_loss_slice(rule):
    rw = SliceReweighter(3, rule, eta=0.5, floor=0.05, max_change=None, min_samples=1, patience=3, min_delta=1e-3)
    for t in range(4):
        rw.update(stats([3.0, 1.0 - 0.05 * t, 0.5 - 0.05 * t]))  # slice 0 is elevated and flat
        assert bool(rw.stalled[0]) == (t == 3)  # best set at t=0, three flat updates at t=1..3
    assert not rw.stalled[1:].any()
    # capped back at the prior share 1/3 (floor mixing keeps 1/3 for a uniform prior)
    assert float(rw.probs[0]) <= 1 / 3 + 1e-12
    for _ in range(3):
        rw.update(stats([3.0, 1.0, 0.5]))
        assert float(rw.probs[0]) <= 1 / 3 + 1e-12
    # progress resumes: the mark clears and the slice may gain again
    rw.update(stats([2.0, 1.0, 0.5]))
    assert not rw.stalled[0]
    assert float(rw.probs[0]) > 1 / 3


@pytest.mark.parametrize("rule", ["group_dro", "plr"])
def test_improving_slice_with_elevated_weight_is_not_stalled(rule):
    rw = SliceReweighter(2, rule, eta=0.5, floor=0.05, max_change=None, min_samples=1, patience=2, min_delta=1e-3)
    for t in range(20):
        rw.update(stats([3.0 - 0.05 * t, 0.1]))
        assert not rw.stalled.any()
    assert float(rw.probs[0]) > 0.5  # still holding elevated weight


def test_stall_freeze_is_rate_limited_by_max_change():
    rw = SliceReweighter(2, "group_dro", eta=2.0, floor=0.0, max_change=0.1, min_samples=1, patience=1)
    for _ in range(6):
        before = rw.probs
        rw.update(stats([3.0, 0.1]))
        assert tv(rw.probs, before) <= 0.1 + 1e-12
    assert bool(rw.stalled[0])


# ---------------------------------------------------------------------------- growth


@pytest.mark.parametrize("rule", RULES)
def test_add_slices_keeps_invariants(rule):
    eps = 0.1
    rw = SliceReweighter(3, rule, floor=eps, max_change=0.2, min_samples=1, patience=3)
    for t in range(5):
        rw.update(stats([2.0, 1.0 - 0.1 * t, 0.5]))
    before = rw.probs
    p = rw.add_slices(2, initial_share=0.1)
    assert p.shape == (5,) and rw.num_slices == 5
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
    assert p[3:].tolist() == pytest.approx([(1 - eps) * 0.1 + eps / 5] * 2)
    # old slices keep their relative weights apart from the floor mixing
    q_old = (before - eps / 3) / (1 - eps)
    assert ((p[:3] - eps / 5) / (1 - eps)).tolist() == pytest.approx((q_old * 0.8).tolist())
    assert float(rw.prior.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="expected 5"):
        rw.update(stats([1.0, 1.0, 1.0]))
    for s in adversarial_rounds(5, 20, seed=3):
        p = rw.update(s)
        assert float(p.min()) >= eps / 5 * (1 - 1e-12)
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)


def test_add_slices_default_share_is_uniform():
    rw = plain(3, "group_dro", floor=0.2)
    rw.update(stats([1.0, 2.0, 3.0]))
    p = rw.add_slices(1)
    assert float(p[3]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="initial_share"):
        rw.add_slices(2, initial_share=0.5)


# ---------------------------------------------------------------------------- checkpointing


@pytest.mark.parametrize("rule", RULES)
def test_state_dict_round_trip_gives_identical_updates(rule):
    kw = dict(floor=0.05, max_change=0.1, min_samples=5, patience=2)
    a = SliceReweighter(4, rule, **kw)
    rounds = list(adversarial_rounds(4, 30, seed=7))
    for s in rounds[:10]:
        a.update(s)
    a.add_slices(1)
    rounds = [SliceStats(torch.cat([s.loss, s.loss[:1]]), torch.cat([s.count, s.count[:1]])) for s in rounds[10:]]
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = SliceReweighter(4, rule, **kw)  # K comes from the checkpoint
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(a.probs, b.probs)
    for s in rounds:
        assert torch.equal(a.update(s), b.update(s))
        assert torch.equal(a.stalled, b.stalled)
    assert len(a.history) == len(b.history)
    assert all(torch.equal(x, y) for x, y in zip(a.history, b.history))


def test_load_state_dict_tolerates_missing_fields_and_rejects_other_rule():
    a = SliceReweighter(3, "exp3")
    a.update(stats([1.0, 2.0, 3.0]))
    old = {k: v for k, v in a.state_dict().items() if k in ("rule", "q", "step")}  # an "older" checkpoint
    b = SliceReweighter(3, "exp3")
    b.load_state_dict(old)
    assert torch.equal(a.probs, b.probs)
    b.update(stats([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="rule 'exp3'"):
        SliceReweighter(3, "plr").load_state_dict(a.state_dict())


def test_state_key_depends_on_configuration():
    assert SliceReweighter(3, "plr").state_key != SliceReweighter(3, "exp3").state_key
    assert SliceReweighter(3, "plr", floor=0.1).state_key != SliceReweighter(3, "plr").state_key


def test_history_records_each_change():
    rw = SliceReweighter(2, "group_dro")
    rw.update(stats([1.0, 0.0]))
    rw.add_slices(1)
    assert [h.shape[0] for h in rw.history] == [2, 2, 3]


# ---------------------------------------------------------------------------- inputs and validation


def test_update_does_not_modify_inputs():
    loss, count = torch.tensor([1.0, NAN, 2.0]), torch.tensor([10, 0, 10])
    versions = (loss._version, count._version)
    snapshot = (loss.clone(), count.clone())
    SliceReweighter(3, "group_dro").update(SliceStats(loss, count))
    assert (loss._version, count._version) == versions
    assert torch.equal(count, snapshot[1]) and torch.allclose(loss, snapshot[0], equal_nan=True)


def test_slice_stats_from_samples():
    s = SliceStats.from_samples(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([2, 2, 0]), 4)
    assert s.loss[[0, 2]].tolist() == [5.0, 2.0] and s.loss[[1, 3]].isnan().all()
    assert s.count.tolist() == [1, 0, 2, 0]
    assert s.informative().tolist() == [True, False, True, False]


@pytest.mark.parametrize(
    "loss, count, match",
    [
        (torch.ones(3), torch.ones(2), "shape of loss"),
        (torch.ones(3, 1), torch.ones(3, 1), r"shape \(K,\)"),
        (torch.tensor([1.0, float("inf")]), torch.ones(2), "infinite"),
        (torch.ones(2), torch.tensor([1.0, -1.0]), ">= 0"),
    ],
)
def test_slice_stats_validation(loss, count, match):
    with pytest.raises(ValueError, match=match):
        SliceStats(loss, count)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rule="dro"), r"rule must be one of \('group_dro', 'plr', 'exp3'\), got 'dro'"),
        (dict(floor=1.0), r"floor \(eps\) must be in \[0, 1\), got 1.0"),
        (dict(floor=-0.1), r"floor \(eps\) must be in \[0, 1\)"),
        (dict(eta=0.0), "eta must be a finite number > 0, got 0.0"),
        (dict(eta=-1.0), "eta must be"),
        (dict(max_change=0.0), "max_change"),
        (dict(min_samples=-1), "min_samples"),
        (dict(patience=0), "patience"),
        (dict(gamma=0.0), "gamma"),
        (dict(rho=1.5), "rho"),
        (dict(beta=0.0), "beta"),
        (dict(prior=torch.tensor([1.0, 0.0])), r"prior must have shape \(3,\)"),
    ],
)
def test_bad_hyper_parameters_raise(kwargs, match):
    kwargs = dict(kwargs)
    rule = kwargs.pop("rule", "group_dro")
    with pytest.raises(ValueError, match=match):
        SliceReweighter(3, rule, **kwargs)


def test_docstring_examples_run():
    result = doctest.testmod(rules, raise_on_error=False)
    assert result.attempted >= 8 and result.failed == 0, result  # the examples exist and pass
