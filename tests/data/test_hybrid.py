"""Hybrid schedules (real images per step, budgets, re-warm) and the hybrid stream (draws, ranks, flips,
the real train split only). Real images come from the generated ``fake_tiles`` folder."""

from __future__ import annotations

import math

import pytest
import torch

from synth_torch.data.batch import Batch
from synth_torch.data.dataset import SynthDataset
from synth_torch.data.hybrid import HybridBatch, HybridSchedule, HybridStream
from synth_torch.data.real import MagneticTile, RealBatch
from synth_torch.scenario.config import ConfigError
from synth_torch.spec.random import stable_hash

B = 8


def counts(schedule: HybridSchedule, steps: int, batch_size: int = B) -> list[int]:
    return [schedule.real_count(s, batch_size) for s in range(steps)]


def test_baselines_and_pretrain_finetune():
    assert counts(HybridSchedule("synthetic_only"), 50) == [0] * 50
    assert counts(HybridSchedule("real_only"), 50) == [B] * 50
    assert counts(HybridSchedule("pretrain_finetune", switch_step=7), 12) == [0] * 7 + [B] * 5
    assert int(HybridSchedule("pretrain_finetune", switch_step=7).real_images(12, B)) == 5 * B


@pytest.mark.parametrize("fraction", [0.25, 0.3, 1 / 3, 0.5, 0.9])
def test_mixed_per_batch_holds_the_fraction_in_every_batch(fraction):
    c = counts(HybridSchedule("mixed", real_fraction=fraction), 300)
    assert set(c) <= {math.floor(fraction * B), math.ceil(fraction * B)}  # every batch is mixed
    for n in (1, 7, 100, 300):  # and the running total never drifts by an image
        assert abs(sum(c[:n]) - fraction * B * n) < 1


def test_mixed_per_step_is_whole_real_batches_evenly_spaced():
    # real_fraction 0.25 by step = the old "a real batch every 4 steps" (steps 3, 7, 11, ...)
    c = counts(HybridSchedule("mixed", real_fraction=0.25, mix_by="step"), 40)
    assert [s for s, n in enumerate(c) if n] == list(range(3, 40, 4)) and set(c) == {0, B}
    c = counts(HybridSchedule("mixed", real_fraction=0.4, mix_by="step"), 100)
    assert set(c) == {0, B} and sum(c) == 40 * B


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_anneal_decays_the_synthetic_share(shape):
    s = HybridSchedule("anneal", real_fraction=1.0, switch_step=10, anneal_steps=40, anneal_shape=shape)
    frac = s.fraction(torch.arange(70))
    assert (frac[:11] == 0).all() and (frac[50:] == 1).all()
    assert (frac[1:] >= frac[:-1]).all()  # the real share only grows
    assert abs(float(frac[30]) - 0.5) < 1e-9  # both shapes pass one half at the midpoint
    c = counts(s, 70)
    assert c[:11] == [0] * 11 and c[50:] == [B] * 20 and 0 < sum(c[11:50]) < 39 * B
    assert sum(c) == int(s.real_images(70, B))
    half = HybridSchedule("anneal", real_fraction=0.5, switch_step=0, anneal_steps=10, anneal_shape=shape)
    assert counts(half, 40)[20:] == [B // 2] * 20


def test_real_images_is_the_sum_of_counts_for_any_steps():
    for s in (HybridSchedule("mixed", real_fraction=0.3), HybridSchedule("mixed", real_fraction=0.3, mix_by="step"),
              HybridSchedule("anneal", switch_step=5, anneal_steps=17, real_fraction=0.8)):
        c = counts(s, 3000)
        totals = s.real_images(torch.tensor([0, 1, 1024, 1025, 2999, 3000]), B).tolist()
        assert totals == [sum(c[:n]) for n in (0, 1, 1024, 1025, 2999, 3000)]


def test_lr_rewarm_after_the_switch():
    s = HybridSchedule("pretrain_finetune", switch_step=10, rewarm_steps=4)
    assert [s.lr_scale(t) for t in range(8, 16)] == [1.0, 1.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert HybridSchedule("pretrain_finetune", switch_step=10).lr_scale(10) == 1.0
    assert HybridSchedule("mixed", rewarm_steps=4).lr_scale(0) == 1.0  # only pretrain_finetune re-warms


def test_lr_cosine_decay_over_the_real_phase():
    half = 0.5 + 0.5 * math.cos(math.pi / 4)  # a quarter of the way down the cosine
    s = HybridSchedule("pretrain_finetune", switch_step=10, rewarm_steps=2, decay_steps=4)
    assert [s.lr_scale(t) for t in range(8, 17)] == pytest.approx([1, 1, 0.5, half, 0.5, 1 - half, 0, 0, 0])
    real = HybridSchedule("real_only", switch_step=10, decay_steps=4)  # the real phase starts at step 0
    assert [real.lr_scale(t) for t in range(6)] == pytest.approx([1, half, 0.5, 1 - half, 0, 0])
    assert HybridSchedule("real_only").lr_scale(10**6) == 1.0


@pytest.mark.parametrize("kwargs,key", [({"kind": "curriculum"}, "data.schedule"),
                                        ({"kind": "mixed", "real_fraction": 1.5}, "data.real_fraction"),
                                        ({"kind": "mixed", "mix_by": "epoch"}, "data.mix_by"),
                                        ({"kind": "anneal", "anneal_shape": "step"}, "data.anneal_shape"),
                                        ({"kind": "anneal", "anneal_steps": 0}, "data.anneal_steps"),
                                        ({"kind": "pretrain_finetune", "switch_step": -1}, "data.switch_step"),
                                        ({"kind": "real_only", "decay_steps": -1}, "data.decay_steps")])
def test_bad_schedules_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        HybridSchedule(**kwargs)


# ---------------------------------------------------------------------------------------------- the stream
@pytest.fixture
def synth():
    return SynthDataset("defects", batch_size=4, resolution=16)  # iterating it moves next_batch: one per test


@pytest.fixture
def real_train(fake_tiles):
    return MagneticTile(fake_tiles, ("blowhole", "crack"), 16, split="train", fractions=(0.6, 0.2, 0.2))


def test_synthetic_only_stream_is_the_synthetic_dataset(synth):
    stream = HybridStream(synth, None, HybridSchedule())
    for a, b, _ in zip(stream, synth, range(3)):
        assert isinstance(a, Batch) and a.batch_index == b.batch_index
        assert torch.equal(a.image, b.image) and torch.equal(a.sample_id, b.sample_id)


def test_mixed_batch_is_the_synthetic_prefix_plus_real_draws(synth, real_train):
    stream = HybridStream(synth, real_train, HybridSchedule("mixed", real_fraction=0.5))
    batch = stream.batch(5)
    assert isinstance(batch, HybridBatch) and len(batch) == 4 and batch.batch_index == 5
    assert torch.equal(batch.synthetic.image, synth.render_batch(torch.arange(20, 22)).image)
    assert batch.image.shape == (4, 3, 16, 16) and batch.semantic.shape == (4, 16, 16)
    assert torch.equal(batch.image[2:], batch.real.image) and len(batch.keys) == 2
    images, targets = batch.to_torchvision(1)
    assert len(images) == len(targets) == 4
    again = HybridStream(synth, real_train, HybridSchedule("mixed", real_fraction=0.5)).batch(5)
    assert again.keys == batch.keys and torch.equal(again.image, batch.image)  # a pure function of the step


def test_real_draws_cover_each_epoch_once_and_ranks_never_share(synth, real_train):
    N = len(real_train)
    schedule = HybridSchedule("real_only")
    stream = HybridStream(synth, real_train, schedule, seed=3)
    keys = [k for step in range(3 * N) for k in stream.batch(step).keys]
    for e in range(3):  # every epoch of draws is a permutation of the K images
        assert sorted(keys[e * N:(e + 1) * N]) == sorted(real_train.keys)
    assert keys[:N] != keys[N:2 * N]  # reshuffled per epoch
    # 2 ranks: global batches 2s (rank 0) and 2s + 1 (rank 1) are step s; their draws are disjoint
    for s in range(4):
        r0 = stream.batch(2 * s, rank=0, world=2).keys
        r1 = stream.batch(2 * s + 1, rank=1, world=2).keys
        assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)
        assert r0 + r1 == tuple(keys[8 * s: 8 * s + 8])


def test_plain_draws_are_one_seeded_permutation_per_epoch(synth, real_train):
    N, stream = len(real_train), HybridStream(synth, real_train, HybridSchedule("real_only"), seed=3)
    for d in range(3 * N):
        g = torch.Generator().manual_seed(stable_hash(f"real-order:3:{d // N}"))
        assert stream.position(d) == torch.randperm(N, generator=g)[d % N]


def test_balanced_draws_take_every_group_equally_often(synth, real_train):
    groups = sorted(set(real_train.groups))
    sizes = {g: real_train.groups.count(g) for g in groups}
    assert len(set(sizes.values())) > 1  # an imbalanced split, or the test shows nothing
    stream = HybridStream(synth, real_train, HybridSchedule("real_only"), seed=3, balance=True)
    G, rounds = len(groups), 3 * max(sizes.values())
    drawn = [real_train.groups[stream.position(d)] for d in range(G * rounds)]
    for r in range(rounds):  # every round of G draws takes each group once
        assert sorted(drawn[r * G:(r + 1) * G]) == groups
    for g in groups:  # and each group's own draws run through its images epoch by epoch
        mine = [real_train.keys[stream.position(d)] for d in range(G * rounds) if drawn[d] == g]
        n = sizes[g]
        for e in range(rounds // n):
            assert sorted(mine[e * n:(e + 1) * n]) == sorted(k for k, h in zip(real_train.keys, real_train.groups)
                                                                if h == g)
    with pytest.raises(ConfigError, match="data.real_balance.*one group"):
        HybridStream(synth, real_train.take(1), HybridSchedule("real_only"), balance=True)
    again = HybridStream(synth, real_train, HybridSchedule("real_only"), seed=3, balance=True)
    assert [again.position(d) for d in reversed(range(40))] == [stream.position(d) for d in reversed(range(40))]


def test_flips_move_masks_with_images(synth, real_train):
    plain = HybridStream(synth, real_train, HybridSchedule("real_only"), seed=1)
    flipped = HybridStream(synth, real_train, HybridSchedule("real_only"), seed=1, flips=True)
    changed = 0
    for d in range(12):
        a, b = plain.draw(d), flipped.draw(d)
        assert a["key"] == b["key"]
        img, sem = a["image"].as_subclass(torch.Tensor), a["semantic"].as_subclass(torch.Tensor)
        fimg, fsem = b["image"].as_subclass(torch.Tensor), b["semantic"].as_subclass(torch.Tensor)
        options = [(img, sem), (img.flip(-1), sem.flip(-1)), (img.flip(-2), sem.flip(-2)),
                   (img.flip(-1, -2), sem.flip(-1, -2))]
        assert any(torch.equal(fimg, i) and torch.equal(fsem, m) for i, m in options)
        changed += not torch.equal(fimg, img)
    assert changed >= 6  # about three quarters of the draws are flipped


def test_the_stream_refuses_anything_but_the_real_train_split(synth, fake_tiles):
    for split in ("val", "test", "all"):
        ds = MagneticTile(fake_tiles, ("blowhole", "crack"), 16, split=split, fractions=(0.6, 0.2, 0.2))
        with pytest.raises(ValueError, match="train split only"):
            HybridStream(synth, ds, HybridSchedule("real_only"))
    with pytest.raises(ConfigError, match="real_root"):
        HybridStream(synth, None, HybridSchedule("mixed"))


def test_stream_yields_the_type_of_each_step(synth, real_train):
    stream = HybridStream(synth, real_train, HybridSchedule("pretrain_finetune", switch_step=2))
    kinds = [type(b) for b, _ in zip(stream, range(4))]
    assert kinds == [Batch, Batch, RealBatch, RealBatch]
    assert [b.batch_index for b, _ in zip(stream, range(4))] == [0, 1, 2, 3]
