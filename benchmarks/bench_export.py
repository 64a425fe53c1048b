"""Export throughput per format (images per second) and bytes per image, next to rendering, in one run.

    python benchmarks/bench_export.py [--scenario tabletop] [--resolutions 128 256] [--n 64] [--batch 16] [--repeats 3]

For each resolution:

* ``render``: ``SynthDataset.render_batch`` alone (2 threads);
* one row per format: writing the already rendered images in that format alone: PNG encoding, label
  conversion, atomic file writes, the merged files (COCO JSON, data.yaml, tar shards), through the exporter's
  own writers;
* ``all four``: writing all formats at once (each image is PNG-encoded once and shared);
* ``export``: the whole ``synth_torch.export.export`` call with all formats, rendering included.

Each row shows wall-clock img/s and the process's CPU milliseconds per image (all threads; writing is
single-threaded, rendering uses every torch thread). Figures are the best of ``--repeats`` runs; on a shared
machine (the load average is printed) the CPU time is the steadier one.
``end-to-end = 1 / (1 / render + 1 / write)`` (wall) is what one process achieves for that format alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from synth_torch import SynthDataset
from synth_torch.export import FORMATS, ExportOptions, export
from synth_torch.export.base import Sink
from synth_torch.export.sample import Layout, samples_of


def render(ds: SynthDataset, n: int, batch: int) -> tuple[float, float, list]:
    """(wall seconds, CPU seconds, [(index, batch)]) to render samples 0..n-1."""
    start, cpu, batches = time.perf_counter(), time.process_time(), []
    for lo in range(0, n, batch):
        index = torch.arange(lo, min(lo + batch, n))
        batches.append((index, ds.render_batch(index)))
    return time.perf_counter() - start, time.process_time() - cpu, batches


def write(batches, layout: Layout, formats: tuple[str, ...], out: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, bytes) to write every rendered image in ``formats`` (one chunk, merged files
    included)."""
    start, cpu = time.perf_counter(), time.process_time()
    sink = Sink(out)
    writers = [FORMATS[f](layout) for f in formats]
    items = {w.name: [] for w in writers}
    for w in writers:
        w.begin_chunk(0, sink)
    for index, batch in batches:
        for sample in samples_of(batch, index.numpy(), layout):
            for w in writers:
                items[w.name].append(w.write(sample, sink))
    ends = {w.name: w.end_chunk(sink) for w in writers}
    for w in writers:
        w.finalize([{"items": items[w.name], **ends[w.name]}], sink)
    return time.perf_counter() - start, time.process_time() - cpu, sum(f[2] for f in sink.files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="tabletop")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--n", type=int, default=64, help="images per measurement")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per write figure")
    args = parser.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"scenario {args.scenario}, {args.n} images, batch {args.batch}, best of {args.repeats}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'res':>5} {'stage':>10} {'img/s':>8} {'CPU ms/img':>11} {'end-to-end img/s':>17} {'KB/img':>8}")
    options = ExportOptions()
    with tempfile.TemporaryDirectory() as tmp:
        export(args.scenario, n=2, resolution=32, out=Path(tmp) / "warmup", batch_size=2, shard=(0, 1))  # JIT, caches
        for res in args.resolutions:
            ds = SynthDataset(args.scenario, batch_size=args.batch, resolution=res, seed=0)
            render(ds, args.batch, args.batch)  # warm-up at this size
            runs = [render(ds, args.n, args.batch) for _ in range(args.repeats)]
            batches = runs[0][2]
            render_rate, render_cpu = args.n / min(r[0] for r in runs), min(r[1] for r in runs) / args.n
            print(f"{res:>5} {'render':>10} {render_rate:>8.1f} {1e3 * render_cpu:>11.1f} {'':>17} {'':>8}")
            sc = ds.scenario
            layout = Layout(scenario=sc.name, scenario_digest="sha256:" + sc.fingerprint(), class_names=sc.class_names,
                            num_categories=len(sc.categories), height=res, width=res, stem_width=6,
                            slice_names=sc.slice_names, options=options)
            for formats in [(f,) for f in FORMATS] + [tuple(FORMATS)]:
                runs = [write(batches, layout, formats, Path(tmp) / f"{res}-{'-'.join(formats)}-{k}")
                        for k in range(args.repeats)]
                rate, cpu, size = args.n / min(r[0] for r in runs), min(r[1] for r in runs) / args.n, runs[0][2]
                name = formats[0] if len(formats) == 1 else "all four"
                print(f"{res:>5} {name:>10} {rate:>8.1f} {1e3 * cpu:>11.1f} {1 / (1 / render_rate + 1 / rate):>17.1f} "
                      f"{size / args.n / 1e3:>8.1f}")
            start, cpu = time.perf_counter(), time.process_time()
            export(args.scenario, n=args.n, resolution=res, out=Path(tmp) / f"{res}-export", batch_size=args.batch,
                   chunk_size=args.n, shard=(0, 1))
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            print(f"{res:>5} {'export':>10} {'':>8} {1e3 * cpu / args.n:>11.1f} {args.n / wall:>17.1f} {'':>8}")


if __name__ == "__main__":
    main()
