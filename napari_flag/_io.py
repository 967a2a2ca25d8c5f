"""Atomic file writes: a crash, a full disk or a kill never leaves half a file under the real name."""
from __future__ import annotations

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import FlagInputError

__all__ = ["atomic_path", "atomic_write_text", "check_output"]


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name starts with a dot and ends in ``.tmp`` so a folder listing
    never mistakes it for a result.  Folders (zarr stores) work too.  On an
    ``OSError`` (disk full, permissions) a :class:`FlagInputError` names the file
    that was not written; on any failure the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix last-but-one: writers such as anndata pick the format from it
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, mode)  # mkstemp-style private files are no use for shared results
        os.replace(tmp, path)
    except OSError as exc:
        raise FlagInputError(f"{path}: not written ({exc.strerror or exc})") from exc
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def check_output(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` when it may be written: an existing file only with ``overwrite``, and its folder must exist."""
    out = Path(path).expanduser()
    if out.exists() and not overwrite:
        raise FlagInputError(f"{out}: already exists", setting="overwrite")
    if not out.parent.is_dir():
        raise FlagInputError(f"{out.parent}: output folder does not exist")
    return out
