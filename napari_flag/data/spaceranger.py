"""10x Visium, as written by Space Ranger (an ``outs/`` folder).

Space Ranger does not record the pixel size, but Visium spot centres are
manufactured 100 um apart, so the measured centre spacing in full-resolution
pixels gives it.  (``spot_diameter_fullres`` is not the 55 um spot: Space Ranger
defines it as a theoretical 65 um disc; it is the fallback when the spacing
cannot be measured.)  The images shipped in ``outs/spatial`` are downscaled
copies; their scale factor maps full-resolution coordinates onto them.
"""
from __future__ import annotations

import json
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
    numeric_column,
    reading,
    scale_factor,
)
from .sample import Sample

__all__ = ["read_spaceranger", "visium_pixel_size", "find_outs", "is_spaceranger", "VISIUM_SPOT_UM", "VISIUM_PITCH_UM"]

VISIUM_SPOT_UM = 55.0
VISIUM_PITCH_UM = 100.0
#: the disc ``spot_diameter_fullres`` spans, per Space Ranger's documentation
SPOT_DIAMETER_FULLRES_UM = 65.0


def visium_pixel_size(array_rc, xy, spot_diameter_fullres: float | None) -> float | None:
    """Microns per full-resolution pixel of a Visium slide: the 100 um pitch over the
    measured centre spacing, else the 65 um disc ``spot_diameter_fullres`` spans."""
    step = grid_step_px(array_rc, xy, "hex") if array_rc is not None else None
    if step:
        return VISIUM_PITCH_UM / step
    return SPOT_DIAMETER_FULLRES_UM / spot_diameter_fullres if spot_diameter_fullres else None


_MATRIX = ("filtered_feature_bc_matrix.h5", "filtered_feature_bc_matrix")
_POSITIONS = ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet")
_COLS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def find_outs(path: str | Path) -> Path | None:
    """The ``outs`` folder for ``path`` (itself or ``path/outs``), or ``None``."""
    p = Path(path).expanduser()
    for cand in (p, p / "outs"):
        if cand.is_dir() and (cand / "spatial").is_dir() and any((cand / m).exists() for m in _MATRIX):
            return cand
    return None


def is_spaceranger(path: str | Path) -> bool:
    return find_outs(path) is not None


def _read_positions(path: Path) -> pd.DataFrame:
    with reading(path, "unreadable or truncated positions file"):
        if path.suffix == ".parquet":
            try:
                df = pd.read_parquet(path)
            except ImportError as exc:
                raise fail(path, "reading parquet positions needs pyarrow (pip install pyarrow)") from exc
        else:
            with open(path) as fh:
                first = fh.readline()
            has_header = "barcode" in first.lower() or "in_tissue" in first.lower()
            df = pd.read_csv(path, header=0 if has_header else None)
            if not has_header:
                if df.shape[1] != 6:
                    raise fail(path, f"expected 6 columns in a v1 positions file, found {df.shape[1]}")
                df.columns = _COLS
    missing = set(_COLS) - set(df.columns)
    if missing:
        raise fail(path, f"positions lack column(s) {', '.join(sorted(missing))}")
    if len(df) == 0:
        raise fail(path, "positions file lists no spots")
    df["barcode"] = df["barcode"].astype(str)
    dup = df["barcode"].duplicated()
    if dup.any():
        raise fail(path, f"duplicate barcode {df['barcode'][dup].iloc[0]!r} ({int(dup.sum())} in all)")
    for col in _COLS[1:]:
        df[col] = numeric_column(path, df, col)
    return df.set_index("barcode")


def _read_matrix(outs: Path):
    import scanpy as sc

    h5 = outs / _MATRIX[0]
    mtx = outs / _MATRIX[1]
    if h5.is_file():
        with reading(h5, "unreadable or truncated 10x HDF5 matrix"):
            adata = sc.read_10x_h5(str(h5))
    elif mtx.is_dir():
        with reading(mtx, "unreadable 10x matrix folder"):
            adata = sc.read_10x_mtx(str(mtx), var_names="gene_symbols")
    else:
        raise fail(h5, "count matrix not found")
    src = h5 if h5.is_file() else mtx
    if adata.n_obs == 0:
        raise fail(src, "count matrix has no barcodes")
    if adata.n_vars == 0:
        raise fail(src, "count matrix has no genes")
    check_counts(src, adata.X)
    if not adata.obs_names.is_unique:
        raise fail(src, "duplicate barcodes in the count matrix")
    if "feature_types" in adata.var.columns:
        ft = adata.var["feature_types"].astype(str)
        if (ft == "Gene Expression").any() and not (ft == "Gene Expression").all():
            adata = adata[:, (ft == "Gene Expression").to_numpy()].copy()
    adata.var_names_make_unique()
    return adata


def read_spaceranger(path: str | Path, sample_id: str | None = None, image: str = "auto") -> Sample:
    """Read a Space Ranger ``outs/`` folder (v1 or v2 positions).

    ``image``: ``"auto"`` (hires if present, else lowres), ``"hires"``,
    ``"lowres"`` or ``"none"``.  Keeps in-tissue barcodes that are in the
    matrix, in matrix order.
    """
    from .images import open_raster

    p = Path(path).expanduser()
    if not p.exists():
        raise fail(p, "folder not found")
    outs = find_outs(p)
    if outs is None:
        raise fail(p, "not a Space Ranger outs/ folder (needs filtered_feature_bc_matrix.h5 and spatial/)")
    spatial = outs / "spatial"
    pos_file = next((spatial / n for n in _POSITIONS if (spatial / n).is_file()), None)
    if pos_file is None:
        raise fail(spatial / _POSITIONS[0], "positions file not found (tissue_positions.csv or tissue_positions_list.csv)")
    sf_file = spatial / "scalefactors_json.json"
    if not sf_file.is_file():
        raise fail(sf_file, "scale factors not found")
    with reading(sf_file, "unreadable scale factors (not valid JSON)"):
        scalef = json.loads(sf_file.read_text())
    if not isinstance(scalef, dict):
        raise fail(sf_file, "scale factors are not a JSON object")
    spot_px = scale_factor(sf_file, scalef, "spot_diameter_fullres")

    adata = _read_matrix(outs)
    pos = _read_positions(pos_file)
    pos = pos[np.nan_to_num(pos["in_tissue"].to_numpy()) == 1]
    if len(pos) == 0:
        raise fail(pos_file, "no spots under tissue (no row has in_tissue == 1)")
    keep = adata.obs_names.isin(pos.index)
    matrix = outs / _MATRIX[0] if (outs / _MATRIX[0]).is_file() else outs / _MATRIX[1]
    check_matched(matrix, int(keep.sum()), adata.n_obs, len(pos), pos_file.name)
    adata = adata[keep].copy()
    pos = pos.loc[adata.obs_names]
    xy = check_coords(pos_file, pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64))
    rc = pos[["array_row", "array_col"]].to_numpy(np.float64)
    if not np.isfinite(rc).all():
        raise fail(pos_file, f"{int((~np.isfinite(rc).all(axis=1)).sum())} spots have a missing array_row/array_col")
    adata.obsm["spatial"] = xy
    adata.obs["array_row"] = rc[:, 0].astype(np.int64)
    adata.obs["array_col"] = rc[:, 1].astype(np.int64)
    for col in ("gene_ids", "feature_types", "genome"):
        if col in adata.var.columns:
            adata.var[col] = adata.var[col].astype(str)

    img = None
    image = (image or "auto").lower()
    choices = {"auto": ("hires", "lowres"), "hires": ("hires",), "lowres": ("lowres",), "none": ()}
    if image not in choices:
        raise ValueError(f"image must be one of {sorted(choices)}, not {image!r}")
    for res in choices[image]:
        f = spatial / f"tissue_{res}_image.png"
        key = f"tissue_{res}_scalef"
        if f.is_file():
            img = open_raster(f, scale=scale_factor(sf_file, scalef, key))
            check_in_image(pos_file, xy, img)
            break

    pixel_um = visium_pixel_size(rc, xy, spot_px)
    sid = sample_id or (outs.parent.name if outs.name == "outs" else outs.name)
    return Sample(
        sample_id=sid,
        adata=adata,
        spot_diameter_px=VISIUM_SPOT_UM / pixel_um,
        pixel_size_um=pixel_um,
        image=img,
        grid="hex",
        source=str(outs),
        metadata={
            "technology": "Visium",
            "scalefactors": scalef,
            "spot_diameter_um": VISIUM_SPOT_UM,
            "inter_spot_dist_um": VISIUM_PITCH_UM,
            "positions": str(pos_file),
        },
    )
