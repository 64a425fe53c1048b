"""Run every notebook top to bottom and store it with its outputs (the README and the docs show them):

    python notebooks/refresh.py                       # all notebooks
    python notebooks/refresh.py quickstart.ipynb      # one

The kernel imports this checkout's synth_torch. A failing cell stops with its traceback and leaves the stored
notebook as it was (the file is replaced atomically only after a complete run).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CELL_TIMEOUT_S = 600


def refresh(path: Path) -> float:
    """Execute ``path`` in its folder and write it back with outputs; returns the seconds it took."""
    sys.path.insert(0, str(ROOT))
    from synth_torch.fileio import write_text_atomic

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    write_text_atomic(path, nbformat.writes(nb) + "\n")
    return time.perf_counter() - started


def main(argv: list[str]) -> None:
    paths = [HERE / a for a in argv] if argv else sorted(HERE.glob("*.ipynb"))
    for path in paths:
        print(f"{path.name}: {refresh(path):.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
