"""Command lines on broken input: one line on stderr, a non-zero exit, and no output.

Every case runs the real entry point in a fresh process (``python -m
napari_flag.cli``), so whatever reaches the terminal (warnings, tracebacks) is
seen exactly as a user would see it.  Besides the message and the exit code,
each test checks that no output appeared and that existing files are byte for
byte what they were.  The kill-and-resume test SIGKILLs a real training run.
"""
from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_flag.checkpoint import load_checkpoint

FEATURE_DIR = Path(tempfile.gettempdir()) / "napari-flag-test-features"  # shared with the other tests
TINY_MODEL = dict(
    preset="cpu", feat_dim_proj=32, cond_dim=16, graph_layers=1, graph_heads=2, depth=1, width=16,
    heads=2, align_block=1, align_hidden=[16], sample_steps=2, sample_count=2,
)
N_GENES = 20
TINY = dict(
    train=["her2st:C3"], val=[], n_genes=N_GENES, model=dict(TINY_MODEL), steps=2, batch_spots=32, lr=1e-3,
    val_every=0, device="cpu", feature_cache=str(FEATURE_DIR), log_every=1,
)


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NAPARI_FLAG_OFFLINE="1",
               NAPARI_FLAG_FEATURE_DIR=str(FEATURE_DIR))
    env.pop("NAPARI_FLAG_DEBUG", None)
    env.update(extra)
    return env


def cli(*args, timeout=300, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_flag.cli", *map(str, args)], capture_output=True,
                          text=True, env=_env(**env), timeout=timeout)


def failed(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, nothing on stdout, exactly one stderr line naming ``needles``, no traceback."""
    err = proc.stderr
    assert proc.returncode not in (0, None), err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and err.endswith("\n") and err.count("\n") == 1, err
    assert lines[0].startswith("napari-flag: error: "), err
    for n in needles:
        assert n in lines[0], (n, err)
    assert proc.stdout == "", proc.stdout
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes: equal snapshots mean nothing was written."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def run(her2st_dir, tmp_path_factory) -> Path:
    """A tiny model trained on C3 (2 steps): ``run/last.pt`` with its ``config.yaml`` beside."""
    from napari_flag.training import TrainConfig, train

    d = tmp_path_factory.mktemp("rel-run")
    cfg = TrainConfig(**TINY, out_dir=str(d / "run"))
    train(cfg)
    (d / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "out_dir": str(d / "run")}))
    return d / "run"


@pytest.fixture(scope="module")
def ckpt(run) -> Path:
    return run / "last.pt"


@pytest.fixture(scope="module")
def pred(ckpt, tmp_path_factory) -> Path:
    """A real prediction of C2 written the way ``napari-flag predict`` writes it."""
    from napari_flag.inference import predict_sample, write_prediction

    a = predict_sample("her2st:C2", checkpoint=ckpt, steps=2, samples=2, device="cpu",
                       feature_cache=str(FEATURE_DIR))
    return write_prediction(a, tmp_path_factory.mktemp("rel-pred") / "C2.h5ad")


@pytest.fixture
def out_dir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


# ----------------------------------------------------------------------------- inputs
def test_unknown_dataset_id(ckpt, out_dir):
    out = out_dir / "p.h5ad"
    failed(cli("predict", "her2st:Z9", "--out", out, "--checkpoint", ckpt), "her2st:Z9", "unknown dataset id")
    assert snapshot(out_dir) == {}


@pytest.mark.parametrize("what", ["sample", "checkpoint", "evaluate", "config"])
def test_missing_file(what, ckpt, out_dir, tmp_path):
    missing = tmp_path / f"absent-{what}"
    out = out_dir / "p.h5ad"
    if what == "sample":
        proc = cli("predict", missing, "--out", out, "--checkpoint", ckpt)
    elif what == "checkpoint":
        proc = cli("predict", "her2st:C2", "--out", out, "--checkpoint", missing)
    elif what == "evaluate":
        proc = cli("evaluate", missing, "--json", out_dir / "m.json")
    else:
        proc = cli("train", "--config", missing)
    msg = failed(proc, str(missing))
    assert "not found" in msg or "does not exist" in msg or "no such" in msg.lower()
    assert snapshot(out_dir) == {}


def test_dataset_cache_file_with_wrong_hash(her2st_copy, ckpt, out_dir, tmp_path):
    cache = her2st_copy(tmp_path / "cache", "ST-cnts/C2.tsv.gz", "ST-spotfiles/C2_selection.tsv",
                        "ST-imgs/C/C2/5714_HE_BT_C2.jpg", corrupt="ST-cnts/C2.tsv.gz")
    counts = cache / "ST-cnts/C2.tsv.gz"
    before = snapshot(cache)
    proc = cli("predict", "her2st:C2", "--out", out_dir / "p.h5ad", "--checkpoint", ckpt,
               NAPARI_FLAG_DATA_DIR=str(cache))
    failed(proc, str(counts), "hash mismatch")
    assert snapshot(out_dir) == {} and snapshot(cache) == before


# ----------------------------------------------------------------------------- checkpoints
def _variant(ckpt: Path, folder: Path, name: str) -> tuple[Path, str]:
    """A damaged copy of a real checkpoint and the problem the error must state."""
    p = folder / f"{name}.pt"
    data = ckpt.read_bytes()
    if name == "truncated":
        p.write_bytes(data[: len(data) // 2])
        return p, "truncated or corrupt"
    if name == "random-bytes":
        p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return p, "not a napari-flag checkpoint"
    if name == "empty":
        p.write_bytes(b"")
        return p, "not a napari-flag checkpoint"
    if name == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, p)
        return p, "not a napari-flag checkpoint"
    ck = torch.load(ckpt, weights_only=True)
    if name == "transform":
        ck["transform"] = "sqrt"
        problem = "unknown transform 'sqrt'"
    elif name == "panel-stats":
        ck["mean"] = torch.zeros(N_GENES + 3)
        problem = f"mean is not {N_GENES} finite numbers"
    elif name == "genes":
        ck["genes"] = ck["genes"][:-1] + ck["genes"][:1]
        problem = "duplicate"
    elif name == "model-config":
        ck["model_config"]["network"]["width"] = 17  # not divisible by the heads
        problem = "does not fit this napari-flag model"
    elif name == "weights":
        ck["model"] = {k: v[..., :1] if v.ndim else v for k, v in ck["model"].items()}
        problem = "does not fit this napari-flag model"
    else:  # pragma: no cover
        raise AssertionError(name)
    torch.save(ck, p)
    return p, problem


@pytest.mark.parametrize("name", ["truncated", "random-bytes", "empty", "foreign", "transform", "panel-stats",
                                  "genes", "model-config", "weights"])
def test_bad_checkpoint(name, ckpt, out_dir, tmp_path):
    bad, problem = _variant(ckpt, tmp_path, name)
    before = bad.read_bytes()
    failed(cli("predict", "her2st:C2", "--out", out_dir / "p.h5ad", "--checkpoint", bad), str(bad), problem)
    assert snapshot(out_dir) == {} and bad.read_bytes() == before


class _Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["pickle-protocol-2", "pickle-protocol-5", "torch-zip"])
def test_malicious_checkpoint_is_refused_unexecuted(kind, ckpt, out_dir, tmp_path):
    marker = tmp_path / "EXECUTED"
    payload = {"format": "napari-flag-checkpoint", "model": _Payload(marker)}
    bad = tmp_path / f"evil-{kind}.pt"
    if kind.startswith("pickle"):
        proto = int(kind[-1])
        bad.write_bytes(pickle.dumps(payload, protocol=proto))
        # the payload is live: plain pickle runs it (into another marker)
        live = tmp_path / "LIVE"
        pickle.loads(pickle.dumps({"x": _Payload(live)}, protocol=proto))["x"].close()
        assert live.exists()
    else:
        torch.save(payload, bad)
    msg = failed(cli("predict", "her2st:C2", "--out", out_dir / "p.h5ad", "--checkpoint", bad), str(bad),
                 "refused", "nothing from it was run")
    if kind != "pickle-protocol-5":  # a framed pickle is refused at its first opcode, before any object
        assert "Python objects besides tensors" in msg
    assert not marker.exists()
    assert snapshot(out_dir) == {}
    # the loading function refuses it the same way in-process
    from napari_flag.errors import FlagInputError

    with pytest.raises(FlagInputError, match="refused"):
        load_checkpoint(bad)
    assert not marker.exists()


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("override, problem", [
    ("n_genes=25", "gene panel differs"),
    ("transform=log1p", "transform"),
    ("model.width=32", "model width=16"),
    ("encoder=plain", "encoder"),
])
def test_resume_with_another_panel_or_model(override, problem, run, tmp_path):
    rd = tmp_path / "run"
    shutil.copytree(run, rd)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "out_dir": str(rd)}))
    before = snapshot(rd)
    msg = failed(cli("train", "--config", cfg, "--resume", "--quiet", override), str(rd / "last.pt"), problem)
    assert "cannot resume" in msg
    assert snapshot(rd) == before


def test_train_refuses_to_replace_a_run(run, tmp_path):
    rd = tmp_path / "run"
    shutil.copytree(run, rd)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "out_dir": str(rd)}))
    before = snapshot(rd)
    failed(cli("train", "--config", cfg, "--quiet"), str(rd / "last.pt"), "--resume", "--overwrite")
    assert snapshot(rd) == before


# ----------------------------------------------------------------------------- outputs
def test_predict_never_overwrites(ckpt, out_dir):
    out = out_dir / "p.h5ad"
    out.write_bytes(b"an earlier result")
    failed(cli("predict", "her2st:C2", "--out", out, "--checkpoint", ckpt), str(out), "already exists")
    assert snapshot(out_dir) == {"p.h5ad": b"an earlier result"}


def test_failing_write_leaves_no_partial_output(ckpt, out_dir, monkeypatch, capsys):
    """The disk fills up mid-write: no OUT and no temporary file remain."""
    import anndata as ad

    from napari_flag.cli import main

    def broken(self, filename, *a, **k):
        Path(filename).write_bytes(b"\x89HDF half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", broken)
    monkeypatch.setenv("NAPARI_FLAG_FEATURE_DIR", str(FEATURE_DIR))
    out = out_dir / "p.h5ad"
    with pytest.raises(SystemExit) as ei:
        main(["predict", "her2st:C2", "--out", str(out), "--checkpoint", str(ckpt), "--steps", "2",
              "--samples", "1", "--device", "cpu", "--quiet"])
    assert ei.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("napari-flag: error: ") and "No space left" in err
    assert str(out) in err and "not written" in err
    assert snapshot(out_dir) == {}


def _h5ad_variant(pred: Path, folder: Path, name: str) -> Path:
    import anndata as ad

    a = ad.read_h5ad(pred)
    p = folder / f"{name}.h5ad"
    if name == "uns-not-mapping":
        a.uns["flag"] = "just a string"
    elif name == "uns-transform-array":
        a.uns["flag"]["transform"] = np.arange(3)
    elif name == "truth-other-scale":
        a.uns["flag"]["transform"] = "log1p"
    elif name == "counts-other-genes":
        a = ad.AnnData(X=np.ones((a.n_obs, 3), np.float32), obs=a.obs[[]],
                       var=dict(index=["NOTAGENE1", "NOTAGENE2", "NOTAGENE3"]))
    elif name == "counts-negative":
        a = ad.AnnData(X=-np.ones((a.n_obs, a.n_vars), np.float32), obs=a.obs[[]], var=a.var[[]])
    a.write_h5ad(p)
    return p


@pytest.mark.parametrize("name, as_truth, problem", [
    ("uns-not-mapping", False, "uns['flag'] is a str, not a mapping"),
    ("uns-transform-array", False, "uns['flag']['transform'] is not one of"),
    ("truth-other-scale", True, "truth is on the 'log1p' scale but the prediction on 'log2p1'"),
    ("counts-other-genes", True, "shares no genes"),
    ("counts-negative", True, "negative or non-finite values"),
])
def test_evaluate_bad_input_writes_no_json(name, as_truth, problem, pred, out_dir, tmp_path):
    bad = _h5ad_variant(pred, tmp_path, name)
    js = out_dir / "m.json"
    args = [pred, "--truth", bad] if as_truth else [bad]
    failed(cli("evaluate", *args, "--json", js), str(bad), problem)
    assert snapshot(out_dir) == {}


def test_evaluate_never_overwrites_json(pred, out_dir):
    js = out_dir / "m.json"
    js.write_text("{}\n")
    failed(cli("evaluate", pred, "--json", js), str(js), "already exists")
    assert snapshot(out_dir) == {"m.json": b"{}\n"}
    proc = cli("evaluate", pred, "--json", js, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(js.read_text())) == {"slides", "sample_ids"}
    assert [p.name for p in out_dir.iterdir()] == ["m.json"]  # no temporary file left


def test_evaluate_truth_missing_some_genes_is_a_note(pred, out_dir, tmp_path):
    """Panel genes absent from the truth counts are left out, said in one note; the run succeeds."""
    import anndata as ad

    from napari_flag.data import load_sample

    s = load_sample("her2st:C2")
    genes = list(ad.read_h5ad(pred).var_names)
    keep = [g for g in map(str, s.adata.var_names) if g not in genes[:5]]
    counts = tmp_path / "counts.h5ad"
    sub = s.adata[:, keep]
    ad.AnnData(X=sub.X, obs=sub.obs[[]], var=sub.var[[]]).write_h5ad(counts)
    js = out_dir / "m.json"
    proc = cli("evaluate", pred, "--truth", counts, "--json", js)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("napari-flag: note: ")
    assert "lacks 5 of the 20 panel genes" in proc.stderr
    assert json.loads(js.read_text())["slides"]


# ----------------------------------------------------------------------------- kill -9 and resume
def _logged_steps(log: Path) -> list[int]:
    out = []
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # the line being written
                continue
            if rec.get("event") == "step":
                out.append(int(rec["step"]))
    return out


def test_kill_9_then_resume_loses_at_most_one_epoch(her2st_dir, tmp_path):
    n_train = 2  # an epoch is one pass over the training slides: 2 steps
    rd = tmp_path / "run"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "train": ["her2st:C3", "her2st:C4"], "steps": 400, "out_dir": str(rd)}))
    last, log = rd / "last.pt", rd / "train_log.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "napari_flag.cli", "train", "--config", str(cfg), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, f"training ended early: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "training made no progress"
            if last.is_file():
                seen.add(int(load_checkpoint(last)["step"]))  # never a partial file under the real name
            steps = _logged_steps(log)
            if len(seen) >= 2 and steps and steps[-1] >= 7:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(_logged_steps(log))
    saved = int(load_checkpoint(last)["step"])
    assert saved % n_train == 0 and all(s % n_train == 0 for s in seen)  # one checkpoint per epoch
    assert 0 <= killed_at - saved <= n_train  # lost at most one epoch

    # resume (to a nearer end, to keep the test short): continues at the saved step
    final = killed_at + 3
    res = cli("train", "--config", cfg, "--resume", f"steps={final}")
    assert res.returncode == 0, res.stderr
    assert f"finished at step {final}" in res.stdout
    assert f"resuming from {last} at step {saved}" in res.stderr
    ck = load_checkpoint(last)
    assert ck["step"] == final and ck["train_state"]["status"] == "finished"
    assert _logged_steps(log) == list(range(1, final + 1))  # lost steps redone once, none duplicated
    assert not [p.name for p in rd.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
