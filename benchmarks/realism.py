"""Realism of the built-in scenarios against the real sets in ../shared/real (skips what is absent).

    python benchmarks/realism.py [--real ../shared/real] [--n 128] [--resolution 128]

Prints, per scenario and real set, the feature means and the Fréchet distance of synthetic vs real,
next to the real set's own split-half distance (noise floor) and the other scenario (a mismatched control).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from synth_torch import SynthDataset
from synth_torch.quality import FEATURES, frechet_distance, image_features, load_real_images


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--real", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "real"))
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=128)
    args = parser.parse_args(argv)
    size = (args.resolution, args.resolution)
    sets = {"magnetic_tile": Path(args.real) / "magnetic_tile", "fruits_nuts": Path(args.real) / "fruits_nuts" / "images"}
    synth = {name: SynthDataset(name, batch_size=args.n, resolution=args.resolution, seed=0).render_batch(
        torch.arange(args.n)).image for name in ("defects", "tabletop")}
    feats = {name: image_features(img) for name, img in synth.items()}
    print("features:", ", ".join(FEATURES))
    for real_name, folder in sets.items():
        if not folder.is_dir():
            print(f"{real_name}: {folder} absent, skipped")
            continue
        real = image_features(load_real_images(folder, size, limit=args.n))
        half = real.shape[0] // 2
        print(f"\n{real_name} ({real.shape[0]} images): real mean {[round(v, 3) for v in real.mean(0).tolist()]}")
        print(f"  split-half floor FD = {frechet_distance(real[:half], real[half:]):.3f}")
        for name, f in feats.items():
            print(f"  {name:9s} FD = {frechet_distance(f, real):.3f}   mean {[round(v, 3) for v in f.mean(0).tolist()]}")


if __name__ == "__main__":
    main()
