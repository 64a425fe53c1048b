"""Time of one slice-mining call at the scale of a real round: ``find_slices`` on 20,000 samples x 20
parameters with a planted pair region (the figure the old timed test asserted; timing lives here, not in tests).

    python benchmarks/bench_mining.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from synth_torch.benchmark import machine
from synth_torch.loop.mining import find_slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--params", type=int, default=20)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(8)
    params = {f"p{i}": torch.rand(args.samples, generator=g) for i in range(args.params)}
    loss = torch.randn(args.samples, generator=g) + ((params["p3"] < 0.25) & (params["p7"] >= 0.75)).float()
    found = find_slices(params, loss)  # warm-up (lazy imports, allocator)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        find_slices(params, loss)
        times.append(time.perf_counter() - start)
    print(f"Machine: {machine()}")
    print(f"find_slices, {args.samples:,} samples x {args.params} params: median {statistics.median(times):.3f} s "
          f"(best {min(times):.3f} s of {args.repeats}); top slice {found[0].name}")


if __name__ == "__main__":
    main()
