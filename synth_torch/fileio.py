"""Atomic file output, used by every layer that writes files: write to a temporary file in the destination
folder, then ``os.replace`` it into place, so a reader never sees half a file and a failure (or an interrupt)
leaves no partial output."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_open", "default_permissions", "save_png_atomic", "writable_folder", "write_bytes_atomic",
           "write_text_atomic"]


def default_permissions(path) -> None:
    """Give a file the permissions ``open()`` would (``mkstemp`` creates 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_open(path, fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a uniquely named temporary file in the same folder, renamed into
    place when the ``with`` block ends without an error.

    The file gets the permissions ``open()`` would give it (mkstemp creates 0600). On any error,
    ``KeyboardInterrupt`` included, the temporary file is removed and ``path`` keeps its old contents. ``fsync``
    flushes the data to the disk before the rename, so that even a power cut leaves the old or the new file
    (used for checkpoints).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def writable_folder(folder, create: bool = True) -> Path:
    """``folder``, created with its parents when missing (``create``), checked before anything is written there.

    Raises ``NotADirectoryError`` when a part of the path is a file (which stops root as well), else
    ``FileNotFoundError`` (missing and not created) or ``PermissionError``; each message names the folder and the
    part of the path in the way.
    """
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                raise NotADirectoryError(f"cannot write into {folder}: {part} is a file, not a folder")
            break
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
        raise FileNotFoundError(f"cannot write into {folder}: the folder does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write into {folder}: the folder is not writable")
    return folder


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`); returns the path."""
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def save_png_atomic(image, path) -> Path:
    """Write a uint8 image tensor [3, H, W] (or [H, W]) as a PNG, atomically."""
    from PIL import Image

    array = image.permute(1, 2, 0).contiguous().numpy() if image.ndim == 3 else image.contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return write_bytes_atomic(path, buffer.getvalue())
