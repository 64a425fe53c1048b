"""The export job: plan, render, write in chunks, resume, shard, and finish with the manifest.

Samples ``start .. start + n - 1`` are cut into chunks of ``chunk_size`` consecutive sample indices. A chunk is
the unit of work, of resume and of WebDataset sharding: its files are written atomically one by one, then its
record ``.export/chunks/KKKKKK.json`` (the annotations the merged files need, every file's sha256, the counts)
is written atomically; a chunk without a record is (re)done from its first sample. Process shard ``i`` of
``N`` (``--shard i/N``, or the SLURM array and torchrun variables, see :func:`shard_from_env`) owns the chunks
``k`` with ``k % N == i``. Whichever process finds every record present writes the merged files,
``SHA256SUMS`` and, last, ``manifest.json``; all of it is a pure function of the chunk records, so a sharded
or resumed export is byte-identical to a single uninterrupted one. Every data file depends only on the
settings (and the library versions), so ``SHA256SUMS`` and the content digest are the same for any run of
one command; ``manifest.json`` and ``.export/job.json`` also hold the creation time (of the first process, or
``SOURCE_DATE_EPOCH`` when set) and the command.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from synth_torch.data.dataset import SynthDataset
from synth_torch.export import manifest as mf
from synth_torch.export._io import PART_SUFFIX, create_exclusive, dumps, dumps_pretty, write_atomic
from synth_torch.export.base import ExportError, FormatWriter, Sink
from synth_torch.export.coco import CocoWriter
from synth_torch.export.kitti import KittiWriter
from synth_torch.export.sample import ExportOptions, Layout, samples_of
from synth_torch.export.shards import WebDatasetWriter
from synth_torch.export.yolo import YoloWriter
from synth_torch.scenario.config import load_scenario

FORMATS: dict[str, type[FormatWriter]] = {w.name: w for w in (CocoWriter, YoloWriter, KittiWriter, WebDatasetWriter)}
JOB = ".export/job.json"
CHUNKS = ".export/chunks"


@dataclass
class ExportResult:
    """What one call of :func:`export` did: ``complete`` once the manifest exists (``manifest`` is then its
    contents); ``written`` chunks this call wrote; ``pending`` chunks other shards still owe."""

    root: Path
    shard: tuple[int, int]
    complete: bool = False
    written: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    manifest: dict | None = None


def parse_formats(formats) -> tuple[str, ...]:
    """``"coco,yolo"`` or a sequence of names to a tuple in the canonical order (unknown names raise)."""
    names = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else [str(f).strip() for f in formats]
    names = [n for n in names if n]
    unknown = sorted(set(names) - set(FORMATS))
    if unknown or not names:
        raise ExportError(f"unknown format(s) {unknown or names}; choose from {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in names)


def parse_shard(text) -> tuple[int, int]:
    """``"I/N"`` (or a pair) to ``(I, N)`` with ``0 <= I < N``."""
    try:
        i, n = (int(v) for v in (text.split("/") if isinstance(text, str) else text))
    except (ValueError, TypeError):
        raise ExportError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ExportError(f"--shard {i}/{n}: the shard index must satisfy 0 <= I < N")
    return i, n


def shard_from_env(env=None) -> tuple[int, int]:
    """This process's shard from the environment: a SLURM job array (``SLURM_ARRAY_TASK_ID``,
    ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT``, ``SLURM_ARRAY_TASK_STEP``) and/or torchrun (``RANK``,
    ``WORLD_SIZE``); both together give ``task * WORLD_SIZE + RANK`` of ``COUNT * WORLD_SIZE``. (0, 1) when
    none is set."""
    env = os.environ if env is None else env
    i, n = 0, 1
    if "SLURM_ARRAY_TASK_ID" in env:
        if "SLURM_ARRAY_TASK_COUNT" not in env:
            raise ExportError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard I/N")
        step = int(env.get("SLURM_ARRAY_TASK_STEP", 1))
        i = (int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))) // step
        n = int(env["SLURM_ARRAY_TASK_COUNT"])
        if not 0 <= i < n:
            raise ExportError(f"SLURM array task {env['SLURM_ARRAY_TASK_ID']} maps to shard {i} of {n}: use a "
                              f"contiguous array (e.g. --array=0-{n - 1}) or pass --shard I/N")
    if "WORLD_SIZE" in env and "RANK" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        i, n = i * world + rank, n * world
    return parse_shard((i, n))


def _resolution(resolution) -> tuple[int, int]:
    res = (int(resolution), int(resolution)) if isinstance(resolution, (int, np.integer)) else tuple(
        int(r) for r in resolution)
    if len(res) != 2 or min(res) < 8 or max(res) > 4096:
        raise ExportError(f"--resolution must be a size (or height, width) within 8..4096, got {resolution}")
    return res


def _created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = int(epoch) if epoch else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _check_out(root: Path) -> bool:
    """Whether ``root`` already holds an export job; raises if it cannot hold one. Writes nothing."""
    if root.exists() and not root.is_dir():
        raise ExportError(f"--out {str(root)!r} exists and is not a folder")
    if root.is_dir():
        if (root / JOB).is_file():
            return True
        if {p.name for p in root.iterdir()} - {".export"}:  # .export alone: another shard is creating the job
            raise ExportError(f"--out {str(root)!r} exists, is not empty and is not a synth-torch export "
                              f"(no {JOB}); choose a new folder")
        if not os.access(root, os.W_OK | os.X_OK):
            raise ExportError(f"--out {str(root)!r} is not writable")
        return False
    ancestor = root.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ExportError(f"cannot create --out {str(root)!r}: {str(ancestor)!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ExportError(f"cannot create --out {str(root)!r}: folder {str(ancestor)!r} is not writable")
    return False


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _config_diff(a[k], b[k], key + ".")
        elif a.get(k) != b.get(k):
            out.append(key)
    return out


def canonical_command(scenario_arg, n, resolution, formats, out, seed, start, chunk_size, options, parents, sensor,
                      device, backend) -> str:
    """The ``synth-torch export`` command line that reproduces an export (shard flags left out: they do not
    change the result)."""
    H, W = resolution
    args = ["synth-torch", "export", str(scenario_arg), "--n", str(n), "--resolution", str(H) if H == W else f"{H}x{W}",
            "--format", ",".join(formats), "--out", str(out), "--seed", str(seed)]
    if start:
        args += ["--start", str(start)]
    if chunk_size != 500:
        args += ["--chunk-size", str(chunk_size)]
    if options.min_visible_pixels != 1:
        args += ["--min-visible-pixels", str(options.min_visible_pixels)]
    for flag, on in (("--include-hidden", options.include_hidden), ("--yolo-polygons", options.yolo_polygons),
                     ("--no-sensor", not sensor)):
        if on:
            args.append(flag)
    if options.depth_scale != 0.001:
        args += ["--depth-scale", repr(options.depth_scale)]
    if device != "cpu":
        args += ["--device", device]
    if backend != "auto":
        args += ["--backend", backend]
    for p in parents:
        args += ["--parent", str(p)]
    return shlex.join(args)


def export(scenario, n: int, resolution, out, formats="coco,yolo,kitti,webdataset", seed: int = 0, start: int = 0,
           shard=None, chunk_size: int = 500, batch_size: int = 16, options: ExportOptions | None = None,
           overrides: dict | None = None, parents=(), sensor: bool = True, device: str = "cpu", backend: str = "auto",
           progress: bool = False, command: str | None = None) -> ExportResult:
    """Render samples ``start .. start + n - 1`` of ``scenario`` and write them in ``formats`` under ``out``.

    Args:
        scenario: a built-in name, YAML path, dict or :class:`Scenario` (``overrides`` merged on top).
        n, start: how many samples, and the first sample index (exports with disjoint ranges are disjoint).
        resolution: an int or (height, width).
        formats: ``"coco,yolo,kitti,webdataset"`` or a sequence of those names.
        seed: the scenario seed (with the sample index it determines each sample).
        shard: ``"I/N"`` or ``(I, N)``: write only this process's chunks; None reads :func:`shard_from_env`.
        chunk_size: samples per chunk (resume unit, WebDataset shard); batch_size: images rendered at once (it
            does not change the result: a sample never depends on its batch-mates).
        options: :class:`ExportOptions` (what gets annotated, polygons, depth scale).
        parents: export folders this dataset derives from (recorded with their manifest digests).
        progress: show a progress bar; command: the command line to record (default: :func:`canonical_command`).

    Returns an :class:`ExportResult`. Bad input raises :class:`ExportError` (or
    :class:`~synth_torch.scenario.distributions.ConfigError` for the scenario) before anything is written; an
    interrupted call leaves only whole files, and calling again with the same arguments resumes.
    """
    fmt = parse_formats(formats)
    options = options or ExportOptions()
    for name, value, lo in (("--n", n, 1), ("--start", start, 0), ("--chunk-size", chunk_size, 1),
                            ("--batch-size", batch_size, 1), ("--min-visible-pixels", options.min_visible_pixels, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
            raise ExportError(f"{name} must be an integer >= {lo}, got {value!r}")
    if not options.depth_scale > 0:
        raise ExportError(f"--depth-scale must be > 0, got {options.depth_scale}")
    for name, value in (("--include-hidden", options.include_hidden), ("--yolo-polygons", options.yolo_polygons),
                        ("sensor", sensor)):
        if not isinstance(value, (bool, np.bool_)):
            raise ExportError(f"{name} must be true or false, got {value!r}")
    res = _resolution(resolution)
    shard = shard_from_env() if shard is None else parse_shard(shard)
    root = Path(out)
    # a name or YAML path reproduces the scenario on the command line; an object is in manifest scenario.normalised
    scenario_arg = scenario if isinstance(scenario, (str, Path)) else "<scenario.normalised of manifest.json as YAML>"
    sc = load_scenario(scenario, overrides)
    parents = [mf.parent_entry(p) for p in parents]
    exists = _check_out(root)

    ds = SynthDataset(sc, batch_size=min(batch_size, chunk_size), resolution=res, device=device, seed=seed,
                      backend=backend, sensor=sensor)
    class_kinds = ["object"] * len(sc.categories) + ["defect"] * len(sc.defect_types)
    chunks = math.ceil(n / chunk_size)
    config = {
        "formats": list(fmt),
        "scenario": {"name": sc.name, "digest": "sha256:" + sc.fingerprint(), "key_digest": sc.digest(),
                     "root": None if sc.root is None else str(sc.root), "normalised": sc.to_dict()},
        "seed": int(seed), "sample_index_start": int(start), "sample_index_stop": int(start + n), "count": int(n),
        "sample_id": "sample_index * 1024 + slice_id", "resolution": list(res), "backend": ds.context.backend,
        "device": ds.device.type, "shader": ds.shader, "sensor": bool(sensor), "chunk_size": int(chunk_size),
        "chunks": chunks, "options": options.to_dict(), "parents": parents, "assets": mf.asset_provenance(sc),
    }
    layout = Layout(scenario=sc.name, scenario_digest=config["scenario"]["digest"], class_names=sc.class_names,
                    num_categories=len(sc.categories), height=res[0], width=res[1],
                    stem_width=max(6, len(str(start + n - 1))), slice_names=sc.slice_names, options=options)
    for name in fmt:
        FORMATS[name](layout).check()

    if command is None:
        command = canonical_command(scenario_arg, n, res, fmt, out, seed, start, chunk_size, options,
                                    [p["path"] for p in parents], sensor, device, backend)
    if not exists:
        try:
            (root / CHUNKS).mkdir(parents=True, exist_ok=True)
            create_exclusive(root / JOB, dumps({"config": config, "created": _created(), "command": command}))
        except OSError as exc:
            raise ExportError(f"cannot create --out {str(root)!r}: {exc.strerror or exc}") from None
    job = json.loads((root / JOB).read_text())
    diff = _config_diff(job["config"], config)
    if diff:
        raise ExportError(f"--out {str(root)!r} holds an export with different settings ({', '.join(diff[:8])} "
                          f"differ); resume it with its own command ({job['command']}) or choose a new folder")
    result = ExportResult(root=root, shard=shard)
    if (root / mf.MANIFEST).is_file():
        result.complete, result.manifest = True, mf.read_manifest(root)
        return result

    mine = [k for k in range(chunks) if k % shard[1] == shard[0]]
    todo = [k for k in mine if not _chunk_path(root, k).is_file()]
    writers = [FORMATS[name](layout) for name in fmt]
    bounds = {k: _chunk_range(k, start, n, chunk_size) for k in mine}
    total = sum(hi - lo for lo, hi in bounds.values())
    bar = tqdm(total=total, initial=total - sum(bounds[k][1] - bounds[k][0] for k in todo), unit="img",
               disable=not progress, desc=f"export {sc.name} shard {shard[0]}/{shard[1]}", dynamic_ncols=True)
    try:
        for k in todo:
            _write_chunk(ds, writers, layout, root, k, bounds[k], batch_size, bar)
            result.written.append(k)
    finally:
        bar.close()
    result.pending = [k for k in range(chunks) if not _chunk_path(root, k).is_file()]
    if not result.pending:
        result.manifest = _finish(root, job, writers, layout, class_kinds)
        result.complete = True
    return result


def _chunk_path(root: Path, k: int) -> Path:
    return root / CHUNKS / f"{k:06d}.json"


def _chunk_range(k: int, start: int, n: int, chunk_size: int) -> tuple[int, int]:
    return start + k * chunk_size, start + min((k + 1) * chunk_size, n)


def _write_chunk(ds: SynthDataset, writers: list[FormatWriter], layout: Layout, root: Path, k: int,
                 bounds: tuple[int, int], batch_size: int, bar) -> None:
    sink = Sink(root)
    slices = dict.fromkeys(layout.slice_names, 0)
    classes: dict[str, dict] = {}
    items = {w.name: [] for w in writers}
    try:
        for w in writers:
            w.begin_chunk(k, sink)
        for lo in range(bounds[0], bounds[1], batch_size):
            index = torch.arange(lo, min(lo + batch_size, bounds[1]))
            batch = ds.render_batch(index)
            for sample in samples_of(batch, index.numpy(), layout):
                for w in writers:
                    items[w.name].append(w.write(sample, sink))
                slices[sample.slice] += 1
                seen = set()
                for slot in sample.annotated.tolist():
                    name = layout.class_names[int(sample.labels[slot]) - 1]
                    c = classes.setdefault(name, {"instances": 0, "images": 0})
                    c["instances"] += 1
                    if name not in seen:
                        c["images"] += 1
                        seen.add(name)
                bar.update(1)
        ends = {w.name: w.end_chunk(sink) for w in writers}
    except BaseException:
        for w in writers:
            w.abort()
        raise
    record = {"chunk": k, "samples": list(bounds), "counts": {"slices": slices, "classes": classes},
              "formats": {w.name: {"items": items[w.name], **ends[w.name]} for w in writers}, "files": sink.files}
    write_atomic(_chunk_path(root, k), dumps(record))


def _finish(root: Path, job: dict, writers: list[FormatWriter], layout: Layout, class_kinds: list[str]) -> dict:
    cfg = job["config"]
    records = [json.loads(_chunk_path(root, k).read_text()) for k in range(cfg["chunks"])]
    sink = Sink(root, unique=True)
    summaries = {w.name: w.finalize([r["formats"][w.name] for r in records], sink) for w in writers}
    for name in cfg["formats"]:  # leftovers of processes killed while writing a chunk
        for part in (root / name).rglob(f".*{PART_SUFFIX}"):
            part.unlink(missing_ok=True)
    files = sorted([f for r in records for f in r["files"]] + sink.files)
    manifest, checksums = mf.build(job, records, summaries, files, layout.class_names, class_kinds,
                                   layout.slice_names, cfg["assets"])
    write_atomic(root / mf.CHECKSUMS, checksums, unique=True)
    write_atomic(root / mf.MANIFEST, dumps_pretty(manifest), unique=True)
    return manifest
