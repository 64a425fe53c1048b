"""The layering of docs/architecture.md holds in the code (import-linter's layers contract in pyproject.toml), and
the document draws the same layers in the same order."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from importlinter.cli import EXIT_STATUS_SUCCESS, lint_imports

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "layers"]
    return [[m.strip().strip("()").removeprefix("synth_torch.") for m in layer.split("|")] for layer in contract["layers"]]


def test_packages_respect_the_layers(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    status = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    assert status == EXIT_STATUS_SUCCESS, capsys.readouterr().out


def test_every_package_has_a_layer():
    listed = {name for layer in _layers() for name in layer}
    packages = {p.name for p in (ROOT / "synth_torch").iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in (ROOT / "synth_torch").glob("*.py") if p.stem != "__init__"}
    assert packages | modules <= listed, sorted((packages | modules) - listed)


def test_architecture_doc_draws_the_layers_in_order():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    diagram = doc.split("```")[1]
    # the left column names the packages; the description starts after a run of three or more spaces
    rows = [re.findall(r"([a-z_]+)(?:/|\.py)", re.split(r"\s{3,}", line.strip())[0]) for line in diagram.splitlines()]
    rows = [r for r in rows if r]
    assert [sorted(r) for r in rows] == [sorted(layer) for layer in _layers()]
