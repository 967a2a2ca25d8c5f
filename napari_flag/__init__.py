"""napari-flag: spatial gene expression from H&E slides with FLAG, inside napari."""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

__all__ = ["__version__", "resources_dir"]


def resources_dir() -> Path:
    """Folder of the bundled assets (default checkpoint, gene prior table).

    In a wheel the assets are installed as the ``napari_flag.resources``
    package; in a source checkout they live in ``resources/`` beside the
    package.
    """
    here = Path(__file__).resolve().parent
    for cand in (here / "resources", here.parent / "resources"):
        if cand.is_dir():
            return cand
    return here.parent / "resources"
