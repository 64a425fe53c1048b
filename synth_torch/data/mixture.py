"""The slice mixture and the stream cursor: the two pieces of stream state, each one object in shared memory.

:class:`SliceMixture` owns the slices: their names, their definitions (the scenario's slices, then mined ones,
each a conjunction of parameter ranges) and their sampling probabilities. :class:`StreamCursor` owns the
position: the first global batch the consumer has not consumed yet.

Both live in shared-memory tensors, so the main process (where a training callback changes the mixture and the
trainer consumes batches) and every DataLoader worker see the same values, whether the workers were started
before or after a change. Writers are in the main process only; readers take a consistent
:class:`MixtureSnapshot` (a sequence lock: the counter is odd while a write is under way).

A change can be scheduled to take effect from a given global batch index (``from_batch``). A batch ``k`` is then
rendered with the newest state whose ``from_batch <= k``, however far ahead of the trainer a worker or a
prefetching loader renders it. This is what makes a stream with a changing mixture the same with any number of
workers, and after a resume (the pending states are part of the checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from synth_torch.scenario.config import Scenario
from synth_torch.scenario.distributions import Dist
from synth_torch.spec.params import PARAM_NAMES

__all__ = ["MAX_PREDICATES", "MAX_SLICES", "MixtureSnapshot", "SliceMixture", "StreamCursor"]

MAX_SLICES = 64
MAX_PREDICATES = 2
MAX_PENDING = 32  # mixture states kept at once: the one in force and those scheduled for later batches
NAME_BYTES = 128
_ALWAYS = -(2**62)


@dataclass(frozen=True)
class MixtureSnapshot:
    """A consistent read of a :class:`SliceMixture`.

    Attributes:
        names: slice names, scenario slices first.
        probs: sampling probabilities [K] (float32, sum 1).
        predicates: [K, MAX_PREDICATES, 3] float64 (parameter index, lo, hi) per mined-slice predicate;
            parameter index -1 marks an unused entry (every entry of a scenario slice).
        version: how many changes led to this state (0: the scenario's own mixture); recorded in every ``Batch``.
    """

    names: tuple[str, ...]
    probs: Tensor
    predicates: Tensor
    version: int


class SliceMixture:
    """Slice names, definitions and probabilities of one stream, in shared memory.

    Slots ``0 .. K0 - 1`` are the scenario's slices (in its order, with its weights); mined slices are appended
    with :meth:`add` (at most :data:`MAX_SLICES` in all) and never removed. Weights are read and set by position
    or by name.

    Example:
        >>> from synth_torch.scenario import load_scenario
        >>> mix = SliceMixture(load_scenario("defects"))
        >>> mix.set({"low_contrast_defect": 0.5})   # the other slices share the remaining 0.5 as before
        >>> round(mix["low_contrast_defect"], 3)
        0.5
    """

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.scenario_slices = scenario.slice_names
        k = len(self.scenario_slices)
        self._seq = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._names = torch.zeros(MAX_SLICES, NAME_BYTES, dtype=torch.uint8).share_memory_()
        self._predicates = torch.full((MAX_SLICES, MAX_PREDICATES, 3), -1.0, dtype=torch.float64).share_memory_()
        self._probs = torch.zeros(MAX_PENDING, MAX_SLICES).share_memory_()
        self._count = torch.zeros(MAX_PENDING, dtype=torch.int64).share_memory_()
        self._from = torch.full((MAX_PENDING,), _ALWAYS, dtype=torch.int64).share_memory_()
        self._version = torch.full((MAX_PENDING,), -1, dtype=torch.int64).share_memory_()  # -1: free entry
        for i, name in enumerate(self.scenario_slices):
            self._write_name(i, name)
        base = torch.tensor([s.weight for s in scenario.slices.values()], dtype=torch.float32)
        self._probs[0, :k] = base / base.sum()
        self._count[0], self._version[0] = k, 0

    # ------------------------------------------------------------------ reading
    def snapshot(self, batch_index: int | None = None) -> MixtureSnapshot:
        """The state batch ``batch_index`` is rendered with (None: the newest state), read consistently."""
        while True:
            before = int(self._seq[0])
            if before % 2:
                continue
            version, start = self._version.tolist(), self._from.tolist()
            entries = [j for j, v in enumerate(version) if v >= 0]
            if batch_index is None:
                i = max(entries, key=lambda j: version[j])
            else:  # the newest state in force at batch_index (the earliest one if none is yet)
                due = [j for j in entries if start[j] <= int(batch_index)]
                i = max(due, key=lambda j: (start[j], version[j])) if due else min(entries, key=lambda j: start[j])
            k = int(self._count[i])
            names = tuple(self._read_name(j) for j in range(k))
            probs, predicates = self._probs[i, :k].clone(), self._predicates[:k].clone()
            if int(self._seq[0]) == before:
                return MixtureSnapshot(names, probs, predicates, version[i])

    def __len__(self) -> int:
        return len(self.snapshot().names)

    @property
    def names(self) -> tuple[str, ...]:
        return self.snapshot().names

    @property
    def version(self) -> int:
        return self.snapshot().version

    def get(self) -> Tensor:
        """The newest probabilities [K] (a copy)."""
        return self.snapshot().probs

    def as_dict(self) -> dict[str, float]:
        """Slice name -> newest probability."""
        snap = self.snapshot()
        return dict(zip(snap.names, snap.probs.tolist()))

    def __getitem__(self, name: str) -> float:
        weights = self.as_dict()
        if name not in weights:
            raise KeyError(f"no slice {name!r}; slices: {list(weights)}")
        return weights[name]

    def overrides(self, snapshot: MixtureSnapshot | None = None) -> list[dict[str, Dist]]:
        """Per-slice parameter overrides: the scenario's, then the mined slices' restricted distributions."""
        snap = snapshot or self.snapshot()
        scenario = self.scenario
        out = [s.overrides for s in scenario.slices.values()]
        for k in range(len(scenario.slices), len(snap.names)):
            ov = {}
            for param, lo, hi in snap.predicates[k].tolist():
                if param >= 0:
                    name = PARAM_NAMES[int(param)]
                    ov[name] = scenario.parameters[name].restrict(lo, hi)
            out.append(ov)
        return out

    # ------------------------------------------------------------------ writing (main process)
    def set(self, probs: Tensor | Sequence[float] | Mapping[str, float], from_batch: int | None = None) -> None:
        """Replace the probabilities: a [K] tensor or sequence (renormalised), or a mapping name -> probability
        for some slices (the others keep their proportions and share the rest). Values must be finite and
        non-negative, and not all zero. ``from_batch``: the first global batch index the change applies to (None:
        every batch rendered from now on, dropping changes scheduled for later)."""
        snap = self.snapshot()
        if isinstance(probs, Mapping):
            unknown = sorted(set(probs) - set(snap.names))
            if unknown:
                raise KeyError(f"unknown slice(s) {unknown}; slices: {list(snap.names)}")
            given = torch.tensor([n in probs for n in snap.names])
            fixed = torch.tensor([float(probs.get(n, 0.0)) for n in snap.names])
            if not torch.isfinite(fixed).all() or (fixed < 0).any() or float(fixed.sum()) > 1 + 1e-6:
                raise ValueError(f"named slice weights must be finite, >= 0 and sum to at most 1, got {dict(probs)}")
            rest = torch.where(given, torch.zeros_like(snap.probs), snap.probs)
            if float(rest.sum()) > 0:
                rest = rest / rest.sum() * (1.0 - float(fixed.sum()))
            probs = torch.where(given, fixed, rest)
        probs = torch.as_tensor(probs, dtype=torch.float32).flatten()
        if probs.numel() != len(snap.names):
            raise ValueError(f"expected {len(snap.names)} slice weights, got {probs.numel()}")
        if not torch.isfinite(probs).all() or (probs < 0).any() or float(probs.sum()) <= 0:
            raise ValueError(f"slice weights must be finite, non-negative and not all zero, got {probs.tolist()}")
        with self._writing():
            self._push(probs / probs.sum(), from_batch, snap.version + 1)

    def add(self, name: str, predicates, weight: float, from_batch: int | None = None) -> int:
        """Append a mined slice, the conjunction of ``predicates`` (objects with ``param``, ``lo``, ``hi``:
        ``lo <= params[param] < hi``, e.g. :class:`synth_torch.loop.mining.Predicate`) at probability ``weight``
        (the others are scaled by ``1 - weight``) from batch ``from_batch`` on (see :meth:`set`); returns its
        slice id. Its definition (name, predicates) exists at once, e.g. to render its validation suite."""
        snap = self.snapshot()
        k = len(snap.names)
        if k >= MAX_SLICES:
            raise ValueError(f"at most {MAX_SLICES} slices are supported")
        if name in snap.names:
            raise ValueError(f"a slice named {name!r} exists already")
        if len(name.encode()) > NAME_BYTES:
            raise ValueError(f"slice name {name!r} is longer than {NAME_BYTES} bytes")
        if not 0.0 < weight < 1.0:
            raise ValueError(f"a new slice's weight must lie in (0, 1), got {weight}")
        if not 1 <= len(predicates) <= MAX_PREDICATES:
            raise ValueError(f"a mined slice needs 1..{MAX_PREDICATES} predicates, got {len(predicates)}")
        for p in predicates:
            if p.param not in PARAM_NAMES:
                raise ValueError(f"unknown parameter {p.param!r} in mined slice {name!r}")
            self.scenario.parameters[p.param].restrict(p.lo, p.hi)  # raises if the base cannot produce the region
        with self._writing():
            self._predicates[k] = -1.0
            for j, p in enumerate(predicates):
                self._predicates[k, j] = torch.tensor([PARAM_NAMES.index(p.param), p.lo, p.hi], dtype=torch.float64)
            self._write_name(k, name)
            self._push(torch.cat([snap.probs * (1.0 - weight), torch.tensor([weight])]), from_batch,
                       snap.version + 1)
        return k

    def state_dict(self) -> dict:
        """Slice definitions and every state still in force or scheduled."""
        while True:
            before = int(self._seq[0])
            used = (self._version >= 0).nonzero().flatten().tolist()
            k = max(int(self._count[i]) for i in used)
            state = {"names": [self._read_name(j) for j in range(k)], "predicates": self._predicates[:k].clone(),
                     "states": [{"probs": self._probs[i, : int(self._count[i])].clone(),
                                 "from_batch": int(self._from[i]), "version": int(self._version[i])} for i in used]}
            if before % 2 == 0 and int(self._seq[0]) == before:
                return state

    def load_state_dict(self, state: dict) -> None:
        names = list(state["names"])
        if names[: len(self.scenario_slices)] != list(self.scenario_slices):
            raise ValueError(f"checkpoint slices {names} do not start with this scenario's "
                             f"{list(self.scenario_slices)}")
        states = state["states"]
        if not 1 <= len(states) <= MAX_PENDING:
            raise ValueError(f"a mixture state holds 1..{MAX_PENDING} states, got {len(states)}")
        with self._writing():
            self._names.zero_()
            for i, name in enumerate(names):
                self._write_name(i, name)
            self._predicates.fill_(-1.0)
            self._predicates[: len(names)] = state["predicates"]
            self._version.fill_(-1)
            self._probs.zero_()
            for i, entry in enumerate(states):
                probs = torch.as_tensor(entry["probs"], dtype=torch.float32)
                self._probs[i, : len(probs)] = probs
                self._count[i], self._from[i], self._version[i] = len(probs), entry["from_batch"], entry["version"]

    # ------------------------------------------------------------------ internals
    def _push(self, probs: Tensor, from_batch: int | None, version: int) -> None:
        """Store a new state (called inside ``_writing``). Without ``from_batch`` it replaces every state."""
        if from_batch is None:
            self._version.fill_(-1)
            i, start = 0, _ALWAYS
        else:
            free = (self._version < 0).nonzero().flatten()
            if len(free):
                i = int(free[0])
            else:  # full: drop the state that took effect first
                i = min(range(MAX_PENDING), key=lambda j: (int(self._from[j]), int(self._version[j])))
            start = int(from_batch)
        self._probs[i].zero_()
        self._probs[i, : len(probs)] = probs
        self._count[i], self._from[i], self._version[i] = len(probs), start, version

    @contextmanager
    def _writing(self):
        self._seq[0] += 1  # odd while writing: readers retry
        try:
            yield
        finally:
            self._seq[0] += 1

    def _write_name(self, i: int, name: str) -> None:
        data = name.encode()
        self._names[i].zero_()
        self._names[i, : len(data)] = torch.tensor(list(data), dtype=torch.uint8)

    def _read_name(self, i: int) -> str:
        return bytes(self._names[i].tolist()).rstrip(b"\0").decode()


class StreamCursor:
    """The stream position: the first global batch index not consumed yet, in shared memory.

    Every ``iter()`` of the stream, in the main process or in a DataLoader worker, starts at the cursor. Only
    the consumer moves it, with :meth:`consume` for each batch it uses (the Lightning data module does this for
    every batch the trainer trains on; a plain loop calls it itself). So iteration means the same with and
    without workers: a new ``iter()`` continues after the last consumed batch, and batches rendered ahead
    (prefetched) but never consumed are rendered again.

    Rank ``r`` of ``world`` consumes global batches ``next + r + world * j`` in ascending ``j``, so after batch
    ``k`` the position is ``k - r + world``, the same on every rank.
    """

    def __init__(self, start: int = 0):
        self._next = torch.tensor([int(start)], dtype=torch.int64).share_memory_()

    @property
    def next_batch(self) -> int:
        return int(self._next[0])

    def consume(self, batch_index: int, rank: int = 0, world: int = 1) -> None:
        """Record that this rank consumed global batch ``batch_index``."""
        self._next[0] = int(batch_index) - rank + world

    def reset(self, next_batch: int) -> None:
        self._next[0] = int(next_batch)

    def state_dict(self) -> dict:
        return {"next_batch": self.next_batch}

    def load_state_dict(self, state: dict) -> None:
        self.reset(state["next_batch"])
