"""Each quality gate passes on a clean export and fails on its planted defect; results land in the manifest
without changing its digest; `synth-torch validate` prints the table and exits non-zero on a failure."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RES, make_export, photo
from PIL import Image
from pycocotools import mask as mask_utils

from synth_torch.cli import main
from synth_torch.export import manifest_digest, read_manifest
from synth_torch.export.manifest import schema
from synth_torch.governance.exports import GovernanceError
from synth_torch.governance.gates import load_gates, validate

REAL = Path(__file__).resolve().parents[2].parent / "shared" / "real"


def _coco(root: Path) -> dict:
    return json.loads((root / "coco/annotations/instances.json").read_text())


def _write_coco(root: Path, doc: dict) -> None:
    (root / "coco/annotations/instances.json").write_text(json.dumps(doc))


def _gate(report, name):
    (r,) = [r for r in report.results if r.name == name]
    return r


def test_clean_export_passes_and_results_go_into_the_manifest(clean_export, copy_of, capsys):
    import jsonschema

    root = copy_of(clean_export)
    before = manifest_digest(root)
    assert main(["validate", str(root)]) == 0
    out = capsys.readouterr().out
    assert "labels" in out and "PASS" in out and "validation PASSED" in out
    m = read_manifest(root)
    jsonschema.validate(m, schema(), cls=jsonschema.Draft202012Validator)
    v = m["validation"]
    assert v["passed"] and v["content_digest"] == m["files"]["content_digest"]
    assert v["gates"]["labels"]["status"] == "pass" and v["gates"]["manifest"]["status"] == "pass"
    assert v["gates"]["labels"]["figures"]["annotations_checked"] > 0
    assert v["gates"]["statistical"]["status"] == "skip"  # no reference given
    assert manifest_digest(root) == before  # validating never changes the dataset's identity
    assert main(["datasets", "show", str(root)]) == 0
    assert "validation PASSED" in capsys.readouterr().out


def test_shifted_box_fails_the_label_gate(clean_export, copy_of, capsys):
    root = copy_of(clean_export)
    doc = _coco(root)
    ann = next(a for a in doc["annotations"] if a["bbox"][0] >= 3)
    ann["bbox"][0] -= 3.0
    _write_coco(root, doc)
    report = validate(root, only=["labels", "manifest"])
    labels = _gate(report, "labels")
    assert labels.status == "fail"
    assert labels.figures["violations_by_check"]["tight_box"] == 1
    assert labels.figures["violations_by_check"]["formats_agree"] == 1  # YOLO still has the right box
    assert any(f"coco annotation {ann['id']}" in msg and "tight_box" in msg for msg in labels.failures)
    manifest = _gate(report, "manifest").figures["mismatches_by_check"]
    assert manifest["hash"] == 1 and "missing" not in manifest and "unlisted" not in manifest
    assert not report.passed
    assert main(["validate", str(root), "--only", "labels"]) == 1
    assert "tight_box" in capsys.readouterr().out


def test_mask_that_does_not_match_its_box_fails(clean_export, copy_of):
    root = copy_of(clean_export)
    doc = _coco(root)
    ann = max(doc["annotations"], key=lambda a: a["area"])
    mask = mask_utils.decode(ann["segmentation"])
    moved = np.roll(mask, 4, axis=1)
    moved[:, :4] = 0
    rle = mask_utils.encode(np.asfortranarray(moved))
    ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    _write_coco(root, doc)
    labels = _gate(validate(root, only=["labels"], write=False), "labels")
    assert labels.status == "fail"
    checks = labels.figures["violations_by_check"]
    assert checks["tight_box"] == 1 and checks["instance_map"] == 1
    assert all(f"annotation {ann['id']}" in m for m in labels.failures)


def test_zero_visible_and_out_of_schema_annotations_fail(clean_export, copy_of):
    root = copy_of(clean_export)
    doc = _coco(root)
    first, second = doc["annotations"][:2]
    empty = mask_utils.encode(np.zeros((RES, RES), dtype=np.uint8, order="F"))
    first["segmentation"], first["area"] = {"size": empty["size"], "counts": empty["counts"].decode()}, 0.0
    second["category_id"] = 99
    _write_coco(root, doc)
    labels = _gate(validate(root, only=["labels"], write=False), "labels")
    checks = labels.figures["violations_by_check"]
    assert checks["zero_visible"] == 1 and checks["class_id"] == 1


def test_corrupt_coco_file_is_reported_not_raised(clean_export, copy_of):
    root = copy_of(clean_export)
    (root / "coco/annotations/instances.json").write_text("{not json")
    labels = _gate(validate(root, only=["labels"], write=False), "labels")
    assert labels.status == "fail" and "pycocotools" in labels.figures["violations_by_check"]


def test_manifest_gate_finds_tampered_missing_and_unlisted_files(clean_export, copy_of):
    root = copy_of(clean_export)
    label = sorted((root / "yolo/labels/train").glob("*.txt"))[0]
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    sorted((root / "kitti/training/calib").glob("*.txt"))[0].unlink()
    (root / "coco/images/extra.png").write_bytes(b"not listed")
    gate = _gate(validate(root, only=["manifest"], write=False), "manifest")
    assert gate.status == "fail"
    assert gate.figures["mismatches_by_check"]["hash"] == 1
    assert gate.figures["mismatches_by_check"]["missing"] == 1
    assert gate.figures["mismatches_by_check"]["unlisted"] == 1
    assert any("extra.png" in m for m in gate.failures)


def test_statistical_gate_against_a_reference(tmp_path):
    # the reference: other sample indices of the same scenario, which the export should look like
    reference = make_export(tmp_path / "ref", n=48, formats="coco", seed=1) / "coco/images"
    root = make_export(tmp_path / "export", n=24, formats="coco")
    gates = {"statistical": {"max_ratio": 5.0, "min_images": 4, "exclude_suffix": ""}}
    clean = _gate(validate(root, reference=reference, gates=gates, only=["statistical"], write=False), "statistical")
    assert clean.status == "pass", clean.summary
    o = clean.figures["overall"]
    assert o["images"] == 24 and o["floor_size"] == 24 and o["floor"] > 0
    assert o["ratio"] == pytest.approx(o["frechet"] / o["floor"], rel=1e-3)
    assert sum(c["images"] for c in clean.figures["slices"].values()) == 24
    for png in (root / "coco/images").glob("*.png"):  # planted defect: every image washed out to a flat grey
        a = np.asarray(Image.open(png)).astype(np.float64)
        Image.fromarray((0.05 * a + 180).astype(np.uint8)).save(png)
    shifted = _gate(validate(root, reference=reference, gates=gates, only=["statistical"], write=False), "statistical")
    assert shifted.status == "fail", shifted.summary
    assert shifted.figures["overall"]["ratio"] > 5 * o["ratio"]
    assert any(f.startswith("overall") and "z =" in f for f in shifted.failures)


@pytest.fixture(scope="module")
def asset_exports(tmp_path_factory, protected):
    """Exports whose scenario reads image folders: clean assets, a face among the textures, and a protected
    image among the backgrounds."""
    from matplotlib import cbook

    base = tmp_path_factory.mktemp("assets")
    folders = {}
    for name in ("clean_tex", "clean_bg", "face_tex", "leak_bg"):
        folders[name] = base / name
        folders[name].mkdir()
        for k in range(2):
            photo(100 + 10 * len(folders) + k).save(folders[name] / f"asset_{k}.png")
    shutil.copy(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), folders["face_tex"] / "portrait.jpg")
    shutil.copy(protected / "real_03.jpg", folders["leak_bg"] / "table.jpg")
    out = {}
    for name, tex, bg in (("clean", "clean_tex", "clean_bg"), ("face", "face_tex", "clean_bg"),
                          ("leak", "clean_tex", "leak_bg")):
        out[name] = make_export(base / f"export_{name}", n=4, formats="coco",
                                overrides={"texture_images": str(folders[tex]), "background_images": str(folders[bg])})
    return out


def test_privacy_gates_pass_on_clean_assets(asset_exports, protected):
    report = validate(asset_exports["clean"], protected=protected, write=False)
    for name in ("privacy_assets", "privacy_faces", "privacy_generated"):
        r = _gate(report, name)
        assert r.status == "pass", (name, r.summary)
    assert _gate(report, "privacy_assets").figures["assets_checked"] == 4
    assert _gate(report, "privacy_faces").figures["images_scanned"] == 4


def test_face_in_a_texture_folder_fails_the_face_gate(asset_exports):
    r = _gate(validate(asset_exports["face"], only=["privacy_faces"], write=False), "privacy_faces")
    assert r.status == "fail"
    assert {d["image"].rsplit("/", 1)[-1] for d in r.figures["detections"]} == {"portrait.jpg"}


def test_protected_image_as_background_fails_the_asset_gate(asset_exports, protected):
    r = _gate(validate(asset_exports["leak"], protected=protected, only=["privacy_assets"], write=False),
              "privacy_assets")
    assert r.status == "fail" and r.figures["near_duplicates"] == 1
    assert "table.jpg" in r.failures[0] and "real_03.jpg" in r.failures[0]


def test_near_copy_among_generated_images_fails(clean_export, copy_of, protected):
    root = copy_of(clean_export)
    clean = _gate(validate(root, protected=protected, only=["privacy_generated"], write=False), "privacy_generated")
    assert clean.status == "pass" and clean.figures["dcr"]["min"] > 6
    # planted defect: a protected photograph, resized to the export, slightly brightened and noised
    g = np.random.default_rng(0)
    real = np.asarray(Image.open(protected / "real_07.jpg").convert("RGB").resize((RES, RES))).astype(np.float64)
    copy = np.clip(real * 1.05 + 4 + g.normal(0, 3, real.shape), 0, 255).astype(np.uint8)
    Image.fromarray(copy).save(root / "coco/images/000005.png")
    r = _gate(validate(root, protected=protected, only=["privacy_generated"], write=False), "privacy_generated")
    assert r.status == "fail" and r.figures["near_copies"] == 1
    assert r.figures["closest"][0]["image"] == "000005" and r.figures["closest"][0]["protected"].endswith("real_07.jpg")


def test_real_photo_as_background_is_caught(tmp_path):
    real = REAL / "fruits_nuts" / "images"
    if not real.is_dir():
        pytest.skip(f"real data not found: {real}")
    bg = tmp_path / "bg"
    bg.mkdir()
    shutil.copy(sorted(real.glob("*.jpg"))[4], bg / "scene.jpg")
    root = make_export(tmp_path / "leak", n=2, formats="coco", overrides={"background_images": str(bg)})
    r = _gate(validate(root, protected=real, only=["privacy_assets"], write=False), "privacy_assets")
    assert r.status == "fail" and r.figures["distance_to_closest"]["min"] == 0


def test_utility_gate_restores_the_callers_deterministic_mode(monkeypatch):
    from synth_torch.governance.utility_gate import _keep_deterministic_algorithms

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    with _keep_deterministic_algorithms():
        torch.use_deterministic_algorithms(True)  # what Lightning's Trainer(deterministic=True) does
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with _keep_deterministic_algorithms():
            torch.use_deterministic_algorithms(False)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.slow
def test_utility_gate_trains_and_scores_on_real_data(tmp_path):
    real = REAL / "magnetic_tile"
    if not real.is_dir():
        pytest.skip(f"real data not found: {real}")
    root = make_export(tmp_path / "defects", scenario="defects", n=16, formats="webdataset")
    settings = {"enabled": True, "steps": 4, "batch_size": 4, "width": 8, "depth": 2, "val_images": 8}
    assert not torch.are_deterministic_algorithms_enabled()
    r = _gate(validate(root, reference=real, gates={"utility": settings}, only=["utility"], write=False), "utility")
    assert not torch.are_deterministic_algorithms_enabled(), "the gate's Trainer(deterministic=True) leaked"
    score = r.figures["fg_iou"]
    assert 0.0 <= score <= 1.0 and r.figures["real_images"] == 8
    strict = {"utility": settings | {"min_score": score + 0.01}}
    lenient = {"utility": settings | {"min_score": max(score - 0.01, 0.0)}}
    assert _gate(validate(root, reference=real, gates=strict, only=["utility"], write=False), "utility").status == "fail"
    assert _gate(validate(root, reference=real, gates=lenient, only=["utility"], write=False), "utility").status == "pass"


@pytest.mark.parametrize("config, match", [
    ({"lables": {}}, "unknown gate"),
    ({"labels": {"max_violation": 1}}, r"gates\.labels: unknown key"),
    ({"statistical": {"max_ratio": "big"}}, r"gates\.statistical\.max_ratio: expected float"),
    ({"utility": {"real_kind": "coco"}}, r"gates\.utility\.real_kind"),
])
def test_bad_gate_settings_are_refused_by_name(config, match):
    with pytest.raises(GovernanceError, match=match):
        load_gates(config)


def test_validate_cli_errors_exit_2(clean_export, tmp_path, capsys):
    bad = tmp_path / "gates.yaml"
    bad.write_text("labels: {box_tolerance: 1}\n")
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(clean_export), "--gates", str(bad)])
    assert exc.value.code == 2 and "gates.labels: unknown key" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(tmp_path / "nothing")])
    assert exc.value.code == 2
