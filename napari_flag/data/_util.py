"""Small helpers shared by the readers: one-line errors and grid geometry."""
from __future__ import annotations

import contextlib
import zlib
from pathlib import Path

import numpy as np

from ..errors import FlagInputError


def fail(path: str | Path, problem: str) -> FlagInputError:
    """The error to raise: ``"<path>: <problem>"`` on one line."""
    return FlagInputError(f"{path}: {problem}")


def require_file(path: str | Path, what: str = "file") -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise fail(p, f"{what} not found")
    if not p.is_file():
        raise fail(p, f"{what} is not a file")
    return p


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {s[0]}" if s else type(exc).__name__


@contextlib.contextmanager
def reading(path: str | Path, what: str = "unreadable or truncated file"):
    """Turn any low-level read failure into a one-line ``FlagInputError``.

    Parsers fail with a zoo of exceptions (EOFError from gzip, OSError from
    HDF5 and PIL, ParserError, KeyError...); the user only needs the file
    and the gist.
    """
    try:
        yield
    except FlagInputError:
        raise
    except (OSError, EOFError, zlib.error, ValueError, KeyError, IndexError, TypeError, RuntimeError) as exc:
        raise fail(path, f"{what} ({_first_line(exc)})") from exc


def check_coords(path, xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise fail(path, f"spot coordinates must be (n, 2), got {xy.shape}")
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise fail(path, f"{int(bad.sum())} spots have NaN or infinite coordinates")
    return xy


def grid_step_px(array_rc: np.ndarray, xy: np.ndarray, grid: str | None = None) -> float | None:
    """Centre-to-centre distance, in pixels, of neighbouring array positions.

    Square grid (legacy ST): neighbours differ by one row or one column.
    Hexagonal grid (Visium): array columns step by 2 within a row and rows
    are offset, so neighbours differ by (0, 2) or (1, 1).  The median over
    all neighbour pairs is robust to the small warps of real arrays.
    """
    rc = np.asarray(array_rc, dtype=np.int64)
    xy = np.asarray(xy, dtype=np.float64)
    if len(rc) < 2:
        return None
    steps = [(0, 2), (1, 1), (1, -1)] if grid == "hex" else [(0, 1), (1, 0)]
    index = {(int(r), int(c)): i for i, (r, c) in enumerate(rc)}
    d = []
    for i, (r, c) in enumerate(rc):
        for dr, dc in steps:
            j = index.get((int(r) + dr, int(c) + dc))
            if j is not None:
                d.append(np.hypot(*(xy[i] - xy[j])))
    if not d:
        return None
    return float(np.median(d))


def nn_distance_px(xy: np.ndarray) -> float | None:
    """Median nearest-neighbour distance, a fallback when no array grid is known."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) < 2:
        return None
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=2)
    d = d[:, 1]
    d = d[d > 0]
    return float(np.median(d)) if len(d) else None


def guess_grid(array_rc: np.ndarray | None) -> str | None:
    """'hex' when every spot has row+col even (Visium's doubled columns), else 'square'."""
    if array_rc is None or len(array_rc) == 0:
        return None
    rc = np.asarray(array_rc, dtype=np.int64)
    parity = (rc[:, 0] + rc[:, 1]) % 2
    return "hex" if (parity == parity[0]).all() and len(rc) > 3 else "square"
