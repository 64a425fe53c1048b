"""Choose how to render the `defects` stream on real defect-free photos, by realism alone (no training).

Each variant renders the stream with ``texture_images`` = the defect-free train-split tiles
(``free_tiles.py``), no procedural streaks or grain, and one choice of sensor effects and light; its realism
statistic against the real tiles (``synth_torch.quality.realism``, the same as ``realism.py``) goes into a JSON
file. The closest variant is the one the `real_texture` study trains on.

    python experiments/sim2real/free_tiles.py logs/free_train_tiles
    python experiments/sim2real/texture_variants.py logs/free_train_tiles experiments/sim2real/results/real_texture/variants.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from synth_torch.data import SynthDataset  # noqa: E402
from synth_torch.quality.realism import load_real_images, realism_report  # noqa: E402
from synth_torch.scenario import load_scenario  # noqa: E402

NO_SENSOR = {"sensor": {"noise_sigma": 0, "defocus_px": 0, "vignetting": 0},
             "slices": {"blurry": {"sensor": {"defocus_px": 0}}}}
DIM = {"light": {"ambient": [0.2, 0.4], "intensity": [0.3, 0.6]}}


def _with(base: dict, **sensor) -> dict:
    return {**base, "sensor": {**base["sensor"], **sensor}}


VARIANTS = {
    "sensor and light as in defects": {},
    "no sensor effects": NO_SENSOR,
    "read noise 0.002-0.005 only": _with(NO_SENSOR, noise_sigma=[0.002, 0.005]),
    "defocus 0.3-0.6 px only": _with(NO_SENSOR, defocus_px=[0.3, 0.6]),
    "vignetting 0.2-0.7 only": _with(NO_SENSOR, vignetting=[0.2, 0.7]),
    "defocus 0.3-0.6 px, dim light": {**_with(NO_SENSOR, defocus_px=[0.3, 0.6]), **DIM},
    "defocus and vignetting 0.1-0.4, dim light": {**_with(NO_SENSOR, defocus_px=[0.3, 0.6], vignetting=[0.1, 0.4]), **DIM},
    "defocus and noise 0.001-0.003, dim light": {**_with(NO_SENSOR, defocus_px=[0.3, 0.6], noise_sigma=[0.001, 0.003]), **DIM},
    "no sensor effects, dim light": {**NO_SENSOR, **DIM},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("textures", type=Path, help="folder written by free_tiles.py")
    ap.add_argument("out", type=Path, help="JSON file to write")
    ap.add_argument("--real-root", type=Path, default=ROOT.parent / "shared" / "real" / "magnetic_tile")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=96)
    args = ap.parse_args()
    size = (args.resolution, args.resolution)
    real = load_real_images(args.real_root, size, limit=512)
    rows = []
    for name, overrides in VARIANTS.items():
        scenario = load_scenario("defects", {"texture_images": str(args.textures.resolve()),
                                             "ground": {"texture_contrast": 0, "grain": 0}, **overrides})
        ds = SynthDataset(scenario, resolution=args.resolution, batch_size=64, seed=0)
        images = torch.cat([ds.render_batch(torch.arange(i, min(i + 64, args.samples))).image
                            for i in range(0, args.samples, 64)])
        report = realism_report(images, real)
        rows.append({"variant": name, "overrides": overrides, **report})
        print(f"{report['frechet']:.3f}  {name}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".part")
    tmp.write_text(json.dumps({"samples": args.samples, "resolution": args.resolution, "variants": rows}, indent=1))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
