"""The documentation holds together: the README links every page of docs/ and every notebook, the pictures it shows
exist, and the notebooks are stored with the outputs of a run (``python notebooks/refresh.py`` renews them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_links_every_page_and_notebook():
    readme = (ROOT / "README.md").read_text()
    links = set(re.findall(r"\]\(([^)#]+)", readme))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    notebooks = {f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert pages <= links, sorted(pages - links)
    assert notebooks <= links, sorted(notebooks - links)
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing, missing


def test_docs_pictures_exist():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            assert (page.parent / image).is_file(), f"{page.name} shows {image}, which does not exist"


def test_notebooks_are_stored_with_outputs():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        assert cells and all(c.get("execution_count") for c in cells), f"{path.name}: run notebooks/refresh.py"
        assert sum(bool(c.get("outputs")) for c in cells) >= len(cells) // 2, f"{path.name} has too few outputs"
        errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{path.name} was stored with an error output"
