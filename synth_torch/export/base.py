"""The writer interface every export format implements, and the sink that writes their files."""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

from synth_torch.export._io import HashingFile, part_path, sha256_bytes, write_atomic
from synth_torch.export.sample import Layout, Sample


class ExportError(ValueError):
    """Bad export input (a format, a folder, a shard, a resume that does not match), raised before anything
    is written."""


class Sink:
    """Writes files under an export root atomically and records each one as ``(relative path, sha256, bytes)``.

    ``unique`` selects unique temporary names (files that concurrent processes may all write, such as the
    merged annotation files); chunk files use the deterministic ``.<name>.part``.
    """

    def __init__(self, root: Path, unique: bool = False):
        self.root = Path(root)
        self.unique = unique
        self.files: list[list] = []
        self._dirs: set[Path] = set()

    def _target(self, rel: str) -> Path:
        path = self.root / rel
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        return path

    def write(self, rel: str, data: bytes) -> None:
        write_atomic(self._target(rel), data, unique=self.unique)
        self.files.append([rel, sha256_bytes(data), len(data)])

    @contextmanager
    def stream(self, rel: str):
        """A binary file to write ``rel`` through (for libraries that write streams); renamed into place when
        the block ends without an error, removed otherwise."""
        path = self._target(rel)
        tmp = part_path(path)
        f = HashingFile(tmp)
        try:
            yield f
            f.close()
            tmp.replace(path)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        self.files.append([rel, f.sha256, f.size])


class FormatWriter(ABC):
    """One export format. The runner calls, per chunk of samples: :meth:`begin_chunk`, :meth:`write` for each
    sample (its return value is stored in the chunk's record), :meth:`end_chunk` (merged into that record), or
    :meth:`abort` on an error; once every chunk of the export exists, :meth:`finalize` with all chunk records
    in order writes the files that span chunks (annotation files, dataset YAML).

    Everything a writer produces must be a pure function of the samples and the layout: that is what makes a
    resumed or sharded export byte-identical to a single uninterrupted one.
    """

    name: ClassVar[str]

    def __init__(self, layout: Layout):
        self.layout = layout

    def check(self) -> None:
        """Raise :class:`ExportError` if the format cannot represent this export (called before any write)."""

    def begin_chunk(self, chunk: int, sink: Sink) -> None:
        """Start chunk ``chunk``."""

    @abstractmethod
    def write(self, sample: Sample, sink: Sink):
        """Write one sample's files; returns a JSON-serialisable item for the chunk record (or None)."""

    def end_chunk(self, sink: Sink) -> dict:
        return {}

    def abort(self) -> None:
        """Drop the chunk in progress after an error."""

    def finalize(self, chunks: list[dict], sink: Sink) -> dict:
        """Write the files that span chunks from the chunk records ``{"items": [...], **end_chunk()}``; returns
        facts for the manifest's ``formats`` entry."""
        return {}
