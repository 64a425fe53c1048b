"""The export job: manifest and its schema, resume to identical bytes, shards that merge into the single-process
export, and bad input that fails clearly before anything is written."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from export_helpers import assert_same_tree, tree

import synth_torch
from synth_torch.cli import main
from synth_torch.export import (ExportError, ExportOptions, describe, export, manifest_digest, read_manifest,
                                shard_from_env)
from synth_torch.export.base import Sink
from synth_torch.scenario.config import load_scenario

SMALL = dict(n=10, resolution=32, chunk_size=4, batch_size=4, formats="coco,yolo,kitti,webdataset")


# ---------------------------------------------------------------------------------------------------- manifest
def test_manifest_matches_schema_checksums_and_counts(tabletop_export):
    import jsonschema

    from synth_torch.export.manifest import schema

    root, batch = tabletop_export
    m = read_manifest(root)
    jsonschema.validate(m, schema(), cls=jsonschema.Draft202012Validator)
    assert m["created"] == "2023-11-14T22:13:20Z"  # SOURCE_DATE_EPOCH=1700000000
    assert m["command"].startswith("synth-torch export tabletop --n 12 --resolution 64 --format "
                                   "coco,yolo,kitti,webdataset --out ")
    assert m["scenario"]["digest"] == "sha256:" + load_scenario("tabletop").fingerprint()
    assert m["scenario"]["normalised"] == load_scenario("tabletop").to_dict()
    assert (m["generation"]["sample_index_start"], m["generation"]["sample_index_stop"], m["generation"]["seed"]) == (0, 12, 0)
    assert [c["name"] for c in m["label_schema"]["classes"]] == list(batch.class_names)
    # every data file is listed with its hash; the content digest hashes that list
    sums = (root / "SHA256SUMS").read_bytes()
    listed = {}
    for line in sums.decode().splitlines():
        sha, path = line.split("  ", 1)
        listed[path] = sha
    on_disk = {p for p in tree(root) if not p.startswith(".export/") and p not in ("manifest.json", "SHA256SUMS")}
    assert listed and set(listed) == on_disk and len(listed) == m["files"]["count"]
    assert all(hashlib.sha256((root / p).read_bytes()).hexdigest() == sha for p, sha in listed.items())
    assert m["files"]["content_digest"] == "sha256:" + hashlib.sha256(sums).hexdigest()
    assert sum(f["files"] for f in m["formats"].values()) == len(listed)
    # counts, computed here from the batch
    slices = [batch.slice_names[s] for s in batch.slice_id.tolist()]
    assert m["counts"]["slices"] == {name: slices.count(name) for name in batch.slice_names}
    keep = batch.valid & (batch.visible_pixels > 0)
    for c, name in enumerate(batch.class_names, start=1):
        hit = keep & (batch.labels == c)
        assert m["counts"]["classes"][name] == {"id": c, "instances": int(hit.sum()), "images": int(hit.any(1).sum())}
    assert m["formats"]["coco"]["annotations"] == int(keep.sum())
    assert m["formats"]["webdataset"]["shards"] == 3


def test_datasets_show(tabletop_export, capsys):
    root, _ = tabletop_export
    assert main(["datasets", "show", str(root)]) == 0
    out = capsys.readouterr().out
    assert manifest_digest(root) in out and "tabletop" in out and "12 (indices 0..11, seed 0)" in out
    assert "webdataset (3 files" in out and "heavy_occlusion" in out and "capsule" in out


def test_scenario_digest_normalises_and_hashes_assets(tmp_path, source_date):
    import trimesh
    mesh_dir = tmp_path / "meshes"
    mesh_dir.mkdir()
    trimesh.creation.box(extents=(1.0, 0.6, 0.4)).export(mesh_dir / "widget.obj")
    (mesh_dir / "PROVENANCE").write_text("source: made by the test\nlicense: CC0-1.0\n")

    def scenario(size):
        return {"name": "widgets", "categories": [{"name": "widget", "shape": str(mesh_dir / "widget.obj"),
                                                   "size": size}], "camera": {"distance": [0.5, 0.7]}}

    def digest(size, out):
        export(scenario(size), n=1, resolution=16, out=tmp_path / out, formats="coco", shard=(0, 1))
        return read_manifest(tmp_path / out)

    a, b = digest([0.08, 0.12], "a"), digest({"uniform": [0.08, 0.12]}, "b")
    assert a["scenario"]["digest"] == b["scenario"]["digest"]
    asset = a["assets"][0]
    assert asset["role"] == "mesh" and asset["source"] == "made by the test" and asset["license"] == "CC0-1.0"
    assert asset["sha256"] == hashlib.sha256((mesh_dir / "widget.obj").read_bytes()).hexdigest()
    trimesh.creation.box(extents=(1.0, 0.6, 0.5)).export(mesh_dir / "widget.obj")  # an edited mesh
    c = digest([0.08, 0.12], "c")
    assert c["scenario"]["digest"] != a["scenario"]["digest"] and c["assets"][0]["sha256"] != asset["sha256"]


def test_parents_and_rerun_of_a_complete_export(tabletop_export, tmp_path, source_date):
    parent, _ = tabletop_export
    out = tmp_path / "child"
    result = export("tabletop", out=out, parents=[parent], start=1000, shard=(0, 1), **SMALL)
    m = result.manifest
    assert m["parents"] == [{"path": str(parent.resolve()), "manifest_digest": manifest_digest(parent),
                             "scenario_digest": read_manifest(parent)["scenario"]["digest"]}]
    assert m["generation"]["sample_index_start"] == 1000 and "--start 1000" in m["command"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = export("tabletop", out=out, parents=[parent], start=1000, shard=(0, 1), **SMALL)
    assert again.complete and again.written == [] and again.manifest == m
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing rewritten


# ---------------------------------------------------------------------------------------------------- resume
def test_interrupted_export_resumes_to_identical_bytes(tmp_path, source_date, monkeypatch):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    export("tabletop", out="data", shard=(0, 1), **SMALL)
    monkeypatch.chdir(tmp_path / "b")
    real_write, calls = Sink.write, {"n": 0}

    def interrupted(self, rel, data):
        calls["n"] += 1
        if calls["n"] == 45:  # chunk 0 took 32 writes (4 samples x 8 files); this is the middle of chunk 1
            raise KeyboardInterrupt
        return real_write(self, rel, data)

    monkeypatch.setattr(Sink, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export("tabletop", out="data", shard=(0, 1), **SMALL)
    monkeypatch.setattr(Sink, "write", real_write)
    data = Path("data")
    assert (data / ".export/chunks/000000.json").is_file() and not (data / ".export/chunks/000001.json").exists()
    assert not (data / "manifest.json").exists() and (data / "coco/images/000004.png").is_file()
    assert not list(data.rglob("*.part")) and not list(data.rglob("*.tmp"))  # the interrupted writes cleaned up
    assert "1/3 written" in describe(data)
    # what a process killed with SIGKILL leaves: temporary files under their final names' folders
    (data / "coco/images/.000005.png.part").write_bytes(b"half a png")
    (data / "webdataset/.shard-000001.tar.part").write_bytes(b"half a tar")
    result = export("tabletop", out="data", shard=(0, 1), **SMALL)
    assert result.complete and result.written == [1, 2]
    assert_same_tree(tmp_path / "a" / "data", tmp_path / "b" / "data")


@pytest.mark.slow
def test_killed_cli_export_resumes_to_identical_bytes(tmp_path, source_date):
    args = ["tabletop", "--n", "40", "--resolution", "64", "--chunk-size", "8", "--out", "data", "--quiet"]
    cmd = [sys.executable, "-m", "synth_torch.cli", "export", *args]
    env = {**os.environ, "PYTHONPATH": str(Path(synth_torch.__file__).parents[1])}  # this checkout's package
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    subprocess.run(cmd, cwd=tmp_path / "a", check=True, capture_output=True, env=env)
    proc = subprocess.Popen(cmd, cwd=tmp_path / "b", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    first = tmp_path / "b/data/.export/chunks/000000.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b/data/manifest.json").exists(), "finished before it could be killed"
    out = subprocess.run(cmd, cwd=tmp_path / "b", check=True, capture_output=True, text=True, env=env).stdout
    assert "wrote data" in out
    assert_same_tree(tmp_path / "a" / "data", tmp_path / "b" / "data")


# ---------------------------------------------------------------------------------------------------- shards
def test_shards_merge_into_the_single_process_export(tmp_path, source_date, monkeypatch, capsys):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    export("tabletop", out="data", shard=(0, 1), **SMALL)
    monkeypatch.chdir(tmp_path / "b")
    # shard 2 via --shard (rendering other batches), shard 0 via a SLURM job array, shard 1 via torchrun's
    # variables; the last one finishes
    argv = ["export", "tabletop", "--n", "10", "--resolution", "32", "--chunk-size", "4", "--batch-size", "3",
            "--out", "data", "--quiet"]
    assert main(argv + ["--shard", "2/3"]) == 0
    assert "shard 2/3 done (1 chunk(s) written); 2 chunk(s) pending" in capsys.readouterr().out
    with monkeypatch.context() as env:
        env.setenv("SLURM_ARRAY_TASK_ID", "0")
        env.setenv("SLURM_ARRAY_TASK_COUNT", "3")
        r0 = export("tabletop", out="data", **SMALL)
    assert r0.shard == (0, 3) and r0.written == [0] and r0.pending == [1] and not r0.complete
    with monkeypatch.context() as env:
        env.setenv("RANK", "1")
        env.setenv("WORLD_SIZE", "3")
        r1 = export("tabletop", out="data", **SMALL)
    assert r1.shard == (1, 3) and r1.written == [1] and r1.complete
    assert_same_tree(tmp_path / "a" / "data", tmp_path / "b" / "data")


def test_shard_from_env():
    assert shard_from_env({}) == (0, 1)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}) == (2, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "3"}) == (2, 3)
    # a job array of torchrun jobs: task-major, rank-minor
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "RANK": "1",
                           "WORLD_SIZE": "2"}) == (3, 4)
    with pytest.raises(ExportError, match="contiguous array"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "2"})
    with pytest.raises(ExportError, match="SLURM_ARRAY_TASK_COUNT"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "0"})


# ---------------------------------------------------------------------------------------------------- bad input
def _fails(argv, capsys, message):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "synth-torch: error:" in err and message in err, err


def _argv(out, *extra):
    return ["export", "tabletop", "--n", "2", "--resolution", "16", "--out", str(out), "--quiet", *extra]


@pytest.mark.parametrize("blocker", ["regular file", pytest.param("read-only folder", marks=pytest.mark.skipif(
    os.geteuid() == 0, reason="root can write into read-only folders"))])
def test_unwritable_out(tmp_path, capsys, blocker):
    """--out below a regular file (unwritable even for root) or in a read-only folder."""
    block = tmp_path / "block"
    if blocker == "regular file":
        block.write_text("a file")
        _fails(_argv(block), capsys, "exists and is not a folder")
    else:
        block.mkdir()
        block.chmod(0o500)
    try:
        _fails(_argv(block / "data"), capsys, "is a file, not a folder" if block.is_file() else "is not writable")
        assert os.listdir(tmp_path) == ["block"] and (block.read_text() == "a file" if block.is_file() else
                                                      not os.listdir(block))
    finally:
        block.chmod(0o700 if block.is_dir() else 0o600)


def test_existing_folder_that_is_not_an_export(tmp_path, capsys):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.png").write_bytes(b"not ours")
    _fails(_argv(other), capsys, "is not a synth-torch export")
    assert os.listdir(other) == ["cat.png"] and (other / "cat.png").read_bytes() == b"not ours"


@pytest.mark.parametrize("extra,message", [
    (["--format", "coco,voc"], "unknown format(s) ['voc']"),
    (["--shard", "3/2"], "--shard 3/2: the shard index must satisfy 0 <= I < N"),
    (["--shard", "one"], "--shard must look like I/N"),
    (["--resolution", "4"], "--resolution must be"),
    (["--chunk-size", "0"], "--chunk-size must be an integer >= 1"),
    (["--parent", "{tmp}"], "is not a complete synth-torch export"),
])
def test_bad_arguments_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "new" / "data"
    _fails(_argv(out, *[e.replace("{tmp}", str(tmp_path)) for e in extra]), capsys, message)
    assert not (tmp_path / "new").exists()


def test_bad_scenario_and_count_write_nothing(tmp_path, capsys):
    _fails(["export", "nope", "--n", "2", "--out", str(tmp_path / "d")], capsys, "neither a built-in")
    _fails(["export", "tabletop", "--n", "0", "--out", str(tmp_path / "d")], capsys, "--n must be an integer >= 1")
    assert not (tmp_path / "d").exists()
    with pytest.raises(ExportError, match="must not contain whitespace"):
        export({"categories": [{"name": "big box", "shape": "box"}]}, n=1, resolution=16, out=tmp_path / "k",
               formats="kitti", shard=(0, 1))
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize("kwargs,message", [
    ({"options": ExportOptions(include_hidden="no")}, "--include-hidden must be true or false, got 'no'"),
    ({"options": ExportOptions(yolo_polygons=1)}, "--yolo-polygons must be true or false, got 1"),
    ({"sensor": "false"}, "sensor must be true or false, got 'false'"),
])
def test_flags_that_are_not_booleans_write_nothing(tmp_path, kwargs, message):
    with pytest.raises(ExportError, match=message):
        export("tabletop", n=1, resolution=16, out=tmp_path / "d", shard=(0, 1), **kwargs)
    assert not (tmp_path / "d").exists()


def test_resume_with_other_settings_is_refused(tmp_path, source_date, capsys):
    out = tmp_path / "data"
    export("tabletop", out=out, shard=(0, 1), **{**SMALL, "n": 4})
    before = tree(out)
    _fails(["export", "tabletop", "--n", "5", "--resolution", "32", "--chunk-size", "4", "--out", str(out), "--quiet"],
           capsys, "holds an export with different settings")
    _fails(["export", "tabletop", "--n", "4", "--resolution", "32", "--chunk-size", "4", "--seed", "1", "--out",
            str(out), "--quiet"], capsys, "seed")
    assert tree(out) == before


def test_export_renders_what_the_dataset_renders(tabletop_export):
    """Sample ids in the export regenerate the exported samples."""
    from synth_torch import SynthDataset

    root, batch = tabletop_export
    coco = json.loads((root / "coco/annotations/instances.json").read_text())
    sample_ids = torch.tensor([img["sample_id"] for img in coco["images"]])
    again = SynthDataset("tabletop", batch_size=4, resolution=64, seed=0).regenerate(sample_ids[:4])
    assert torch.equal(again.instance, batch.instance[:4]) and torch.equal(again.boxes, batch.boxes[:4])


def test_hydra_entry_point(tmp_path, source_date):
    import importlib.util

    from hydra import compose, initialize_config_dir

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("synth_export_entry", root / "train" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with initialize_config_dir(str(root / "configs"), version_base="1.3"):
        cfg = compose("export.yaml", overrides=[f"out={tmp_path / 'data'}", "n=3", "resolution=16", "formats=[coco,yolo]",
                                                "progress=false", "scenario=tabletop",
                                                "scenario.camera.distance=[0.6,0.7]"])
    result = module.run(cfg, command="python train/export.py ...")
    m = result.manifest
    assert result.complete and list(m["formats"]) == ["coco", "yolo"] and m["command"] == "python train/export.py ..."
    expected = load_scenario("tabletop", {"camera": {"distance": [0.6, 0.7]}})
    assert m["scenario"]["digest"] == "sha256:" + expected.fingerprint() != "sha256:" + load_scenario("tabletop").fingerprint()


def test_data_files_do_not_depend_on_when_or_where(tmp_path, monkeypatch):
    """Two runs of one command at different times and into different folders write the same data files (same
    SHA256SUMS, same content digest); only the manifest's creation time and command differ."""
    args = dict(n=3, resolution=16, formats="coco,yolo,kitti,webdataset", shard=(0, 1))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = export("tabletop", out=tmp_path / "a", **args).manifest
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1800000000")
    b = export("tabletop", out=tmp_path / "b", **args).manifest
    assert (tmp_path / "a/SHA256SUMS").read_bytes() == (tmp_path / "b/SHA256SUMS").read_bytes()
    assert a["files"] == b["files"] and a["created"] != b["created"]
