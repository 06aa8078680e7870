"""Writing files whole or not at all: the files the package keeps (``result.json``, checkpoints,
plans, the dense and latency caches, the datasets it converts, sweep reports) go through
:func:`atomic_write`."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    try:  # Linux says it without changing it (os.umask would, process-wide, for a moment)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting it, and set back at once
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it to ``path`` in one step:
    an interruption or a failed ``write`` leaves the old file (or none), never half of one. The
    file gets the permissions a plain ``open(path, "w")`` would give (``0o666`` less the umask),
    not the owner-only ones of a temporary file, so that others may read results and caches.
    ``suffix`` ends the temporary name, for writers that add their own (``numpy.savez``: ``.npz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        with contextlib.suppress(OSError):  # a file system without modes (vfat, some FUSE mounts) keeps its own
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
