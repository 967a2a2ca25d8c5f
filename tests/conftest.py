"""Shared fixtures: real data from ../shared/data through the project's dataset cache."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NAPARI_FLAG_SHARED", REPO.parent / "shared")).resolve()
HER2ST = SHARED / "data" / "her2st"
VISIUM = SHARED / "data" / "visium_mouse_brain_fixture"

# The dataset cache is pre-seeded by the shared HER2ST folder (same relative layout
# as the upstream repository), so tests never touch the network.
os.environ.setdefault("NAPARI_FLAG_DATA_DIR", str(HER2ST))
os.environ.setdefault("MPLBACKEND", "Agg")


def _shared(path: Path, what: str) -> Path:
    """A folder of ../shared/data; missing: a skip on a developer's machine, a failure in CI
    (where a skip would turn the real-data tests green without running them)."""
    if not path.is_dir():
        msg = f"shared {what} not found at {path}"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI is set: real-data tests must run)", pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def her2st_dir() -> Path:
    return _shared(HER2ST, "HER2ST data")


@pytest.fixture(scope="session")
def visium_dir() -> Path:
    return _shared(VISIUM, "Visium fixture")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: intra-op threads only add synchronisation cost, and on a shared,
    oversubscribed runner they can slow a step down 20-fold."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def her2st_copy(her2st_dir):
    """``copy(dst, *rels, corrupt=None)``: a private dataset cache holding some HER2ST files.

    ``rels`` are paths inside the data folder; ``corrupt`` (one of them) gets its
    middle byte flipped, so its hash no longer matches.  Returns ``dst``.
    """

    def copy(dst: Path, *rels: str, corrupt: str | None = None) -> Path:
        for rel in rels:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(her2st_dir / rel, dst / rel)
        if corrupt is not None:
            raw = bytearray((dst / corrupt).read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            (dst / corrupt).write_bytes(bytes(raw))
        return dst

    return copy


#: HER2ST sections with an H&E image in the shared data
HER2ST_IMAGES = {s: f"ST-imgs/C/{s}" for s in ("C2", "C3", "C4", "C5", "C6")}


@pytest.fixture(scope="session")
def her2st_slide(her2st_dir, tmp_path_factory):
    """``slide(section, factor=4) -> (path, measured)``: a HER2ST H&E as a pyramidal OME-TIFF.

    The JPEG is decoded at ``1/factor`` (JPEG's own DCT scaling, so it is fast
    and still real tissue) and written with ``PhysicalSizeX/Y`` = the section's
    pixel size times the factor.  ``measured`` is the section's
    :class:`Sample` with its spot centres (and spot diameter) rescaled onto
    the slide's pixels and the slide as its image.  Slides are built once per
    session.
    """
    import dataclasses

    import numpy as np
    from PIL import Image

    from napari_flag.data.images import open_tiff, write_ome_tiff
    from napari_flag.data.st_legacy import read_st_legacy

    root = tmp_path_factory.mktemp("slides")
    made: dict = {}

    def slide(section: str = "C2", factor: int = 4):
        key = (section, factor)
        if key in made:
            return made[key]
        jpg = next((her2st_dir / HER2ST_IMAGES[section]).glob("*.jpg"))
        m = read_st_legacy(her2st_dir / f"ST-cnts/{section}.tsv.gz", her2st_dir / f"ST-spotfiles/{section}_selection.tsv",
                           sample_id=section)
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # H&E scans are large
        try:
            im = Image.open(jpg)
        finally:
            Image.MAX_IMAGE_PIXELS = old
        full_w, full_h = im.size
        im.draft("RGB", (full_w // factor, full_h // factor))
        arr = np.asarray(im.convert("RGB"))
        f = full_w / arr.shape[1]  # the exact reduction JPEG gave
        path = write_ome_tiff(arr, root / f"{section}_x{factor}.ome.tif", pixel_size_um=m.pixel_size_um * f)
        img, _ = open_tiff(path)
        adata = m.adata.copy()
        adata.obsm["spatial"] = m.coords / f
        measured = dataclasses.replace(m, adata=adata, spot_diameter_px=m.spot_diameter_px / f,
                                       pixel_size_um=m.pixel_size_um * f, image=img, source=str(path))
        made[key] = (path, measured)
        return made[key]

    return slide


@pytest.fixture(scope="session")
def c2_slide(her2st_slide):
    """HER2ST C2 as a 1/4-size pyramidal OME-TIFF: ``(path, measured sample)``."""
    return her2st_slide("C2", 4)


@pytest.fixture(scope="session")
def her2st_tile(c2_slide):
    """A 512 x 512 piece of C2 tissue (``uint8``, slide pixels at 1/4 size, about 2.8 um/px)."""
    import numpy as np

    _, m = c2_slide
    x, y = np.median(m.coords, axis=0).astype(int)
    return np.asarray(m.image.levels[0][y - 256 : y + 256, x - 256 : x + 256])


class _Level0Guard:
    """A pyramid level that fails when read: proves level 0 is never touched."""

    def __init__(self, arr):
        self.shape, self.dtype, self.ndim = arr.shape, arr.dtype, arr.ndim

    def __getitem__(self, key):
        raise AssertionError("level 0 was read")


def level0_guarded(image):
    """``image`` with a level 0 that must not be read (the other levels as they are)."""
    from napari_flag.data.sample import SlideImage

    return SlideImage([_Level0Guard(image.levels[0])] + list(image.levels[1:]), scale=image.scale,
                      path=image.path, downsamples=list(image.downsamples))


@pytest.fixture
def guarded():
    return level0_guarded
