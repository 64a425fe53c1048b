"""Atomic, reproducible file output for exports.

Every file of an export is written to a temporary name in its final folder and renamed into place
(``os.replace``), so a reader or a resumed job never sees half a file. Files written while a chunk is
produced use the deterministic temporary name ``.<name>.part`` (a resumed chunk overwrites its own leftovers,
and the finishing step removes those a killed process left behind); files shared by several processes use a
unique temporary name. PNG encoding is fixed (zlib level, no metadata), so the same pixels give the same bytes
with the same Pillow and zlib.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from synth_torch.fileio import default_permissions, write_bytes_atomic

PNG_COMPRESS_LEVEL = 6
PART_SUFFIX = ".part"


def part_path(path: Path) -> Path:
    """The deterministic temporary name of ``path`` while a chunk writes it."""
    return path.with_name(f".{path.name}{PART_SUFFIX}")


def write_atomic(path: Path, data: bytes, unique: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    ``unique``: use a fresh temporary name (for files several processes may write at once) instead of
    :func:`part_path`. On any error (including ``KeyboardInterrupt``) the temporary file is removed.
    """
    path = Path(path)
    if unique:
        write_bytes_atomic(path, data)
        return
    tmp = part_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_exclusive(path: Path, data: bytes) -> bool:
    """Atomically create ``path`` with ``data`` unless it exists; True when this call created it.

    Several processes may race: exactly one wins (``os.link`` fails on an existing name), and nobody ever
    sees a partial file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        default_permissions(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def dumps(obj) -> bytes:
    """Deterministic compact JSON (keys in insertion order, which the writers fix), UTF-8, newline-terminated."""
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n").encode()


def dumps_pretty(obj) -> bytes:
    """Deterministic indented JSON for files people read (manifests)."""
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W, 3] RGB image or a uint16 [H, W] single-channel map (16-bit PNG)."""
    if array.dtype == np.uint16 and array.ndim == 2:
        image = Image.fromarray(np.ascontiguousarray(array))  # mode I;16: a 16-bit greyscale PNG
    elif array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3:
        image = Image.fromarray(np.ascontiguousarray(array))
    else:
        raise TypeError(f"encode_png takes uint8 [H, W, 3] or uint16 [H, W], got {array.dtype} {array.shape}")
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """The array :func:`encode_png` encoded (uint8 [H, W, 3] or uint16 [H, W])."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode in ("I;16", "I;16B", "I"):
            return np.asarray(image, dtype=np.uint16)
        return np.asarray(image.convert("RGB"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it (for tar shards written by a library)."""

    def __init__(self, path: Path):
        super().__init__()
        self._f = open(path, "wb")
        self._sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        self._sha.update(data)
        self.size += len(data)
        return self._f.write(data)

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        super().close()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()
