"""Downstream utility (optional): does a small model trained on the export work on real data?

The gate trains :class:`~synth_torch.loop.tasks.SegmentationTask` (a TinyUNet, foreground vs background, built
from scratch: nothing is downloaded) on the export's WebDataset shards for ``steps`` optimizer steps with
Lightning, then scores it on a real validation set (``real_kind: magnetic_tile``: the first ``val_images`` images
of the val split of :class:`~synth_torch.data.real.MagneticTile`) with torchmetrics'
foreground IoU. It passes when the score reaches ``min_score``. The untrained model's score is reported beside
it. Off by default (``utility: {enabled: true}`` in the gates file): it costs a training run.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from synth_torch.governance.exports import GovernanceError
from synth_torch.governance.gates import FAIL, PASS, Gate, GateContext, GateResult, quiet_lightning

REAL_KINDS = ("magnetic_tile",)


class UtilityGate(Gate):
    name = "utility"
    title = "Downstream utility"
    enabled_by_default = False
    required_by_default = False
    defaults = {"real_root": "", "real_kind": "magnetic_tile", "steps": 100, "batch_size": 8, "lr": 0.002,
                "width": 16, "depth": 3, "val_images": 64, "min_score": 0.1, "seed": 0}

    def __init__(self, **settings):
        super().__init__(**settings)
        if self.settings["real_kind"] not in REAL_KINDS:
            raise GovernanceError(f"gates.utility.real_kind: expected one of {REAL_KINDS}, got "
                                  f"{self.settings['real_kind']!r}")
        for key in ("steps", "batch_size", "val_images"):
            if self.settings[key] < 1:
                raise GovernanceError(f"gates.utility.{key}: must be >= 1, got {self.settings[key]}")

    def check(self, ctx: GateContext) -> GateResult:
        import lightning.pytorch as pl
        from torch.utils.data import DataLoader

        from synth_torch.data.real import open_real
        from synth_torch.export.shards import ShardStream
        from synth_torch.loop.datamodule import collate_batch
        from synth_torch.loop.tasks import SegmentationTask, segmentation_model

        s = self.settings
        root = Path(s["real_root"]) if s["real_root"] else ctx.reference
        if root is None:
            return self.skip("no real validation set (gates.utility.real_root or --reference)")
        view = ctx.export
        if "webdataset" not in view.formats:
            return self.result(FAIL, "the utility gate trains on the WebDataset shards; this export has none")
        H, W = view.size
        real = open_real(s["real_kind"], root, view.class_names, (H, W), split="val")
        real = real.take(min(s["val_images"], len(real)))
        with torch.random.fork_rng(), quiet_lightning(), _keep_deterministic_algorithms():
            torch.manual_seed(s["seed"])
            task = SegmentationTask(segmentation_model(2, "tiny_unet", s["width"], s["depth"]), num_classes=2,
                                    target="foreground",
                                    optimizer=lambda p: torch.optim.AdamW(p, lr=s["lr"], weight_decay=1e-4))
            before = _foreground_iou(task, real)
            stream = ShardStream(str(view.root), s["batch_size"], tuple(view.manifest["counts"]["slices"]),
                                 shuffle=256, seed=s["seed"], epochs=None)
            trainer = pl.Trainer(max_steps=s["steps"], accelerator="cpu", devices=1, logger=False,
                                 enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                 limit_val_batches=0, num_sanity_val_steps=0, deterministic=True)
            trainer.fit(task, DataLoader(stream, batch_size=None, collate_fn=collate_batch))
            after = _foreground_iou(task, real)
        figures = {"real_root": str(root), "real_kind": s["real_kind"], "real_images": len(real),
                   "train_images_seen": s["steps"] * s["batch_size"], "fg_iou": round(after, 5),
                   "fg_iou_untrained": round(before, 5)}
        ok = after >= s["min_score"]
        summary = (f"foreground IoU {after:.4f} on {len(real)} real images after {s['steps']} steps (untrained "
                   f"{before:.4f}); min_score {s['min_score']:g}")
        failures = [] if ok else [f"foreground IoU {after:.4f} < min_score {s['min_score']:g}"]
        return self.result(PASS if ok else FAIL, summary, figures, failures)


@contextlib.contextmanager
def _keep_deterministic_algorithms():
    """Restore torch's deterministic-algorithms mode (and cuBLAS's workspace setting) on exit: Lightning's
    ``deterministic=True`` switches it on for the whole process, which makes later code slower (torchmetrics'
    binned curves take an O(values x bins) path) or raise where an op has no deterministic kernel."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


@torch.no_grad()
def _foreground_iou(task, real) -> float:
    from torchmetrics.classification import BinaryJaccardIndex

    metric = BinaryJaccardIndex()
    was = task.training
    task.eval()
    for i in range(0, len(real), 16):
        items = [real[k] for k in range(i, min(i + 16, len(real)))]
        image = torch.stack([it["image"].as_subclass(torch.Tensor) for it in items])
        target = torch.stack([it["semantic"].as_subclass(torch.Tensor) for it in items]) > 0
        metric.update((task(image).argmax(1) > 0).long(), target.long())
    task.train(was)
    return float(metric.compute())
