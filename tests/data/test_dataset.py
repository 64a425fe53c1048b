"""SynthDataset: determinism (batch size, workers, regenerate, resume), shared slice weights, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader

from synth_torch import SynthDataset
from synth_torch.data import decode_sample_id, encode_sample_id
from synth_torch.loop.mining import Predicate
from synth_torch.scenario.config import ConfigError

# Small and fast: no shadows, a few objects, two slices that differ visibly (camera distance) plus sensor noise.
SCENE = {
    "name": "small",
    "categories": [{"name": "cube", "shape": "box"}, {"name": "ball", "shape": "sphere"}],
    "objects": {"count": [1, 3]},
    "shadows": False,
    "sensor": {"noise_sigma": [0.0, 0.02], "motion_blur_px": [0.0, 3.0]},
    "slices": {"base": {"weight": 0.5}, "far": {"weight": 0.3, "camera": {"distance": [2.0, 3.0]}},
               "dark": {"weight": 0.2, "light": {"intensity": [0.05, 0.1]}}},
}
RES = 32
LABELS = ("depth", "normals", "instance", "semantic", "valid", "labels", "boxes", "amodal_boxes", "boxes3d_center",
          "boxes3d_corners", "keypoints", "visible_pixels", "visible_fraction", "K", "world_to_cam", "sample_id",
          "slice_id")


def assert_same(a, b, rows_a=slice(None), rows_b=slice(None)):
    """Labels, images and parameters bit-identical."""
    for name in LABELS:
        x, y = getattr(a, name)[rows_a], getattr(b, name)[rows_b]
        assert torch.equal(x, y), f"{name} differs (max abs diff {float((x.double() - y.double()).abs().max())})"
    assert torch.equal(a.image[rows_a], b.image[rows_b])
    for k in a.params:
        assert torch.equal(a.params[k][rows_a], b.params[k][rows_b]), k


def test_sample_does_not_depend_on_batch_size(device):
    kw = dict(resolution=RES, seed=3, device=device)
    two = list(itertools.islice(iter(SynthDataset("tabletop", batch_size=2, **kw)), 2))
    four = next(iter(SynthDataset("tabletop", batch_size=4, **kw)))
    for k, batch in enumerate(two):
        assert_same(batch, four, slice(None), slice(2 * k, 2 * k + 2))
    assert [b.batch_index for b in two] == [0, 1] and four.batch_index == 0


def test_seed_changes_the_stream(device):
    a = SynthDataset(SCENE, batch_size=2, resolution=RES, seed=0, device=device).render_batch(torch.arange(2))
    b = SynthDataset(SCENE, batch_size=2, resolution=RES, seed=1, device=device).render_batch(torch.arange(2))
    assert not torch.equal(a.image, b.image)
    assert torch.equal(decode_sample_id(a.sample_id.cpu())[0], torch.arange(2))
    assert a.image.device.type == a.instance.device.type == device.type


def test_sample_id_encoding():
    index, slice_id = torch.tensor([0, 7, 2**40]), torch.tensor([3, 0, 63])
    ids = encode_sample_id(index, slice_id)
    assert ids.tolist() == [3, 7 * 1024, 2**40 * 1024 + 63]
    back = decode_sample_id(ids)
    assert torch.equal(back[0], index) and torch.equal(back[1], slice_id)


def test_regenerate_reproduces_samples_exactly(device):
    ds = SynthDataset(SCENE, batch_size=4, resolution=RES, seed=2, device=device)
    batch = next(iter(ds))
    again = ds.regenerate(batch.sample_id[[3, 1]])
    assert_same(batch, again, [3, 1], slice(None))
    # Independent of the current weights: the slice travels in the sample id.
    ds.mixture.set(torch.tensor([0.0, 0.0, 1.0]))
    assert_same(batch, ds.regenerate(batch.sample_id), slice(None), slice(None))
    # And of the dataset object: a fresh one with the same scenario and seed gives the same images.
    fresh = SynthDataset(SCENE, batch_size=1, resolution=RES, seed=2, device=device)
    assert_same(batch, fresh.regenerate(batch.sample_id[:1]), slice(0, 1), slice(None))


def test_state_dict_resume_gives_the_same_next_batches(device):
    ds = SynthDataset(SCENE, batch_size=2, resolution=RES, seed=4, device=device)
    it = iter(ds)
    for _ in range(2):
        ds.cursor.consume(next(it).batch_index)
    ds.mixture.set(torch.tensor([0.2, 0.0, 0.8]))
    state = ds.state_dict()
    expected = [next(it), next(it)]
    resumed = SynthDataset(SCENE, batch_size=2, resolution=RES, seed=4, device=device)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.mixture.get(), torch.tensor([0.2, 0.0, 0.8]))
    got = list(itertools.islice(iter(resumed), 2))
    assert [b.batch_index for b in got] == [2, 3]
    for a, b in zip(expected, got):
        assert_same(a, b)
    assert (torch.cat([b.slice_id for b in got]) != 1).all()


def test_state_dict_refuses_another_stream():
    state = SynthDataset(SCENE, batch_size=2, resolution=RES, seed=4).state_dict()
    with pytest.raises(ValueError, match="seed"):
        SynthDataset(SCENE, batch_size=2, resolution=RES, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="different scenario"):
        SynthDataset("tabletop", batch_size=2, resolution=RES, seed=4).load_state_dict(state)


def test_weights_choose_the_slices():
    ds = SynthDataset(SCENE, batch_size=8, resolution=RES)
    index = torch.arange(512)
    default = ds.slice_ids(index)
    counts = torch.bincount(default, minlength=3).float() / 512
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.2]), atol=0.07, rtol=0)
    ds.mixture.set(torch.tensor([0.0, 1.0, 0.0]))
    assert (ds.slice_ids(index) == 1).all()
    far = ds.render_batch(torch.arange(2))
    assert (far.params["camera.distance"] >= 2.0).all()
    assert far.slice_names == ("base", "far", "dark")


def test_drop_hidden_keeps_masks(device):
    batch = SynthDataset(SCENE, batch_size=4, resolution=RES, device=device).render_batch(torch.arange(4))
    dropped = batch.drop_hidden(min_visible_pixels=5)
    assert torch.equal(dropped.valid, batch.valid & (batch.visible_pixels >= 5))
    assert torch.equal(dropped.instance, batch.instance)


def _loader(ds, workers, **kw):
    # Spawned workers: numba's GNU-OpenMP threading layer aborts forked children once the parent has rendered.
    ctx = {"multiprocessing_context": "spawn"} if workers else {}
    return DataLoader(ds, batch_size=None, num_workers=workers, **ctx, **kw)


@pytest.mark.slow
def test_workers_same_samples_and_shared_weights():
    """Two worker processes yield the same batches as the main process, without repeats, and they see
    slice weights that the main process sets while they run (shared memory)."""
    ref = list(itertools.islice(iter(SynthDataset(SCENE, batch_size=2, resolution=RES, seed=7)), 4))
    ds = SynthDataset(SCENE, batch_size=2, resolution=RES, seed=7)
    loader = iter(_loader(ds, 2, prefetch_factor=2))
    got = [next(loader) for _ in range(4)]
    assert sorted(b.batch_index for b in got) == [0, 1, 2, 3]
    for b in got:
        assert_same(b, ref[b.batch_index])
    ids = torch.cat([b.sample_id for b in got])
    assert ids.unique().numel() == ids.numel()
    # Worker w produces batches k with k % 2 == w: the two workers' sets are disjoint and interleave.
    assert {b.batch_index % 2 for b in got[0::2]} == {0} and {b.batch_index % 2 for b in got[1::2]} == {1}

    ds.mixture.set(torch.tensor([0.0, 0.0, 1.0]))  # after the workers started
    later = [next(loader) for _ in range(8)]
    # At most num_workers * prefetch_factor batches were requested before the change.
    for b in later[4:]:
        assert (b.slice_id == 2).all(), b.slice_id
        assert (b.params["light.intensity"] <= 0.1).all()
    # A slice added now (a mined one) reaches the running workers with its name: names live in shared memory.
    ds.mixture.add("east", [Predicate("camera.azimuth_deg", 60.0, 120.0)], 0.999)
    newest = [next(loader) for _ in range(8)][4:]
    for b in newest:
        assert b.slice_names == ("base", "far", "dark", "east") and b.mixture_version == 2
        east = b.params["camera.azimuth_deg"][b.slice_id == 3]
        assert len(east) and ((east >= 60) & (east < 120)).all()
    del loader


def test_forked_workers_after_rendering_in_the_parent():
    """numba's OpenMP layer would abort forked workers once the parent has rendered; the kernels use the
    fork-safe work-queue layer."""
    ds = SynthDataset(SCENE, batch_size=2, resolution=RES, seed=5)
    first = ds.render_batch(torch.arange(2))  # the parent has now used the parallel rasterizer
    got = list(itertools.islice(DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork",
                                           timeout=120), 3))
    assert [b.batch_index for b in got] == [0, 1, 2]  # worker 0, worker 1, worker 0 again
    assert_same(got[0], first)
    for b in got[1:]:
        assert_same(b, ds.render_batch(torch.arange(2 * b.batch_index, 2 * b.batch_index + 2)))


@pytest.mark.parametrize("workers", [0, 2])
def test_every_epoch_starts_at_the_cursor_with_and_without_workers(workers):
    """Iteration means the same in the main process and with workers: an epoch starts at the cursor, which only
    the consumer moves, so an unconsumed epoch is repeated and a consumed one is continued."""
    ds = SynthDataset(SCENE, batch_size=1, resolution=RES, length=2)
    loader = _loader(ds, workers, persistent_workers=workers > 0) if workers else ds
    epochs = [[b.batch_index for b in itertools.islice(iter(loader), 4)] for _ in range(2)]  # islice: no endless loop
    assert epochs == [[0, 1], [0, 1]] and len(ds) == 2
    for b in iter(loader):
        ds.cursor.consume(b.batch_index)
    assert ds.cursor.next_batch == 2
    assert [b.batch_index for b in iter(loader)] == [2, 3]


def test_a_plain_dataloader_explains_batch_size_none():
    ds = SynthDataset(SCENE, batch_size=2, resolution=RES)
    with pytest.raises(TypeError, match="batch_size=None"):
        next(iter(DataLoader(ds)))


def test_mixture_by_name_and_scheduled_changes():
    """Weights by slice name; a change scheduled from batch k leaves earlier batches as they were, whenever they
    are rendered; every batch records the mixture version it was drawn with."""
    ds = SynthDataset(SCENE, batch_size=4, resolution=RES, seed=3)
    mix = ds.mixture
    assert mix.as_dict() == pytest.approx({"base": 0.5, "far": 0.3, "dark": 0.2})
    mix.set({"dark": 0.6})
    assert mix["dark"] == pytest.approx(0.6) and mix["base"] == pytest.approx(0.25) and mix.version == 1
    with pytest.raises(KeyError, match="unknown slice"):
        mix.set({"nope": 0.1})
    before = [ds.render_batch(torch.arange(4 * k, 4 * k + 4), batch_index=k) for k in (3, 5)]
    mix.set({"far": 1.0}, from_batch=5)
    after = [ds.render_batch(torch.arange(4 * k, 4 * k + 4), batch_index=k) for k in (3, 5)]
    assert_same(before[0], after[0]) and after[0].mixture_version == 1
    assert (after[1].slice_id == 1).all() and after[1].mixture_version == 2
    resumed = SynthDataset(SCENE, batch_size=4, resolution=RES, seed=3)
    resumed.load_state_dict(ds.state_dict())
    for k, ref in zip((3, 5), after):
        assert_same(resumed.render_batch(torch.arange(4 * k, 4 * k + 4), batch_index=k), ref)


def test_sample_params_are_what_render_batch_renders():
    """Sampling and applying are separate: ``render_params(sample_params(...))`` is ``render_batch(...)``, with the
    slices drawn under the mixture in force for the batch index."""
    ds = SynthDataset(SCENE, batch_size=4, resolution=RES, seed=5)
    ds.mixture.set({"dark": 1.0}, from_batch=2)
    for k in (1, 2):
        index = torch.arange(4 * k, 4 * k + 4)
        params = ds.sample_params(index, batch_index=k)
        assert (params.slice_id == 2).all() == (k == 2)
        batch = ds.render_params(params, ds.mixture.snapshot(k))
        batch.batch_index = k
        assert_same(batch, ds.render_batch(index, batch_index=k))
    given = ds.sample_params(torch.arange(3), torch.tensor([1, 1, 0]))
    assert given.slice_id.tolist() == [1, 1, 0] and (given.values["camera.distance"][:2] >= 2.0).all()
    with pytest.raises(ValueError, match="slice ids must lie in"):
        ds.sample_params(torch.arange(2), torch.tensor([0, 3]))


@pytest.mark.slow
def test_finite_length_with_workers_yields_length_batches():
    ds = SynthDataset(SCENE, batch_size=1, resolution=RES, length=3)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="spawn", timeout=300)
    got = list(loader)
    assert len(got) == len(loader) == 3
    assert sorted(b.batch_index for b in got) == [0, 1, 2]


def test_non_finite_values_name_the_parameter_and_the_image():
    """Values edited after sampling (a hard-example search) are checked when applied; a camera built by hand is
    checked when its spec is made."""
    from dataclasses import replace

    ds = SynthDataset(SCENE, batch_size=2, resolution=RES)
    index = torch.arange(2)
    for name, bad in (("camera.focal_mm", float("nan")), ("camera.distance", float("inf")),
                      ("material.value", float("nan"))):
        params = ds.sample_params(index)
        params.values[name][1] = bad
        with pytest.raises(ConfigError, match=rf"{name} holds NaN or infinite values \(image\(s\) \[1\]\)"):
            ds.render_params(params)
    spec = ds.sampler.build(ds.sample_params(index), ds.resolution)
    K = spec.camera.K.clone()
    K[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"spec.camera.K contains NaN or infinite values \(image\(s\) \[0\]\)"):
        replace(spec.camera, K=K)


def test_flags_and_counts_must_have_their_type():
    """"false" would be truthy and 2.5 would be truncated: both are refused, naming the argument."""
    with pytest.raises(ConfigError, match="sensor: expected true or false, got 'false'"):
        SynthDataset(SCENE, sensor="false")
    with pytest.raises(ConfigError, match="batch_size: expected an integer, got 2.5"):
        SynthDataset(SCENE, batch_size=2.5)
    with pytest.raises(ConfigError, match="length: expected an integer or null, got '3'"):
        SynthDataset(SCENE, length="3")
    with pytest.raises(ConfigError, match="seed: expected an integer, got True"):
        SynthDataset(SCENE, seed=True)
    assert SynthDataset(SCENE, batch_size=__import__("numpy").int64(3), resolution=(32, 40)).batch_size == 3


def test_bad_arguments():
    with pytest.raises(ConfigError, match="batch_size"):
        SynthDataset(SCENE, batch_size=0)
    with pytest.raises(ConfigError, match="resolution"):
        SynthDataset(SCENE, resolution=4)
    with pytest.raises(ConfigError, match="resolution"):
        SynthDataset(SCENE, resolution=(32, 32, 3))
    with pytest.raises(ConfigError, match="length"):
        SynthDataset(SCENE, length=0)
    with pytest.raises(ConfigError, match="neither a built-in"):
        SynthDataset("no_such_scenario")
    with pytest.raises(ValueError, match="backend"):
        SynthDataset(SCENE, backend="opengl").render_batch(torch.arange(1))
    ds = SynthDataset(SCENE, batch_size=2, resolution=RES)
    with pytest.raises(TypeError, match="infinite"):
        len(ds)
    with pytest.raises(ValueError, match="slice ids"):
        ds.render_batch(torch.arange(2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="expected 3 slice weights"):
        ds.mixture.set(torch.ones(2))
    with pytest.raises(ValueError, match="non-negative"):
        ds.mixture.set(torch.tensor([1.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="not all zero"):
        ds.mixture.set(torch.zeros(3))
