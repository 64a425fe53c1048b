"""``SynthDataset``: an infinite (or finite) stream of fully labeled batches rendered on the fly."""

from __future__ import annotations

from dataclasses import fields

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

import synth_torch.render as dr
from synth_torch.data.batch import Batch, decode_sample_id, encode_sample_id
from synth_torch.labels.passes import label_passes
from synth_torch.scenario.config import ConfigError, Scenario, load_scenario
from synth_torch.scenario.distributions import Dist, parse_flag, parse_int
from synth_torch.scenario.sampler import SceneParams, ScenarioSampler
from synth_torch.scene.assets import load_images
from synth_torch.scene.gbuffer import build_gbuffer
from synth_torch.scene.geometry import assemble
from synth_torch.scene.library import template_bank
from synth_torch.sensor import SENSOR_DEFAULTS, apply_sensor
from synth_torch.shading.shaders import SHADERS, get_shader, render_image
from synth_torch.spec.params import PARAM_NAMES
from synth_torch.spec.random import uniform

MAX_SLICES = 64
TEXTURE_SIZE = 256  # ground image textures are resampled to this square size (mipmapped lookups)
MAX_PREDICATES = 2


class SliceWeights:
    """Slice mixture weights and mined-slice definitions in shared memory.

    A training callback may change them while iteration runs, in the main process (``num_workers=0``,
    the GPU path) or with DataLoader worker processes, which see the same storage. Slots ``0..K0-1`` are
    the scenario's slices; mined slices are appended (at most ``MAX_SLICES`` in all).
    """

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.scenario_slices = scenario.slice_names
        self.probs = torch.zeros(MAX_SLICES).share_memory_()
        base = torch.tensor([s.weight for s in scenario.slices.values()], dtype=torch.float32)
        self.probs[: len(base)] = base / base.sum()
        self.count = torch.tensor([len(base)]).share_memory_()
        # Mined slices: (param index, lo, hi) per predicate; param index -1 = unused.
        self.predicates = torch.full((MAX_SLICES, MAX_PREDICATES, 3), -1.0, dtype=torch.float64).share_memory_()
        self.names: list[str] = list(scenario.slice_names)

    def __len__(self) -> int:
        return int(self.count[0])

    def get(self) -> torch.Tensor:
        """Current probabilities [K] (a copy)."""
        return self.probs[: len(self)].clone()

    def set(self, probs: torch.Tensor) -> None:
        """Replace the probabilities [K] (must be finite, non-negative, not all zero; renormalised)."""
        probs = torch.as_tensor(probs, dtype=torch.float32).flatten()
        if probs.numel() != len(self):
            raise ValueError(f"expected {len(self)} slice weights, got {probs.numel()}")
        if not torch.isfinite(probs).all() or (probs < 0).any() or float(probs.sum()) <= 0:
            raise ValueError(f"slice weights must be finite, non-negative and not all zero, got {probs.tolist()}")
        self.probs[: len(self)] = probs / probs.sum()

    def add(self, name: str, predicates, weight: float) -> int:
        """Append a mined slice, the conjunction of ``predicates`` (objects with ``param``, ``lo``, ``hi``:
        ``lo <= params[param] < hi``, e.g. :class:`synth_torch.loop.mining.Predicate`); returns its slice id.
        Existing weights are scaled by (1 - weight)."""
        k = len(self)
        if k >= MAX_SLICES:
            raise ValueError(f"at most {MAX_SLICES} slices are supported")
        if not 1 <= len(predicates) <= MAX_PREDICATES:
            raise ValueError(f"a mined slice needs 1..{MAX_PREDICATES} predicates, got {len(predicates)}")
        for p in predicates:
            if p.param not in PARAM_NAMES:
                raise ValueError(f"unknown parameter {p.param!r} in mined slice {name!r}")
            self.scenario.parameters[p.param].restrict(p.lo, p.hi)  # raises if the base cannot produce the region
        self.predicates[k] = -1.0
        for j, p in enumerate(predicates):
            self.predicates[k, j] = torch.tensor([PARAM_NAMES.index(p.param), p.lo, p.hi], dtype=torch.float64)
        self.probs[:k] *= 1.0 - weight
        self.probs[k] = weight
        self.count[0] = k + 1
        self.names.append(name)
        return k

    def overrides(self, scenario: Scenario) -> list[dict[str, Dist]]:
        """Per-slice parameter overrides: the scenario's, then the mined slices' restricted distributions."""
        out = [s.overrides for s in scenario.slices.values()]
        for k in range(len(scenario.slices), len(self)):
            ov = {}
            for param, lo, hi in self.predicates[k].tolist():
                if param >= 0:
                    name = PARAM_NAMES[int(param)]
                    ov[name] = scenario.parameters[name].restrict(lo, hi)
            out.append(ov)
        return out

    def state_dict(self) -> dict:
        return {"probs": self.get(), "names": list(self.names), "predicates": self.predicates[: len(self)].clone()}

    def load_state_dict(self, state: dict) -> None:
        k = len(state["probs"])
        if list(state["names"][: len(self.scenario_slices)]) != list(self.scenario_slices):
            raise ValueError(f"checkpoint slices {state['names']} do not start with this scenario's "
                             f"{list(self.scenario_slices)}")
        self.count[0] = k
        self.probs.zero_()
        self.probs[:k] = state["probs"]
        self.predicates.fill_(-1.0)
        self.predicates[:k] = state["predicates"]
        self.names = list(state["names"])


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SynthDataset(IterableDataset):
    """A stream of labeled :class:`Batch` objects rendered from a scenario.

    Args:
        scenario: a built-in name (``"tabletop"``, ``"defects"``), YAML path, dict or :class:`Scenario`.
        batch_size: images per batch (one batched render pass).
        resolution: (height, width) or an int for square images.
        device: where rendering happens and batches live.
        seed: with the scenario content and the sample index, determines every sample.
        backend: rasterizer backend (``"auto"``, ``"cpu"``, ``"torch"``, ``"nvdiffrast"``).
        length: batches per epoch on each rank (None: infinite).
        sensor: apply the scenario's sensor effects.
        shader: ``"auto"`` (compiled on CPU, torch elsewhere), ``"numba"`` or ``"torch"`` (``docs/rendering.md``).

    Sample ``i`` of the stream is a pure function of (scenario, seed, i, slice weights): global batch ``k``
    holds samples ``k * batch_size ...``. From the resume point ``s`` (``next_batch``), rank ``r`` of
    ``world`` takes batches ``s + r + world * j`` and its DataLoader worker ``w`` of ``workers`` takes the
    ``j`` with ``j % workers == w``, so ranks and workers never repeat samples and the DataLoader's
    round-robin order is ascending ``j``.

    Example:
        >>> ds = SynthDataset("tabletop", batch_size=4, resolution=64)
        >>> batch = next(iter(ds))
        >>> batch.image.shape
        torch.Size([4, 3, 64, 64])
    """

    def __init__(self, scenario="tabletop", batch_size: int = 32, resolution=128, device="cpu", seed: int = 0,
                 backend: str = "auto", length: int | None = None, sensor: bool = True, shader: str = "auto"):
        super().__init__()
        self.scenario = load_scenario(scenario)
        self.batch_size = parse_int(batch_size, "batch_size", lo=1)
        iterable = hasattr(resolution, "__iter__") and not isinstance(resolution, str)
        pair = tuple(resolution) if iterable else (resolution, resolution)
        res = tuple(parse_int(r, "resolution") for r in pair)
        if len(res) != 2 or min(res) < 8 or max(res) > 4096:
            raise ConfigError(f"resolution must be (height, width) within 8..4096, got {resolution}")
        self.resolution, self.seed = res, parse_int(seed, "seed")
        self.device = torch.device(device)
        self.backend = backend
        self.length = parse_int(length, "length", lo=1, none_ok=True)
        self.sensor = parse_flag(sensor, "sensor")
        if shader not in SHADERS:
            raise ConfigError(f"shader must be one of {SHADERS}, got {shader!r}")
        get_shader(shader, self.device)  # fails here, not in a worker, when the shader cannot run on the device
        self.shader = shader
        self.sampler = ScenarioSampler(self.scenario, self.seed)
        self.sensor_supports = {n: self.scenario.support(n) for n in SENSOR_DEFAULTS}
        self._textured_meshes = bool((template_bank(self.sampler.shapes).texture_index >= 0).any())
        self.weights = SliceWeights(self.scenario)
        self.next_batch = 0
        self._ctx = None

    @property
    def context(self) -> dr.RasterizeContext:
        if self._ctx is None:
            self._ctx = dr.RasterizeContext(device=self.device, backend=self.backend)
        return self._ctx

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_ctx"] = None  # contexts hold native handles; workers build their own
        return state

    @property
    def slice_names(self) -> tuple[str, ...]:
        return tuple(self.weights.names)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an infinite SynthDataset has no length; pass length=...")
        return self.length

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = _rank_and_world()
        start = self.next_batch
        # Rank r takes global batches start + r + world * j; its worker w takes the j with j % workers == w.
        j = worker
        while self.length is None or j < self.length:
            k = start + rank + world * j
            batch = self.render_batch(torch.arange(k * self.batch_size, (k + 1) * self.batch_size))
            batch.batch_index = k
            if info is None:
                self.mark_consumed(k)
            yield batch
            j += workers

    def mark_consumed(self, batch_index: int) -> None:
        """Record that global batch ``batch_index`` was consumed, so iteration (and ``state_dict``) resumes
        after it. Called automatically without workers; with DataLoader workers the consumer (e.g. the
        Lightning data module) calls it with ``Batch.batch_index``."""
        rank, world = _rank_and_world()
        self.next_batch = int(batch_index) - rank + world

    def slice_ids(self, sample_index: torch.Tensor) -> torch.Tensor:
        """Slice of each sample under the current weights (a function of the sample's key)."""
        probs = self.weights.get()
        cdf = torch.cumsum(probs, 0)
        u = uniform(self.sampler.keys(sample_index), "slice").contiguous()
        return torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=len(probs) - 1)

    def render_batch(self, sample_index: torch.Tensor, slice_id: torch.Tensor | None = None) -> Batch:
        """Render samples ``sample_index`` [B] (slices drawn from the current weights unless given)."""
        sample_index = torch.as_tensor(sample_index, dtype=torch.int64).cpu()
        slice_id = self.slice_ids(sample_index) if slice_id is None else torch.as_tensor(slice_id, dtype=torch.int64)
        if (slice_id >= len(self.weights)).any() or (slice_id < 0).any():
            raise ValueError(f"slice ids must lie in [0, {len(self.weights)}), got {slice_id.tolist()}")
        return self.render_params(self.sampler.sample_params(sample_index, slice_id,
                                                             self.weights.overrides(self.scenario)))

    def render_params(self, params: SceneParams) -> Batch:
        """Render explicitly given sampled values (e.g. edited by a hard-example search); labels stay exact."""
        sc = self.scenario
        spec = self.sampler.build(params, self.resolution).to(self.device)
        geom = assemble(spec)
        gbuffer = build_gbuffer(spec, geom, self.context, self.resolution, shadows=sc.shadows,
                                uv=sc.texture_images is not None or self._textured_meshes)
        ground_images = background = None
        if sc.texture_images:
            ground_images = load_images(sc.resolve(sc.texture_images), spec.ground.image,
                                        (TEXTURE_SIZE, TEXTURE_SIZE)).permute(0, 2, 3, 1)
        if sc.background_images:
            background = load_images(sc.resolve(sc.background_images), spec.ground.background,
                                     self.resolution).permute(0, 2, 3, 1).to(self.device)
        image = render_image(spec, geom, gbuffer, self.shader, ground_images, background, antialias=sc.antialias)
        labels = label_passes(spec, gbuffer, geom, self.sampler.num_objects)
        if self.sensor:
            sensor_params = {k: v for k, v in params.values.items() if k.startswith("sensor.")}
            image = apply_sensor(image, sensor_params, spec.keys, self.sensor_supports)
        return Batch(**{f.name: getattr(labels, f.name) for f in fields(labels)}, image=image, K=spec.camera.K,
                     world_to_cam=spec.camera.world_to_cam, params=spec.params, slice_id=spec.slice_id,
                     sample_id=encode_sample_id(spec.sample_index, spec.slice_id).to(self.device),
                     class_names=sc.class_names, slice_names=self.slice_names)

    def regenerate(self, sample_ids) -> Batch:
        """Re-render samples exactly from their ``Batch.sample_id`` values."""
        index, slice_id = decode_sample_id(torch.as_tensor(sample_ids).cpu())
        return self.render_batch(index, slice_id)

    def state_dict(self) -> dict:
        """Position (next batch index) and slice weights, for exact resume."""
        return {"next_batch": self.next_batch, "weights": self.weights.state_dict(), "seed": self.seed,
                "scenario_digest": self.scenario.digest()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scenario_digest", self.scenario.digest()) != self.scenario.digest():
            raise ValueError("state was saved for a different scenario; refusing to resume a different stream")
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this dataset has seed {self.seed}")
        self.next_batch = int(state["next_batch"])
        self.weights.load_state_dict(state["weights"])

