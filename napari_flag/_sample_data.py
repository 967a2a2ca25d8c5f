"""Sample data: HER2ST sections C2-C6 (H&E + spots) through the dataset cache.

The files come from :func:`napari_flag.data.registry.cache_dir` (pre-seeded
folders work offline).  When a section is neither cached nor downloadable the
loader raises :class:`FlagInputError` with a one-line message (which file is
missing, how to point the cache at a local copy); napari shows exactly that
message as an error notification.  (Returning no layers instead would make
napari add a second, vaguer "no valid layer data" error.)
"""
from __future__ import annotations

from .errors import FlagInputError

__all__ = ["load_her2st", "her2st_c2", "her2st_c3", "her2st_c4", "her2st_c5", "her2st_c6"]


def load_her2st(section: str) -> list:
    """Layer data of one HER2ST section (H&E image + spots)."""
    from . import layers as L
    from .data import load_sample

    try:
        sample = load_sample(f"her2st:{section}")
    except FlagInputError as exc:
        raise FlagInputError(f"HER2ST {section} is not available offline or online: {exc}") from None
    return L.sample_to_layer_data(sample)


def her2st_c2() -> list:
    return load_her2st("C2")


def her2st_c3() -> list:
    return load_her2st("C3")


def her2st_c4() -> list:
    return load_her2st("C4")


def her2st_c5() -> list:
    return load_her2st("C5")


def her2st_c6() -> list:
    return load_her2st("C6")
