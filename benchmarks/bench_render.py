"""Throughput of ``synth_torch.render`` backends: images per second for rasterize + interpolate.

    python benchmarks/bench_render.py            # full grid (several minutes on 2 cores)
    python benchmarks/bench_render.py --quick    # small grid, fewer repetitions
    python benchmarks/bench_render.py --threads 1   # single-threaded (robust on a shared machine)
    python benchmarks/bench_render.py --profile     # where the headline case spends its time, then exit
    python benchmarks/bench_render.py --headline    # the headline case only

Scenes: UV spheres at random positions in front of a perspective camera (seeded), one sphere of about N
triangles per image. Each backend runs over resolution x triangles-per-image, forward only
(``torch.no_grad``) and forward + backward (a loss on the interpolated attribute, gradients to the clip
positions). Backends of one configuration are timed alternately, call after call, so that the cpu/torch
ratio compares runs under the same machine load. Reported: median images/s over the repetitions
(best in brackets). The headline case is batch 64, 128x128, ~2k triangles per image, rasterize +
interpolate without gradients. Output is Markdown, ready for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import synth_torch.render as dr


def uv_sphere(rings: int, segments: int):
    """Closed UV sphere: vertices [V, 3] (float64), triangles [T, 3] int32, T = 2 * segments * (rings - 1)."""
    th = torch.arange(1, rings, dtype=torch.float64) * math.pi / rings
    ph = torch.arange(segments, dtype=torch.float64) * 2 * math.pi / segments
    ring = torch.stack((th.sin()[:, None] * ph.cos(), th.cos()[:, None].expand(-1, segments),
                        th.sin()[:, None] * ph.sin()), -1).reshape(-1, 3)
    verts = torch.cat((torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64), ring,
                       torch.tensor([[0.0, -1.0, 0.0]], dtype=torch.float64)))
    s = torch.arange(segments)
    nxt = (s + 1) % segments
    tris = [torch.stack((torch.zeros_like(s), 1 + nxt, 1 + s), 1)]
    for r in range(rings - 2):
        a, b = 1 + r * segments + s, 1 + r * segments + nxt
        tris += [torch.stack((a, b, b + segments), 1), torch.stack((a, b + segments, a + segments), 1)]
    last, base = len(verts) - 1, 1 + (rings - 2) * segments
    tris.append(torch.stack((torch.full_like(s, last), base + s, base + nxt), 1))
    return verts, torch.cat(tris).to(torch.int32)


def sphere_scene(batch: int, triangles: int, seed: int = 0):
    """``batch`` spheres of about ``triangles`` triangles, randomly placed: pos [B, V, 4] float32, tri [T, 3]."""
    segments = max(8, round(math.sqrt(triangles)))
    rings = max(3, round(triangles / (2 * segments)) + 1)
    verts, tri = uv_sphere(rings, segments)
    g = torch.Generator().manual_seed(seed)
    offset = torch.stack(((torch.rand(batch, generator=g, dtype=torch.float64) - 0.5) * 2,
                          (torch.rand(batch, generator=g, dtype=torch.float64) - 0.5) * 2,
                          -4.0 - 2.0 * torch.rand(batch, generator=g, dtype=torch.float64)), 1)
    f, near, far = 1.0 / math.tan(math.radians(30.0)), 0.1, 100.0
    proj = torch.tensor([[f, 0, 0, 0], [0, f, 0, 0],
                         [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
                         [0, 0, -1, 0]], dtype=torch.float64)
    p = verts[None] + offset[:, None]
    pos = torch.cat((p, torch.ones_like(p[..., :1])), -1) @ proj.T
    return pos.float(), tri


def make_step(ctx, pos, tri, res, attr, backward: bool):
    """One rasterize + interpolate call (+ backward) as a closure; synchronises CUDA."""
    sync = torch.cuda.synchronize if pos.is_cuda else (lambda: None)

    def step():
        if backward:
            p = pos.detach().requires_grad_(True)
            rast, _ = dr.rasterize(ctx, p, tri, res)
            out, _ = dr.interpolate(attr, rast, tri)
            out.square().sum().backward()
        else:
            with torch.no_grad():
                rast, _ = dr.rasterize(ctx, pos, tri, res)
                dr.interpolate(attr, rast, tri)
        sync()

    return step


def time_side_by_side(steps: dict, min_time: float, min_reps: int, max_reps: int) -> dict:
    """Alternate the steps until each has run ``min_reps`` times and for ``min_time`` seconds (or ``max_reps``)."""
    for step in steps.values():  # warm-up (compilation, caches)
        step()
    times = {name: [] for name in steps}
    while True:
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
        n = len(next(iter(times.values())))
        if n >= max_reps or (n >= min_reps and min(sum(v) for v in times.values()) >= min_time):
            return times


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        pass
    import numba

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{model}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}, numba threads "
            f"{numba.get_num_threads()}){gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"numba {numba.__version__}")


def fmt(ts: list, batch: int) -> str:
    return f"{batch / statistics.median(ts):,.0f} ({batch / min(ts):,.0f})"


def profile(step, calls: int = 20) -> None:
    """cProfile of ``calls`` steps: time per call of the functions that take the most time."""
    import cProfile
    import pstats

    for _ in range(3):
        step()
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    for _ in range(calls):
        step()
    prof.disable()
    wall = (time.perf_counter() - t) / calls
    stats = pstats.Stats(prof).stats
    rows = sorted(((v[2], f"{k[0].split('/')[-1]}:{k[2]}") for k, v in stats.items()), reverse=True)[:6]
    print(f"Headline step, cpu backend: {1e3 * wall:.1f} ms per call ({64 / wall:,.0f} images/s) under the profiler\n")
    print("| function | ms per call (own time) |")
    print("|---|---|")
    for own, name in rows:
        print(f"| {name} | {1e3 * own / calls:.2f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small grid and fewer repetitions")
    ap.add_argument("--batch", type=int, default=8, help="images per call in the grid (default 8)")
    ap.add_argument("--threads", type=int, default=None, help="torch and numba threads (default: as configured)")
    ap.add_argument("--profile", action="store_true", help="profile the headline case (cpu backend) and exit")
    ap.add_argument("--headline", action="store_true", help="run the headline case only")
    args = ap.parse_args(argv)
    if args.threads:
        import numba

        numba.set_num_threads(args.threads)  # first: starting numba's OpenMP pool may reset the shared thread count
        torch.set_num_threads(args.threads)

    resolutions = (64, 128) if args.quick else (64, 128, 256, 512)
    counts = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    min_time, min_reps, max_reps = (0.3, 2, 10) if args.quick else (1.0, 3, 50)
    backends = ["cpu", "torch"]
    nv = dr.nvdiffrast_available()
    load0 = os.getloadavg()[0]

    command = " ".join(["python", "benchmarks/bench_render.py"] + (argv if argv is not None else sys.argv[1:]))
    print(f"# `{command}` ({datetime.datetime.now().isoformat(timespec='minutes')})")
    print(f"\nMachine: {machine()}\n")

    # Headline: batch 64, 128x128, ~2k triangles, rasterize + interpolate, no gradients.
    pos, tri = sphere_scene(64, 2_000)
    attr = torch.rand(1, pos.shape[1], 3, generator=torch.Generator().manual_seed(1))
    if args.profile:
        profile(make_step(dr.RasterizeContext("cpu", "cpu"), pos, tri, (128, 128), attr, False))
        return
    steps = {b: make_step(dr.RasterizeContext("cpu", b), pos, tri, (128, 128), attr, False) for b in backends}
    if nv:
        steps["nvdiffrast"] = make_step(dr.RasterizeContext("cuda", "nvdiffrast"), pos.cuda(), tri.cuda(), (128, 128),
                                        attr.cuda(), False)
    times = time_side_by_side(steps, 2 * min_time, 2 * min_reps, 4 * max_reps)
    print(f"## Headline: batch 64, 128x128, {tri.shape[0]} triangles per image, rasterize + interpolate (no grad)\n")
    print("| backend | images/s, median (best) |")
    print("|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {fmt(ts, 64)} |")
    ratio = statistics.median(times["torch"]) / statistics.median(times["cpu"])
    print(f"\ncpu / torch speed ratio: {ratio:.1f}x\n")
    if args.headline:
        print(f"Load average (1 min) at start / end: {load0:.1f} / {os.getloadavg()[0]:.1f}")
        return

    for backward in (False, True):
        title = "forward + backward" if backward else "forward (no grad)"
        cols = backends + (["nvdiffrast"] if nv else [])
        print(f"## Grid, {title}: images/s, median (best), batch {args.batch}\n")
        print("| resolution | triangles/image | " + " | ".join(cols) + " | cpu/torch |")
        print("|---" * (len(cols) + 3) + "|")
        for res in resolutions:
            for count in counts:
                pos, tri = sphere_scene(args.batch, count)
                attr = torch.rand(1, pos.shape[1], 3, generator=torch.Generator().manual_seed(1))
                steps = {b: make_step(dr.RasterizeContext("cpu", b), pos, tri, (res, res), attr, backward)
                         for b in backends}
                if nv:
                    steps["nvdiffrast"] = make_step(dr.RasterizeContext("cuda", "nvdiffrast"), pos.cuda(), tri.cuda(),
                                                    (res, res), attr.cuda(), backward)
                times = time_side_by_side(steps, min_time, min_reps, max_reps)
                ratio = statistics.median(times["torch"]) / statistics.median(times["cpu"])
                cells = " | ".join(fmt(times[c], args.batch) for c in cols)
                print(f"| {res}x{res} | {tri.shape[0]:,} | {cells} | {ratio:.1f}x |")
                sys.stdout.flush()
        print()
    print(f"Load average (1 min) at start / end: {load0:.1f} / {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
