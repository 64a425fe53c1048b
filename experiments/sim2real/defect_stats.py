"""How each defect class looks, real against synthetic: per connected defect region at the study's resolution,
its size, shape, darkness and place on the tile, from the real *train* split and from a study's stream.

    python experiments/sim2real/defect_stats.py --out experiments/sim2real/results/defect_stats/main.json
    python experiments/sim2real/defect_stats.py --set scenario=my_defects.yaml --out .../matched.json

Per region (scipy.ndimage connected components of one class's mask, 8-connected, at least 2 pixels):

==============  ===============================================================================================
``area``        pixels / image pixels
``length``      sqrt(12 * largest variance of the pixel coordinates): the length of a line, in image widths
``width``       pixels / (length in pixels): a line's width in pixels
``contrast``    1 - mean(inside) / mean(ring), the ring being the 2-pixel band around the region (same image):
                how much darker than its surroundings (negative: lighter)
``edge``        distance of the region's nearest pixel to the image border, in image widths
==============  ===============================================================================================

The JSON holds, per class and source, the number of regions, of images holding the class, regions per such
image and each statistic's
quartiles; the script prints them side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import _compose  # noqa: E402

STATS = ("area", "length", "width", "contrast", "edge")


def regions(image: np.ndarray, semantic: np.ndarray, num_classes: int) -> list[tuple[int, dict]]:
    """(class id, statistics) of every connected region of every class in one image ([H, W] gray, [H, W] ids)."""
    H, W = semantic.shape
    out = []
    for c in range(1, num_classes + 1):
        labels, n = ndimage.label(semantic == c, structure=np.ones((3, 3)))
        for r in range(1, n + 1):
            inside = labels == r
            ys, xs = np.nonzero(inside)
            if len(ys) < 2:
                continue
            ring = ndimage.binary_dilation(inside, iterations=2) & (semantic == 0)
            variance = np.linalg.eigvalsh(np.cov(np.stack((ys, xs)).astype(float)))[-1]
            length = max(float(np.sqrt(12 * variance)), 1.0)
            edge = min(ys.min(), xs.min(), H - 1 - ys.max(), W - 1 - xs.max())
            ring_mean = float(image[ring].mean()) if ring.any() else float("nan")
            out.append((c, {"area": len(ys) / (H * W), "length": length / W, "width": len(ys) / length,
                            "contrast": 1 - float(image[inside].mean()) / max(ring_mean, 1e-6),
                            "edge": edge / W}))
    return out


def summarise(found: list[tuple[int, dict]], images: dict[int, int], class_names) -> dict:
    """Quartiles of every statistic per class; ``images[c]``: images that hold class c."""
    out = {}
    for c, name in enumerate(class_names, 1):
        rows = [s for k, s in found if k == c]
        entry = {"regions": len(rows), "images": images.get(c, 0),
                 "regions_per_image": len(rows) / max(images.get(c, 0), 1)}
        for key in STATS:
            values = np.array([r[key] for r in rows if np.isfinite(r[key])])
            entry[key] = [float(q) for q in np.quantile(values, (0.25, 0.5, 0.75))] if len(values) else None
        out[name] = entry
    return out


def real_stats(root: Path, class_names, size: int) -> dict:
    from synth_torch.data.real import open_real

    ds = open_real("magnetic_tile", root, class_names, size, split="train")
    found, images = [], Counter()
    for i in range(len(ds)):
        item = ds[i]
        semantic = item["semantic"].numpy()
        images.update(np.unique(semantic[semantic > 0]).tolist())
        found += regions(item["image"][0].numpy(), semantic, len(class_names))
    return {"images": len(ds), "classes": summarise(found, images, class_names)}


def synthetic_stats(scenario, size: int, samples: int, seed: int) -> dict:
    from synth_torch.data import SynthDataset

    ds = SynthDataset(scenario, resolution=size, batch_size=64, seed=seed)
    found, images = [], Counter()
    for start in range(0, samples, 64):
        batch = ds.render_batch(torch.arange(start, min(start + 64, samples)))
        gray = batch.image.mean(1).numpy()
        for img, sem in zip(gray, batch.semantic.numpy()):
            images.update(np.unique(sem[sem > 0]).tolist())
            found += regions(img, sem, len(scenario.class_names))
    return {"images": samples, "seed": seed,
            "classes": summarise(found, images, scenario.class_names)}


def measure(extra: list[str], samples: int, seed: int) -> dict:
    from synth_torch.scenario.config import load_scenario

    cfg = _compose(["experiment=sim2real_tile", *extra], HERE)
    overrides = cfg.data.get("overrides")
    scenario = load_scenario(OmegaConf.to_container(cfg.data.scenario, resolve=True),
                             None if overrides is None else OmegaConf.to_container(overrides, resolve=True))
    size = int(cfg.data.resolution)
    return {"resolution": size, "overrides": extra, "scenario": scenario.name,
            "real": real_stats(Path(cfg.data.real_root), scenario.class_names, size),
            "synthetic": synthetic_stats(scenario, size, samples, seed)}


def table(result: dict) -> str:
    lines = ["| class | source | regions/image | " + " | ".join(STATS) + " |", "|---" * (3 + len(STATS)) + "|"]
    for name in result["real"]["classes"]:
        for source in ("real", "synthetic"):
            e = result[source]["classes"][name]
            cells = ["-" if e[k] is None else f"{e[k][1]:.3g} ({e[k][0]:.2g}-{e[k][2]:.2g})" for k in STATS]
            lines.append(f"| {name} | {source} | {e['regions_per_image']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Hydra overrides (as the study's)")
    args = ap.parse_args(argv)
    result = measure(args.set, args.samples, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(args.out)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
