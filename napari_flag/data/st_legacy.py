"""Legacy Spatial Transcriptomics (the HER2ST layout).

Counts are a spots x genes TSV whose first column is the spot id ``<x>x<y>``
(array coordinates); a spot file maps array positions to image pixels and
flags spots under tissue.  The legacy array has 100 um spots 200 um apart on a
square grid, so the pixel size follows from the data itself rather than from
a constant that would be wrong for a rescanned image.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ._util import (
    check_coords,
    check_counts,
    check_in_image,
    check_matched,
    fail,
    grid_step_px,
    nn_distance_px,
    numeric_column,
    reading,
    require_file,
)
from .sample import Sample

__all__ = ["read_st_legacy", "read_her2st", "ST_SPOT_DIAMETER_UM", "ST_SPOT_PITCH_UM"]

ST_SPOT_DIAMETER_UM = 100.0
ST_SPOT_PITCH_UM = 200.0


def _parse_ids(ids) -> tuple[np.ndarray, np.ndarray] | None:
    """``"12x7"`` -> (x=12, y=7); ``None`` when the labels are not spot ids."""
    parts = pd.Series(ids, dtype=str).str.extract(r"^\s*(\d+(?:\.\d*)?)x(\d+(?:\.\d*)?)\s*$")
    if parts.isna().any().any():
        return None
    fx, fy = parts[0].astype(float).to_numpy(), parts[1].astype(float).to_numpy()
    if max(fx.max(initial=0), fy.max(initial=0)) > 1e6:  # not an array position
        return None
    xs = np.rint(fx).astype(np.int64)
    ys = np.rint(fy).astype(np.int64)
    return xs, ys


def _read_counts(path: Path) -> pd.DataFrame:
    with reading(path, "unreadable or truncated counts table"):
        df = pd.read_csv(path, sep="\t", index_col=0, engine="c")
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise fail(path, "empty counts table")
    if _parse_ids(df.index) is None:
        if _parse_ids(df.columns) is not None:  # genes x spots: the other common orientation
            df = df.T
        else:
            raise fail(path, "first column is not a spot id of the form '<x>x<y>'")
    from pandas.api.types import is_numeric_dtype

    bad = [c for c, dt in df.dtypes.items() if not is_numeric_dtype(dt)]
    if bad:
        col = df[bad[0]]
        num = pd.to_numeric(col, errors="coerce")
        example = col[num.isna() & col.notna()]
        shown = f" ({str(example.iloc[0])[:40]!r})" if len(example) else ""
        raise fail(path, f"non-numeric count in {len(bad)} gene column(s), e.g. '{bad[0]}'{shown}")
    return df


def read_st_legacy(
    counts: str | Path,
    spots: str | Path,
    image: str | Path | None = None,
    sample_id: str | None = None,
    image_sha256: str | None = None,
    source: str | None = None,
) -> Sample:
    """Read one legacy ST section (counts TSV + spot selection TSV + optional image).

    Only spots flagged ``selected == 1`` that also have a counts row are kept,
    in counts-table order.
    """
    import anndata as ad
    import scipy.sparse as sp

    counts = require_file(counts, "counts table")
    spots = require_file(spots, "spot file")
    df = _read_counts(counts)
    pos = _read_spots(spots)
    xs, ys = _parse_ids(df.index)
    ids = pd.Index([f"{x}x{y}" for x, y in zip(xs, ys)])
    if ids.has_duplicates:
        raise fail(counts, f"duplicate spot id {ids[ids.duplicated()][0]!r} in the counts table")
    keep = ids.isin(pos.index)
    check_matched(counts, int(keep.sum()), len(ids), len(pos), spots.name)
    df = df.loc[keep]
    ids = ids[keep]
    pos = pos.loc[ids]
    xy = check_coords(spots, pos[["pixel_x", "pixel_y"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64))

    values = df.to_numpy(dtype=np.float32, copy=False)
    check_counts(counts, values)
    X = sp.csr_matrix(values)
    obs = pd.DataFrame(
        {"array_row": ys[keep].astype(np.int64), "array_col": xs[keep].astype(np.int64)},
        index=pd.Index(ids, name=None),
    )
    var = pd.DataFrame(index=pd.Index(df.columns.astype(str), name=None))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.var_names_make_unique()
    adata.obsm["spatial"] = xy

    step = grid_step_px(obs[["array_row", "array_col"]].to_numpy(), xy, "square")
    if step is None:
        nn = nn_distance_px(xy)
        step = nn
    pixel_size = ST_SPOT_PITCH_UM / step if step else None
    spot_px = ST_SPOT_DIAMETER_UM / pixel_size if pixel_size else float("nan")

    img = None
    if image is not None:
        from .images import open_raster

        img = open_raster(image, sha256=image_sha256)
        check_in_image(spots, xy, img)

    sid = sample_id or counts.name.split(".")[0]
    return Sample(
        sample_id=sid,
        adata=adata,
        spot_diameter_px=float(spot_px),
        pixel_size_um=float(pixel_size) if pixel_size else None,
        image=img,
        grid="square",
        source=source or str(counts),
        metadata={
            "technology": "ST",
            "spot_diameter_um": ST_SPOT_DIAMETER_UM,
            "inter_spot_dist_um": ST_SPOT_PITCH_UM,
            "grid_step_px": step,
            "files": {"counts": str(counts), "spots": str(spots), "image": str(image) if image else None},
        },
    )


def read_her2st(dataset_id: str, image: bool = True) -> Sample:
    """A HER2ST section by id (``"her2st:C2"`` or ``"C2"``) through the dataset cache."""
    from .registry import dataset_info, fetch_her2st

    info = dataset_info(dataset_id if ":" in str(dataset_id) else f"her2st:{dataset_id}")
    files = fetch_her2st(info.section, image=image)
    s = read_st_legacy(
        files["counts"],
        files["spots"],
        files["image"],
        sample_id=info.section,
        image_sha256=info.image_sha256,
        source=info.dataset_id,
    )
    s.metadata.update(dataset="her2st", patient=info.patient, section=info.section)
    if files.get("image_problem"):  # why the image is missing, for whoever needs it (prediction)
        s.metadata["image_problem"] = files["image_problem"]
    return s


def _read_spots(spots: Path) -> pd.DataFrame:
    """The selected spots of a spot file, checked, indexed by their ``"{x}x{y}"`` array id."""
    with reading(spots, "unreadable or truncated spot file"):
        pos = pd.read_csv(spots, sep="\t", engine="c")
    missing = {"x", "y", "pixel_x", "pixel_y"} - set(pos.columns)
    if missing:
        raise fail(spots, f"spot file lacks column(s) {', '.join(sorted(missing))}")
    if "selected" in pos.columns:
        sel = numeric_column(spots, pos, "selected")
        pos = pos[np.nan_to_num(sel) == 1]
        if len(pos) == 0:
            raise fail(spots, "no spots selected (no row has selected == 1)")
    if len(pos) == 0:
        raise fail(spots, "spot file lists no spots")
    ax, ay = numeric_column(spots, pos, "x"), numeric_column(spots, pos, "y")
    bad = ~(np.isfinite(ax) & np.isfinite(ay)) | (ax < 0) | (ay < 0) | (np.maximum(ax, ay) > 1e6)
    if bad.any():
        raise fail(spots, f"{int(bad.sum())} spots have a missing, NaN or invalid array position (x, y)")
    for c in ("pixel_x", "pixel_y"):
        numeric_column(spots, pos, c)
    pos = pos.assign(
        _id=np.rint(ax).astype(np.int64).astype(str) + "x" + np.rint(ay).astype(np.int64).astype(str)
    ).drop_duplicates("_id").set_index("_id")
    return pos
