"""The sim-to-real study runner (experiments/sim2real/run.py): its plan of runs and the check of the pretraining
checkpoints a study borrows from another (``--pretrained-study``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("sim2real_run", ROOT / "experiments" / "sim2real" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_plan_pretrains_each_seed_first_with_equal_real_budgets(study, tmp_path):
    runs = study.plan("tile", ["real_only", "pretrain_finetune"], ["10", "all"], [0, 1], 20, 10, [], "s", pool=30,
                      logs=tmp_path)
    assert [r.name for r in runs[:5]] == ["synthetic_only_K0_seed0", "real_only_K10_seed0", "real_only_K30_seed0",
                                          "pretrain_finetune_K10_seed0", "pretrain_finetune_K30_seed0"]
    assert {r.budget["real_images"] for r in runs if r.arm != "synthetic_only"} == {10 * runs[1].budget["batch_size"]}
    assert runs[3].pretrain == str(tmp_path / "s" / "tile" / "synthetic_only" / "K0" / "seed0")


def test_selection_by_validation_keeps_the_best_checkpoint_of_every_real_data_arm(study, tmp_path):
    runs = study.plan("tile", ["real_only", "pretrain_finetune"], ["10"], [0], 20, 10, [], "s", pool=30,
                      logs=tmp_path, select_by="val/fg_iou/real")
    chosen = {r.arm: r.overrides for r in runs}
    for arm in ("real_only", "pretrain_finetune"):
        assert {"callbacks.model_checkpoint.monitor=val/fg_iou/real", "test_best=true"} <= set(chosen[arm])
    assert "test_best=true" not in chosen["synthetic_only"]
    assert "callbacks.model_checkpoint.every_n_train_steps=20" in chosen["synthetic_only"]


def test_decay_spans_each_arms_training_after_the_pretraining(study, tmp_path):
    runs = study.plan("tile", ["real_only", "pretrain_finetune", "mixed", "anneal"], ["10"], [0], 20, 10, [], "s",
                      pool=30, logs=tmp_path, decay=True)
    decay = {r.arm: [o for o in r.overrides if o.startswith("data.decay_steps=")] for r in runs}
    assert decay == {"synthetic_only": [], "real_only": ["data.decay_steps=10"],
                     "pretrain_finetune": ["data.decay_steps=10"], "mixed": ["data.decay_steps=30"],
                     "anneal": ["data.decay_steps=30"]}
    plain = study.plan("tile", ["real_only"], ["10"], [0], 20, 10, [], "s", pool=30, logs=tmp_path)
    assert not any(o.startswith("data.decay_steps") for o in plain[0].overrides)


def test_a_borrowed_pretraining_must_exist_and_stop_at_S(study, tmp_path):
    runs = study.plan("tile", ["real_only", "pretrain_finetune"], ["all"], [0], 20, 10, ["data.real_balance=true"],
                      "balanced", pool=30, logs=tmp_path, pretrained="main")
    assert [r.arm for r in runs] == ["real_only", "pretrain_finetune"]  # no pretraining of its own
    assert runs[1].pretrain == str(tmp_path / "main" / "tile" / "synthetic_only" / "K0" / "seed0")
    assert "data.real_balance=true" in runs[1].overrides
    with pytest.raises(FileNotFoundError, match="pretraining checkpoint not found"):
        study.check_pretraining(runs, 20)
    ckpt = Path(runs[1].pretrain) / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"global_step": 19}, ckpt)
    with pytest.raises(ValueError, match="stopped at step 19, not --synthetic-steps 20"):
        study.check_pretraining(runs, 20)
    torch.save({"global_step": 20}, ckpt)
    study.check_pretraining(runs, 20)


def test_by_group_pairs_each_defect_type_by_seed(tmp_path):
    import json

    spec = importlib.util.spec_from_file_location("sim2real_by_group", ROOT / "experiments" / "sim2real" / "by_group.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scores = {("pretrain_finetune", 0): (0.5, 0.9), ("pretrain_finetune", 1): (0.3, 0.8),
              ("real_only", 0): (0.2, 0.7), ("real_only", 1): (0.2, 0.9)}
    (tmp_path / "tile").mkdir()
    for (arm, seed), (crack, free_background) in scores.items():
        test = {"test/fg_iou/real": 0.4, "test/fg_iou/real/Crack": crack,
                "test/class_iou/background/real/Free": free_background, "test/fg_iou/real/Free": 0.0}
        (tmp_path / "tile" / f"{arm}_K100_seed{seed}.json").write_text(json.dumps(
            {"task": "tile", "arm": arm, "k": 100, "seed": seed, "test": test}))
    (tmp_path / "tile" / "mixed_K100_seed0.json").write_text(json.dumps(
        {"task": "tile", "arm": "mixed", "k": 100, "seed": 0, "test": {"test/fg_iou/real/Crack": 1.0}}))
    out = tmp_path / "by_group"
    assert module.main([str(tmp_path), "--out", str(out)]) == 0
    rows = {r["group"]: r for r in module.by_group(module.load(tmp_path))}
    assert list(rows) == ["Crack", "Free"]  # the defect-free group last, scored by false alarms, not by fg_iou
    assert rows["Crack"]["diffs"] == "+0.300 +0.100" and rows["Crack"]["diff"] == pytest.approx(0.2)
    assert rows["Crack"]["diff lo"] < 0.2 < rows["Crack"]["diff hi"]
    assert rows["Free"]["metric"] == "false_alarm"
    assert rows["Free"]["pretrain_finetune"] == pytest.approx(0.15) and rows["Free"]["real_only"] == pytest.approx(0.2)
    assert "| 100 | Crack | fg_iou |" in out.with_suffix(".md").read_text()
    other = tmp_path / "other"
    (other / "tile").mkdir(parents=True)
    (other / "tile" / "pretrain_finetune_K100_seed1.json").write_text(json.dumps(
        {"task": "tile", "arm": "pretrain_finetune", "k": 100, "seed": 1,
         "test": {"test/fg_iou/real/Crack": 0.6, "test/class_iou/background/real/Free": 0.8}}))
    assert module.main([str(other), "--base-study", str(tmp_path), "--base", "pretrain_finetune",
                        "--out", str(tmp_path / "vs")]) == 0
    vs = {r["group"]: r for r in module.by_group(module.load(other), base="pretrain_finetune",
                                                  base_runs=module.load(tmp_path), base_label="main")}
    assert vs["Crack"]["seeds"] == "1" and vs["Crack"]["diff"] == pytest.approx(0.3) and vs["Crack"]["main"] == 0.3
    assert "pretrain_finetune (" in (tmp_path / "vs.md").read_text()


def test_free_tiles_writes_only_defect_free_train_photos(fake_tiles, tmp_path):
    from synth_torch.data.real import MagneticTile, split_of

    spec = importlib.util.spec_from_file_location("sim2real_free_tiles", ROOT / "experiments" / "sim2real" / "free_tiles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "free"
    n = module.write_free_tiles(fake_tiles, out)
    written = sorted(p.name for p in out.iterdir())
    expected = sorted(p.name for p in (fake_tiles / "MT_Free" / "Imgs").glob("*.jpg")
                      if split_of(f"MT_Free/Imgs/{p.name}", (0.7, 0.1, 0.2)) == "train")
    assert n == len(written) and written == expected and 0 < n < 20
    held_out = {k for split in ("val", "test") for k in MagneticTile(fake_tiles, module.CLASSES, 8, split=split).keys}
    assert not {f"MT_Free/Imgs/{name}" for name in written} & held_out
    assert module.write_free_tiles(fake_tiles, out) == n  # idempotent: files already there are kept


def test_defect_stats_measures_a_drawn_line_and_disc():
    """Regions of known geometry: a 1-pixel line of length 20 touching the left border at half brightness, and
    a lighter 5x5 square in the middle, on a flat image."""
    import numpy as np

    spec = importlib.util.spec_from_file_location("sim2real_defect_stats",
                                                  ROOT / "experiments" / "sim2real" / "defect_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    image = np.full((40, 40), 0.8)
    semantic = np.zeros((40, 40), dtype=np.int64)
    image[10, 0:20], semantic[10, 0:20] = 0.4, 1
    image[20:25, 20:25], semantic[20:25, 20:25] = 1.0, 2
    found = dict(module.regions(image, semantic, 2))
    line, square = found[1], found[2]
    assert line["length"] == pytest.approx(np.sqrt(12 * np.var(np.arange(20), ddof=1)) / 40)
    assert line["width"] == pytest.approx(20 / np.sqrt(12 * np.var(np.arange(20), ddof=1)))
    assert line["contrast"] == pytest.approx(0.5) and line["edge"] == 0
    assert line["area"] == pytest.approx(20 / 1600)
    assert square["contrast"] == pytest.approx(-0.25) and square["edge"] == pytest.approx(15 / 40)
    summary = module.summarise([(1, line), (2, square)], {1: 1, 2: 1}, ("line", "square"))
    assert summary["line"]["regions_per_image"] == 1 and summary["square"]["area"][1] == pytest.approx(25 / 1600)


def test_committed_tables_match_the_raw_results_and_an_edit_makes_them_stale(tmp_path):
    import json
    import shutil

    spec = importlib.util.spec_from_file_location("sim2real_tables", ROOT / "experiments" / "sim2real" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = module.tables()
    assert module.RESULTS / "main" / "report.md" in files and module.RESULTS / "compare.md" in files
    assert module.stale(files) == [], "run python experiments/sim2real/tables.py and commit the tables"
    results = tmp_path / "results"
    shutil.copytree(module.RESULTS, results)
    run = results / "groups" / "tile" / "pretrain_finetune_K25_seed0.json"
    record = json.loads(run.read_text())
    record["test"]["test/fg_iou/real/Crack"] += 0.5
    run.write_text(json.dumps(record))
    assert module.main(["--results", str(results), "--check"]) == 1
    changed = {p.relative_to(results).as_posix() for p in module.stale(module.tables(results))}
    uses_run = [out for out, (study, arm, base, base_study) in module.BY_GROUP.items()
                if (study, arm) == ("groups", "pretrain_finetune") or (base_study, base) == ("groups", "pretrain_finetune")]
    pairs_with_run = {out for out, (study, arm, _, _) in module.BY_GROUP.items()
                      if (results / study / "tile" / f"{arm}_K25_seed0.json").is_file()}
    uses_groups = [out for out in uses_run if out in pairs_with_run and (results / f"{out}.md").is_file()]
    assert "groups/by_group" in uses_groups and "matched/by_group_vs_main" in uses_groups
    assert changed == {f"{out}.{ext}" for out in uses_groups for ext in ("csv", "md")}
    assert module.main(["--results", str(results)]) == 0
    assert module.main(["--results", str(results), "--check"]) == 0
    assert (results / "groups" / "by_group.md").read_text() != (module.RESULTS / "groups" / "by_group.md").read_text()


def test_compare_pairs_each_seed_with_the_base_arm_it_is_asked_for(tmp_path):
    import json

    spec = importlib.util.spec_from_file_location("sim2real_compare", ROOT / "experiments" / "sim2real" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    iou, ap = "test/fg_iou/real", "test/fg_ap/real"
    runs = {("base", "real_only", 0): 0.10, ("base", "real_only", 1): 0.20, ("base", "pretrain_finetune", 0): 0.30,
            ("base", "pretrain_finetune", 1): 0.50, ("new", "pretrain_finetune", 0): 0.40,
            ("new", "pretrain_finetune", 1): 0.35, ("new", "pretrain_finetune", 2): 0.90}
    for (study, arm, seed), value in runs.items():
        path = tmp_path / study / "tile" / f"{arm}_K25_seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"task": "tile", "arm": arm, "k": 25, "seed": seed,
                                    "test": {iou: value, ap: value / 2}}))
    same, = module.compare(tmp_path, "base", "new")
    assert (same["base_arm"], same["seeds"]) == ("pretrain_finetune", "0 1")  # seed 2 has no partner
    assert same[f"{iou} diffs"] == "+0.100 -0.150"
    against, = module.compare(tmp_path, "base", "new", base_arm="real_only")
    assert against["base_arm"] == "real_only" and against[f"{iou} diffs"] == "+0.300 +0.150"
    assert against[f"{iou} diff"] == pytest.approx(0.225) and against[f"{ap} diff"] == pytest.approx(0.1125)
    assert against[f"{iou} diff lo"] < 0.225 < against[f"{iou} diff hi"]
    assert "minus the base's real only at the same K" in module.markdown([against], "real_only")


def test_a_selected_view_scores_each_run_at_its_checkpoint_chosen_on_validation(tmp_path):
    import json

    spec = importlib.util.spec_from_file_location("sim2real_compare", ROOT / "experiments" / "sim2real" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    iou, ap = "test/fg_iou/real", "test/fg_ap/real"
    runs = {("real_only", 0): (0.10, 0.15), ("real_only", 1): (0.20, 0.22), ("pretrain_finetune", 0): (0.30, 0.40),
            ("pretrain_finetune", 1): (0.25, 0.35)}
    for (arm, seed), (last, chosen) in runs.items():
        path = tmp_path / "s" / "tile" / f"{arm}_K25_seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"task": "tile", "arm": arm, "k": 25, "seed": seed, "wall_s": 1.0,
                                    "budget": {"steps": 10, "real_images": 80, "synthetic_images": 0},
                                    "test": {iou: last, ap: last},
                                    "selected": {"step": 100, "test": {iou: chosen, ap: chosen}}}))
    gain = {r["arm"]: r[f"{iou} diffs"] for r in module.compare(tmp_path, "s", "s@selected")}
    assert gain == {"real_only": "+0.050 +0.020", "pretrain_finetune": "+0.100 +0.100"}
    rows = module.compare(tmp_path, "s@selected", "s@selected", base_arm="real_only")
    assert [(r["arm"], r[f"{iou} diffs"]) for r in rows] == [("pretrain_finetune", "+0.250 +0.130")]
    from report import report_files, summarise  # on the path once compare.py is loaded

    files = report_files(tmp_path / "s@selected", summarise(module.load(tmp_path / "s@selected")))
    assert set(files) == {tmp_path / "s" / "selected" / "summary.csv", tmp_path / "s" / "selected" / "report.md"}
    unselected = json.loads(path.read_text())
    del unselected["selected"]
    path.write_text(json.dumps(unselected))
    with pytest.raises(ValueError, match=r"no selected checkpoint in \['pretrain_finetune_K25_seed1'\]"):
        module.load(tmp_path / "s@selected")


def test_curves_count_real_steps_from_the_switch_to_real_data():
    spec = importlib.util.spec_from_file_location("sim2real_curves", ROOT / "experiments" / "sim2real" / "curves.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    metric = "val/fg_iou/real"
    runs = [{"arm": "pretrain_finetune", "k": 25, "seed": 0, "steps": 30, "budget": {"real_steps": 10},
             "curve": [{"step": 9, metric: 0.0}, {"step": 24, metric: 0.2}, {"step": 29, metric: 0.3}]},
            {"arm": "real_only", "k": 25, "seed": 0, "steps": 10, "budget": {"real_steps": 10},
             "curve": [{"step": 4, metric: 0.1}, {"step": 9, "val/fg_iou": 0.5}]},
            {"arm": "real_only", "k": 100, "seed": 0, "steps": 10, "budget": {"real_steps": 10},
             "curve": [{"step": 9, metric: 0.9}]}]
    assert module.curves(runs, 25, metric) == {("pretrain_finetune", 0): [(5, 0.2), (10, 0.3)],
                                               ("real_only", 0): [(5, 0.1)]}
