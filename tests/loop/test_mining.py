"""Tests for synth_torch.loop.mining on planted regions, with fixed seeds."""

from __future__ import annotations

import doctest
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats as sps

from synth_torch.loop import mining
from synth_torch.loop.mining import MinedSlice, Predicate, find_slices

INF = math.inf


def uniform_params(n: int, names: str, seed: int) -> tuple[dict[str, torch.Tensor], torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(n, generator=g) for name in names}, g


def noise(n: int, g: torch.Generator, sd: float = 0.3) -> torch.Tensor:
    return sd * torch.randn(n, generator=g)


# ---------------------------------------------------------------------------- predicates


@pytest.mark.parametrize(
    "pred, text",
    [
        (Predicate("light.intensity", hi=0.2), "light.intensity<0.2"),
        (Predicate("motion_blur", lo=3), "motion_blur>=3"),
        (Predicate("light.intensity", 0.2, 0.5), "0.2<=light.intensity<0.5"),
        (Predicate("x", hi=0.2503), "x<0.25"),
        (Predicate("x", lo=0.123456), "x>=0.123"),
        (Predicate("x", -1.5, 2.0), "-1.5<=x<2"),
        (Predicate("depth", lo=1234.5), "depth>=1230"),
        (Predicate("tiny", hi=1.5e-7), "tiny<1.5e-07"),
    ],
)
def test_predicate_str_is_readable(pred, text):
    assert str(pred) == text


def test_predicate_mask_is_half_open_and_nan_false():
    values = torch.tensor([0.1, 0.2, 0.35, 0.5, 0.9, float("nan")])
    assert Predicate("a", 0.2, 0.5).mask(values).tolist() == [False, True, True, False, False, False]
    assert Predicate("a", hi=0.2).mask(values).tolist() == [True, False, False, False, False, False]
    assert Predicate("a", lo=0.5).mask(values).tolist() == [False, False, False, True, True, False]
    # float32 values compared exactly against a float64 edge
    edge = 0.1 + 1e-12
    value32 = torch.tensor([0.1], dtype=torch.float32)
    assert Predicate("a", lo=edge).mask(value32).tolist() == [float(np.float32(0.1)) >= edge]


@pytest.mark.parametrize("lo, hi", [(0.5, 0.5), (0.6, 0.5), (-INF, INF), (float("nan"), 1.0)])
def test_predicate_rejects_bad_bounds(lo, hi):
    with pytest.raises(ValueError, match="'x'"):
        Predicate("x", lo, hi)


def test_mined_slice_name_and_mask():
    s = MinedSlice((Predicate("x", hi=0.25), Predicate("y", lo=0.75)), 10, 1.0, 0.0, 2.0, 1e-9)
    assert s.name == "x<0.25 & y>=0.75" == str(s)
    params = {"x": torch.tensor([0.1, 0.1, 0.3]), "y": torch.tensor([0.8, 0.5, 0.8])}
    assert s.mask(params).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="no key 'y'"):
        s.mask({"x": params["x"]})


# ---------------------------------------------------------------------------- mining


def test_planted_pair_region_is_found_with_right_predicates():
    n = 4000
    params, g = uniform_params(n, "xyz", seed=0)
    region = (params["x"] < 0.25) & (params["y"] >= 0.75)
    loss = noise(n, g) + region.float()
    found = find_slices(params, loss)
    assert found, "planted region not found"
    best = found[0]
    assert [p.param for p in best.predicates] == ["x", "y"]
    px, py = best.predicates
    assert px.lo == -INF and abs(px.hi - 0.25) < 0.03
    assert py.hi == INF and abs(py.lo - 0.75) < 0.03
    assert re.fullmatch(r"x<0\.2[4-6]\d? & y>=0\.7[4-6]\d?", best.name), best.name
    assert best.mean_loss > best.rest_loss + 0.8
    # its parents x<.. and y>=.. are only bad because of the pair: not reported on their own
    assert all(len(s.predicates) == 2 or s.predicates[0] not in best.predicates for s in found[1:])
    # the region mask matches the plant closely
    jaccard = float((best.mask(params) & region).sum() / (best.mask(params) | region).sum())
    assert jaccard > 0.9


def test_pure_noise_returns_nothing():
    n = 4000
    params, g = uniform_params(n, "abcdef", seed=1)
    loss = torch.randn(n, generator=g)
    assert find_slices(params, loss) == []


def test_single_parameter_region_is_a_single_predicate_not_a_redundant_pair():
    n = 4000
    params, g = uniform_params(n, "xyz", seed=2)
    loss = noise(n, g) + (params["x"] < 0.25).float()
    found = find_slices(params, loss, top_k=5)
    assert found
    assert len(found[0].predicates) == 1
    (p,) = found[0].predicates
    assert p.param == "x" and p.lo == -INF and abs(p.hi - 0.25) < 0.03
    assert not any(p in s.predicates for s in found if len(s.predicates) == 2)
    # even when the parent is already in the mixture, its refinements are not mined
    again = find_slices(params, loss, top_k=5, exclude=[found[0].name])
    assert not any(p in s.predicates for s in again)


def test_discrete_parameter_gets_readable_edges():
    n = 4000
    g = torch.Generator().manual_seed(3)
    params = {"motion_blur": torch.randint(0, 5, (n,), generator=g), "light": torch.rand(n, generator=g)}
    loss = noise(n, g) + (params["motion_blur"] >= 3).float()
    found = find_slices(params, loss)
    assert found[0].name == "motion_blur>=3"
    assert found[0].support == int((params["motion_blur"] >= 3).sum())


def test_min_support_is_respected():
    n = 4000
    params, g = uniform_params(n, "xyz", seed=4)
    region = (params["x"] < 0.25) & (params["y"] >= 0.75)  # about 250 samples
    loss = noise(n, g) + region.float()
    support = int(find_slices(params, loss)[0].support)
    found = find_slices(params, loss, min_support=support + 1)
    assert found, "the single-predicate parents are large enough to be found"
    assert all(s.support > support for s in found)
    assert all(n - s.support >= support + 1 for s in found)
    assert all(len(s.predicates) == 1 for s in found)  # the planted pair is too small now


def test_exclude_drops_known_slices():
    n = 4000
    params, g = uniform_params(n, "xyz", seed=0)
    loss = noise(n, g) + ((params["x"] < 0.25) & (params["y"] >= 0.75)).float() + (params["z"] >= 0.75).float()
    found = find_slices(params, loss)
    names = [s.name for s in found]
    assert len(names) >= 2
    rest = find_slices(params, loss, exclude=[names[0], found[1]])
    assert names[0] not in [s.name for s in rest] and names[1] not in [s.name for s in rest]


def test_statistics_match_scipy_reference():
    n = 3000
    params, g = uniform_params(n, "xyz", seed=5)
    loss = noise(n, g, sd=1.0) + 0.8 * (params["z"] >= 0.5).float() + 0.6 * (params["x"] < 0.25).float()
    found = find_slices(params, loss, top_k=5)
    assert found
    values = loss.double().numpy()
    for s in found:
        inside = s.mask(params).numpy()
        a, b = values[inside], values[~inside]
        assert s.support == inside.sum()
        ref = sps.ttest_ind(a, b, equal_var=False, alternative="greater")
        assert s.p_value == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)
        pooled = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
        assert s.effect_size == pytest.approx((a.mean() - b.mean()) / pooled, rel=1e-9)
        assert s.mean_loss == pytest.approx(a.mean(), rel=1e-9) and s.rest_loss == pytest.approx(b.mean(), rel=1e-9)
    scores = [s.score for s in found]
    assert scores == sorted(scores, reverse=True)


def test_max_order_one_gives_single_predicates_and_top_k_limits():
    n = 4000
    params, g = uniform_params(n, "xyz", seed=0)
    loss = noise(n, g) + ((params["x"] < 0.25) & (params["y"] >= 0.75)).float()
    singles = find_slices(params, loss, max_order=1)
    assert singles and all(len(s.predicates) == 1 for s in singles)
    assert {s.predicates[0].param for s in singles} <= {"x", "y"}  # the halves of the planted pair
    two = loss + (params["z"] >= 0.75).float()  # two planted regions: top_k=1 keeps the best one only
    both = find_slices(params, two)
    assert len(both) >= 2 and find_slices(params, two, top_k=1) == both[:1]
    assert find_slices(params, loss, top_k=0) == []


def test_constant_and_nan_parameters_are_handled():
    n = 2000
    params, g = uniform_params(n, "x", seed=6)
    params["const"] = torch.full((n,), 2.0)
    params["x"][:50] = float("nan")
    loss = noise(n, g) + (params["x"] >= 0.75).float()
    found = find_slices(params, loss)
    assert found[0].name.startswith("x>=0.7")
    assert all("const" not in s.name for s in found)


def test_inputs_are_not_modified():
    n = 1000
    params, g = uniform_params(n, "xy", seed=7)
    loss = noise(n, g)
    versions = [t._version for t in params.values()] + [loss._version]
    find_slices(params, loss)
    assert [t._version for t in params.values()] + [loss._version] == versions


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_bins=1), "n_bins"),
        (dict(max_order=3), "max_order must be 1 or 2"),
        (dict(min_support=1), "min_support"),
        (dict(alpha=0.0), "alpha"),
        (dict(top_k=-1), "top_k"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    params = {"x": torch.rand(100)}
    with pytest.raises(ValueError, match=match):
        find_slices(params, torch.rand(100), **kwargs)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"params\['x'\] must have shape \(100,\)"):
        find_slices({"x": torch.rand(99)}, torch.rand(100))
    with pytest.raises(ValueError, match="finite"):
        find_slices({"x": torch.rand(100)}, torch.full((100,), float("nan")))


def test_finds_the_planted_pair_among_20_params_on_20k_samples():
    """The scale of a real mining round (its time is a benchmark figure: ``benchmarks/bench_mining.py``)."""
    n = 20_000
    params, g = uniform_params(n, [f"p{i}" for i in range(20)], seed=8)
    loss = torch.randn(n, generator=g) + ((params["p3"] < 0.25) & (params["p7"] >= 0.75)).float()
    found = find_slices(params, loss)
    assert re.fullmatch(r"p3<0\.2[4-6]\d* & p7>=0\.7[4-6]\d*", found[0].name), found[0].name


def test_docstring_examples_run():
    result = doctest.testmod(mining, raise_on_error=False)
    assert result.attempted >= 8 and result.failed == 0, result  # the examples exist and pass
