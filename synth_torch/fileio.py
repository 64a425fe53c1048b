"""Atomic file output, used by every layer that writes files: write to a temporary file in the destination
folder, then ``os.replace`` it into place, so a reader never sees half a file and a failure (or an interrupt)
leaves no partial output."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

__all__ = ["default_permissions", "save_png_atomic", "write_bytes_atomic", "write_text_atomic"]


def default_permissions(path) -> None:
    """Give a file the permissions ``open()`` would (``mkstemp`` creates 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a uniquely named temporary file in the same folder; returns the path.

    The file gets the permissions ``open()`` would give it (mkstemp creates 0600); the temporary file is removed
    on any error, ``KeyboardInterrupt`` included.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def save_png_atomic(image, path) -> Path:
    """Write a uint8 image tensor [3, H, W] (or [H, W]) as a PNG, atomically."""
    from PIL import Image

    array = image.permute(1, 2, 0).contiguous().numpy() if image.ndim == 3 else image.contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return write_bytes_atomic(path, buffer.getvalue())
