"""Release notes name what changed between two dataset versions: parameters, slices and weights, assets by
hash, label schema, counts, and gate figures with which gates were run again."""

from __future__ import annotations

from conftest import make_export, photo

from synth_torch.cli import main
from synth_torch.governance.gates import validate


def test_diff_of_two_scenario_versions_names_the_changed_parameter(tmp_path, capsys):
    tex = tmp_path / "textures"
    tex.mkdir()
    photo(1).save(tex / "wood.png")
    a = make_export(tmp_path / "a", n=4, formats="coco", overrides={"texture_images": str(tex)})
    photo(2).save(tex / "wood.png")  # same path, new content
    bg = tmp_path / "backgrounds"
    bg.mkdir()
    photo(3).save(bg / "steel.png")
    b = make_export(tmp_path / "b", n=6, formats="coco", overrides={
        "texture_images": str(tex), "background_images": str(bg), "camera": {"distance": [0.6, 0.9]},
        "slices": {"low_light": {"weight": 0.3}, "glare": {"weight": 0.1, "light": {"specular": [0.8, 1.0]}}}})
    validate(a, only=["manifest", "labels"])
    validate(b, only=["labels"])
    assert main(["datasets", "diff", str(a), str(b)]) == 0
    notes = capsys.readouterr().out
    assert "- parameter `camera.distance`: uniform [0.45, 0.75] -> uniform [0.6, 0.9]" in notes
    assert "- slice `glare` added (weight 0.1): `light.specular` uniform [0.8, 1]" in notes
    assert "| `low_light` | 0.1 | 10.0% | 0.3 |" in notes  # the weight table, with shares
    assert "- slice `low_light` weight 0.1 -> 0.3 (share 10.0% -> 23.1%)" in notes
    assert "| modified | texture_images |" in notes and f"{tex / 'wood.png'}" in notes
    assert "| added | background_images |" in notes and "steel.png" in notes
    assert "- setting `background_images` added" not in notes  # None -> a folder is a change, not an addition
    assert f"- setting `background_images`: none -> {bg}" in notes
    assert "| **images** | 4 | 6 | +2 |" in notes
    assert "- `sample_index_stop`: 4 -> 6" in notes
    # gates: labels were run on B, manifest only on A
    assert "| `labels` | pass | pass | run on B's content" in notes
    assert "| `manifest` | pass | - | not run for B |" in notes
    assert "No change." in notes.split("## Label schema")[1].split("##")[0]
    out = tmp_path / "notes.md"
    assert main(["datasets", "diff", str(a), str(b), "--out", str(out)]) == 0
    assert out.read_text() == notes


def test_label_schema_changes_are_listed(tmp_path, capsys):
    a = make_export(tmp_path / "a", n=2, formats="coco")
    cats = [{"name": "box", "shape": "box", "size": [0.07, 0.15]}, {"name": "puck", "shape": "cylinder"}]
    b = make_export(tmp_path / "b", n=2, formats="coco", overrides={"categories": cats})
    assert main(["datasets", "diff", str(a), str(b)]) == 0
    notes = capsys.readouterr().out
    schema = notes.split("## Label schema")[1].split("##")[0]
    assert "- class id 2: " in schema and "ball" in schema and "puck" in schema
    assert "- class id 3 `can` removed" in schema
    assert "- category `puck` added" in notes and "- category `ring` removed" in notes
