"""Lazy access to slide images of every kind, as :class:`SlideImage` levels.

* TIFF / BigTIFF (pyramidal or not, incl. OME-TIFF and HEST ``wsis/*.tif``):
  tifffile's zarr view, so only the tiles that are sliced are decoded.
* OME-Zarr / plain zarr: opened in place.
* JPEG / PNG: cannot be read partially.  Small ones are decoded on first
  access and kept in memory; large ones are converted once, on first access,
  into a zarr pyramid in a writable cache (:func:`pyramid_dir`), reused by
  every later session.  Opening is therefore instant; the cost is paid only
  when pixels are actually needed.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from .._io import atomic_path
from ._util import fail, reading, require_file
from .sample import SlideImage

__all__ = [
    "ENV_PYRAMID_DIR",
    "SMALL_IMAGE_PX",
    "PYRAMID_MIN_PX",
    "pyramid_dir",
    "open_image",
    "open_raster",
    "open_tiff",
    "open_zarr",
    "AxesView",
    "LazyLevel",
    "write_pyramidal_tiff",
    "write_ome_tiff",
]

ENV_PYRAMID_DIR = "NAPARI_FLAG_PYRAMID_DIR"
#: JPEG/PNG up to this many pixels on the long side stay in memory, single level
SMALL_IMAGE_PX = 4096
#: pyramids are halved until the long side is below this
PYRAMID_MIN_PX = 1024
_CHUNK = 512
_PYRAMID_VERSION = "v1"

RASTER_EXT = (".jpg", ".jpeg", ".png")
TIFF_EXT = (".tif", ".tiff", ".btf", ".svs")


def pyramid_dir() -> Path:
    """Writable cache for converted pyramids (never the dataset cache)."""
    env = os.environ.get(ENV_PYRAMID_DIR)
    if env:
        return Path(env).expanduser()
    import pooch

    return Path(pooch.os_cache("napari-flag")) / "pyramids"


# ---------------------------------------------------------------------------
# axis handling: present any (…, Y, X, C) layout as (Y, X, C)


class AxesView:
    """Read-only view of an array with named axes as ``(Y, X[, C])``.

    Axes other than Y, X and the channel axis (``C`` or ``S``) are fixed at
    index 0.  Slicing is forwarded to the underlying (lazy) array, so only the
    requested region is read.
    """

    def __init__(self, arr, axes: str):
        axes = axes.upper()
        if "Y" not in axes or "X" not in axes:
            raise ValueError(f"array axes {axes!r} have no Y and X")
        self._arr = arr
        self._axes = axes
        self._ch = next((i for i, a in enumerate(axes) if a in "CS"), None)
        self._iy, self._ix = axes.index("Y"), axes.index("X")
        shp = tuple(int(s) for s in arr.shape)
        self.shape = (shp[self._iy], shp[self._ix]) + ((shp[self._ch],) if self._ch is not None else ())
        self.dtype = np.dtype(arr.dtype)
        self.ndim = len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        mine = {self._iy: key[0], self._ix: key[1]}
        if self._ch is not None:
            mine[self._ch] = key[2]
        full = tuple(mine.get(i, 0) for i in range(len(self._axes)))
        out = np.asarray(self._arr[full])
        # axes that survived the indexing, in storage order, then reorder to Y, X, C
        kept = [i for i in range(len(self._axes)) if i in mine and not isinstance(mine[i], (int, np.integer))]
        want = [i for i in (self._iy, self._ix, self._ch) if i is not None and i in kept]
        if kept != want:
            out = np.transpose(out, [kept.index(i) for i in want])
        return out

    def __array__(self, dtype=None, copy=None):
        a = self[...]
        return a.astype(dtype) if dtype is not None else a


def _downsamples(levels) -> list[float]:
    """Level factors, exact powers of two when the shapes say the level was halved.

    ``h0 / h`` of a level made by repeated halving is 1.9967 for 599 -> 300;
    the true factor (what maps coordinates) is 2.
    """
    h0, w0 = levels[0].shape[:2]
    out = []
    for lv in levels:
        h, w = lv.shape[:2]
        k = max(0, int(round(np.log2(max(h0 / max(h, 1), 1e-9)))))
        f = 2**k
        ok = all(n in (d // f, -(-d // f)) for n, d in ((h, h0), (w, w0)))
        out.append(float(f) if ok else h0 / h)
    return out


def _as_yxc(arr, axes: str | None):
    """The array itself when already ``(Y, X[, C])``, else an :class:`AxesView`."""
    if axes is None:
        return arr
    axes = axes.upper()
    if axes in ("YX", "YXS", "YXC"):
        return arr
    return AxesView(arr, axes)


# ---------------------------------------------------------------------------
# TIFF


def _tiff_pixel_size(tf) -> float | None:
    """Microns per pixel from OME metadata, the resolution tags or an SVS 'MPP' note."""
    try:
        if tf.is_ome and tf.ome_metadata:
            m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tf.ome_metadata)
            u = re.search(r'PhysicalSizeXUnit="([^"]+)"', tf.ome_metadata)
            if m:
                v = float(m.group(1))
                unit = u.group(1) if u else "µm"
                factor = {"µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}.get(unit, None)
                if factor:
                    return v * factor
        page = tf.pages[0]
        desc = page.description or ""
        m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
        if m:
            return float(m.group(1))
        return _resolution_um(page.tags)
    except Exception:  # metadata is a bonus, never a reason to fail
        return None


#: dots per inch that image software writes when it knows nothing (not a measurement)
_DEFAULT_DPI = (72.0, 96.0, 300.0)


def _resolution_um(tags) -> float | None:
    """Microns per pixel from XResolution + ResolutionUnit (centimetre or inch).

    Unit "none" carries no physical size, and 72/96/300 dpi per inch are what
    image editors write by default, not what a scanner measured.
    """
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not (num and den):
        return None
    px_per_unit = num / den
    per = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre
    if not per or not px_per_unit > 1:
        return None
    if unit == 2 and any(abs(px_per_unit - d) < 1e-6 for d in _DEFAULT_DPI):
        return None
    return per / px_per_unit


def open_tiff(path: str | Path) -> tuple[SlideImage, float | None]:
    """A (pyramidal) TIFF as a lazy :class:`SlideImage`, plus its pixel size if recorded."""
    import tifffile
    import zarr

    p = require_file(path, "image")
    if p.stat().st_size == 0:
        raise fail(p, "empty file")
    with reading(p, "unreadable TIFF"):
        with tifffile.TiffFile(p) as tf:
            if not tf.series:
                raise fail(p, "TIFF holds no image")
            series = tf.series[0]
            levels_meta = [(lv.axes, tuple(lv.shape)) for lv in series.levels]
            px = _tiff_pixel_size(tf)
            _check_tiff_extent(p, series)
        store = tifffile.imread(p, aszarr=True, series=0)
        z = zarr.open(store, mode="r")
        if hasattr(z, "shape"):
            arrays = [z]
        else:
            arrays = [z[str(i)] for i in range(len(levels_meta))]
        levels = [_as_yxc(a, axes) for a, (axes, _) in zip(arrays, levels_meta)]
        if any(min(lv.shape[:2]) == 0 for lv in levels):
            raise fail(p, f"TIFF image has zero size ({levels[0].shape})")
    with reading(p, "cannot decode TIFF pixels"):
        # one tile of the finest level and the whole coarsest (small) level:
        # a missing codec or damaged data fails here, not in the middle of a run
        np.asarray(levels[0][:1, :1])
        if levels[-1].shape[0] * levels[-1].shape[1] <= 2048 * 2048:
            np.asarray(levels[-1][...])
    return SlideImage(levels=levels, scale=1.0, path=str(p), downsamples=_downsamples(levels)), px


def _check_tiff_extent(p: Path, series) -> None:
    """Every strip/tile of every level must lie inside the file: a cheap truncation test."""
    size = p.stat().st_size
    for lv in series.levels:
        for page in lv.pages:
            if page is None:
                continue
            offs, counts = getattr(page, "dataoffsets", None), getattr(page, "databytecounts", None)
            if offs is None or counts is None:
                continue
            offs, counts = np.asarray(offs, dtype=np.int64), np.asarray(counts, dtype=np.int64)
            if offs.size and counts.size == offs.size:
                end = int((offs + counts).max())
                if end > size:
                    raise fail(p, f"truncated TIFF (image data runs to byte {end}, file has {size})")


# ---------------------------------------------------------------------------
# zarr / OME-Zarr


def _multiscales(attrs) -> list | None:
    attrs = dict(attrs)
    if "ome" in attrs and isinstance(attrs["ome"], dict):
        attrs = attrs["ome"]
    ms = attrs.get("multiscales")
    return ms if ms else None


def open_zarr(path: str | Path) -> tuple[SlideImage, float | None]:
    """OME-Zarr (multiscales metadata) or a plain zarr array / group of levels."""
    import zarr

    p = Path(path).expanduser()
    if not p.exists():
        raise fail(p, "zarr store not found")
    with reading(p, "unreadable zarr store"):
        node = zarr.open(str(p), mode="r")
        if hasattr(node, "shape"):  # a bare array
            axes = "YXC" if node.ndim == 3 and node.shape[-1] in (3, 4) else ("YX" if node.ndim == 2 else None)
            if axes is None:
                raise fail(p, f"cannot tell the axes of a {node.ndim}-d zarr array")
            return SlideImage(levels=[node], path=str(p)), None
        ms = _multiscales(node.attrs)
        px = None
        if ms:
            m0 = ms[0]
            axes = m0.get("axes") or ["t", "c", "z", "y", "x"][-node[m0["datasets"][0]["path"]].ndim :]
            names = "".join((a["name"] if isinstance(a, dict) else str(a))[0].upper() for a in axes)
            levels = [_as_yxc(node[d["path"]], names) for d in m0["datasets"]]
            scales = []
            for d in m0["datasets"]:
                sx = [t["scale"][names.index("X")] for t in d.get("coordinateTransformations", []) if t.get("type") == "scale"]
                scales.append(float(sx[0]) if sx else None)
            if all(scales) and len(scales) == len(levels):
                ds = [sc / scales[0] for sc in scales]
            else:
                ds = _downsamples(levels)
            for t in m0["datasets"][0].get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    sc = t["scale"][names.index("X")]
                    unit = next(
                        (a.get("unit") for a in axes if isinstance(a, dict) and a.get("name", "").upper() == "X"),
                        None,
                    )
                    factor = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3}.get(unit or "")
                    if factor:
                        px = float(sc) * factor
        else:
            keys = sorted((k for k in node.array_keys() if k.isdigit()), key=int)
            if not keys:
                raise fail(p, "zarr group has no multiscales metadata and no numbered levels")
            levels = [node[k] for k in keys]
            if levels[0].ndim == 3 and levels[0].shape[0] in (3, 4) and levels[0].shape[-1] not in (3, 4):
                levels = [AxesView(lv, "CYX") for lv in levels]
            ds = _downsamples(levels)
    return SlideImage(levels=levels, path=str(p), downsamples=ds), px


# ---------------------------------------------------------------------------
# JPEG / PNG


def _open_pil(path: Path):
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # H&E scans are legitimately huge
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _check_complete(path: Path) -> None:
    """Cheap truncation test: JPEG ends with EOI, PNG with an IEND chunk."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        fh.seek(max(0, size - 4096))
        tail = fh.read()
    if head[:2] == b"\xff\xd8":
        if b"\xff\xd9" not in tail:
            raise fail(path, "truncated JPEG (no end-of-image marker)")
    elif head == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in tail[-64:]:
            raise fail(path, "truncated PNG (no IEND chunk)")


def _pyramid_shapes(h: int, w: int, c: int = 3) -> list[tuple[int, int, int]]:
    shapes = [(h, w, c)]
    while max(h, w) >= PYRAMID_MIN_PX:
        h, w = (h + 1) // 2, (w + 1) // 2  # PIL's reduce() rounds up
        shapes.append((h, w, c))
    return shapes


class _RasterSource:
    """Decodes a JPEG/PNG once, on demand, and serves its levels."""

    def __init__(self, path: Path, size_wh: tuple[int, int], key: str | None):
        self.path = path
        w, h = size_wh
        self.small = max(w, h) <= SMALL_IMAGE_PX
        self.shapes = [(h, w, 3)] if self.small else _pyramid_shapes(h, w)
        self.key = key
        self._arrays: list | None = None
        self._lock = threading.Lock()

    # -- public
    def arrays(self) -> list:
        if self._arrays is None:
            with self._lock:
                if self._arrays is None:
                    self._arrays = self._materialize()
        return self._arrays

    @property
    def cache_path(self) -> Path:
        return pyramid_dir() / f"{self._cache_key()}.zarr"

    # -- internals
    def _cache_key(self) -> str:
        if self.key:
            base = f"sha256-{self.key}"
        else:
            st = self.path.stat()
            ident = f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
            base = "path-" + hashlib.sha256(ident.encode()).hexdigest()[:24]
        return f"{base}-{_PYRAMID_VERSION}"

    def _decode(self):
        with reading(self.path, "cannot decode image"):
            im = _open_pil(self.path)
            if im.mode != "RGB":
                im = im.convert("RGB")
            im.load()
            return im

    def _materialize(self) -> list:
        if self.small:
            return [np.asarray(self._decode())]
        cached = self._open_cached()
        if cached is not None:
            return cached
        im = self._decode()
        pil_levels = [im]
        for _ in self.shapes[1:]:
            pil_levels.append(pil_levels[-1].reduce(2))
        arrays = [np.asarray(lv) for lv in pil_levels]
        del pil_levels, im
        try:
            self._write(arrays)
        except OSError as exc:
            warnings.warn(
                f"{self.path}: could not cache the image pyramid in {pyramid_dir()} ({exc}); "
                f"keeping it in memory (set {ENV_PYRAMID_DIR} to a writable folder)",
                stacklevel=3,
            )
            return arrays
        opened = self._open_cached()
        return opened if opened is not None else arrays

    def _open_cached(self) -> list | None:
        import zarr

        target = self.cache_path
        if not target.is_dir():
            return None
        try:
            g = zarr.open_group(str(target), mode="r")
            arrays = [g[str(i)] for i in range(len(self.shapes))]
            if [tuple(a.shape) for a in arrays] != list(self.shapes):
                return None
            return arrays
        except Exception:  # damaged cache entry: rebuild it
            return None

    def _write(self, arrays: list[np.ndarray]) -> None:
        import zarr
        from zarr.codecs import BloscCodec

        root = pyramid_dir()
        root.mkdir(parents=True, exist_ok=True)
        target = self.cache_path
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.stem}.", suffix=".tmp", dir=root))
        try:
            g = zarr.open_group(str(tmp / "p.zarr"), mode="w")
            g.attrs["multiscales"] = [
                {
                    "version": "0.4",
                    "name": self.path.name,
                    "axes": [
                        {"name": "y", "type": "space"},
                        {"name": "x", "type": "space"},
                        {"name": "c", "type": "channel"},
                    ],
                    "datasets": [
                        {
                            "path": str(i),
                            "coordinateTransformations": [{"type": "scale", "scale": [2.0**i, 2.0**i, 1.0]}],
                        }
                        for i in range(len(arrays))
                    ],
                }
            ]
            g.attrs["napari_flag"] = {"source": str(self.path), "key": self._cache_key()}
            comp = BloscCodec(cname="lz4", clevel=3, shuffle="noshuffle")
            for i, a in enumerate(arrays):
                z = g.create_array(name=str(i), shape=a.shape, chunks=(_CHUNK, _CHUNK, 3), dtype="uint8", compressors=comp)
                z[...] = a
            try:
                os.rename(tmp / "p.zarr", target)
            except OSError:
                if not target.is_dir():  # not a lost race with another process
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class LazyLevel:
    """One pyramid level of a JPEG/PNG whose pixels are produced on first access."""

    def __init__(self, source: _RasterSource, index: int):
        self._source = source
        self._index = index
        self.shape = source.shapes[index]
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def loaded(self) -> bool:
        return self._source._arrays is not None

    def __getitem__(self, key):
        return np.asarray(self._source.arrays()[self._index][key])

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self._source.arrays()[self._index][...])
        return a.astype(dtype) if dtype is not None else a

    def __repr__(self) -> str:
        return f"LazyLevel({self._source.path.name}, level={self._index}, shape={self.shape})"


def open_raster(path: str | Path, sha256: str | None = None, scale: float = 1.0) -> SlideImage:
    """A JPEG/PNG as a lazy :class:`SlideImage`; only the header is read now.

    ``sha256`` (when the caller already knows it) keys the pyramid cache so
    that identical files share one pyramid wherever they live.
    """
    p = require_file(path, "image")
    if p.stat().st_size == 0:
        raise fail(p, "empty file")
    with reading(p, "unreadable image"):
        im = _open_pil(p)
        size, fmt = im.size, im.format
        if fmt == "PNG":
            im.verify()  # chunk CRCs: catches damage anywhere, without decoding
        im.close()
    if min(size) <= 0:
        raise fail(p, f"image has zero size ({size[0]} x {size[1]})")
    _check_complete(p)
    src = _RasterSource(p, size, sha256)
    levels = [LazyLevel(src, i) for i in range(len(src.shapes))]
    ds = [float(2**i) for i in range(len(levels))]
    return SlideImage(levels=levels, scale=float(scale), path=str(p), downsamples=ds)


def open_image(path: str | Path, sha256: str | None = None) -> tuple[SlideImage, float | None]:
    """Any supported image file or store, with its pixel size when recorded."""
    p = Path(path).expanduser()
    name = p.name.lower()
    if name.endswith(".zarr") or (p.is_dir() and ((p / ".zattrs").exists() or (p / "zarr.json").exists())):
        return open_zarr(p)
    if name.endswith(TIFF_EXT):
        return open_tiff(p)
    if name.endswith(RASTER_EXT):
        return open_raster(p, sha256=sha256), None
    if not p.exists():
        raise fail(p, "file not found")
    raise fail(p, "unknown image format (expected .tif/.tiff/.ome.tif, .zarr/.ome.zarr, .jpg or .png)")


# ---------------------------------------------------------------------------
# writing


def _downsample2(a: np.ndarray) -> np.ndarray:
    from PIL import Image

    if a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        return np.asarray(Image.fromarray(a).reduce(2))
    h, w = a.shape[:2]
    a = a[: h - h % 2, : w - w % 2]
    return a.reshape(h // 2, 2, w // 2, 2, *a.shape[2:]).mean(axis=(1, 3)).astype(a.dtype)


def write_pyramidal_tiff(
    path: str | Path,
    image: np.ndarray,
    pixel_size_um: float | None = None,
    tile: int = 256,
    compression: str | None = "jpeg",
    min_px: int = PYRAMID_MIN_PX,
) -> Path:
    """Write an RGB ``(Y, X, 3)`` uint8 array as a tiled pyramidal (Big)TIFF.

    Level 0 plus SubIFDs halved until the long side is below ``min_px``, the
    layout HEST uses for ``wsis/*.tif`` and that QuPath/OpenSlide-style
    viewers read.  Written to a temporary name and renamed, so a crash never
    leaves a half-written slide behind.
    """
    import tifffile

    path = Path(path)
    image = np.ascontiguousarray(image)
    levels = [image]
    while max(levels[-1].shape[:2]) >= min_px:
        levels.append(_downsample2(levels[-1]))
    kw = dict(tile=(tile, tile), photometric="rgb", compression=compression)
    if compression == "jpeg":
        kw["compressionargs"] = {"level": 90}
    res = {}
    if pixel_size_um:
        res = dict(resolution=(1e4 / pixel_size_um, 1e4 / pixel_size_um), resolutionunit="CENTIMETER")
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31) as tw:
        tw.write(levels[0], subifds=len(levels) - 1, metadata=None, **kw, **res)
        for lv in levels[1:]:
            tw.write(lv, subfiletype=1, metadata=None, **kw)
    return path


def write_ome_tiff(
    image: np.ndarray,
    path: str | Path,
    pixel_size_um: float,
    tile: int = 256,
    levels: int | None = None,
    compression: str | None = "jpeg",
) -> Path:
    """Write an RGB ``(Y, X, 3)`` uint8 array as a tiled pyramidal OME-TIFF.

    OME-XML records ``PhysicalSizeX/Y`` in um, so any OME reader (QuPath,
    napari, this package) gets the pixel size back.  ``levels`` counts the
    pyramid levels including level 0; by default the image is halved until
    its long side is under :data:`PYRAMID_MIN_PX`.  Written under a temporary
    name and renamed, so a crash never leaves a half-written slide behind.
    """
    import tifffile

    if not (pixel_size_um and np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise fail(path, f"pixel size must be a positive number, got {pixel_size_um!r}")
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise fail(path, f"expected an RGB uint8 (Y, X, 3) image, got {image.dtype} {image.shape}")
    pyramid = [image]
    while (len(pyramid) < levels) if levels else (max(pyramid[-1].shape[:2]) >= PYRAMID_MIN_PX):
        if min(pyramid[-1].shape[:2]) < 2:
            break
        pyramid.append(_downsample2(pyramid[-1]))
    px = float(pixel_size_um)
    kw = dict(tile=(tile, tile), photometric="rgb", compression=compression)
    if compression == "jpeg":
        kw["compressionargs"] = {"level": 90}
    meta = {
        "axes": "YXS",
        "PhysicalSizeX": px,
        "PhysicalSizeY": px,
        "PhysicalSizeXUnit": "\u00b5m",
        "PhysicalSizeYUnit": "\u00b5m",
    }
    path = Path(path)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=image.nbytes > 2**31, ome=True) as tw:
        tw.write(pyramid[0], subifds=len(pyramid) - 1, metadata=meta,
                 resolution=(1e4 / px, 1e4 / px), resolutionunit="CENTIMETER", **kw)
        for i, lv in enumerate(pyramid[1:], start=1):
            f = px * 2**i
            tw.write(lv, subfiletype=1, metadata=None,
                     resolution=(1e4 / f, 1e4 / f), resolutionunit="CENTIMETER", **kw)
    return path
