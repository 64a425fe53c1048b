"""Write the defect-free magnetic tiles of the real *train* split into a folder, as surface textures.

The `real_texture` study renders the `defects` stream on these photos instead of procedural streaks
(``scenario.texture_images=<folder>``). Only train-split files are written (the split of ``data.real``), so the
val and test photos are never seen. The photos carry an image-level label (defect-free), no pixel labels.

    python experiments/sim2real/free_tiles.py logs/free_train_tiles
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from synth_torch.data.real import MagneticTile  # noqa: E402

CLASSES = ("blowhole", "crack", "break", "fray", "uneven")


def write_free_tiles(root: Path, out: Path) -> int:
    """Copy every ``MT_Free`` photo of the train split of ``root`` into ``out`` (flat); returns the count."""
    train = MagneticTile(root, CLASSES, 8, split="train")
    names = [k for k, g in zip(train.keys, train.groups) if g == "Free"]
    if not names:
        raise FileNotFoundError(f"no defect-free train-split tiles (MT_Free/Imgs/*.jpg) under {root}")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.part"):  # an interrupted copy: the scenario loader would reject the folder
        stale.unlink()
    for key in names:
        target = out / Path(key).name
        if not target.exists():
            tmp = target.with_suffix(".part")
            shutil.copyfile(root / key, tmp)
            tmp.replace(target)
    return len(names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder to write (created; files already there are kept)")
    ap.add_argument("--real-root", type=Path, default=ROOT.parent / "shared" / "real" / "magnetic_tile")
    args = ap.parse_args()
    n = write_free_tiles(args.real_root, args.out)
    print(f"{n} defect-free train-split tiles in {args.out}")


if __name__ == "__main__":
    main()
