"""Replacing a file atomically: readers (and a crash or an interrupt) only ever see the
old file or the complete new one, never a partial write."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s directory (a rename is atomic
    only within one file system), make it durable, then rename it over ``path``. On any
    error or interrupt the temporary file is removed and ``path`` is left as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    # A fresh name opened exclusively ("x"), with the permissions of any new file (umask).
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # else a crash after the rename can leave the new name with no data
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if os.name == "posix":  # makes the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
