"""``TrainingMonitor``: what a person watching a run wants to see, sent to every logger alike (wandb, TensorBoard,
MLflow, CSV).

* Every ``scalars_every_n_steps`` steps, two scalars over the steps since the last report:

  - ``perf/data_wait_fraction``: the share of the training loop's wall time spent waiting for the next batch
    (from the end of one step's callbacks to the start of the next step: fetching, rendering without workers,
    transfer), validation excluded. Near 0: the model is the bottleneck; near 1: the data is.
  - ``perf/images_per_s``: training images (synthetic and real) per second of that wall time.

  Under DDP both are rank 0's (one process's share of the stream); the pictures too come from rank 0.

* Every ``images_every_n_steps`` steps (rank 0):

  - ``samples/train``: the current training batch with its labels drawn, one tile per image titled with its slice
    (:func:`~synth_torch.loop.visuals.label_tile`; real images of a hybrid step are left out);
  - ``samples/predictions``: the model's predictions beside the ground truth on the first validation suite batch
    (a fixed set of images, so successive pictures are comparable; :func:`~synth_torch.loop.visuals.prediction_grid`).

Put it after the other callbacks (as ``callbacks/default.yaml`` does), so that their work at the end of a step
(a SliceMiner round) counts as training time, not as waiting for data.
"""

from __future__ import annotations

import time

import torch
from lightning.pytorch.callbacks import Callback

from synth_torch.data.batch import Batch
from synth_torch.data.hybrid import HybridBatch, images_in
from synth_torch.loop.visuals import label_tile, log_image, prediction_grid, tile_grid
from synth_torch.scenario.config import ConfigError

try:
    from typing_extensions import override
except ImportError:  # pragma: no cover
    def override(f):
        return f

__all__ = ["TrainingMonitor"]


class TrainingMonitor(Callback):
    """Throughput, data-wait and pictures of samples and predictions (module docstring).

    Args:
        scalars_every_n_steps: report ``perf/*`` every N optimizer steps (0: never).
        images_every_n_steps: log ``samples/*`` every N optimizer steps (0: never); also after the last step.
        max_images: images per picture.
    """

    def __init__(self, scalars_every_n_steps: int = 10, images_every_n_steps: int = 100, max_images: int = 8):
        for name, value in (("scalars_every_n_steps", scalars_every_n_steps),
                            ("images_every_n_steps", images_every_n_steps), ("max_images", max_images)):
            if int(value) < 0 or (name == "max_images" and int(value) < 1):
                raise ConfigError(f"callbacks.monitor.{name} must be >= {1 if name == 'max_images' else 0}, got {value}")
        self.scalars_every, self.images_every = int(scalars_every_n_steps), int(images_every_n_steps)
        self.max_images = int(max_images)
        self._last_end: float | None = None
        self._reset_window()
        self.history: list[dict] = []  # every report: step, data_wait_fraction, images_per_s

    def _reset_window(self) -> None:
        self._wait = self._busy = 0.0
        self._images = 0

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        self._last_end = None
        self._reset_window()

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self._wait += now - self._last_end
        self._step_start = now

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        self._images += sum(images_in(batch).values())
        if self.images_every and step % self.images_every == 0 and trainer.is_global_zero:
            self.log_pictures(trainer, pl_module, batch)
        now = time.perf_counter()
        self._busy += now - self._step_start
        if self.scalars_every and step % self.scalars_every == 0 and self._busy > 0:
            total = self._wait + self._busy
            record = {"step": step, "perf/data_wait_fraction": self._wait / total,
                      "perf/images_per_s": self._images / total}
            self.history.append(record)
            if trainer.is_global_zero:
                for logger in trainer.loggers:
                    logger.log_metrics({k: v for k, v in record.items() if k != "step"}, step=step)
            self._reset_window()
        self._last_end = time.perf_counter()

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        if self._last_end is not None:  # validation is neither training nor waiting for training data
            self._last_end = time.perf_counter()

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        if self.images_every and trainer.global_step % self.images_every and trainer.is_global_zero:
            self.log_pictures(trainer, pl_module, None)

    @torch.no_grad()
    def log_pictures(self, trainer, pl_module, batch) -> None:
        """Log ``samples/train`` (``batch``, when synthetic) and ``samples/predictions`` to every logger."""
        if not trainer.loggers:
            return
        step = trainer.global_step
        synthetic = batch.synthetic if isinstance(batch, HybridBatch) else batch
        if isinstance(synthetic, Batch):
            shown = synthetic.select(slice(0, self.max_images)).to("cpu")
            picture = tile_grid([label_tile(shown, i) for i in range(len(shown))])
            for logger in trainer.loggers:
                log_image(logger, "samples/train", picture, step, caption=f"training batch at step {step}")
        dm = trainer.datamodule
        names = getattr(dm, "slice_names", ())
        if names and hasattr(pl_module, "per_sample_loss"):
            suite = dm.suite(names[0])[0]
            picture = prediction_grid(pl_module, suite, max_images=self.max_images)
            for logger in trainer.loggers:
                log_image(logger, "samples/predictions", picture, step,
                          caption=f"{names[0]} suite: ground truth (left) and prediction (right) at step {step}")

    @override
    def state_dict(self) -> dict:
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
