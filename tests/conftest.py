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


def _missing(what: str) -> None:
    """Skip locally; fail under CI (``CI`` set), where missing data means a broken setup."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI is set: the shared data must be there)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def her2st_dir() -> Path:
    if not HER2ST.is_dir():
        _missing(f"shared HER2ST data not found at {HER2ST}")
    return HER2ST


@pytest.fixture(scope="session")
def visium_dir() -> Path:
    if not VISIUM.is_dir():
        _missing(f"shared Visium fixture not found at {VISIUM}")
    return VISIUM


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
