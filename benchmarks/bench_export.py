"""Export throughput per format: images per second end to end (render, encode, write, merge, manifest) and bytes
per image, next to rendering alone, measured side by side in one run.

    python benchmarks/bench_export.py [--scenario tabletop] [--resolutions 128 256] [--n 64] [--batch 16] [--repeats 2]

Each format is exported on its own into a fresh folder (so each figure includes rendering), then all four
together (images are rendered and PNG-encoded once and shared). ``render`` is ``SynthDataset.render_batch``
alone over the same samples: the gap to it is the cost of the format. Wall-clock img/s and the process's CPU
time per image (all threads) are both printed; on a shared machine the CPU time is the steadier figure. Every
figure is the best of ``--repeats`` runs after a warm-up at each resolution; the load average is printed.
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
from synth_torch.export import FORMATS, export


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process over all its threads, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def render_all(scenario: str, n: int, res: int, batch: int) -> None:
    ds = SynthDataset(scenario, batch_size=batch, resolution=res, seed=0)
    for lo in range(0, n, batch):
        ds.render_batch(torch.arange(lo, min(lo + batch, n)))


def export_bytes(scenario: str, n: int, res: int, batch: int, formats: str, out: Path) -> float:
    result = export(scenario, n=n, resolution=res, out=out, formats=formats, batch_size=batch, chunk_size=n, shard=(0, 1))
    return sum(f["bytes"] for f in result.manifest["formats"].values()) / n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="tabletop")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--n", type=int, default=64, help="images per measurement")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per figure")
    args = parser.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"scenario {args.scenario}, {args.n} images per row, batch {args.batch}, best of {args.repeats}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'res':>5} {'format':>10} {'img/s':>8} {'CPU ms/img':>11} {'CPU vs render':>13} {'KB/img':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        export(args.scenario, n=2, resolution=32, out=Path(tmp) / "warmup", batch_size=2, shard=(0, 1))  # JIT, caches
        for res in args.resolutions:
            render_all(args.scenario, args.batch, res, args.batch)  # warm-up at this size
            runs = [timed(lambda: render_all(args.scenario, args.n, res, args.batch)) for _ in range(args.repeats)]
            wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
            render_cpu = cpu
            print(f"{res:>5} {'render':>10} {args.n / wall:>8.1f} {1e3 * cpu / args.n:>11.1f} {1.0:>13.2f} {'-':>8}")
            for fmt in (*FORMATS, ",".join(FORMATS)):
                runs = [timed(lambda k=k: export_bytes(args.scenario, args.n, res, args.batch, fmt,
                                                       Path(tmp) / f"{res}-{fmt}-{k}")) for k in range(args.repeats)]
                wall, cpu, size = min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2]
                name = fmt if "," not in fmt else "all four"
                print(f"{res:>5} {name:>10} {args.n / wall:>8.1f} {1e3 * cpu / args.n:>11.1f} {cpu / render_cpu:>13.2f} "
                      f"{size / 1e3:>8.1f}")


if __name__ == "__main__":
    main()
