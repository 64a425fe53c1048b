"""Labeled-batch throughput of SynthDataset against reading the same samples pre-rendered from disk.

The disk baseline is what users have today: image PNG, instance PNG (16-bit), depth (16-bit PNG, mm)
and JSON boxes per sample, read back through a DataLoader with 2 workers. Both are measured in the same
run on the same machine, and the ratio is printed.

    python benchmarks/bench_dataset.py [--scenario tabletop] [--resolutions 128 256] [--batch 64] [--batches 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from synth_torch import SynthDataset


class DiskSamples(Dataset):
    """Reads samples written by :func:`write_samples` (what an offline generator leaves on disk)."""

    def __init__(self, root: Path):
        self.files = sorted(root.glob("*.json"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        meta = json.loads(self.files[i].read_text())
        stem = self.files[i].with_suffix("")
        image = torch.from_numpy(np.array(Image.open(f"{stem}_image.png"), dtype=np.uint8)).permute(2, 0, 1)
        instance = torch.from_numpy(np.array(Image.open(f"{stem}_instance.png"), dtype=np.int32))
        depth = torch.from_numpy(np.array(Image.open(f"{stem}_depth.png"), dtype=np.int32)).float() / 1000.0
        return {"image": image.float() / 255.0, "instance": instance, "depth": depth,
                "boxes": torch.tensor(meta["boxes"]), "labels": torch.tensor(meta["labels"])}


def collate(samples: list[dict]) -> dict:
    n = max(len(s["boxes"]) for s in samples)
    boxes = torch.zeros(len(samples), n, 4)
    for i, s in enumerate(samples):
        boxes[i, : len(s["boxes"])] = s["boxes"]
    return {"image": torch.stack([s["image"] for s in samples]), "instance": torch.stack([s["instance"] for s in samples]),
            "depth": torch.stack([s["depth"] for s in samples]), "boxes": boxes}


def write_samples(ds: SynthDataset, root: Path, batches: int) -> None:
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


def measure(iterable, batches: int) -> float:
    """Images per second over ``batches`` batches after one warm-up batch."""
    it = iter(iterable)
    next(it)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        b = next(it)
        images += len(b) if not isinstance(b, dict) else b["image"].shape[0]
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="tabletop")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"device {args.device}, scenario {args.scenario}, batch {args.batch}")
    print(f"{'res':>5} {'synth img/s':>12} {'disk img/s':>11} {'ratio':>6} {'tris/img':>9} {'objects/img':>12}")
    for res in args.resolutions:
        ds = SynthDataset(args.scenario, batch_size=args.batch, resolution=res, device=args.device, seed=0)
        synth = measure(ds, args.batches)
        probe = ds.render_batch(torch.arange(args.batch))
        objects = float(probe.valid.sum(1).float().mean())
        from synth_torch.scene.renderer import assemble

        spec = ds.sampler.sample(torch.arange(args.batch), ds.slice_ids(torch.arange(args.batch)),
                                 ds.weights.overrides(ds.scenario), ds.resolution)
        tris = assemble(spec).tri.shape[0] / args.batch
        with tempfile.TemporaryDirectory() as tmp:
            write_samples(SynthDataset(args.scenario, batch_size=args.batch, resolution=res, seed=1), Path(tmp),
                          args.batches + 1)
            loader = DataLoader(DiskSamples(Path(tmp)), batch_size=args.batch, num_workers=2, collate_fn=collate,
                                persistent_workers=False)
            disk = measure(loader, args.batches)
        print(f"{res:>5} {synth:>12.1f} {disk:>11.1f} {synth / disk:>6.2f} {tris:>9.0f} {objects:>12.1f}")


if __name__ == "__main__":
    main()
