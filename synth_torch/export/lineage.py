"""Lineage: scenario -> dataset -> run -> checkpoint.

A training run records, in every checkpoint (``checkpoint["synth_torch_lineage"]``) and in its logger config
(``lineage``), the scenario's digest and, when it trains on an export, the export's manifest and content
digests (:func:`lineage_of`, :class:`Lineage`). An export can be logged as a wandb ``dataset`` Artifact
(:func:`log_export_artifact`; works offline, upload later with ``wandb sync``); an online training run then
declares it as an input (:func:`use_export_artifact`).
"""

from __future__ import annotations

import re
from pathlib import Path

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn

from synth_torch.export.manifest import manifest_digest, read_manifest
from synth_torch.scenario.config import Scenario

CHECKPOINT_KEY = "synth_torch_lineage"


def scenario_lineage(scenario: Scenario) -> dict:
    return {"name": scenario.name, "digest": "sha256:" + scenario.fingerprint(), "key_digest": scenario.digest()}


def export_lineage(root) -> dict:
    """The identity of a complete export: path, manifest digest, content digest, and the scenario digest."""
    root = Path(root).resolve()
    m = read_manifest(root)
    return {"path": str(root), "manifest_digest": manifest_digest(root), "content_digest": m["files"]["content_digest"],
            "scenario_digest": m["scenario"]["digest"], "artifact": artifact_name(m)}


def lineage_of(datamodule) -> dict:
    """``{"scenario": ..., "export": ... or None}`` for a data module with a ``scenario`` (and, when it reads an
    export, an ``export_dir``)."""
    export_dir = getattr(datamodule, "export_dir", None)
    return {"scenario": scenario_lineage(datamodule.scenario),
            "export": None if export_dir is None else export_lineage(export_dir)}


class Lineage(Callback):
    """Stores ``lineage`` in every checkpoint, and warns when a checkpoint of other data is loaded."""

    def __init__(self, lineage: dict):
        self.lineage = lineage

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = self.lineage

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is not None and saved != self.lineage:
            rank_zero_warn(f"resuming a checkpoint with lineage {saved} into a run with lineage {self.lineage}")


def artifact_name(manifest: dict) -> str:
    """wandb artifact name of an export: ``synth-<scenario>`` (versions of it are told apart by their digests)."""
    return "synth-" + re.sub(r"[^A-Za-z0-9_.-]", "_", manifest["scenario"]["name"])


def _alias(digest: str) -> str:
    return "manifest-" + digest.split(":", 1)[1][:16]


def log_export_artifact(root, run=None, project: str = "synth-torch") -> str:
    """Log the export at ``root`` as a wandb ``dataset`` Artifact and return ``name:alias``.

    The artifact holds ``manifest.json`` and ``SHA256SUMS`` and a ``file://`` reference to the folder (not a
    copy), with the manifest's digests, counts and formats as metadata. Without ``run`` an ``export`` job run is
    started (offline unless ``WANDB_MODE`` says otherwise) and finished. Offline runs keep the artifact until
    ``wandb sync``.
    """
    import os

    import wandb

    root = Path(root).resolve()
    m = read_manifest(root)
    digest = manifest_digest(root)
    artifact = wandb.Artifact(artifact_name(m), type="dataset", description=m["command"], metadata={
        "manifest_digest": digest, "content_digest": m["files"]["content_digest"],
        "scenario_digest": m["scenario"]["digest"], "created": m["created"], "counts": m["counts"],
        "formats": {k: {"files": v["files"], "bytes": v["bytes"]} for k, v in m["formats"].items()},
        "generation": m["generation"]})
    artifact.add_file(str(root / "manifest.json"))
    artifact.add_file(str(root / "SHA256SUMS"))
    artifact.add_reference(root.as_uri(), name="data", checksum=False)
    own = run is None
    if own:
        run = wandb.init(project=project, job_type="export", mode=os.environ.get("WANDB_MODE", "offline"),
                         config={"lineage": {"export": export_lineage(root)}}, dir=os.environ.get("WANDB_DIR"))
    try:
        run.log_artifact(artifact, aliases=["latest", _alias(digest)])
    finally:
        if own:
            run.finish()
    return f"{artifact.name}:{_alias(digest)}"


def use_export_artifact(run, lineage: dict) -> bool:
    """Declare the export of ``lineage`` as an input of ``run`` (online runs only: wandb cannot resolve artifacts
    offline, where the digests in the run config carry the lineage). True when declared."""
    export = lineage.get("export")
    if export is None or run.offline:
        return False
    run.use_artifact(f"{export['artifact']}:{_alias(export['manifest_digest'])}")
    return True
