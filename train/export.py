"""Export a scenario to COCO / YOLO / KITTI / WebDataset with Hydra configs (``configs/export.yaml``).

    python train/export.py out=data/tabletop n=1000 resolution=256
    python train/export.py scenario=defects out=data/defects n=500 formats=[coco,webdataset]
    python train/export.py scenario=my_scenario.yaml scenario.camera.distance=[0.6,0.7] out=data/mine n=100
    python train/export.py out=data/tt n=100000 shard=3/8           # one process of eight (or a SLURM array)

The same job as ``synth-torch export`` (docs/export.md); run it again to resume.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from synth_torch.app.configs import CONFIG_DIR  # noqa: E402  (also registers the scenario config group)


def run(cfg: DictConfig, command: str | None = None):
    """Run the export that ``cfg`` describes; returns the :class:`~synth_torch.export.ExportResult`."""
    from synth_torch.export import ExportOptions, export, manifest_digest
    from synth_torch.scenario.config import load_scenario

    scenario = load_scenario(OmegaConf.to_container(cfg.scenario, resolve=True))
    options = ExportOptions(min_visible_pixels=int(cfg.min_visible_pixels), include_hidden=bool(cfg.include_hidden),
                            yolo_polygons=bool(cfg.yolo_polygons), depth_scale=float(cfg.depth_scale))
    resolution = cfg.resolution if isinstance(cfg.resolution, int) else tuple(cfg.resolution)
    result = export(scenario, n=cfg.n, resolution=resolution, out=cfg.out, formats=list(cfg.formats), seed=cfg.seed,
                    start=cfg.start, shard=cfg.shard, chunk_size=cfg.chunk_size, batch_size=cfg.batch_size,
                    options=options, parents=list(cfg.parents), sensor=cfg.sensor, device=cfg.device,
                    backend=cfg.backend, progress=cfg.progress, command=command)
    if result.complete:
        print(f"wrote {result.root} (manifest {manifest_digest(result.root)})")
        if cfg.wandb_artifact:
            from synth_torch.export.lineage import log_export_artifact

            print(f"logged wandb artifact {log_export_artifact(result.root)}")
    else:
        print(f"shard {result.shard[0]}/{result.shard[1]} done; {len(result.pending)} chunk(s) pending in other shards")
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export.yaml")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from synth_torch.export import ExportError
    from synth_torch.scenario.config import ConfigError

    task = [o for o in HydraConfig.get().overrides.task if not o.startswith("shard=")]
    try:
        run(cfg, command=shlex.join(["python", "train/export.py", *task]))
    except (ExportError, ConfigError) as exc:
        print(f"\nexport error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
