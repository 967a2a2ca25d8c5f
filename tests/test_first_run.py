"""First run from the command line: what a new user sees when something is off.

No Qt window is opened here (the demo's own layout is in test_ui_layout.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_flag.cli import main
from napari_flag.errors import FlagInputError

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "resources" / "flag_default.pt"


def _lines(err: str) -> list[str]:
    return [ln for ln in err.strip().splitlines() if ln.strip()]


def _fails(capsys, argv, *needles, status=None) -> str:
    with pytest.raises(SystemExit) as ei:
        main(argv)
    assert ei.value.code not in (0, None) and (status is None or ei.value.code == status)
    err = capsys.readouterr().err
    lines = _lines(err)
    assert len(lines) == 1 and lines[0].startswith("napari-flag: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], err
    return lines[0]


# ----------------------------------------------------------------------------- --steps / --samples
@pytest.mark.parametrize("flag", ["--steps", "--samples"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_counts_must_be_positive(capsys, tmp_path, flag, value):
    line = _fails(capsys, ["predict", "her2st:C2", "--out", str(tmp_path / "o.h5ad"), flag, value],
                  flag, "must be at least 1", status=2)
    assert "model's default" in line
    assert not (tmp_path / "o.h5ad").exists()


def test_counts_must_be_numbers(capsys, tmp_path):
    _fails(capsys, ["predict", "her2st:C2", "--out", str(tmp_path / "o.h5ad"), "--steps", "ten"],
           "--steps", "not a whole number", status=2)


# ----------------------------------------------------------------------------- checkpoints
def _not_checkpoints(tmp: Path) -> dict[str, Path]:
    out = {}
    out["text"] = REPO / "README.md"
    out["npz"] = REPO / "resources" / "gene_prior_go.npz"
    np.save(tmp / "array.npy", np.zeros(3))
    out["npy"] = tmp / "array.npy"
    with zipfile.ZipFile(tmp / "other.zip", "w") as z:
        z.writestr("a.txt", "hello")
    out["zip"] = tmp / "other.zip"
    out["random"] = tmp / "random.pt"
    out["random"].write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    return out


def test_non_checkpoint_files_say_so_without_internals(tmp_path):
    from napari_flag.checkpoint import load_checkpoint

    for name, path in _not_checkpoints(tmp_path).items():
        with pytest.raises(FlagInputError) as ei:
            load_checkpoint(path)
        assert str(ei.value) == f"{path}: not a napari-flag checkpoint", name


def test_empty_and_truncated_checkpoints_say_why(tmp_path):
    from napari_flag.checkpoint import load_checkpoint

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    half = tmp_path / "half.pt"
    data = BUNDLED.read_bytes()
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(FlagInputError, match=r"empty.pt: not a napari-flag checkpoint \(empty file\)$"):
        load_checkpoint(empty)
    with pytest.raises(FlagInputError, match=r"half.pt: not a napari-flag checkpoint \(truncated or corrupt file\)$"):
        load_checkpoint(half)


# ----------------------------------------------------------------------------- downloads
class _LongConnectionError(ConnectionError):
    """What requests raises offline: a URL and a nested exception repr."""

    def __init__(self, url):
        super().__init__(
            f"HTTPSConnectionPool(host='raw.githubusercontent.com', port=443): Max retries exceeded with "
            f"url: {url} (Caused by NameResolutionError(\"<urllib3.connection.HTTPSConnection object>: "
            f"Failed to resolve 'raw.githubusercontent.com' ([Errno -2] Name or service not known)\"))")


@pytest.fixture
def offline_pooch(monkeypatch):
    """pooch offline; records whether its "Downloading data from <url>" log line would show."""
    import logging

    import pooch

    chatty = []

    def refuse(url, *a, **k):
        chatty.append(pooch.get_logger().isEnabledFor(logging.INFO))
        raise _LongConnectionError(url)

    monkeypatch.setattr(pooch, "retrieve", refuse)
    monkeypatch.delenv("NAPARI_FLAG_OFFLINE", raising=False)
    return chatty


def test_failed_download_is_summarised(monkeypatch, tmp_path, offline_pooch):
    from napari_flag.data.registry import fetch_file

    monkeypatch.setenv("NAPARI_FLAG_DATA_DIR", str(tmp_path))
    with pytest.raises(FlagInputError) as ei:
        fetch_file("ST-imgs/A/A1/x.jpg")
    msg = str(ei.value)
    assert "\n" not in msg and "ST-imgs/A/A1/x.jpg" in msg and "NAPARI_FLAG_DATA_DIR" in msg
    assert "no connection to the server" in msg
    assert "http" not in msg.lower() and "Caused by" not in msg
    assert offline_pooch == [False]  # pooch's own line with the URL is silenced


def test_missing_image_in_the_cli_is_one_error_line(monkeypatch, tmp_path, capsys, her2st_copy, offline_pooch):
    """A counts-only cache: prediction needs the H&E, so its absence is the one error line (file, variable)."""
    cache = her2st_copy(tmp_path / "cache", "ST-cnts/C2.tsv.gz", "ST-spotfiles/C2_selection.tsv")
    monkeypatch.setenv("NAPARI_FLAG_DATA_DIR", str(cache))
    with pytest.raises(SystemExit):
        main(["predict", "her2st:C2", "--out", str(tmp_path / "o.h5ad"), "--checkpoint", str(BUNDLED)])
    err = capsys.readouterr().err
    lines = _lines(err)
    assert len(lines) == 1, err
    (error,) = lines
    assert error.startswith("napari-flag: error: ") and "5714_HE_BT_C2.jpg" in error
    assert "download failed" in error and "NAPARI_FLAG_DATA_DIR" in error
    assert "http" not in err.lower() and "Traceback" not in err and "UserWarning" not in err


# ----------------------------------------------------------------------------- demo without a window
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 display check")
def test_demo_without_display_says_why_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    proc = subprocess.run([sys.executable, "-m", "napari_flag.cli", "demo"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 1
    lines = _lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("napari-flag: error: demo unavailable: Qt cannot open a window: ")
    assert "display" in lines[0]


def test_demo_without_qt_binding_names_the_cause(monkeypatch):
    import builtins

    from napari_flag import _demo

    real = builtins.__import__

    def no_qt(name, *a, **k):
        if name.startswith("qtpy"):
            try:
                raise ImportError("libEGL.so.1: cannot open shared object file")
            except ImportError as inner:
                raise ImportError("An error occured when importing Qt dependencies. See cause above") from inner
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_qt)
    msg = _demo.qt_problem(probe=False)
    assert msg == "no usable Qt binding (libEGL.so.1: cannot open shared object file); pip install PyQt6"


# ----------------------------------------------------------------------------- labels
def test_first_prediction_is_not_numbered():
    import anndata as ad

    from napari_flag import layers as L
    from napari_flag.widgets.lookup import prediction_labels

    def pred():
        a = ad.AnnData(np.zeros((2, 1), np.float32))
        a.uns["flag"] = {"sample_id": "C2", "checkpoint": "/x/flag_default.pt"}
        return L.new_prediction_key(a), a

    L.new_sample_key(type("S", (), {"sample_id": "C2"})())  # the shared counter moves on
    (k1, a1), (k2, a2) = pred(), pred()
    assert prediction_labels([k1], [a1]) == ["C2 · flag_default.pt"]
    assert prediction_labels([k2, k1], [a2, a1]) == ["C2 · flag_default.pt (run 2)", "C2 · flag_default.pt"]
