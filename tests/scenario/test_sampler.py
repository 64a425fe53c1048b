"""ScenarioSampler: determinism, seeds, slices, recorded parameters and placement geometry (no rendering)."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch

from synth_torch.scenario.config import PARAM_NAMES, load_scenario
from synth_torch.scenario.sampler import KIND_OBJECT, KIND_OCCLUDER, ScenarioSampler, SceneSpec

RES = (48, 64)
CORNERS = torch.tensor([[(k & 1) - 0.5, ((k >> 1) & 1) - 0.5, ((k >> 2) & 1) - 0.5] for k in range(8)])


@pytest.fixture(scope="module")
def tabletop():
    return load_scenario("tabletop")


def draw(scenario, seed, index, slice_id) -> SceneSpec:
    sampler = ScenarioSampler(scenario, seed)
    overrides = [s.overrides for s in scenario.slices.values()]
    index, slice_id = torch.as_tensor(index), torch.as_tensor(slice_id)
    slice_id = slice_id.expand_as(index) if slice_id.ndim == 0 else slice_id
    return sampler.sample(index, slice_id, overrides, RES)


def assert_rows_equal(a: SceneSpec, rows_a, b: SceneSpec, rows_b) -> None:
    for f in fields(SceneSpec):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, dict):
            assert va.keys() == vb.keys()
            for k in va:
                assert torch.equal(va[k][rows_a], vb[k][rows_b]), f"params[{k!r}]"
        elif torch.is_tensor(va):
            assert torch.equal(va[rows_a], vb[rows_b]), f.name
        else:
            assert va == vb, f.name


def test_same_seed_index_slice_is_identical(tabletop):
    a = draw(tabletop, 3, torch.arange(6), torch.tensor([0, 1, 2, 3, 4, 5]))
    b = draw(tabletop, 3, torch.arange(6), torch.tensor([0, 1, 2, 3, 4, 5]))
    assert_rows_equal(a, slice(None), b, slice(None))


def test_sample_does_not_depend_on_its_batch(tabletop):
    """Sample i has the same spec alone, in a different order, or among other samples."""
    full = draw(tabletop, 0, torch.arange(8), 0)
    sub = draw(tabletop, 0, torch.tensor([5, 2]), 0)
    assert_rows_equal(full, [5, 2], sub, [0, 1])
    big_index = torch.tensor([2**40 + 7, 5])  # 64-bit sample indices are valid too
    assert_rows_equal(draw(tabletop, 0, big_index, 0), [1], full, [5])


def test_different_seeds_and_indices_differ(tabletop):
    a = draw(tabletop, 0, torch.arange(16), 0)
    b = draw(tabletop, 1, torch.arange(16), 0)
    for name in ("camera.distance", "light.intensity", "camera.focal_mm"):
        assert not torch.equal(a.params[name], b.params[name]), name
        assert (a.params[name] != b.params[name]).float().mean() > 0.9
        assert a.params[name].unique().numel() > 12  # indices differ from each other too
    assert not torch.equal(a.slot_translation, b.slot_translation)
    assert (a.keys != b.keys).all()


def _support(scenario, slice_name, param):
    return (scenario.slices[slice_name].overrides.get(param) or scenario.parameters[param]).support


def test_slice_changes_the_draws(tabletop):
    low = tabletop.slice_names.index("low_light")
    base = draw(tabletop, 0, torch.arange(256), 0)
    dark = draw(tabletop, 0, torch.arange(256), low)
    overridden = sorted(tabletop.slices["low_light"].overrides)
    assert {"light.intensity", "light.ambient"} <= set(overridden)
    for name in overridden:
        lo, hi = _support(tabletop, "low_light", name)
        base_lo, base_hi = tabletop.parameters[name].support
        assert (lo, hi) != (base_lo, base_hi), name
        assert (dark.params[name] >= lo).all() and (dark.params[name] <= hi).all(), name
        assert (base.params[name] >= base_lo).all() and (base.params[name] <= base_hi).all(), name
        # and the slice's range is actually used, not a constant
        assert float(dark.params[name].max() - dark.params[name].min()) > 0.8 * (hi - lo), name
    # Parameters the slice leaves alone keep the base distribution.
    lo, hi = tabletop.parameters["camera.distance"].support
    assert (dark.params["camera.distance"] >= lo).all() and (dark.params["camera.distance"] <= hi).all()


def test_slice_overrides_of_object_counts(tabletop):
    occ = tabletop.slice_names.index("heavy_occlusion")
    base = draw(tabletop, 0, torch.arange(128), 0)
    heavy = draw(tabletop, 0, torch.arange(128), occ)
    n_occ = lambda s: (s.slot_valid & (s.slot_kind == KIND_OCCLUDER)).sum(1)  # noqa: E731
    base_lo, base_hi = _support(tabletop, "base", "objects.occluders")
    assert ((n_occ(base) >= round(base_lo)) & (n_occ(base) <= round(base_hi))).all()
    lo, hi = _support(tabletop, "heavy_occlusion", "objects.occluders")
    assert hi > base_hi
    assert ((n_occ(heavy) >= round(lo)) & (n_occ(heavy) <= round(hi))).all()
    assert n_occ(heavy).float().mean() > n_occ(base).float().mean()
    torch.testing.assert_close(n_occ(heavy).float(), torch.round(heavy.params["objects.occluders"]))
    lo, hi = _support(tabletop, "heavy_occlusion", "objects.spread")
    spread = heavy.params["objects.spread"]
    assert (spread >= lo).all() and (spread <= hi).all()


def test_every_parameter_is_recorded_within_its_support(tabletop):
    for sid, name in enumerate(tabletop.slice_names):
        spec = draw(tabletop, 0, torch.arange(64), sid)
        assert set(PARAM_NAMES) <= set(spec.params)
        overrides = tabletop.slices[name].overrides
        for p in PARAM_NAMES:
            v = spec.params[p]
            assert v.shape == (64,) and v.dtype == torch.float32 and torch.isfinite(v).all(), p
            lo, hi = (overrides.get(p) or tabletop.parameters[p]).support
            assert (v >= lo - 1e-5).all() and (v <= hi + 1e-5).all(), (name, p, lo, hi, v.min(), v.max())


def test_counts_match_recorded_parameters(tabletop):
    spec = draw(tabletop, 0, torch.arange(64), 0)
    n_obj = (spec.slot_valid & (spec.slot_kind == KIND_OBJECT)).sum(1)
    assert torch.equal(n_obj, torch.round(spec.params["objects.count"]).long())
    lo, hi = tabletop.parameters["objects.count"].support
    assert ((n_obj >= round(lo)) & (n_obj <= round(hi))).all()
    labels = spec.slot_label[spec.slot_valid & (spec.slot_kind == KIND_OBJECT)]
    assert ((labels >= 1) & (labels <= len(tabletop.categories))).all()
    assert (spec.slot_label[~(spec.slot_valid & (spec.slot_kind == KIND_OBJECT))] == 0).all()


def test_camera_matches_recorded_parameters(tabletop):
    """K and the pose follow from the recorded focal length, sensor size, distance and angles."""
    spec = draw(tabletop, 0, torch.arange(32), 0)
    p = spec.params
    W = RES[1]
    torch.testing.assert_close(spec.K[:, 0, 0], p["camera.focal_mm"] * W / p["camera.sensor_mm"])
    torch.testing.assert_close(spec.K[:, 1, 1], spec.K[:, 0, 0])
    torch.testing.assert_close(spec.K[:, 0, 2], W / 2 + p["camera.principal_jitter"] * W)
    R, t = spec.world_to_cam[:, :3, :3], spec.world_to_cam[:, :3, 3]
    eye = -(R.transpose(1, 2) @ t[..., None])[..., 0]
    target = torch.tensor([0.0, 0.0, 0.03])  # the orbit centre just above the ground
    rel = eye - target
    torch.testing.assert_close(rel.norm(dim=-1), p["camera.distance"], atol=1e-5, rtol=1e-5)
    elevation = torch.rad2deg(torch.asin(rel[:, 2] / rel.norm(dim=-1)))
    torch.testing.assert_close(elevation, p["camera.elevation_deg"], atol=1e-3, rtol=0)


def test_objects_rest_on_the_ground(tabletop):
    spec = draw(tabletop, 0, torch.arange(64), 0)
    world = torch.einsum("bsij,bskj->bski", spec.slot_rotation, CORNERS * spec.slot_scale[:, :, None]) \
        + spec.slot_translation[:, :, None]
    on_ground = spec.slot_valid & (spec.slot_kind != KIND_OCCLUDER)
    lowest = world[..., 2].amin(-1)[on_ground]
    torch.testing.assert_close(lowest, torch.zeros_like(lowest), atol=1e-6, rtol=0)
    # Upright objects: the template z axis stays vertical.
    torch.testing.assert_close(spec.slot_rotation[on_ground][:, :, 2], torch.tensor([0.0, 0.0, 1.0]).expand(
        int(on_ground.sum()), 3), atol=1e-6, rtol=0)


def _footprints_overlap(P: torch.Tensor, Q: torch.Tensor, axes) -> bool:
    """Separating-axis test of two convex 2D polygons given their candidate axes."""
    return not any(float((P @ a).max()) < float((Q @ a).min()) or float((Q @ a).max()) < float((P @ a).min())
                   for a in axes)


def test_box_objects_never_intersect(tabletop):
    """The sampler claims objects never intersect: upright box-shaped objects resting on the ground intersect
    exactly when their footprints (rotated rectangles) overlap."""
    spec = draw(tabletop, 0, torch.arange(300), 0)
    box = spec.shapes.index("box")
    overlaps = []
    for b in range(spec.batch_size):
        idx = (spec.slot_valid[b] & (spec.slot_shape[b] == box) & (spec.slot_kind[b] == KIND_OBJECT)).nonzero()[:, 0]
        for ii in range(len(idx)):
            for jj in range(ii + 1, len(idx)):
                i, j = int(idx[ii]), int(idx[jj])
                P = (CORNERS * spec.slot_scale[b, i] @ spec.slot_rotation[b, i].T + spec.slot_translation[b, i])[:, :2]
                Q = (CORNERS * spec.slot_scale[b, j] @ spec.slot_rotation[b, j].T + spec.slot_translation[b, j])[:, :2]
                axes = [spec.slot_rotation[b, i][:2, 0], spec.slot_rotation[b, i][:2, 1],
                        spec.slot_rotation[b, j][:2, 0], spec.slot_rotation[b, j][:2, 1]]
                if _footprints_overlap(P, Q, axes):
                    overlaps.append((b, i, j))
    assert not overlaps, overlaps[:5]


def test_round_objects_never_intersect(tabletop):
    """Spheres, cans, capsules and rings have disc footprints of radius <= half their size: no overlaps."""
    spec = draw(tabletop, 0, torch.arange(200), 0)
    round_shapes = [spec.shapes.index(s) for s in ("sphere", "cylinder", "capsule", "torus", "cone")]
    for b in range(spec.batch_size):
        keep = spec.slot_valid[b] & (spec.slot_kind[b] != KIND_OCCLUDER)
        keep &= torch.isin(spec.slot_shape[b], torch.tensor(round_shapes))
        xy = spec.slot_translation[b, keep, :2]
        r = spec.slot_scale[b, keep, :2].amax(-1) / 2
        d = torch.cdist(xy, xy) - (r[:, None] + r[None]) + 1e-6
        d.fill_diagonal_(1.0)
        assert (d >= 0).all(), b


def test_defects_scenario_slots():
    sc = load_scenario("defects")
    spec = draw(sc, 0, torch.arange(64), 0)
    assert spec.slot_valid.shape[1] == 0
    present = spec.defect_type >= 0
    assert torch.equal(present.sum(1), torch.round(spec.params["defects.count"]).long())
    # Defects sit on the tile (|x|, |y| within 0.6 of its half size 0.16 m).
    assert (spec.defect_center[present].abs() <= 0.6 * 0.16 + 1e-6).all()
    assert (spec.defect_size[present] > 0).all()
    kinds = ("blowhole", "crack", "spot", "fray", "break", "uneven")
    names = [sc.defect_types[int(t)].kind for t in spec.defect_type[present]]
    assert [kinds[int(k)] for k in spec.defect_kind[present]] == names


def test_sampler_on_a_scenario_without_objects_or_defects_slots():
    sc = load_scenario({"categories": [{"name": "cube", "shape": "box"}], "objects": {"count": 1}})
    spec = draw(sc, 0, torch.arange(4), 0)
    assert spec.slot_valid.shape == (4, 1) and spec.slot_valid.all()
    assert spec.defect_type.shape == (4, 0)
    assert math.isclose(float(spec.params["objects.count"][0]), 1.0)
