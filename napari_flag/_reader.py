"""napari reader: any slide ``load_sample`` understands -> H&E image + spots layers.

Accepted: dataset ids (``her2st:C2``), Space Ranger ``outs/`` folders, HEST
folders, ``.h5ad``, TIFF/OME-TIFF, OME-Zarr and JPEG/PNG images.  The layers
are built by :func:`napari_flag.layers.sample_to_layer_data` (physical scale
in µm, spot size = real spot diameter, gene values in ``features``).  Bad
input becomes a napari error notification naming the file, not a traceback.
"""
from __future__ import annotations

from pathlib import Path

from .errors import FlagInputError

__all__ = ["napari_get_reader", "read_slides"]


def _accepts(path: str) -> bool:
    from .data import detect_format

    try:
        detect_format(path)
        return True
    except FlagInputError:
        # a whole HER2ST data folder: ours, but it needs a section id; say so on read
        p = Path(path)
        return p.is_dir() and (p / "ST-cnts").is_dir()
    except Exception:
        return False


def napari_get_reader(path):
    """Return :func:`read_slides` when every path is something ``load_sample`` reads."""
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(_accepts(str(p)) for p in paths):
        return None
    return read_slides


def read_slides(path) -> list:
    """Layer data for each path; on a bad file, a notification and nothing added."""
    from . import layers as L
    from .data import load_sample

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    out = []
    for p in paths:
        try:
            sample = load_sample(str(p))
        except FlagInputError as exc:
            _notify(str(exc))
            continue
        out.extend(L.sample_to_layer_data(sample))
    # [(None,)] tells napari "read fine, nothing to add" (no second error on top of ours)
    return out or [(None,)]


def _notify(msg: str) -> None:
    try:
        from napari.utils.notifications import show_error

        show_error(msg)
    except ImportError:  # pragma: no cover - napari absent
        import warnings

        warnings.warn(msg, stacklevel=3)
