"""Small helpers shared by the readers: one-line errors and grid geometry."""
from __future__ import annotations

import contextlib
import warnings
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
    HDF5 and PIL, SyntaxError from PIL's PNG chunks, ParserError, KeyError,
    struct.error...); whatever a damaged file makes them raise, the user only
    needs the file and the gist, so every ``Exception`` is translated.
    """
    try:
        yield
    except FlagInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure on a bad file
        raise fail(path, f"{what} ({_first_line(exc)})") from exc


def check_coords(path, xy: np.ndarray) -> np.ndarray:
    """Spot centres as float64 ``(n, 2)``; non-numeric, NaN or infinite ones are an error."""
    try:
        xy = np.asarray(xy, dtype=np.float64)
    except (TypeError, ValueError):
        raise fail(path, "spot coordinates are not numeric") from None
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise fail(path, f"spot coordinates must be (n, 2), got {xy.shape}")
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise fail(path, f"{int(bad.sum())} of {len(xy)} spots have missing, NaN or infinite coordinates")
    return xy


def numeric_column(path, df, col: str, what: str = "column") -> np.ndarray:
    """``df[col]`` as float64; a value that is not a number names the column and the value."""
    import pandas as pd

    raw = df[col]
    vals = pd.to_numeric(raw, errors="coerce")
    bad = vals.isna() & raw.notna()
    if bad.any():
        raise fail(path, f"{what} '{col}' has a non-numeric value ({str(raw[bad].iloc[0])[:40]!r})")
    return vals.to_numpy(np.float64)


def check_counts(path, X, what: str = "counts") -> None:
    """Counts must be finite and non-negative: NaN, inf or negatives mean a damaged or transformed table."""
    import scipy.sparse as sp

    data = X.data if sp.issparse(X) else np.asarray(X)
    if data.size == 0:
        return
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise fail(path, f"{what} are not real numbers (dtype {data.dtype})")
    if np.issubdtype(data.dtype, np.floating):
        n_nan = int(np.isnan(data).sum())
        if n_nan:
            raise fail(path, f"{what} hold {n_nan} NaN or empty value(s) (damaged or truncated table?)")
        n_inf = int(np.isinf(data).sum())
        if n_inf:
            raise fail(path, f"{what} hold {n_inf} infinite value(s)")
    n_neg = int((data < 0).sum()) if not np.issubdtype(data.dtype, np.unsignedinteger) else 0
    if n_neg:
        raise fail(path, f"{what} hold {n_neg} negative value(s) (expected raw counts)")


#: below this fraction of matched spots the two files do not belong together
MIN_MATCHED_FRACTION = 0.5


def check_matched(path, n_matched: int, n_counts: int, n_positions: int, positions_name: str) -> None:
    """Counts and positions must describe the same spots.

    The smaller of the two sets should be (almost) fully matched: a filtered
    matrix is a subset of the in-tissue positions, and a raw matrix a
    superset.  Matching fewer than :data:`MIN_MATCHED_FRACTION` of it means
    the files come from different samples; a smaller shortfall only warns.
    """
    if n_matched == 0:
        raise fail(path, f"no spots matched between the counts and {positions_name}")
    smaller = max(1, min(n_counts, n_positions))
    frac = n_matched / smaller
    detail = f"only {n_matched} of {n_counts} spots in the counts matched one of {n_positions} positions in {positions_name}"
    if frac < MIN_MATCHED_FRACTION:
        raise fail(path, f"{detail}; are the files from the same sample?")
    if frac < 0.9:
        warnings.warn(f"{path}: {detail}; keeping the matched spots", stacklevel=3)


#: above this fraction of spots outside the image, image and positions do not belong together
MAX_OUTSIDE_FRACTION = 0.5


def check_in_image(path, xy: np.ndarray, image) -> None:
    """Spot centres must lie on the image (full-resolution bounds).

    More than :data:`MAX_OUTSIDE_FRACTION` of them outside means a wrong image
    or coordinates in another scale: an error.  A few outside (a section
    cropped at the edge) are kept with a warning; their patches read as white.
    """
    if image is None or len(xy) == 0:
        return
    h, w = image.fullres_shape
    out = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] > w) | (xy[:, 1] > h)
    n = int(out.sum())
    if not n:
        return
    name = Path(str(image.path)).name if image.path else "the image"
    msg = f"{n} of {len(xy)} spots lie outside the image {name} ({w:.0f} x {h:.0f} full-res px)"
    if n > MAX_OUTSIDE_FRACTION * len(xy):
        raise fail(path, f"{msg}; wrong image, or coordinates in another scale?")
    warnings.warn(f"{path}: {msg}; keeping them (their patches are blank)", stacklevel=3)


def scale_factor(path, d: dict, key: str) -> float:
    """A required positive number from a scale-factors mapping."""
    if key not in d or d[key] is None:
        raise fail(path, f"missing key '{key}' in the scale factors")
    v = d[key]
    if isinstance(v, bool):
        v = None
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = None
    if f is None or not np.isfinite(f) or f <= 0:
        raise fail(path, f"scale factor '{key}' must be a positive number, got {str(v)[:40]!r}")
    return f


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
