"""Patch encoders: one small interface so the built-in and user-supplied models are interchangeable."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FlagInputError

__all__ = [
    "Encoder",
    "EfficientNetLite0Encoder",
    "TimmEncoder",
    "get_encoder",
    "resolve_device",
    "file_identity",
    "DEFAULT_ENCODER",
]

DEFAULT_ENCODER = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_device(device: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; under torchrun (``local_rank``) each rank gets its own GPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            dev = torch.device("cuda")
        else:
            mps = getattr(torch.backends, "mps", None)
            dev = torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda" and local_rank is not None and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def file_identity(path: str | Path) -> str:
    """Content fingerprint of a weights file: size plus hashes of its head and tail.

    Cheap even for gigabyte checkpoints, yet changes when the file is replaced,
    which is what a feature cache keyed on it needs.
    """
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256(str(size).encode())
    chunk = 1 << 20
    with open(p, "rb") as fh:
        h.update(fh.read(chunk))
        if size > chunk:
            fh.seek(max(size - chunk, chunk))
            h.update(fh.read(chunk))
    return f"{p.name}:{h.hexdigest()[:16]}"


class Encoder:
    """Maps RGB patches to feature vectors.

    Attributes: ``name`` (stable identifier, part of the feature cache key), ``dim``,
    ``patch_um`` (physical patch side the model expects), ``patch_px`` (its input side
    in pixels), ``device`` and ``weights_id`` (identity of the weights, also in the
    cache key).  Subclasses implement :meth:`_forward` on a float tensor in [0, 255].
    """

    name: str = "encoder"
    dim: int = 0
    patch_um: float = 112.0
    patch_px: int = 224
    device: torch.device = torch.device("cpu")
    weights_id: str = ""
    batch_size: int = 32
    channels_last: bool = False  # feed NHWC tensors (faster for convnets under oneDNN)
    tta: bool = False  # average the features of the 8 flips/rotations of each patch
    context: float | None = None  # also encode a patch this many times wider, concatenated
    context_px: int | None = None  # the context patch's input side (None: patch_px)
    mean: Sequence[float] = IMAGENET_MEAN  # on the 0-1 scale
    std: Sequence[float] = IMAGENET_STD

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * 255.0
        return (x - mean) / std

    def encode(self, patches: np.ndarray, px: int | None = None) -> np.ndarray:
        """``uint8 (N, H, W, 3)`` patches to ``float32 (N, view_dim)`` features of one view.

        Patches of another size are resized to ``px`` (default ``patch_px``;
        antialiased bilinear).
        """
        patches = np.asarray(patches)
        if patches.ndim == 3:
            patches = patches[None]
        if patches.ndim != 4 or patches.shape[-1] != 3:
            raise ValueError(f"patches must be (N, H, W, 3), got {patches.shape}")
        px = int(px or self.patch_px)
        step = self.batch_size_for(px)
        out = np.empty((len(patches), self.view_dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(patches), step):
                chunk = np.ascontiguousarray(patches[s : s + step])
                x = torch.from_numpy(chunk).to(self.device).permute(0, 3, 1, 2).float()
                if x.shape[-2:] != (px, px):
                    x = F.interpolate(x, size=(px, px), mode="bilinear", align_corners=False, antialias=True)
                x = self._normalise(x)
                fmt = torch.channels_last if self.channels_last else torch.contiguous_format
                if self.tta:  # H&E has no canonical orientation: the dihedral group's mean is invariant
                    views = [torch.rot90(v, k, dims=(2, 3)) for v in (x, x.flip(3)) for k in range(4)]
                    y = sum(self._forward(v.contiguous(memory_format=fmt)).float() for v in views) / 8.0
                else:
                    y = self._forward(x.contiguous(memory_format=fmt))
                out[s : s + len(chunk)] = y.float().cpu().numpy()
        return out

    def batch_size_for(self, px: int) -> int:
        """Patches per forward pass at input side ``px`` (``batch_size`` unless a subclass sizes it)."""
        return int(self.batch_size)

    @property
    def views_px(self) -> list[int]:
        """Input side of each view, in the order of :attr:`views_um`."""
        return [int(self.patch_px)] + ([int(self.context_px or self.patch_px)] if self.context else [])

    @property
    def view_dim(self) -> int:
        """Width of one view's features (``dim`` is that times the number of views)."""
        return self.dim // len(self.views_um)

    @property
    def views_um(self) -> list[float]:
        """Physical sides of the patches encoded per spot: the spot patch, then the context patch."""
        return [float(self.patch_um)] + ([float(self.patch_um) * float(self.context)] if self.context else [])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, patch_um={self.patch_um}, "
            f"patch_px={self.patch_px}, device={str(self.device)!r})"
        )


class EfficientNetLite0Encoder(Encoder):
    """Built-in, offline encoder: EfficientNet-Lite0 with ImageNet weights (1280-d).

    Small enough for a laptop CPU; its ImageNet features are a weak but honest
    baseline for H&E (see the calibration numbers in the method notes).
    """

    mean = (127.0 / 255.0,) * 3  # TF lite preprocessing: (x - 127) / 128
    std = (128.0 / 255.0,) * 3
    channels_last = True

    def __init__(self, device="auto", weights: str | Path | None = None,
                 patch_um: float = 112.0, patch_px: int = 224, batch_size: int | None = None):
        from .efficientnet_lite import EfficientNetLite0, lite0_weights_path, load_lite0

        path = Path(weights) if weights is not None else lite0_weights_path()
        if not path.is_file():
            raise FlagInputError(f"{path}: weights file not found")
        self.name = "efficientnet_lite0"
        self.dim = EfficientNetLite0.dim
        self.patch_um, self.patch_px = float(patch_um), int(patch_px)
        self.device = resolve_device(device)
        self._fixed_batch = int(batch_size) if batch_size else None
        self.batch_size = self._fixed_batch or self.default_batch_size(self.device, self.patch_px)
        self.weights_id = file_identity(path)
        # strict load first, then fold BatchNorm for speed; the features are unchanged
        self.model = load_lite0(path).fuse_bn().to(self.device, memory_format=torch.channels_last)
        if self.device.type == "cpu":
            self.model.fuse_activations()  # same numbers, one oneDNN call per conv and activation

    @staticmethod
    def default_batch_size(device: torch.device, patch_px: int) -> int:
        """Patches per forward pass: 64 on a GPU; on the CPU as many as keep the largest activation
        (the first expanded block, 96 channels at half the input side) below glibc's mmap threshold.

        Measured on a 2-core CPU at 224 px with the thresholds of :mod:`napari_flag._alloc`:
        4.2 ms per patch at 4, 4.05 at 6, 7.1 at 8 and 16 (their buffers are mmap'd afresh).
        """
        if device.type != "cpu":
            return 64
        from .._alloc import MMAP_THRESHOLD

        per_patch = 96 * (patch_px // 2) ** 2 * 4
        return max(1, min(32, (MMAP_THRESHOLD - 1) // per_patch))

    def batch_size_for(self, px: int) -> int:
        return self._fixed_batch or self.default_batch_size(self.device, px)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)


def _unwrap_state_dict(obj: Any) -> dict:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        return {k.removeprefix("module."): v for k, v in obj.items()}
    raise ValueError("not a state dict")


class TimmEncoder(Encoder):
    """A timm architecture with user-supplied local weights (e.g. UNI, a ViT-L/16).

    Nothing is downloaded: the model is built with ``pretrained=False`` and the local
    state dict is loaded with ``weights_only=True``.  Extra keyword arguments go to
    ``timm.create_model`` (UNI needs ``init_values=1e-5, dynamic_img_size=True``).
    """

    def __init__(self, arch: str, weights: str | Path, device="auto", patch_um: float = 112.0,
                 patch_px: int = 224, batch_size: int = 32, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, strict: bool = True, **create_kwargs):
        try:
            import timm
        except ImportError as exc:
            raise ImportError(
                f"encoder 'timm:{arch}' needs the package timm (and torchvision): {exc}"
            ) from exc
        if weights is None:
            raise FlagInputError(f"timm:{arch}: pass weights=<local weights file>; nothing is downloaded")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FlagInputError(f"{path}: weights file not found")
        create_kwargs.setdefault("num_classes", 0)
        model = timm.create_model(arch, pretrained=False, **create_kwargs)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(_unwrap_state_dict(state), strict=strict)
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FlagInputError(f"{path}: weights do not fit timm model {arch!r}: {first}") from exc
        self.name = f"timm:{arch}"
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.patch_um, self.patch_px, self.batch_size = float(patch_um), int(patch_px), int(batch_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.weights_id = file_identity(path)
        self.dim = int(getattr(model, "num_features", 0)) or self._probe_dim()

    def _probe_dim(self) -> int:
        with torch.inference_mode():
            x = torch.zeros(1, 3, self.patch_px, self.patch_px, device=self.device)
            return int(self._forward(x).shape[-1])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y.flatten(1) if y.ndim > 2 else y


def get_encoder(name: str = DEFAULT_ENCODER, device="auto", weights: str | Path | None = None,
                tta: bool = False, context: float | None = None, context_px: int | None = None,
                **kw) -> Encoder:
    """An encoder by name: ``"efficientnet_lite0"`` (built in) or ``"timm:<arch>"`` with local ``weights``.

    ``tta``: features averaged over the 8 flips/rotations of each patch (8x the
    encoder's cost).  ``context``: a second patch ``context`` times wider around
    each spot is encoded too and its features concatenated (``dim`` doubles);
    ``context_px`` is its input side (default the spot patch's ``patch_px``: a
    smaller side costs less, the context being the coarse view).  All are part
    of the encoder's name, so cached features never mix.
    """
    if isinstance(name, Encoder):
        return name
    if name in (DEFAULT_ENCODER, "efficientnet-lite0", "lite0"):
        enc: Encoder = EfficientNetLite0Encoder(device=device, weights=weights, **kw)
    elif name.startswith("timm:"):
        enc = TimmEncoder(name[len("timm:"):], weights=weights, device=device, **kw)
    else:
        raise FlagInputError(f"{name}: unknown encoder (use 'efficientnet_lite0' or 'timm:<arch>' with weights=)")
    if context is not None:
        if not float(context) > 1.0:
            raise FlagInputError(f"encoder context: must be a patch-width multiple > 1, got {context}")
        enc.context = float(context)
        enc.dim = int(enc.dim) * 2
        enc.name = f"{enc.name}+ctx{float(context):g}"
        if context_px is not None and int(context_px) != int(enc.patch_px):
            if int(context_px) < 32:
                raise FlagInputError(f"encoder context_px: must be at least 32 pixels, got {context_px}")
            enc.context_px = int(context_px)
            enc.name = f"{enc.name}@{int(context_px)}px"
    if tta:
        enc.tta = True
        enc.name = f"{enc.name}+tta"
    return enc
