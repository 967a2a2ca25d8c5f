"""Named public datasets and their download cache.

A dataset id such as ``"her2st:C2"`` names one tissue section.  Its files are
kept in :func:`cache_dir` under the same relative path as upstream, so a copy
of the upstream ``data/`` folder *is* a valid cache (pre-seeded, possibly
read-only): a file that is present and has the expected sha256 is used without
touching the network; the network is only tried for a file that is missing.
"""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import FlagInputError

__all__ = [
    "ENV_DATA_DIR",
    "ENV_OFFLINE",
    "HER2ST_URL",
    "DatasetInfo",
    "cache_dir",
    "list_datasets",
    "is_dataset_id",
    "dataset_info",
    "fetch_file",
    "fetch_her2st",
    "sha256sum",
]

ENV_DATA_DIR = "NAPARI_FLAG_DATA_DIR"
#: set to 1 to never try the network (a missing file is then an error at once)
ENV_OFFLINE = "NAPARI_FLAG_OFFLINE"
HER2ST_URL = "https://raw.githubusercontent.com/almaan/her2st/master/data/{relpath}"
_MANIFEST = Path(__file__).with_name("her2st_manifest.tsv")


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one section: relative paths and sha256 (``None`` when unknown)."""

    dataset_id: str
    section: str
    patient: str
    counts: str
    spots: str
    image: str | None
    counts_sha256: str | None
    spots_sha256: str | None
    image_sha256: str | None

    def url(self, relpath: str) -> str:
        return HER2ST_URL.format(relpath=relpath)


def cache_dir() -> Path:
    """Root of the dataset cache: ``$NAPARI_FLAG_DATA_DIR`` or the user cache."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-flag"))


@lru_cache(maxsize=1)
def _her2st() -> dict[str, DatasetInfo]:
    out: dict[str, DatasetInfo] = {}
    with open(_MANIFEST, newline="") as fh:
        for row in csv.DictReader((ln for ln in fh if not ln.startswith("#")), delimiter="\t"):
            sec = row["section"].strip()
            out[sec] = DatasetInfo(
                dataset_id=f"her2st:{sec}",
                section=sec,
                patient=row["patient"].strip(),
                counts=row["counts"].strip(),
                spots=row["spots"].strip(),
                image=row["image"].strip() or None,
                counts_sha256=row["counts_sha256"].strip() or None,
                spots_sha256=row["spots_sha256"].strip() or None,
                image_sha256=row["image_sha256"].strip() or None,
            )
    return out


def list_datasets() -> list[str]:
    """All dataset ids, e.g. ``["her2st:A1", ..., "her2st:H3"]``."""
    return [info.dataset_id for info in _her2st().values()]


def is_dataset_id(source: object) -> bool:
    """True for strings shaped like ``"<name>:<section>"`` that are not paths."""
    if not isinstance(source, str) or ":" not in source:
        return False
    name, _, rest = source.partition(":")
    # "C:\\..." (Windows drive) and URLs are not dataset ids
    return len(name) > 1 and name.isalnum() and not rest.startswith(("/", "\\"))


def _valid_form() -> str:
    secs = list(_her2st())
    return f"expected 'her2st:<section>' with section one of {', '.join(secs)}"


def dataset_info(dataset_id: str) -> DatasetInfo:
    """Look up a dataset id (case-insensitive), or fail naming the valid form."""
    name, sep, section = str(dataset_id).strip().partition(":")
    info = _her2st().get(section.strip().upper()) if sep and name.lower() == "her2st" else None
    if info is None:
        raise FlagInputError(f"{dataset_id}: unknown dataset id; {_valid_form()}")
    return info


# ---------------------------------------------------------------------------
# hashing and fetching

_verified: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def sha256sum(path: str | Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime) so reloading is free."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        hit = _verified.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _lock:
        _verified[key] = digest
    return digest


def _offline() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in {"1", "true", "yes", "on"}


def _download_problem(exc: BaseException) -> str:
    """A few words for why a download failed; the library's text holds URLs and
    nested exception reprs."""
    name = type(exc).__name__
    text = str(exc)
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    if "hash" in text.lower() and isinstance(exc, ValueError):
        return "the downloaded file has a different sha256"
    if isinstance(exc, (ConnectionError, TimeoutError)) or "Connection" in name or "Timeout" in name:
        return "no connection to the server"
    first = text.strip().splitlines()[0] if text.strip() else name
    return first if len(first) <= 80 else name


def fetch_file(relpath: str, sha256: str | None = None, url: str | None = None) -> Path:
    """Path of ``<cache_dir>/<relpath>``, downloading it only when missing.

    A present file is checked against ``sha256`` (when known) and never
    re-downloaded: a mismatch is an error, since silently replacing a file in
    a shared or read-only cache would be worse than stopping.
    """
    root = cache_dir()
    target = root / relpath
    if target.is_file():
        if sha256 and sha256sum(target) != sha256.lower():
            raise FlagInputError(
                f"{target}: hash mismatch (expected sha256 {sha256[:12]}..., file is corrupt or a "
                f"different version; delete it to download again)"
            )
        return target
    hint = f"set {ENV_DATA_DIR} to a folder holding '{relpath}' to work offline"
    if _offline():
        raise FlagInputError(f"{target}: file not in the dataset cache and {ENV_OFFLINE} is set; {hint}")
    url = url or HER2ST_URL.format(relpath=relpath)
    import pooch

    # Download next to nothing in the cache: only a complete, verified file is
    # moved in, so a failed attempt leaves the (possibly shared) cache untouched.
    with tempfile.TemporaryDirectory(prefix="napari-flag-dl-") as tmp:
        log = pooch.get_logger()
        level = log.level
        log.setLevel("WARNING")  # its "Downloading data from <url>" line is noise before our own
        try:
            got = pooch.retrieve(
                url,
                known_hash=f"sha256:{sha256}" if sha256 else None,
                fname=target.name,
                path=tmp,
                progressbar=False,
            )
        except Exception as exc:  # network, HTTP, hash: all mean "not available"
            raise FlagInputError(
                f"{target}: file not in the dataset cache and download failed ({_download_problem(exc)}); {hint}"
            ) from None
        finally:
            log.setLevel(level)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_name(f".{target.name}.{os.getpid()}.part")
            shutil.move(got, part)
            os.replace(part, target)
        except OSError as exc:
            raise FlagInputError(
                f"{target}: downloaded but the dataset cache is not writable ({exc.strerror}); {hint}"
            ) from None
    return target


def fetch_her2st(section: str, image: bool = True) -> dict:
    """Files of one HER2ST section: ``dict(counts=Path, spots=Path, image=Path|None)``.

    Counts and spots are required.  The image is optional: sections without an
    image in the cache and no way to download it come back with ``image=None``
    (and a warning), since expression alone is still useful for gene panels.
    """
    sec = str(section)
    info = dataset_info(sec if ":" in sec else f"her2st:{sec}")
    out = {
        "counts": fetch_file(info.counts, info.counts_sha256),
        "spots": fetch_file(info.spots, info.spots_sha256),
        "image": None,
        "image_sha256": info.image_sha256,
    }
    if image and info.image:
        try:
            out["image"] = fetch_file(info.image, info.image_sha256)
        except FlagInputError as exc:
            if "hash mismatch" in str(exc):
                raise
            out["image_problem"] = str(exc)
            warnings.warn(f"{info.dataset_id}: continuing without the H&E image: {exc}", stacklevel=2)
    return out
