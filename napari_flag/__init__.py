"""napari-flag: spatial gene expression from H&E slides with FLAG, inside napari.

Python API (see :mod:`napari_flag.api`)::

    import napari_flag as nf
    adata = nf.predict("her2st:C2")
    nf.evaluate(adata)
    nf.regions(adata, "annotations.geojson", compare=("Tumor", "Stroma")).de
"""
from __future__ import annotations

from pathlib import Path

from ._alloc import keep_buffers_mapped
from .api import evaluate, load_sample, predict, regions

# the allocator settings of napari_flag._alloc, before any thread of ours has a heap of its own
keep_buffers_mapped()

__version__ = "0.1.0"

__all__ = ["__version__", "resources_dir", "load_sample", "predict", "evaluate", "regions"]


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
