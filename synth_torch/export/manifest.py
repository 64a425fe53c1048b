"""``manifest.json``: what an export contains, where it came from, and how to read it.

The JSON Schema is ``synth_torch/export/manifest.schema.json`` (:func:`schema`); ``docs/export.md`` explains
each field. The manifest is written last: a folder with a ``manifest.json`` is a complete export. Its
*digest* (:func:`manifest_digest`) is the sha256 of the file's bytes and names one dataset version in
training lineage; ``files.content_digest`` is the sha256 of ``SHA256SUMS``, which lists every data file.
``synth-torch validate`` (:mod:`synth_torch.governance`) later adds a ``validation`` section with the quality
gates' results; the digest leaves that section out, so validating a dataset never changes its identity.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
import zlib
from importlib import metadata
from pathlib import Path

import yaml

from synth_torch.export._io import dumps_pretty
from synth_torch.export.base import ExportError
from synth_torch.scenario.config import Scenario

SCHEMA_VERSION = 1
KIND = "synth-torch export"
LABEL_CONVENTIONS = "synth-torch-labels/1"  # the conventions of docs/labels.md this export follows
MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"
PROVENANCE = "PROVENANCE"
VALIDATION = "validation"  # the quality gates' results (synth_torch.governance), outside the manifest digest
_PROVENANCE_KEYS = {"source", "license"}


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """The manifest's JSON Schema (draft 2020-12)."""
    return json.loads(Path(__file__).with_name("manifest.schema.json").read_text())


def _read_provenance(folder: Path) -> dict:
    path = folder / PROVENANCE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ExportError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or set(data) - (_PROVENANCE_KEYS | {"files"}):
        raise ExportError(f"{path}: expected a mapping with keys {sorted(_PROVENANCE_KEYS)} and optional 'files' "
                          f"(file name -> {{source, license}}), got {data!r}")
    files = data.get("files") or {}
    for name, entry in files.items():
        if not isinstance(entry, dict) or set(entry) - _PROVENANCE_KEYS:
            raise ExportError(f"{path}: files.{name}: expected a mapping with keys {sorted(_PROVENANCE_KEYS)}")
    return data


def asset_provenance(scenario: Scenario) -> list[dict]:
    """Every asset file of ``scenario`` with its sha256 and size, plus the ``source`` and ``license`` that an
    optional ``PROVENANCE`` YAML file in its folder declares (top-level keys apply to every file of the
    folder; ``files: {name: {source, license}}`` overrides them per file; null when undeclared)."""
    out = []
    for asset in scenario.asset_files():
        path = Path(asset.path)
        decl = _read_provenance(path.parent)
        own = (decl.get("files") or {}).get(path.name, {})
        out.append({"role": asset.role, "path": asset.path, "sha256": asset.sha256, "size": asset.size,
                    "source": own.get("source", decl.get("source")), "license": own.get("license", decl.get("license"))})
    return out


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """synth-torch's version, and the git commit (and whether the tree had local changes) when the package
    runs from a git checkout."""
    import synth_torch

    out = {"version": synth_torch.__version__, "git_commit": None, "git_dirty": None}
    here = Path(synth_torch.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=30)
            out["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def environment() -> dict:
    """Versions of what decides the bytes of an export (rendering, PNG encoding, RLE, tar writing)."""
    versions = {"python": platform.python_version(), "zlib": zlib.ZLIB_RUNTIME_VERSION}
    for dist in ("torch", "numpy", "pillow", "pycocotools", "webdataset", "opencv-python-headless"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def manifest_digest(root) -> str:
    """``sha256:<hex>`` of ``root/manifest.json``'s bytes as the export wrote them: the identity of one export
    version. A ``validation`` section added later is left out (the file without it, serialised as the export
    serialises it, has exactly the bytes the export wrote)."""
    data = (Path(root) / MANIFEST).read_bytes()
    if f'"{VALIDATION}"'.encode() in data:
        manifest = json.loads(data)
        if VALIDATION in manifest:
            data = dumps_pretty({k: v for k, v in manifest.items() if k != VALIDATION})
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_manifest(root) -> dict:
    """The manifest of a complete export at ``root`` (raises :class:`ExportError` otherwise)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        hint = " (an export in progress: resume it with its command)" if (root / ".export" / "job.json").is_file() else ""
        raise ExportError(f"{root} is not a complete synth-torch export: no {MANIFEST}{hint}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ExportError(f"{path}: not a synth-torch export manifest (kind != {KIND!r})")
    return manifest


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def describe(root) -> str:
    """A readable summary of the export at ``root`` (complete or in progress) for ``synth-torch datasets show``."""
    root = Path(root)
    job_path = root / ".export" / "job.json"
    if not (root / MANIFEST).is_file():
        if not job_path.is_file():
            raise ExportError(f"{root} is not a synth-torch export (no {MANIFEST}, no .export/job.json)")
        job = json.loads(job_path.read_text())
        cfg = job["config"]
        done = sorted(int(p.stem) for p in (root / ".export" / "chunks").glob("*.json"))
        missing = sorted(set(range(cfg["chunks"])) - set(done))
        return "\n".join([
            f"synth-torch export in progress: {root}",
            f"  scenario   {cfg['scenario']['name']}  {cfg['scenario']['digest']}",
            f"  chunks     {len(done)}/{cfg['chunks']} written; missing {missing[:20]}{' ...' if len(missing) > 20 else ''}",
            f"  resume     {job['command']}",
        ])
    m = read_manifest(root)
    gen, sc, code = m["generation"], m["scenario"], m["synth_torch"]
    commit = f" (git {code['git_commit'][:12]}{', modified' if code['git_dirty'] else ''})" if code["git_commit"] else ""
    H, W = gen["resolution"]
    lines = [
        f"synth-torch export: {root}",
        f"  manifest   {manifest_digest(root)}",
        f"  content    {m['files']['content_digest']}  ({m['files']['count']} files, {_size(m['files']['bytes'])})",
        f"  created    {m['created']} by synth-torch {code['version']}{commit}",
        f"  command    {m['command']}",
        f"  scenario   {sc['name']}  {sc['digest']}",
        f"  samples    {gen['count']} (indices {gen['sample_index_start']}..{gen['sample_index_stop'] - 1}, seed "
        f"{gen['seed']}), {W}x{H}, backend {gen['backend']} on {gen['device']}, sensor {'on' if gen['sensor'] else 'off'}",
        "  formats    " + "; ".join(f"{name} ({f['files']} files, {_size(f['bytes'])})" for name, f in m["formats"].items()),
        "  slices     " + ", ".join(f"{k} {v}" for k, v in m["counts"]["slices"].items()),
        "  classes    (id name: instances in images)",
    ]
    for name, c in m["counts"]["classes"].items():
        lines.append(f"    {c['id']:>3} {name}: {c['instances']} in {c['images']}")
    lines.append(f"  labels     {m['label_schema']['conventions']}; annotated: valid with >= "
                 f"{m['label_schema']['annotated']['min_visible_pixels']} visible px"
                 + (" (hidden included)" if m["label_schema"]["annotated"]["include_hidden"] else ""))
    lines.append(f"  assets     {len(m['assets'])} file(s)")
    for a in m["assets"]:
        lines.append(f"    {a['role']}: {a['path']}  sha256:{a['sha256'][:16]}  {_size(a['size'])}"
                     f"  source={a['source'] or '-'}  license={a['license'] or '-'}")
    lines.append("  parents    " + (", ".join(f"{p['path']} ({p['manifest_digest']})" for p in m["parents"]) or "none"))
    return "\n".join(lines)


def parent_entry(path) -> dict:
    """The manifest's record of a parent export folder."""
    path = Path(path).resolve()
    parent = read_manifest(path)
    return {"path": str(path), "manifest_digest": manifest_digest(path), "scenario_digest": parent["scenario"]["digest"]}


def build(job: dict, records: list[dict], formats: dict, files: list[list], class_names, class_kinds,
          slice_names, assets: list[dict]) -> dict:
    """(manifest, SHA256SUMS bytes) of a finished export from its job, its chunk records in order, the
    per-format summaries and the list of every data file ``[path, sha256, bytes]`` (sorted)."""
    cfg = job["config"]
    slices = dict.fromkeys(slice_names, 0)
    classes = {name: {"id": c, "instances": 0, "images": 0} for c, name in enumerate(class_names, start=1)}
    for rec in records:
        for name, n in rec["counts"]["slices"].items():
            slices[name] += n
        for name, c in rec["counts"]["classes"].items():
            classes[name]["instances"] += c["instances"]
            classes[name]["images"] += c["images"]
    checksums = "".join(f"{sha}  {path}\n" for path, sha, _ in files).encode()
    per_format = {}
    for name in cfg["formats"]:
        mine = [f for f in files if f[0].startswith(name + "/")]
        per_format[name] = {"path": name, "files": len(mine), "bytes": sum(f[2] for f in mine), **formats[name]}
    return {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "created": job["created"],
        "command": job["command"],
        "synth_torch": code_version(),
        "environment": environment(),
        "scenario": cfg["scenario"],
        "generation": {k: cfg[k] for k in ("seed", "sample_index_start", "sample_index_stop", "count", "sample_id",
                                            "resolution", "backend", "device", "shader", "sensor", "chunk_size",
                                            "chunks", "options")},
        "label_schema": {
            "conventions": LABEL_CONVENTIONS,
            "docs": "docs/labels.md",
            "classes": [{"id": c, "name": n, "kind": k} for c, (n, k) in enumerate(zip(class_names, class_kinds), 1)],
            "background_id": 0,
            "instance_ids": "instance slot + 1 (object slots first, then defect slots); 0 is background",
            "annotated": {"min_visible_pixels": cfg["options"]["min_visible_pixels"],
                          "include_hidden": cfg["options"]["include_hidden"]},
            "depth_scale": cfg["options"]["depth_scale"],
        },
        "counts": {"images": cfg["count"], "slices": slices, "classes": classes},
        "formats": per_format,
        "assets": assets,
        "parents": cfg["parents"],
        "files": {"count": len(files), "bytes": sum(f[2] for f in files), "checksums": CHECKSUMS,
                  "content_digest": "sha256:" + hashlib.sha256(checksums).hexdigest()},
    }, checksums
