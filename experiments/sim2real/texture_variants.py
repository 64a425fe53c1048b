"""Choose how to render the `defects` stream on real defect-free photos, by realism alone (no training).

Each variant is a list of Hydra overrides of the tile study: ``texture_images`` = the defect-free train-split
tiles (``free_tiles.py``), no procedural streaks or grain, and one choice of sensor effects and light. Its
realism against the real tiles is measured exactly as ``realism.py`` measures a study's stream
(:func:`realism.measure`); all go into one JSON file. The closest variant's overrides are the `real_texture`
study's ``--set``.

    python experiments/sim2real/free_tiles.py $PWD/logs/free_train_tiles
    python experiments/sim2real/texture_variants.py $PWD/logs/free_train_tiles experiments/sim2real/results/real_texture/variants.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from realism import measure  # noqa: E402

NO_SENSOR = ["scenario.sensor.noise_sigma=0", "scenario.sensor.defocus_px=0", "scenario.sensor.vignetting=0",
             "scenario.slices.blurry.sensor.defocus_px=0"]
DIM = ["scenario.light.ambient=[0.2,0.4]", "scenario.light.intensity=[0.3,0.6]"]
DEFOCUS, NOISE = "scenario.sensor.defocus_px=[0.3,0.6]", "scenario.sensor.noise_sigma=[0.002,0.005]"

VARIANTS = {
    "sensor and light as in defects": [],
    "no sensor effects": NO_SENSOR,
    "read noise 0.002-0.005 only": [*NO_SENSOR, NOISE],
    "defocus 0.3-0.6 px only": [*NO_SENSOR, DEFOCUS],
    "vignetting 0.2-0.7 only": [*NO_SENSOR, "scenario.sensor.vignetting=[0.2,0.7]"],
    "defocus 0.3-0.6 px, dim light": [*NO_SENSOR, DEFOCUS, *DIM],
    "defocus and vignetting 0.1-0.4, dim light": [*NO_SENSOR, DEFOCUS, "scenario.sensor.vignetting=[0.1,0.4]", *DIM],
    "defocus and noise 0.001-0.003, dim light": [*NO_SENSOR, DEFOCUS, "scenario.sensor.noise_sigma=[0.001,0.003]", *DIM],
    "no sensor effects, dim light": [*NO_SENSOR, *DIM],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("textures", type=Path, help="folder written by free_tiles.py")
    ap.add_argument("out", type=Path, help="JSON file to write")
    ap.add_argument("--samples", type=int, default=256)
    args = ap.parse_args(argv)
    photo = [f"scenario.texture_images={args.textures.resolve()}", "scenario.ground.texture_contrast=0",
             "scenario.ground.grain=0"]
    rows = []
    for name, overrides in VARIANTS.items():
        report = measure("tile", args.samples, 512, 0, [*photo, *overrides])
        rows.append({"variant": name, "overrides": [*photo, *overrides], **report})
        print(f"{report['frechet']:.3f}  {name}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".part")
    tmp.write_text(json.dumps({"samples": args.samples, "variants": rows}, indent=1))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
