"""``SynthDataset``: an infinite (or finite) stream of fully labeled batches rendered on the fly."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

import synth_torch.render as dr
from synth_torch.data.batch import Batch, decode_sample_id, encode_sample_id
from synth_torch.data.mixture import MixtureSnapshot, SliceMixture, StreamCursor
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
from synth_torch.spec.random import uniform

TEXTURE_SIZE = 256  # ground image textures are resampled to this square size (mipmapped lookups)


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

    Sample ``i`` of the stream is a pure function of (scenario, seed, i, slice mixture): global batch ``k``
    holds samples ``k * batch_size ...``. Stream state is two shared-memory objects: :attr:`mixture` (a
    :class:`~synth_torch.data.mixture.SliceMixture`: slice names, definitions, probabilities) and
    :attr:`cursor` (a :class:`~synth_torch.data.mixture.StreamCursor`). Every ``iter()`` starts at the cursor
    ``s``: rank ``r`` of ``world`` takes batches ``s + r + world * j`` and its DataLoader worker ``w`` of
    ``workers`` takes the ``j`` with ``j % workers == w``, so ranks and workers never repeat samples and the
    DataLoader's round-robin order is ascending ``j``. Iterating does not move the cursor; consuming does
    (``ds.cursor.consume(batch.batch_index)``, which the Lightning data module calls for you), in the main
    process and with workers alike. Yielded items are whole batches: use ``DataLoader(ds, batch_size=None)``.

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
        self.mixture = SliceMixture(self.scenario)
        self.cursor = StreamCursor()
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
        return self.mixture.names

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("an infinite SynthDataset has no length; pass length=...")
        return self.length

    def shard(self) -> tuple[int, int, Iterator[int]]:
        """This process's share of the stream from the cursor on: ``(rank, world, global batch indices)``.

        Rank r takes global batches ``start + r + world * j``; its DataLoader worker w takes the j with
        ``j % workers == w``. So a batch's content depends on its index alone, whatever the world size or the
        number of workers."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = _rank_and_world()
        start, length = self.cursor.next_batch, self.length

        def indices() -> Iterator[int]:
            j = worker
            while length is None or j < length:
                yield start + rank + world * j
                j += workers

        return rank, world, indices()

    def __iter__(self):
        for k in self.shard()[2]:
            yield self.render_batch(torch.arange(k * self.batch_size, (k + 1) * self.batch_size), batch_index=k)

    def slice_ids(self, sample_index: torch.Tensor, snapshot: MixtureSnapshot | None = None) -> torch.Tensor:
        """Slice of each sample under the mixture's probabilities (a function of the sample's key)."""
        probs = (snapshot or self.mixture.snapshot()).probs
        cdf = torch.cumsum(probs, 0)
        u = uniform(self.sampler.keys(sample_index), "slice").contiguous()
        return torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=len(probs) - 1)

    def render_batch(self, sample_index: torch.Tensor, slice_id: torch.Tensor | None = None,
                     batch_index: int | None = None) -> Batch:
        """Render samples ``sample_index`` [B]: slices drawn from the mixture unless given; as global batch
        ``batch_index`` of the stream (the mixture state in force for it), or outside the stream (None: the newest
        state)."""
        snap = self.mixture.snapshot(batch_index)
        batch = self.render_params(self._sample_params(sample_index, slice_id, snap), snap)
        batch.batch_index = -1 if batch_index is None else int(batch_index)
        return batch

    def sample_params(self, sample_index: torch.Tensor, slice_id: torch.Tensor | None = None,
                      batch_index: int | None = None) -> SceneParams:
        """The values ``render_batch(sample_index, slice_id, batch_index)`` renders, before they are applied (for
        :meth:`render_params`, e.g. after a hard-example search edits them)."""
        return self._sample_params(sample_index, slice_id, self.mixture.snapshot(batch_index))

    def _sample_params(self, sample_index, slice_id, snap: MixtureSnapshot) -> SceneParams:
        sample_index = torch.as_tensor(sample_index, dtype=torch.int64).cpu()
        slice_id = self.slice_ids(sample_index, snap) if slice_id is None else torch.as_tensor(slice_id,
                                                                                              dtype=torch.int64)
        if (slice_id >= len(snap.names)).any() or (slice_id < 0).any():
            raise ValueError(f"slice ids must lie in [0, {len(snap.names)}), got {slice_id.tolist()}")
        return self.sampler.sample_params(sample_index, slice_id, self.mixture.overrides(snap))

    def render_params(self, params: SceneParams, snapshot: MixtureSnapshot | None = None) -> Batch:
        """Render explicitly given sampled values (e.g. edited by a hard-example search); labels stay exact.
        ``snapshot``: the mixture the values were drawn under (its slice names and version go into the batch)."""
        snap = snapshot or self.mixture.snapshot()
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
                     class_names=sc.class_names, slice_names=snap.names, mixture_version=snap.version)

    def regenerate(self, sample_ids) -> Batch:
        """Re-render samples exactly from their ``Batch.sample_id`` values."""
        index, slice_id = decode_sample_id(torch.as_tensor(sample_ids).cpu())
        return self.render_batch(index, slice_id)

    def state_dict(self) -> dict:
        """Position (next batch index) and slice mixture, for exact resume."""
        return {"next_batch": self.cursor.next_batch, "mixture": self.mixture.state_dict(), "seed": self.seed,
                "scenario_digest": self.scenario.digest()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scenario_digest", self.scenario.digest()) != self.scenario.digest():
            raise ValueError("state was saved for a different scenario; refusing to resume a different stream")
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this dataset has seed {self.seed}")
        if "mixture" not in state:
            raise ValueError(f"dataset state has no 'mixture' entry (keys: {sorted(state)}); it was written by an "
                             f"older synth-torch")
        self.cursor.reset(int(state["next_batch"]))
        self.mixture.load_state_dict(state["mixture"])

