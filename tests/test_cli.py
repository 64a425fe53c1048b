"""The ``synth-torch`` command line (run in-process through ``synth_torch.cli.main``)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from synth_torch import SynthDataset
from synth_torch.cli import annotate, main


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_preview_writes_an_annotated_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["preview", "--scenario", "tabletop", "--n", "4", "--resolution", "48", "--out", str(out)]) == 0
    grid = read_png(out)
    # make_grid: 2 x 2 tiles of 48 px with 2 px padding around and between.
    assert grid.shape == (2 * 48 + 3 * 2, 2 * 48 + 3 * 2, 3)
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left behind
    assert stat.S_IMODE(out.stat().st_mode) & 0o044  # readable like any file open() creates (umask permitting)
    # The first tile is sample 0 with its labels drawn: it differs from the bare image exactly where labels are.
    batch = SynthDataset("tabletop", batch_size=1, resolution=48, seed=0).render_batch(torch.arange(1))
    bare = (batch.image[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    tile = grid[2:50, 2:50]
    changed = (tile != bare).any(-1)
    drawn = annotate(batch, 0).permute(1, 2, 0).numpy()
    assert np.array_equal(tile, drawn)
    masks = (batch.instance[0] > 0).numpy()
    assert changed[masks].mean() > 0.9  # instance pixels are tinted
    assert changed.any() and not changed.all()


def test_preview_of_a_slice(tmp_path):
    out = tmp_path / "dark.png"
    main(["preview", "--scenario", "tabletop", "--n", "1", "--resolution", "32", "--slice", "low_light", "--out",
          str(out)])
    bright = tmp_path / "base.png"
    main(["preview", "--scenario", "tabletop", "--n", "1", "--resolution", "32", "--slice", "base", "--out",
          str(bright)])
    assert read_png(out).mean() < read_png(bright).mean()


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
def test_bench_on_cuda_reports_raw_nvdiffrast_when_installed(capsys):
    import synth_torch.render as dr

    out = main(["bench", "--device", "cuda", "--cases", "train-default", "--batches", "2", "--workers", "0"])
    text = capsys.readouterr().out
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
