"""The ``synth-torch`` command line (run in-process through ``synth_torch.cli.main``)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from synth_torch import SynthDataset
from synth_torch.cli import main
from synth_torch.loop.visuals import TITLE_HEIGHT, label_tile
from synth_torch.scenario.config import load_scenario


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_preview_writes_an_annotated_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["preview", "--scenario", "tabletop", "--n", "4", "--resolution", "48", "--out", str(out)]) == 0
    grid = read_png(out)
    # 2 x 2 tiles (no empty cell), each 48 px enlarged 6x for readable labels under a 16 px title bar, 4 px padding
    tile_h, tile_w = TITLE_HEIGHT + 6 * 48, 6 * 48
    assert grid.shape == (2 * tile_h + 3 * 4, 2 * tile_w + 3 * 4, 3)
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left behind
    assert stat.S_IMODE(out.stat().st_mode) & 0o044  # readable like any file open() creates (umask permitting)
    # The first tile is sample 0 with its labels drawn: it differs from the bare (enlarged) image where labels are.
    batch = SynthDataset("tabletop", batch_size=1, resolution=48, seed=0).render_batch(torch.arange(1))
    tile = grid[4:4 + tile_h, 4:4 + tile_w]
    assert np.array_equal(tile, label_tile(batch, 0).permute(1, 2, 0).numpy())
    bare = (batch.image[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    bare = bare.repeat(6, 0).repeat(6, 1)
    changed = (tile[TITLE_HEIGHT:] != bare).any(-1)
    masks = (batch.instance[0] > 0).numpy().repeat(6, 0).repeat(6, 1)
    assert changed[masks].mean() > 0.9  # instance pixels are tinted
    assert changed.any() and not changed.all()
    title = tile[:TITLE_HEIGHT]
    assert (title != title[0, 0]).any(-1).sum() > 20  # the slice name is written in the title bar


@pytest.mark.parametrize("n,shape", [(8, (2, 4)), (6, (2, 3)), (7, (1, 7)), (9, (3, 3))])
def test_preview_grid_has_no_empty_cells(n, shape):
    from synth_torch.loop.visuals import grid_columns

    columns = grid_columns(n)
    assert (n // columns, columns) == shape and columns * (n // columns) == n


def test_labels_never_overlap():
    from synth_torch.loop.visuals import layout_labels

    boxes = [(10, 10, 40, 40), (12, 12, 42, 42), (11, 9, 30, 30), (0, 0, 5, 5), (100, 100, 120, 120)]
    spots = layout_labels(boxes, [(30, 12)] * len(boxes), 128, 128)
    placed = [s for s in spots if s is not None]
    assert len(placed) >= 4
    for i, a in enumerate(placed):
        assert 0 <= a[0] and a[2] <= 128 and 0 <= a[1] and a[3] <= 128
        for b in placed[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_preview_panels_titles_and_overrides(tmp_path, capsys):
    out = tmp_path / "panels.png"
    assert main(["preview", "--scenario", "tabletop", "--n", "2", "--resolution", "32", "--slice", "low_light",
                 "--panels", "labels,depth,instance,normals", "--out", str(out), "objects.count=1",
                 "camera.distance=[0.6,0.6]"]) == 0
    grid = read_png(out)
    s = 8  # 32 px enlarged to 256
    # wide four-panel tiles stack in one column (the grid closest to square)
    assert grid.shape == (2 * (TITLE_HEIGHT + 32 * s) + 3 * 4, 4 * 32 * s + 3 * 2 + 2 * 4, 3)
    ds = SynthDataset(load_scenario("tabletop", {"objects": {"count": 1}, "camera": {"distance": [0.6, 0.6]}}),
                      batch_size=2, resolution=32)
    batch = ds.render_batch(torch.arange(2), torch.full((2,), ds.slice_names.index("low_light")))
    assert (batch.valid.sum(1) == 1).all()
    tile = grid[4:4 + TITLE_HEIGHT + 32 * s, 4:4 + 4 * 32 * s + 3 * 2]
    assert np.array_equal(tile, label_tile(batch, 0, ("labels", "depth", "instance", "normals")).permute(1, 2, 0).numpy())
    instance = tile[TITLE_HEIGHT:, 2 * (32 * s + 2):3 * 32 * s + 4]
    background = (batch.instance[0] == 0).numpy().repeat(s, 0).repeat(s, 1)
    assert (instance[background] == 0).all() and (instance[~background] != 0).any(-1).all()
    low = label_tile(batch, 0, ("image",))[:, :TITLE_HEIGHT]
    base = label_tile(batch, 0, ("image",), title="base")[:, :TITLE_HEIGHT]
    assert not torch.equal(low, base)  # the slice name is in the title
    with pytest.raises(SystemExit):
        main(["preview", "--n", "1", "--resolution", "32", "--out", str(tmp_path / "x.png"), "camera.nope=1"])
    err = capsys.readouterr().err
    assert "camera" in err and "'nope'" in err
    with pytest.raises(SystemExit):
        main(["preview", "--n", "1", "--resolution", "32", "--out", str(tmp_path / "x.png"), "--panels", "rgb"])
    assert "--panels" in capsys.readouterr().err


def test_preview_of_a_slice(tmp_path):
    out = tmp_path / "dark.png"
    main(["preview", "--scenario", "tabletop", "--n", "1", "--resolution", "32", "--slice", "low_light", "--panels",
          "image", "--out", str(out)])
    bright = tmp_path / "base.png"
    main(["preview", "--scenario", "tabletop", "--n", "1", "--resolution", "32", "--slice", "base", "--panels",
          "image", "--out", str(bright)])
    assert read_png(out)[TITLE_HEIGHT + 4:].mean() < read_png(bright)[TITLE_HEIGHT + 4:].mean()


@pytest.mark.parametrize("argv,message", [
    (["preview", "--slice", "sunny", "--n", "1"], "unknown slice 'sunny'"),
    (["preview", "--scenario", "nope", "--n", "1"], "neither a built-in"),
    (["preview", "--n", "0"], "--n must be positive"),
    (["preview", "--out", "{tmp}/missing/grid.png"], "does not exist"),
    (["preview", "--out", "{tmp}"], "is a directory"),
    (["preview", "--out", "{tmp}/grid.jpg"], "must be a .png"),
    (["demo", "--out", "{tmp}/missing/demo.png"], "does not exist"),
    (["demo", "--resolution", "4"], "--resolution must lie in"),
])
def test_clear_errors(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "x.png")]
    with pytest.raises(SystemExit) as info:
        main(argv + ["--resolution", "32"] if argv[0] == "preview" else argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "synth-torch: error:" in err and message in err, err
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(SystemExit):
            main(["demo", "--resolution", "16", "--out", str(locked / "demo.png")])
        assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("argv", [["demo", "--resolution", "16"], ["preview", "--n", "1", "--resolution", "16"],
                                  ["bench", "--cases", "train-default", "--batches", "1"]])
def test_output_under_a_regular_file_fails_first_even_as_root(tmp_path, capsys, argv):
    """A path below a regular file cannot be written by anyone (root included): refused before any work, naming
    the file in the way."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = ["--json", str(blocker / "bench.json")] if argv[0] == "bench" else ["--out", str(blocker / "sub" / "x.png")]
    with pytest.raises(SystemExit) as info:
        main(argv + out)
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"{blocker} is a file, not a folder" in err, err
    assert os.listdir(tmp_path) == ["a_file"] and blocker.read_text() == "x"


def test_demo_renders_lit_textured_antialiased_meshes(tmp_path):
    out = tmp_path / "demo.png"
    assert main(["demo", "--resolution", "64", "--out", str(out)]) == 0
    image = read_png(out).astype(float)
    assert image.shape == (64, 64, 3)
    sky = np.array([0.80, 0.86, 0.93]) ** (1 / 2.2) * 255
    background = (np.abs(image - sky) < 1.5).all(-1)
    assert 0.05 < background.mean() < 0.8  # objects and floor cover part of the view
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 200  # shading and texture, not flat colours
    # Antialiasing blends silhouettes: pixels next to the sky take values between sky and surface.
    edge = background[:, 1:] != background[:, :-1]
    assert edge.any()


def test_bench_measures_both_sides(capsys):
    assert main(["bench", "--cases", "train-default", "--batches", "1", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "| train-default (defects, 8 x 64²) |" in out and "ratio main / disk" in out
    assert "g-buffer passes" in out and "sensor" in out


@pytest.mark.parametrize("argv,message", [(["--batches", "0"], "--batches must be >= 1"),
                                          (["--device", "tpu"], "--device must be cpu or cuda"),
                                          (["--device", "nonsense:x"], "--device must be cpu or cuda")])
def test_bench_rejects_bad_options(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        main(["bench", *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_on_cuda_without_a_gpu_says_so(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--device", "cuda"])
    assert "torch sees no CUDA device" in capsys.readouterr().err


@pytest.mark.gpu
def test_bench_on_cuda_reports_raw_nvdiffrast_when_installed(capsys, tmp_path):
    import synth_torch.render as dr

    main(["bench", "--device", "cuda", "--cases", "train-default", "--batches", "2", "--workers", "0",
          "--json", str(tmp_path / "bench.json")])
    text = capsys.readouterr().out
    out = json.loads((tmp_path / "bench.json").read_text())
    assert "Rendering device: cuda" in text and out["results"][0]["workers"] is None
    assert ("nvdiffrast's rasterize + interpolate" in text) == dr.nvdiffrast_available()


def test_console_script_is_declared():
    """``synth-torch`` resolves to synth_torch.cli:main (pyproject [project.scripts]), and that callable exists."""
    import tomllib
    from pathlib import Path

    import synth_torch.cli

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["synth-torch"] == "synth_torch.cli:main"
    assert callable(synth_torch.cli.main)


@pytest.mark.slow
def test_module_help_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "synth_torch.cli", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "preview" in result.stdout and "demo" in result.stdout
