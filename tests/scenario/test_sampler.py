"""ScenarioSampler: determinism, seeds, slices, recorded parameters and placement geometry (no rendering)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from synth_torch.scenario.config import load_scenario
from synth_torch.scenario.distributions import ConfigError
from synth_torch.scenario.sampler import ScenarioSampler
from synth_torch.spec import params as registry
from synth_torch.spec.constants import SlotKind
from synth_torch.spec.params import PARAM_NAMES
from synth_torch.spec.random import Streams, sample_keys, uniform
from synth_torch.spec.types import SceneSpec, tree_map

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


def _leaves(spec: SceneSpec) -> list[torch.Tensor]:
    out = []
    tree_map(spec, lambda t: out.append(t) or t)
    return out


def assert_rows_equal(a: SceneSpec, rows_a, b: SceneSpec, rows_b) -> None:
    assert (a.shapes, a.surface) == (b.shapes, b.surface) and a.params.keys() == b.params.keys()
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb) > 30
    for k, (va, vb) in enumerate(zip(la, lb)):
        assert torch.equal(va[rows_a], vb[rows_b]), k


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
    assert not torch.equal(a.objects.translation, b.objects.translation)
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
    n_occ = lambda s: (s.objects.valid & (s.objects.kind == SlotKind.OCCLUDER)).sum(1)  # noqa: E731
    base_lo, base_hi = _support(tabletop, "base", "objects.occluders")
    assert ((n_occ(base) >= round(base_lo)) & (n_occ(base) <= round(base_hi))).all()
    lo, hi = _support(tabletop, "heavy_occlusion", "objects.occluders")
    assert hi > base_hi
    assert ((n_occ(heavy) >= round(lo)) & (n_occ(heavy) <= round(hi))).all()
    assert n_occ(heavy).float().mean() > n_occ(base).float().mean()
    assert torch.equal(n_occ(heavy).float(), heavy.params["objects.occluders"])
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
    n_obj = (spec.objects.valid & (spec.objects.kind == SlotKind.OBJECT)).sum(1)
    assert torch.equal(n_obj.float(), spec.params["objects.count"])
    lo, hi = tabletop.parameters["objects.count"].support
    assert ((n_obj >= round(lo)) & (n_obj <= round(hi))).all()
    labels = spec.objects.label[spec.objects.valid & (spec.objects.kind == SlotKind.OBJECT)]
    assert ((labels >= 1) & (labels <= len(tabletop.categories))).all()
    assert (spec.objects.label[~(spec.objects.valid & (spec.objects.kind == SlotKind.OBJECT))] == 0).all()


def test_camera_matches_recorded_parameters(tabletop):
    """K and the pose follow from the recorded focal length, sensor size, distance and angles."""
    spec = draw(tabletop, 0, torch.arange(32), 0)
    p = spec.params
    W = RES[1]
    torch.testing.assert_close(spec.camera.K[:, 0, 0], p["camera.focal_mm"] * W / p["camera.sensor_mm"])
    torch.testing.assert_close(spec.camera.K[:, 1, 1], spec.camera.K[:, 0, 0])
    torch.testing.assert_close(spec.camera.K[:, 0, 2], W / 2 + p["camera.principal_jitter"] * W)
    R, t = spec.camera.world_to_cam[:, :3, :3], spec.camera.world_to_cam[:, :3, 3]
    eye = -(R.transpose(1, 2) @ t[..., None])[..., 0]
    target = torch.tensor([0.0, 0.0, 0.03])  # the orbit centre just above the ground
    rel = eye - target
    torch.testing.assert_close(rel.norm(dim=-1), p["camera.distance"], atol=1e-5, rtol=1e-5)
    elevation = torch.rad2deg(torch.asin(rel[:, 2] / rel.norm(dim=-1)))
    torch.testing.assert_close(elevation, p["camera.elevation_deg"], atol=1e-3, rtol=0)


def test_objects_rest_on_the_ground(tabletop):
    spec = draw(tabletop, 0, torch.arange(64), 0)
    world = torch.einsum("bsij,bskj->bski", spec.objects.rotation, CORNERS * spec.objects.scale[:, :, None]) \
        + spec.objects.translation[:, :, None]
    on_ground = spec.objects.valid & (spec.objects.kind != SlotKind.OCCLUDER)
    lowest = world[..., 2].amin(-1)[on_ground]
    torch.testing.assert_close(lowest, torch.zeros_like(lowest), atol=1e-6, rtol=0)
    # Upright objects: the template z axis stays vertical.
    torch.testing.assert_close(spec.objects.rotation[on_ground][:, :, 2], torch.tensor([0.0, 0.0, 1.0]).expand(
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
        idx = (spec.objects.valid[b] & (spec.objects.shape[b] == box) & (spec.objects.kind[b] == SlotKind.OBJECT)).nonzero()[:, 0]
        for ii in range(len(idx)):
            for jj in range(ii + 1, len(idx)):
                i, j = int(idx[ii]), int(idx[jj])
                P = (CORNERS * spec.objects.scale[b, i] @ spec.objects.rotation[b, i].T + spec.objects.translation[b, i])[:, :2]
                Q = (CORNERS * spec.objects.scale[b, j] @ spec.objects.rotation[b, j].T + spec.objects.translation[b, j])[:, :2]
                axes = [spec.objects.rotation[b, i][:2, 0], spec.objects.rotation[b, i][:2, 1],
                        spec.objects.rotation[b, j][:2, 0], spec.objects.rotation[b, j][:2, 1]]
                if _footprints_overlap(P, Q, axes):
                    overlaps.append((b, i, j))
    assert not overlaps, overlaps[:5]


def test_round_objects_never_intersect(tabletop):
    """Spheres, cans, capsules and rings have disc footprints of radius <= half their size: no overlaps."""
    spec = draw(tabletop, 0, torch.arange(200), 0)
    round_shapes = [spec.shapes.index(s) for s in ("sphere", "cylinder", "capsule", "torus", "cone")]
    for b in range(spec.batch_size):
        keep = spec.objects.valid[b] & (spec.objects.kind[b] != SlotKind.OCCLUDER)
        keep &= torch.isin(spec.objects.shape[b], torch.tensor(round_shapes))
        xy = spec.objects.translation[b, keep, :2]
        r = spec.objects.scale[b, keep, :2].amax(-1) / 2
        d = torch.cdist(xy, xy) - (r[:, None] + r[None]) + 1e-6
        d.fill_diagonal_(1.0)
        assert (d >= 0).all(), b


def test_defects_scenario_slots():
    sc = load_scenario("defects")
    spec = draw(sc, 0, torch.arange(256), 0)
    assert spec.objects.valid.shape[1] == 0
    DL = sc.max_labeled_defects
    present = spec.defects.type >= 0
    labeled, decoy = present[:, :DL], present[:, DL:]
    assert torch.equal(labeled.sum(1).float(), spec.params["defects.count"])
    assert torch.equal(decoy.sum(1).float(), spec.params["defects.decoys"])
    types = sc.defect_types
    # Labeled slots hold labeled types with class ids after the (absent) categories; decoy slots hold decoys.
    names = [t.name for t in types if not t.decoy]
    for b, d in labeled.nonzero().tolist():
        t = types[int(spec.defects.type[b, d])]
        assert not t.decoy and int(spec.defects.label[b, d]) == 1 + names.index(t.name)
    for b, d in decoy.nonzero().tolist():
        assert types[int(spec.defects.type[b, DL + d])].decoy and int(spec.defects.label[b, DL + d]) == 0
    assert (spec.defects.label[~present] == 0).all()
    # Centres lie in the visible part of the tile (half side: distance * sensor / (2 focal) for a near
    # top-down view, at most the tile's 0.16 m); edge types sit on a border, along it.
    v = spec.params
    half = (v["camera.distance"] * v["camera.sensor_mm"] / (2 * v["camera.focal_mm"])).clamp(max=0.16)[:, None]
    c = spec.defects.center
    assert (c.abs() <= half[..., None] + 1e-6)[present].all()
    edge = torch.tensor([t.placement == "edge" for t in types])[spec.defects.type.clamp(min=0)] & present
    assert edge.any() and (present & ~edge).any()
    on_border = (c.abs().amax(-1) - half).abs() < 1e-5
    assert on_border[edge].all() and not on_border[present & ~edge].any()
    horizontal = (c[..., 1].abs() - half).abs() < 1e-5  # top/bottom border: axis along x
    angle = spec.defects.angle
    assert torch.allclose(angle[edge & horizontal], torch.tensor(0.0))
    assert torch.allclose(angle[edge & ~horizontal], torch.tensor(math.pi / 2))
    assert (spec.defects.size[present] > 0).all()
    kinds = ("blowhole", "crack", "spot", "fray", "break", "uneven", "stain", "dust", "scratch")
    names = [types[int(t)].kind for t in spec.defects.type[present]]
    assert [kinds[int(k)] for k in spec.defects.kind[present]] == names


def test_decoy_only_scenarios_and_bad_defect_types_are_rejected():
    base = {"objects": {"count": 0}, "defects": {"count": 1}}
    with pytest.raises(ConfigError, match="decoy"):
        load_scenario({**base, "defect_types": [{"name": "s", "kind": "stain", "decoy": True}]})
    with pytest.raises(ConfigError, match=r"defect_types\[0\]\.placement"):
        load_scenario({**base, "defect_types": [{"name": "c", "kind": "crack", "placement": "corner"}]})
    with pytest.raises(ConfigError, match=r"defect_types\[0\]\.decoy"):
        load_scenario({**base, "defect_types": [{"name": "c", "kind": "crack", "decoy": "yes"}]})
    with pytest.raises(ConfigError, match=r"defect_types\[0\]\.contrast"):
        load_scenario({**base, "defect_types": [{"name": "c", "kind": "crack", "contrast": -2}]})
    with pytest.raises(ConfigError, match=r"defect_types\[0\]\.contrast"):
        load_scenario({**base, "defect_types": [{"name": "c", "kind": "crack", "contrast": "dark"}]})


def test_defect_type_contrast_and_near_edge_placement():
    """A type's ``contrast`` scales the sampled contrast (sign included); ``near_edge`` centres lie within a
    fifth of the half side inside a border, at any angle; the default contrast leaves the fingerprint alone."""
    types = [{"name": "hole", "kind": "blowhole", "contrast": 2.0},
             {"name": "band", "kind": "uneven", "contrast": -0.5},
             {"name": "crack", "kind": "crack", "placement": "near_edge"}]
    data = {"surface": "inspection", "objects": {"count": 0}, "defects": {"count": [2, 3], "contrast": [0.2, 0.4]},
            "camera": {"elevation_deg": [88, 89]}, "defect_types": types}
    sc = load_scenario(data)
    spec = draw(sc, 0, torch.arange(512), 0)
    present = spec.defects.type >= 0
    t = spec.defects.type.clamp(min=0)
    base = spec.params["defects.contrast"][:, None].expand_as(t)
    ratio = spec.defects.contrast / base
    hole, band, crack = (present & (t == i) for i in range(3))
    assert hole.any() and band.any() and crack.any()
    assert ((ratio[hole] >= 2 * 0.85 - 1e-5) & (ratio[hole] <= 2 * 1.15 + 1e-5)).all()
    assert ((ratio[band] <= -0.5 * 0.85 + 1e-5) & (ratio[band] >= -0.5 * 1.15 - 1e-5)).all()
    assert ((ratio[crack] >= 0.85 - 1e-5) & (ratio[crack] <= 1.15 + 1e-5)).all()
    v = spec.params
    half = (v["camera.distance"] * v["camera.sensor_mm"] / (2 * v["camera.focal_mm"])).clamp(max=0.16)[:, None]
    reach = spec.defects.center.abs().amax(-1) / half
    assert ((reach >= 0.8 - 1e-5) & (reach <= 1 + 1e-5))[crack].all()
    assert (reach[crack] < 1 - 0.05).any() and (reach[hole] < 0.5).any()
    angle = spec.defects.angle[crack] % math.pi
    assert angle.std() > 0.5  # any direction, not along the border
    plain = load_scenario({**data, "defect_types": [{**d, "contrast": 1.0} for d in types[2:]]})
    assert "contrast" not in plain.to_dict()["defect_types"][0]
    assert plain.fingerprint() == load_scenario({**data, "defect_types": types[2:]}).fingerprint()
    assert sc.to_dict()["defect_types"][1]["contrast"] == -0.5
    assert load_scenario(sc.to_dict()).fingerprint() == sc.fingerprint()


def test_negative_type_contrast_lightens_the_surface():
    """The same sampled defect rendered with type contrast +1 darkens its footprint and with -1 lightens it,
    against the same scene rendered with zero contrast."""
    from dataclasses import replace

    from synth_torch.data import SynthDataset

    def dataset(contrast):
        sc = load_scenario({"surface": "inspection", "objects": {"count": 0}, "antialias": False,
                            "defects": {"count": 1, "decoys": 0, "contrast": 0.6, "size": 1.0},
                            "sensor": {"noise_sigma": 0, "defocus_px": 0, "vignetting": 0},
                            "defect_types": [{"name": "band", "kind": "uneven", "size": [0.3, 0.3],
                                              "contrast": contrast}]})
        return SynthDataset(sc, resolution=48, batch_size=2, seed=1)

    dark_ds, light_ds = dataset(1.0), dataset(-1.0)
    params = dark_ds.sample_params(torch.arange(2))
    zero = torch.zeros_like(params.values["defects.contrast"])
    none = replace(params, values={**params.values, "defects.contrast": zero})
    dark, light, clean = dark_ds.render_params(params), light_ds.render_params(params), dark_ds.render_params(none)
    inside = dark.semantic > 0
    assert inside.any() and torch.equal(inside, light.semantic > 0) and torch.equal(inside, clean.semantic > 0)
    gray = [b.image.mean(1) for b in (dark, light, clean)]
    assert (gray[0][inside] < gray[2][inside] - 1e-3).float().mean() > 0.5
    assert (gray[1][inside] > gray[2][inside] + 1e-3).float().mean() > 0.5


def test_sampler_on_a_scenario_without_objects_or_defects_slots():
    sc = load_scenario({"categories": [{"name": "cube", "shape": "box"}], "objects": {"count": 1}})
    spec = draw(sc, 0, torch.arange(4), 0)
    assert spec.objects.valid.shape == (4, 1) and spec.objects.valid.all()
    assert spec.defects.type.shape == (4, 0)
    assert math.isclose(float(spec.params["objects.count"][0]), 1.0)


def test_integer_parameters_are_integers_with_uniform_end_values(tabletop):
    """objects.count ~ uniform[5, 10] in the YAML: every count 5..10 is equally likely (ends included), and the
    recorded value is the number of filled slots."""
    spec = draw(tabletop, 0, torch.arange(6000), 0)
    counts = spec.params["objects.count"]
    assert torch.equal(counts, counts.round())
    freq = torch.bincount(counts.long(), minlength=11)[5:11].float() / counts.numel()
    assert freq.min() > 1 / 6 - 0.025 and freq.max() < 1 / 6 + 0.025, freq
    assert int(counts.min()) == 5 and int(counts.max()) == 10
    for p in registry.PARAMS:
        if p.integer:
            assert torch.equal(spec.params[p.name], spec.params[p.name].round()), p.name


def test_streams_equal_per_stream_draws():
    keys = sample_keys(11, torch.arange(5))
    d = Streams([("a", ()), ("b", (3,)), ("c", (2, 2)), (12345, (4,))]).draw(keys)
    assert torch.equal(d["a"], uniform(keys, "a"))
    assert torch.equal(d["b"], uniform(keys, "b", (3,)))
    assert torch.equal(d["c"], uniform(keys, "c", (2, 2)))
    assert torch.equal(d[12345], uniform(keys, 12345, (4,)))


def test_build_is_differentiable_in_continuous_values(tabletop):
    sampler = ScenarioSampler(tabletop, 0)
    p = sampler.sample_params(torch.arange(4), torch.zeros(4, dtype=torch.long),
                              [s.overrides for s in tabletop.slices.values()])
    values = {k: v.clone().requires_grad_(k in ("light.intensity", "camera.distance", "objects.spread"))
              for k, v in p.values.items()}
    spec = sampler.build(replace(p, values=values), RES)
    loss = spec.light.intensity.sum() + spec.camera.world_to_cam[:, :3, 3].norm(dim=-1).sum() \
        + spec.objects.translation.norm(dim=-1).sum()
    loss.backward()
    for k in ("light.intensity", "camera.distance", "objects.spread"):
        assert values[k].grad is not None and values[k].grad.abs().sum() > 0, k
