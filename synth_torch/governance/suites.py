"""Scenario suites as regression tests for models: a checkpoint scored on fixed per-slice suites.

A **suite** is, for each slice of a scenario (e.g. ``low_light+motion_blur`` or ``heavy_occlusion``), the same
``samples_per_slice`` samples every time: sample indices ``SUITE_START + slice_id * SUITE_STRIDE + [0, n)``
rendered with that slice (disjoint from training, validation and mining indices, see
:mod:`synth_torch.loop.datamodule`). :func:`run_suite` loads a Lightning checkpoint of a
:mod:`synth_torch.loop.tasks` task, scores it on every slice with the task's own validation metrics (``iou``,
``dice``, ``fg_iou`` for segmentation; ``map``, ``map_50`` for detection) plus the mean per-image ``loss``,
writes JSON and Markdown, and compares with a stored baseline: a metric that drops by more than its slice's
tolerance (absolute; for ``loss``, rises) is a regression. ``synth-torch suite run`` exits 1 on a regression,
so it runs in CI; ``--update-baseline`` records the result as the new baseline (``docs/governance.md``).

The model is rebuilt from its Hydra config: the training run's ``.hydra/config.yaml`` beside the checkpoint
folder (``<run>/checkpoints/x.ckpt``), or ``model_config`` (a ``configs/model/*.yaml`` file or a run config
with a ``model`` node). The checkpoint is unpickled (``torch.load(weights_only=False)``, as Lightning does):
load checkpoints you trust.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synth_torch.export._io import dumps_pretty, write_atomic
from synth_torch.governance.exports import GovernanceError
from synth_torch.governance.gates import quiet_lightning, utc_now
from synth_torch.scenario.config import ConfigError, load_scenario

SUITE_START = 3 * 10**9
SUITE_STRIDE = 10**6
LOWER_IS_BETTER = frozenset({"loss"})
KIND = "synth-torch suite result"
DEFAULT_TOLERANCE = 0.02


@dataclass(frozen=True)
class Suite:
    """What a suite renders: scenario, samples per slice, resolution (H, W), seed, slices, sensor, backend."""

    scenario: object
    samples_per_slice: int = 32
    resolution: tuple[int, int] = (64, 64)
    seed: int = 0
    slices: tuple[str, ...] = ()
    sensor: bool = True
    backend: str = "auto"

    def indices(self, slice_name: str) -> torch.Tensor:
        start = SUITE_START + self.scenario.slice_names.index(slice_name) * SUITE_STRIDE
        return torch.arange(start, start + self.samples_per_slice)

    def to_dict(self) -> dict:
        sc = self.scenario
        return {"scenario": {"name": sc.name, "digest": "sha256:" + sc.fingerprint()}, "seed": self.seed,
                "resolution": list(self.resolution), "samples_per_slice": self.samples_per_slice,
                "sensor": self.sensor, "backend": self.backend,
                "slices": {name: {"slice_id": sc.slice_names.index(name),
                                  "sample_indices": [int(self.indices(name)[0]), int(self.indices(name)[-1])]}
                           for name in self.slices}}


def make_suite(scenario, samples_per_slice: int = 32, resolution=64, seed: int = 0, slices=None, sensor: bool = True,
               backend: str = "auto") -> Suite:
    try:
        sc = load_scenario(scenario)
    except ConfigError as exc:
        raise GovernanceError(str(exc)) from None
    names = tuple(slices) if slices else sc.slice_names
    unknown = [n for n in names if n not in sc.slice_names]
    if unknown:
        raise GovernanceError(f"--slices: unknown slice(s) {unknown} of scenario {sc.name!r}; it has {list(sc.slice_names)}")
    if samples_per_slice < 1:
        raise GovernanceError(f"--samples-per-slice must be >= 1, got {samples_per_slice}")
    res = (resolution, resolution) if isinstance(resolution, int) else tuple(int(r) for r in resolution)
    return Suite(sc, int(samples_per_slice), res, int(seed), names, bool(sensor), backend)


def _run_config(checkpoint: Path) -> Path | None:
    path = checkpoint.resolve().parent.parent / ".hydra" / "config.yaml"
    return path if path.is_file() else None


def load_task(checkpoint, num_classes: int, model_config=None):
    """(task, checkpoint info) for a Lightning checkpoint of a :mod:`synth_torch.loop.tasks` task."""
    import hydra
    from omegaconf import OmegaConf

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise GovernanceError(f"checkpoint not found: {checkpoint}")
    config = Path(model_config) if model_config else _run_config(checkpoint)
    if config is None or not config.is_file():
        raise GovernanceError(f"cannot tell which model {checkpoint} holds: no {checkpoint.parent.parent}/.hydra/"
                              f"config.yaml; pass --model-config (a configs/model/*.yaml file or a run's "
                              f".hydra/config.yaml)")
    cfg = OmegaConf.load(config)
    node = cfg.model if "model" in cfg else cfg
    if "_target_" not in node:
        raise GovernanceError(f"{config}: no model node with a _target_")
    try:
        task = hydra.utils.instantiate(node, num_classes=num_classes)
    except Exception as exc:  # Hydra wraps every construction error
        raise GovernanceError(f"{config}: cannot build the model: {exc}") from None
    data = checkpoint.read_bytes()
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if "state_dict" not in ckpt:
        raise GovernanceError(f"{checkpoint}: not a Lightning checkpoint (no state_dict)")
    try:
        task.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise GovernanceError(f"{checkpoint} does not fit the model of {config}: {str(exc).splitlines()[0]}") from None
    info = {"path": str(checkpoint.resolve()), "sha256": hashlib.sha256(data).hexdigest(),
            "global_step": ckpt.get("global_step"), "lineage": ckpt.get("synth_torch_lineage"),
            "model_config": str(config), "model": OmegaConf.to_container(node)["_target_"]}
    return task, info


def evaluate(task, suite: Suite, batch_size: int = 16, device: str = "cpu") -> dict[str, dict[str, float]]:
    """slice -> metric -> value: the task's validation metrics and its mean per-image ``loss`` on each slice's
    suite (Lightning ``Trainer.validate`` with the task's own metric code)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from synth_torch.data.dataset import SynthDataset
    from synth_torch.loop.datamodule import collate_batch
    from synth_torch.loop.tasks import slice_key

    ds = SynthDataset(suite.scenario, batch_size=batch_size, resolution=suite.resolution, seed=suite.seed,
                      backend=suite.backend, sensor=suite.sensor, device=device)
    batches, losses = [], {}
    for name in suite.slices:
        idx = suite.indices(name)
        sid = suite.scenario.slice_names.index(name)
        parts = []
        for chunk in idx.split(batch_size):
            batch = ds.render_batch(chunk, torch.full_like(chunk, sid)).to("cpu")
            batches.append(batch)
            parts.append(task.per_sample_loss(batch).double().cpu())
        losses[name] = float(torch.cat(parts).mean())
    with quiet_lightning():
        trainer = pl.Trainer(accelerator="cuda" if device.startswith("cuda") else "cpu", devices=1, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        trainer.validate(task, DataLoader(batches, batch_size=None, collate_fn=collate_batch), verbose=False)
    values = task.last_val_metrics
    out = {}
    for name in suite.slices:
        key = slice_key(name)
        metrics = {m.split("/")[1]: float(v) for m, v in values.items() if m.count("/") == 2 and m.endswith("/" + key)}
        out[name] = {**dict(sorted(metrics.items())), "loss": losses[name]}
    return out


@dataclass
class Check:
    """One (slice, metric) comparison with the baseline."""

    slice: str
    metric: str
    baseline: float | None
    current: float
    tolerance: float
    gated: bool

    @property
    def change(self) -> float | None:
        return None if self.baseline is None else self.current - self.baseline

    @property
    def status(self) -> str:
        if self.baseline is None or not (_finite(self.baseline) and _finite(self.current)):
            return "n/a"
        worse = self.change if self.metric in LOWER_IS_BETTER else -self.change
        if worse > self.tolerance + 1e-12:
            return "REGRESSION" if self.gated else "worse (not gated)"
        return "improved" if -worse > self.tolerance else "ok"


def _finite(v) -> bool:
    return v is not None and math.isfinite(v) and v >= 0


@dataclass
class SuiteResult:
    """A suite run: ``data`` (the JSON written), the baseline ``checks`` and the ``regressions`` among them."""

    data: dict
    checks: list[Check] = field(default_factory=list)

    @property
    def regressions(self) -> list[Check]:
        return [c for c in self.checks if c.status == "REGRESSION"]

    def markdown(self) -> str:
        return suite_markdown(self)


def compare(data: dict, baseline: dict, tolerance: float | None = None, slice_tolerances: dict | None = None,
            metrics=None) -> list[Check]:
    """Every (slice, metric) of ``data`` against ``baseline``. Tolerances: ``slice_tolerances[slice]``, else
    ``tolerance``, else those stored with the baseline, else :data:`DEFAULT_TOLERANCE`; gated metrics:
    ``metrics``, else the baseline's, else every metric but ``loss``."""
    if baseline.get("kind") != KIND:
        raise GovernanceError("the baseline is not a synth-torch suite result")
    diff = sorted(k for k in set(data["suite"]) | set(baseline["suite"]) if data["suite"].get(k) != baseline["suite"].get(k))
    if diff:
        raise GovernanceError(f"the baseline was recorded on another suite ({', '.join(diff)} differ); record a new "
                              f"one with --update-baseline")
    stored = baseline.get("tolerances", {})
    default = tolerance if tolerance is not None else stored.get("default", DEFAULT_TOLERANCE)
    per_slice = {**stored.get("slices", {}), **(slice_tolerances or {})}
    gated = list(metrics) if metrics else baseline.get("gated_metrics") or [
        m for m in next(iter(data["metrics"].values()), {}) if m not in LOWER_IS_BETTER]
    checks = []
    for name, values in data["metrics"].items():
        for metric, value in values.items():
            base = baseline["metrics"].get(name, {}).get(metric)
            checks.append(Check(name, metric, base, value, float(per_slice.get(name, default)), metric in gated))
    return checks


def run_suite(checkpoint, scenario, samples_per_slice: int = 32, resolution=64, seed: int = 0, slices=None,
              model_config=None, baseline=None, update_baseline: bool = False, tolerance: float | None = None,
              slice_tolerances: dict | None = None, metrics=None, out=None, batch_size: int = 16,
              device: str = "cpu", sensor: bool = True) -> SuiteResult:
    """Score ``checkpoint`` on the suite of ``scenario``; compare with (or record) ``baseline``; write
    ``<out>/<scenario>.json`` and ``.md`` when ``out`` is given. See the module docs."""
    suite = make_suite(scenario, samples_per_slice, resolution, seed, slices, sensor)
    task, info = load_task(checkpoint, len(suite.scenario.class_names) + 1, model_config)
    values = evaluate(task, suite, batch_size, device)
    data = {"kind": KIND, "schema_version": 1, "created": utc_now(), "checkpoint": info, "suite": suite.to_dict(),
            "metrics": values}
    result = SuiteResult(data)
    baseline = Path(baseline) if baseline else None
    if update_baseline:
        if baseline is None:
            raise GovernanceError("--update-baseline needs --baseline FILE (where to record it)")
        first = next(iter(values.values()), {})
        data["tolerances"] = {"default": DEFAULT_TOLERANCE if tolerance is None else tolerance,
                              "slices": dict(slice_tolerances or {})}
        data["gated_metrics"] = list(metrics) if metrics else [m for m in first if m not in LOWER_IS_BETTER]
        baseline.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(baseline, dumps_pretty(data), unique=True)
        data["baseline"] = {"path": str(baseline), "updated": True}
    elif baseline is not None:
        import json

        if not baseline.is_file():
            raise GovernanceError(f"baseline not found: {baseline} (record one with --update-baseline)")
        try:
            base = json.loads(baseline.read_text())
        except json.JSONDecodeError as exc:
            raise GovernanceError(f"{baseline}: not valid JSON: {exc}") from None
        result.checks = compare(data, base, tolerance, slice_tolerances, metrics)
        data["baseline"] = {"path": str(baseline), "created": base.get("created"),
                            "checkpoint": base.get("checkpoint", {}).get("path")}
        data["comparison"] = [{"slice": c.slice, "metric": c.metric, "baseline": c.baseline, "current": c.current,
                               "tolerance": c.tolerance, "gated": c.gated, "status": c.status} for c in result.checks]
        data["regressions"] = len(result.regressions)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stem = suite.scenario.name
        write_atomic(out / f"{stem}.json", dumps_pretty(data), unique=True)
        write_atomic(out / f"{stem}.md", suite_markdown(result).encode(), unique=True)
    return result


def _v(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def suite_markdown(result: SuiteResult) -> str:
    d = result.data
    s, ck = d["suite"], d["checkpoint"]
    lines = [f"# Scenario suite `{s['scenario']['name']}` on `{Path(ck['path']).name}`", "",
             f"- checkpoint: `{ck['path']}` (sha256 {ck['sha256'][:16]}, global step {ck['global_step']}, "
             f"model `{ck['model']}`)",
             f"- suite: scenario `{s['scenario']['name']}` ({s['scenario']['digest'][7:23]}), "
             f"{s['samples_per_slice']} samples per slice at {s['resolution'][1]}x{s['resolution'][0]}, seed "
             f"{s['seed']}, sensor {'on' if s['sensor'] else 'off'}; sample indices from {SUITE_START} "
             f"(+ slice id x {SUITE_STRIDE})", f"- run: {d['created']}"]
    if result.checks:
        regressions = result.regressions
        verdict = (f"**REGRESSION** in {len(regressions)} of {sum(c.gated for c in result.checks)} gated checks"
                   if regressions else "**no regression**")
        lines += [f"- baseline: `{d['baseline']['path']}` (recorded {d['baseline']['created']})", "",
                  f"Verdict: {verdict}.", "",
                  "| slice | metric | baseline | current | change | tolerance | status |", "|---|---|---|---|---|---|---|"]
        for c in result.checks:
            change = "-" if c.change is None else f"{c.change:+.4f}"
            status = f"**{c.status}**" if c.status == "REGRESSION" else c.status
            lines.append(f"| `{c.slice}` | {c.metric}{'' if c.gated else ' (not gated)'} | {_v(c.baseline)} | "
                         f"{_v(c.current)} | {change} | {c.tolerance:g} | {status} |")
    else:
        if d.get("baseline", {}).get("updated"):
            lines.append(f"- recorded as the baseline `{d['baseline']['path']}`")
        metrics = list(next(iter(d["metrics"].values()), {}))
        lines += ["", "| slice | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        for name, values in d["metrics"].items():
            lines.append(f"| `{name}` | " + " | ".join(_v(values.get(m)) for m in metrics) + " |")
    return "\n".join(lines) + "\n"
