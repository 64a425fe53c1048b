"""``synth-torch bench``: labeled-batch throughput of the live stream against reading the same kind of samples
from disk, measured side by side in one run, with a per-stage breakdown and the memory of a long stream.

Both sides produce what a training step consumes: an image and its labels (instance map, depth, boxes). The
disk side reads samples written beforehand as PNG (image, 16-bit instance, 16-bit depth in mm) + JSON (boxes,
labels) through a ``DataLoader`` with 2 worker processes, as an offline generator's output would be read. The
stream side renders with :class:`~synth_torch.data.SynthDataset`, both in the main process (all threads) and
through a ``DataLoader`` with the same 2 workers. Every figure is images per second over several batches after
warm-up; ratios divide by the disk figure of the same run. Timing lives here, never in tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from synth_torch.fileio import writable_folder, write_text_atomic

CASES = {  # name -> (scenario, batch, resolution)
    "tabletop-128": ("tabletop", 64, 128),
    "tabletop-256": ("tabletop", 64, 256),
    "defects-128": ("defects", 64, 128),
    "defects-256": ("defects", 64, 256),
    "train-default": ("defects", 8, 64),
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} CPUs{gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {datetime.date.today().isoformat()}")


def rss_mb() -> float:
    """Resident memory of this process now (MB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class DiskSamples(Dataset):
    """Samples written by :func:`write_samples` (what an offline generator leaves on disk)."""

    def __init__(self, root: Path):
        self.files = sorted(root.glob("*.json"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        meta = json.loads(self.files[i].read_text())
        stem = self.files[i].with_suffix("")
        image = torch.from_numpy(np.array(Image.open(f"{stem}_image.png"), dtype=np.uint8)).permute(2, 0, 1)
        instance = torch.from_numpy(np.array(Image.open(f"{stem}_instance.png"), dtype=np.int32))
        depth = torch.from_numpy(np.array(Image.open(f"{stem}_depth.png"), dtype=np.int32)).float() / 1000.0
        return {"image": image.float() / 255.0, "instance": instance, "depth": depth,
                "boxes": torch.tensor(meta["boxes"]).reshape(-1, 4), "labels": torch.tensor(meta["labels"])}


def collate(samples: list[dict]) -> dict:
    n = max(len(s["boxes"]) for s in samples)
    boxes = torch.zeros(len(samples), n, 4)
    for i, s in enumerate(samples):
        boxes[i, : len(s["boxes"])] = s["boxes"]
    return {"image": torch.stack([s["image"] for s in samples]),
            "instance": torch.stack([s["instance"] for s in samples]),
            "depth": torch.stack([s["depth"] for s in samples]), "boxes": boxes}


def write_samples(ds, root: Path, batches: int) -> None:
    from PIL import Image

    for k in range(batches):
        batch = ds.render_batch(torch.arange(k * ds.batch_size, (k + 1) * ds.batch_size))
        for i in range(len(batch)):
            stem = root / f"{int(batch.sample_id[i]):012d}"
            img = (batch.image[i].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(img).save(f"{stem}_image.png")
            Image.fromarray(batch.instance[i].to(torch.int32).numpy().astype(np.uint16)).save(f"{stem}_instance.png")
            Image.fromarray((batch.depth[i, 0] * 1000).round().to(torch.int32).numpy().astype(np.uint16)).save(
                f"{stem}_depth.png")
            keep = batch.valid[i]
            stem.with_suffix(".json").write_text(json.dumps({"boxes": batch.boxes[i, keep].tolist(),
                                                             "labels": batch.labels[i, keep].tolist()}))


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(iterable, batches: int, warmup: int = 1, device: torch.device = torch.device("cpu")) -> float:
    it = iter(iterable)
    for _ in range(warmup):
        next(it)
    synchronize(device)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        b = next(it)
        images += b["image"].shape[0] if isinstance(b, dict) else len(b)
    synchronize(device)
    return images / (time.perf_counter() - start)


def stages(ds, batches: int) -> dict[str, float]:
    """Wall-clock milliseconds per batch of every stage of ``SynthDataset.render_batch``, run stage by stage in the
    main process (all threads)."""
    from synth_torch.labels import label_passes
    from synth_torch.scene import assemble, build_gbuffer
    from synth_torch.sensor import apply_sensor
    from synth_torch.shading import render_image

    sc, B = ds.scenario, ds.batch_size
    totals: dict[str, float] = {}

    def timed(name, fn):
        synchronize(ds.device)
        start = time.perf_counter()
        out = fn()
        synchronize(ds.device)
        totals[name] = totals.get(name, 0.0) + (time.perf_counter() - start) * 1000 / batches
        return out

    for k in range(batches):
        index = torch.arange(k * B, (k + 1) * B)
        params = timed("sample", lambda: ds.sampler.sample_params(index, ds.slice_ids(index),
                                                                   ds.mixture.overrides()))
        spec = timed("build spec", lambda: ds.sampler.build(params, ds.resolution).to(ds.device))
        geom = timed("assemble", lambda: assemble(spec))
        gbuffer = timed("g-buffer passes", lambda: build_gbuffer(spec, geom, ds.context, ds.resolution,
                                                                 shadows=sc.shadows, uv=sc.texture_images is not None))
        image = timed("shade + antialias", lambda: render_image(spec, geom, gbuffer, ds.shader,
                                                                antialias=sc.antialias))
        timed("labels", lambda: label_passes(spec, gbuffer, geom, ds.sampler.num_objects))
        sensor = {k: v for k, v in params.values.items() if k.startswith("sensor.")}
        timed("sensor", lambda: apply_sensor(image, sensor, spec.keys, ds.sensor_supports))
    return totals


def raw_nvdiffrast(ds, batches: int) -> dict[str, float] | None:
    """Milliseconds per batch for the same scenes (the camera pass of the G-buffer): nvdiffrast's ``rasterize`` +
    ``interpolate`` called directly, the same two calls through :mod:`synth_torch.render`, and the whole labeled
    batch (:meth:`SynthDataset.render_batch`). None unless the dataset renders on CUDA through nvdiffrast."""
    if ds.context.backend != "nvdiffrast":
        return None
    import nvdiffrast.torch as nvdr

    import synth_torch.render as dr
    from synth_torch.scene.gbuffer import FAR, NEAR
    from synth_torch.scene.geometry import assemble, camera_clip

    scenes, B = [], ds.batch_size
    for k in range(batches):
        index = torch.arange(k * B, (k + 1) * B)
        spec = ds.sampler.build(ds.sampler.sample_params(index, ds.slice_ids(index), ds.mixture.overrides()),
                                ds.resolution).to(ds.device)
        geom = assemble(spec)
        camera, clip = camera_clip(spec, geom, ds.resolution, NEAR, FAR)
        attr = torch.cat((camera, geom.local), -1).contiguous()
        scenes.append((clip.contiguous(), geom.tri.to(torch.int32).contiguous(), geom.ranges, attr))
    native = nvdr.RasterizeCudaContext(device=ds.device)

    def raw(clip, tri, ranges, attr):
        rast, _ = nvdr.rasterize(native, clip, tri, ds.resolution, ranges=ranges)
        return nvdr.interpolate(attr, rast, tri)

    def ours(clip, tri, ranges, attr):
        rast, _ = dr.rasterize(ds.context, clip, tri, ds.resolution, ranges=ranges)
        return dr.interpolate(attr, rast, tri)

    def ms(fn) -> float:
        fn(*scenes[0])  # warm-up
        synchronize(ds.device)
        start = time.perf_counter()
        for scene in scenes:
            fn(*scene)
        synchronize(ds.device)
        return (time.perf_counter() - start) * 1000 / len(scenes)

    full = ms_per_batch(lambda k: ds.render_batch(torch.arange(k * B, (k + 1) * B)), batches, ds.device)
    return {"nvdiffrast": ms(raw), "synth_torch.render": ms(ours), "labeled batch": full}


def ms_per_batch(render, batches: int, device: torch.device) -> float:
    render(0)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for k in range(batches):
        render(k)
    synchronize(device)
    return (time.perf_counter() - start) * 1000 / batches


def run_case(name: str, batches: int, workers: int, progress, device: torch.device = torch.device("cpu")) -> dict:
    """One case: the stream in the main process on ``device``; through DataLoader workers (CPU rendering only:
    on CUDA the stream renders in the main process); the same kind of samples read from disk; the stage breakdown;
    on CUDA with nvdiffrast also the raw-nvdiffrast comparison."""
    from synth_torch import SynthDataset

    scenario, B, R = CASES[name]
    ds = SynthDataset(scenario, batch_size=B, resolution=R, seed=0, device=device)
    main = images_per_second(ds, batches, device=device)
    progress.update(1)
    streamed = None
    if device.type == "cpu":
        loader = DataLoader(SynthDataset(scenario, batch_size=B, resolution=R, seed=0), batch_size=None,
                            num_workers=workers, persistent_workers=False)
        streamed = images_per_second(loader, batches, warmup=workers)
    progress.update(1)
    with tempfile.TemporaryDirectory() as tmp:
        write_samples(SynthDataset(scenario, batch_size=B, resolution=R, seed=1), Path(tmp), batches + workers + 1)
        disk_loader = DataLoader(DiskSamples(Path(tmp)), batch_size=B, num_workers=workers, collate_fn=collate,
                                 persistent_workers=False)
        disk = images_per_second(disk_loader, batches, warmup=workers)
    progress.update(1)
    breakdown = stages(ds, max(2, batches // 2))
    raw = raw_nvdiffrast(ds, max(2, batches))
    progress.update(1)
    return {"case": name, "scenario": scenario, "batch": B, "resolution": R, "device": str(device),
            "backend": ds.context.backend, "main": main, "workers": streamed, "disk": disk, "stages_ms": breakdown,
            "raw_ms": raw}


def memory_run(batches: int, progress) -> list[tuple[int, float]]:
    """RSS (MB) along ``batches`` batches of the default training configuration (8 images, 64x64)."""
    from synth_torch import SynthDataset

    ds = SynthDataset("defects", batch_size=8, resolution=64, seed=0)
    points, it = [], iter(ds)
    marks = {0, 10, 100, batches // 4, batches // 2, 3 * batches // 4, batches - 1}
    for k in range(batches):
        next(it)
        if k in marks:
            points.append((k + 1, rss_mb()))
        progress.update(1)
    return points


def format_report(results: list[dict], memory: list[tuple[int, float]] | None, workers: int) -> str:
    device = results[0].get("device", "cpu") if results else "cpu"
    lines = [f"Machine: {machine()}", f"Rendering device: {device}"
             + (f" (backend {results[0]['backend']})" if results else ""), "",
             f"| case | stream, main process (img/s) | stream, {workers} workers (img/s) | disk, {workers} workers "
             "(img/s) | ratio main / disk | ratio workers / disk |",
             "|---|---|---|---|---|---|"]

    def figure(value, fmt):
        return "n/a" if value is None else format(value, fmt)

    for r in results:
        ratio = None if r["workers"] is None else r["workers"] / r["disk"]
        lines.append(f"| {r['case']} ({r['scenario']}, {r['batch']} x {r['resolution']}²) | {r['main']:,.0f} | "
                     f"{figure(r['workers'], ',.0f')} | {r['disk']:,.0f} | {r['main'] / r['disk']:.2f} | "
                     f"{figure(ratio, '.2f')} |")
    if results and results[0]["workers"] is None:
        lines += ["", "On CUDA the stream renders in the main process (DataLoader workers cannot share the GPU "
                      "context), so there is no workers column."]
    raw = [r for r in results if r.get("raw_ms")]
    if raw:
        lines += ["", "Same scenes, milliseconds per batch: nvdiffrast's rasterize + interpolate called directly, the "
                      "same through synth_torch.render, and the whole labeled batch:", "",
                  "| case | nvdiffrast (ms) | synth_torch.render (ms) | overhead | labeled batch (ms) | "
                  "labeled batch / nvdiffrast |", "|---|---|---|---|---|---|"]
        for r in raw:
            ms = r["raw_ms"]
            lines.append(f"| {r['case']} | {ms['nvdiffrast']:.2f} | {ms['synth_torch.render']:.2f} | "
                         f"{100 * (ms['synth_torch.render'] / ms['nvdiffrast'] - 1):+.0f} % | "
                         f"{ms['labeled batch']:.2f} | {ms['labeled batch'] / ms['nvdiffrast']:.1f} x |")
    names = list(results[0]["stages_ms"]) if results else []
    if names:
        lines += ["", "Milliseconds per batch by stage (wall clock, main process, all threads):", "",
                  "| case | " + " | ".join(names) + " | total |", "|---|" + "---|" * (len(names) + 1)]
        for r in results:
            ms = r["stages_ms"]
            lines.append(f"| {r['case']} | " + " | ".join(f"{ms[n]:.1f}" for n in names) + f" | {sum(ms.values()):.1f} |")
    if memory:
        lines += ["", "Resident memory along a long stream (train-default case): " +
                  ", ".join(f"batch {k:,}: {mb:.0f} MB" for k, mb in memory)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(prog="synth-torch bench", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--batches", type=int, default=6, help="timed batches per measurement (default 6)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both sides (default 2)")
    parser.add_argument("--memory-batches", type=int, default=0,
                        help="also stream this many train-default batches and report resident memory (e.g. 10000)")
    parser.add_argument("--json", default=None, help="also write the raw results to this JSON file")
    parser.add_argument("--device", default="cpu", help="render on this device: cpu (default) or cuda[:N]; on CUDA "
                        "with nvdiffrast the report adds raw nvdiffrast on the same scenes")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.workers < 0 or args.memory_batches < 0:
        parser.error("--batches must be >= 1, --workers and --memory-batches >= 0")
    if args.json:
        try:  # before minutes of measuring, not after
            writable_folder(Path(args.json).parent, create=False)
        except OSError as exc:
            parser.error(f"--json: {exc}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine")
    with tqdm(total=4 * len(args.cases) + args.memory_batches, desc="bench", unit="step") as progress:
        results = [run_case(c, args.batches, args.workers, progress, device) for c in args.cases]
        memory = memory_run(args.memory_batches, progress) if args.memory_batches else None
    report = format_report(results, memory, args.workers)
    print(report)
    out = {"machine": machine(), "results": results, "memory_mb": memory}
    if args.json:
        write_text_atomic(args.json, json.dumps(out, indent=2))
    return out
