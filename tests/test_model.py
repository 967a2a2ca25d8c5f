"""FLAG model: shapes, training signal, sampler contract, ablation switches, presets."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from napari_flag.graph import build_spatial_graph
from napari_flag.model import (EDM, FlagConfig, FlagModel, NetworkConfig, NoiseConfig, SamplerConfig, calls_per_spot,
                               sample_expression)
from napari_flag.model.config import FLAT_KEYS, LEGACY_KEYS, route

S, G, D, DE = 48, 12, 16, 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**kw) -> FlagConfig:
    base = dict(
        width=32, heads=2, depth=2, mlp_ratio=2.0, feat_dim_proj=32, cond_dim=32,
        graph_layers=1, graph_heads=2, align_block=1, align_hidden=(32,), feat_dropout=0.0,
        joint=False,  # condition-only unless a test asks for joint denoising
    )
    base.update(kw)
    return FlagConfig.preset("cpu", **base)


@pytest.fixture(scope="module")
def toy():
    """A slide whose expression is a smooth function of image features, with gene-gene structure."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:6, 0:8]
    xy = np.stack([xx.ravel(), yy.ravel()], 1) * 100.0
    feats = rng.normal(size=(S, D)).astype(np.float32)
    w = rng.normal(size=(D, 3)) / np.sqrt(D)
    z = np.tanh(feats @ w)  # 3 latent programmes
    load = rng.normal(size=(3, G))
    x0 = z @ load + 0.3 * rng.normal(size=(S, G))
    x0 = (x0 - x0.mean(0)) / x0.std(0)
    prior = rng.normal(size=(G, DE)).astype(np.float32)
    mask = np.ones(G, bool)
    mask[[2, 5]] = False
    graph = build_spatial_graph(xy, feats, k=4)
    return dict(
        feats=torch.from_numpy(feats), x0=torch.from_numpy(x0.astype(np.float32)), graph=graph,
        prior=torch.from_numpy(prior), mask=torch.from_numpy(mask),
    )


def _is_pyg(m: torch.nn.Module) -> bool:
    return type(m).__module__.startswith("torch_geometric")


def test_forward_backward_shapes(toy):
    torch.manual_seed(0)
    m = FlagModel(tiny(), G, D, gene_prior=toy["prior"], prior_mask=toy["mask"])
    assert m.has_graph and m.has_align and m.align_dim == DE
    h = m.encode_slide(toy["feats"], toy["graph"])
    assert h.shape == (S, m.cfg.network.cond_dim)
    out = m.loss(toy["x0"], h)
    assert set(out) == {"loss", "denoise", "align"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    assert out["align"].item() < 0.5  # a negative cosine: in [-1, 1], near 0 at init
    # adaLN-Zero: at init only the output layer has gradients; after a few steps all do
    _train(m, toy, steps=3)
    m.zero_grad()
    m.loss(toy["x0"], m.encode_slide(toy["feats"], toy["graph"]))["loss"].backward()
    conv = m.encoder.layers[0].conv
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.projector.parameters())
    assert m.gene_prior.requires_grad is False
    assert "gene_prior" in dict(m.named_buffers())
    assert not any(n.startswith("gene_prior") for n, _ in m.named_parameters())


def _train(m, toy, steps=50, lr=3e-3, seed=0):
    opt = torch.optim.AdamW(m.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    hist = []
    for _ in range(steps):
        h = m.encode_slide(toy["feats"], toy["graph"])
        out = m.loss(toy["x0"], h, generator=gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        hist.append(out["denoise"].item())
    return np.array(hist)


@pytest.mark.parametrize("mode", ["diffusion", "regression"])
def test_loss_decreases(toy, mode):
    torch.manual_seed(0)
    # noise levels centred on sigma_data: the part of the EDM loss that moves fastest
    cfg = tiny(mode=mode, P_mean=0.0, P_std=1.0)
    m = FlagModel(cfg, G, D, gene_prior=toy["prior"], prior_mask=toy["mask"])
    hist = _train(m, toy, steps=50, lr=1e-2)
    first, last = hist[:10].mean(), hist[-10:].mean()
    print(f"\n{mode}: denoise loss {first:.3f} -> {last:.3f}")
    assert last < 0.85 * first


def test_align_loss_decreases(toy):
    torch.manual_seed(0)
    m = FlagModel(tiny(lambda_align=1.0), G, D, gene_prior=toy["prior"], prior_mask=toy["mask"])
    h = m.encode_slide(toy["feats"], toy["graph"])
    before = m.loss(toy["x0"], h)["align"].item()
    _train(m, toy, steps=30)
    h = m.encode_slide(toy["feats"], toy["graph"])
    after = m.loss(toy["x0"], h)["align"].item()
    assert after < before - 0.2


def test_sample_contract(toy):
    torch.manual_seed(0)
    m = FlagModel(tiny(), G, D)
    _train(m, toy, steps=10)
    h = m.encode_slide(toy["feats"], toy["graph"]).detach()
    calls = []
    out = sample_expression(m, h, steps=3, samples=4, return_samples=True, progress=lambda d, t: calls.append((d, t)),
                   generator=torch.Generator().manual_seed(1), mean="samples")
    assert out["mean"].shape == (S, G) and out["std"].shape == (S, G)
    assert out["samples"].shape == (4, S, G)
    assert torch.isfinite(out["samples"]).all()
    assert (out["std"] > 0).all()
    torch.testing.assert_close(out["mean"], out["samples"].mean(0))
    # one event per step of each chunk: 48 spots x 4 samples are 2 chunks of at most 128 rows
    assert calls[-1] == (6, 6) and len(calls) == 6
    assert m.training  # sampling restores the training flag

    # no samples kept unless asked
    assert sample_expression(m, h, steps=2, samples=2)["samples"] is None

    # seeded generator -> identical; chunking does not change the result
    a = sample_expression(m, h, steps=2, samples=3, generator=torch.Generator().manual_seed(7))
    b = sample_expression(m, h, steps=2, samples=3, generator=torch.Generator().manual_seed(7), chunk_rows=9)
    torch.testing.assert_close(a["mean"], b["mean"])
    torch.testing.assert_close(a["std"], b["std"])
    c = sample_expression(m, h, steps=2, samples=3, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(a["mean"], c["mean"])

    # temperature scales the initial noise: at 0 every sample starts (and ends) alike
    cold = sample_expression(m, h, steps=2, samples=3, temperature=0.0, mean="samples")
    assert (cold["std"] == 0).all()
    hot = sample_expression(m, h, steps=2, samples=3, temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert hot["std"].mean() > 0

    # one sample -> zero std; Euler and one-step paths work
    one = sample_expression(m, h, steps=2, samples=1)
    assert (one["std"] == 0).all()
    for solver, steps in (("euler", 3), ("heun", 1), ("dpm2m", 3)):
        r = sample_expression(m, h, steps=steps, samples=2, solver=solver)
        assert torch.isfinite(r["mean"]).all()


def test_blend_mean(toy):
    """The fast mode's mean: posterior-mean estimate from the first call + scaled sample deviation
    (imitating 6 samples, the default; N = 2 is the samples' plain mean)."""
    torch.manual_seed(0)
    m = FlagModel(tiny(sample_mean_like=6, sample_share_first=False), G, D)
    _train(m, toy, steps=10)
    h = m.encode_slide(toy["feats"], toy["graph"]).detach()
    d = FlagConfig().sampler
    assert (d.samples, d.steps, d.mean, d.mean_like, d.share_first) == (2, 4, "blend", 6, True)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731

    rows = []
    real = m.denoise
    m.denoise = lambda x, *a, **k: rows.append(x.shape[0]) or real(x, *a, **k)
    out = sample_expression(m, h, return_samples=True, generator=gen())
    del m.denoise
    assert sum(rows) == 6 * S  # 2 samples x (4 steps - the call at sigma_min) = 6 calls per spot
    assert out["mean"].shape == (S, G) and out["std"].shape == (S, G) and out["samples"].shape == (2, S, G)
    assert torch.isfinite(out["std"]).all() and (out["std"] > 0).all()

    # the formula: mu is the one-shot denoiser of the same initial noise (steps=1)
    mu = sample_expression(m, h, steps=1, mean="samples", generator=gen())["mean"]
    dev = out["samples"] - mu
    torch.testing.assert_close(out["mean"], mu + (2 / 6) ** 0.5 * dev.mean(0))
    torch.testing.assert_close(out["std"], dev.square().mean(0).sqrt())
    assert not torch.allclose(out["mean"], out["samples"].mean(0))

    # one sample kept when asked; seeded -> identical; chunking changes nothing
    one = sample_expression(m, h, return_samples=True, keep_samples=1, generator=gen(), chunk_rows=10)
    assert one["samples"].shape == (1, S, G)
    for k in ("mean", "std"):
        torch.testing.assert_close(one[k], out[k])
    torch.testing.assert_close(one["samples"][0], out["samples"][0])
    other = sample_expression(m, h, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(other["mean"], out["mean"])

    # the skipped last call (at sigma_min) barely moves a sample; the plain mean makes it
    rows.clear()
    m.denoise = lambda x, *a, **k: rows.append(x.shape[0]) or real(x, *a, **k)
    plain = sample_expression(m, h, mean="samples", return_samples=True, generator=gen())
    del m.denoise
    assert sum(rows) == 8 * S
    gap = (plain["samples"] - out["samples"]).abs().max()
    assert 0 < gap < 0.1, gap
    assert EDM.nfe(4, "dpm2m", final_call=False) == 3 and EDM.nfe(1, "dpm2m", final_call=False) == 1

    # as many samples as it imitates or more -> the plain mean; one sample -> zero std
    full = sample_expression(m, h, samples=8, return_samples=True, generator=gen())
    torch.testing.assert_close(full["mean"], full["samples"].mean(0))
    even = sample_expression(m, h, mean_like=2, return_samples=True, generator=gen())  # N = 2: the plain mean
    torch.testing.assert_close(even["samples"], out["samples"])
    torch.testing.assert_close(even["mean"], even["samples"].mean(0))
    torch.testing.assert_close(even["std"], out["std"])
    assert (sample_expression(m, h, samples=1)["std"] == 0).all()
    with pytest.raises(ValueError):
        sample_expression(m, h, mean="median")
    with pytest.raises(ValueError):
        SamplerConfig(mean="median")


def test_sample_clipping(toy):
    torch.manual_seed(0)
    m = FlagModel(tiny(), G, D)
    h = m.encode_slide(toy["feats"], toy["graph"]).detach()
    lo = torch.full((G,), -0.1)
    hi = torch.full((G,), 0.2)
    lo[0] = -5.0
    out = sample_expression(m, h, steps=2, samples=3, return_samples=True, clip_min=lo, clip_max=hi,
                   generator=torch.Generator().manual_seed(0))
    s = out["samples"]
    assert (s >= lo - 1e-6).all() and (s <= hi + 1e-6).all()
    assert (out["mean"] >= lo - 1e-6).all()
    only_min = sample_expression(m, h, steps=2, samples=2, clip_min=lo)
    assert (only_min["mean"] >= lo - 1e-6).all()


def test_regression_sampling(toy):
    torch.manual_seed(0)
    m = FlagModel(tiny(mode="regression"), G, D)
    _train(m, toy, steps=5)
    h = m.encode_slide(toy["feats"], toy["graph"]).detach()
    out = sample_expression(m, h, steps=4, samples=3, return_samples=True)
    assert (out["std"] == 0).all()
    assert out["samples"].shape == (3, S, G)
    torch.testing.assert_close(out["samples"][1], out["mean"])
    torch.testing.assert_close(out["mean"], sample_expression(m, h, steps=1, samples=1)["mean"])


def test_ablation_switches_change_structure(toy):
    full = FlagModel(tiny(), G, D, gene_prior=toy["prior"])
    assert any(_is_pyg(mod) for mod in full.modules())

    nog = FlagModel(tiny(graph=False), G, D, gene_prior=toy["prior"])
    assert not any(_is_pyg(mod) for mod in nog.modules())
    assert not nog.has_graph
    h = nog.encode_slide(toy["feats"], toy["graph"])  # graph is ignored
    torch.testing.assert_close(h, nog.encode_slide(toy["feats"], None))
    assert nog.n_params() < full.n_params()

    noa = FlagModel(tiny(align=False), G, D, gene_prior=toy["prior"])
    assert noa.projector is None and not noa.has_align
    assert not any(k.startswith(("projector", "gene_prior")) for k in noa.state_dict())
    out = noa.loss(toy["x0"], noa.encode_slide(toy["feats"], toy["graph"]))
    assert out["align"].item() == 0.0
    torch.testing.assert_close(out["loss"], out["denoise"])

    noprior = FlagModel(tiny(), G, D)  # align requested but no table
    assert noprior.projector is None
    assert noprior.loss(toy["x0"], noprior.encode_slide(toy["feats"], toy["graph"]))["align"].item() == 0.0

    # a checkpoint trained with alignment loads into an inference model without the table
    noprior.load_weights(full.state_dict())


def test_gatv2_and_missing_graph(toy):
    m = FlagModel(tiny(graph_kind="gatv2"), G, D)
    from torch_geometric.nn import GATv2Conv

    assert isinstance(m.encoder.layers[0].conv, GATv2Conv)
    h = m.encode_slide(toy["feats"], toy["graph"])
    assert h.shape == (S, m.cfg.network.cond_dim)
    h0 = m.encode_slide(toy["feats"][:1], build_spatial_graph(np.zeros((1, 2)), np.ones((1, D))))
    assert h0.shape == (1, m.cfg.network.cond_dim)
    t = FlagModel(tiny(), G, D)
    assert t.encode_slide(toy["feats"], None).shape == (S, t.cfg.network.cond_dim)


def test_cond_dropout_guidance(toy):
    m = FlagModel(tiny(cond_dropout=0.2, guidance=1.5), G, D)
    assert m.null_cond is not None
    _train(m, toy, steps=3)
    h = m.encode_slide(toy["feats"], toy["graph"]).detach()
    assert torch.isfinite(sample_expression(m, h, steps=2, samples=2)["mean"]).all()


def test_feature_stats_and_state_roundtrip(toy):
    m = FlagModel(tiny(), G, D)
    m.set_feature_stats(toy["feats"] * 3 + 1)
    assert torch.allclose(m.feat_mean, (toy["feats"] * 3 + 1).mean(0))
    buf = io.BytesIO()
    torch.save({"cfg": m.cfg.to_dict(), "state": m.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    m2 = FlagModel(FlagConfig.from_dict(ck["cfg"]), G, D)
    m2.load_weights(ck["state"])
    m.eval(), m2.eval()
    torch.testing.assert_close(m.encode_slide(toy["feats"], toy["graph"]), m2.encode_slide(toy["feats"], toy["graph"]))


def test_config_roundtrip_and_presets():
    cfg = FlagConfig.preset("cpu", depth=4)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert FlagConfig.from_dict(d) == cfg
    paper = FlagConfig.preset("paper")
    net = paper.network
    assert (net.depth, net.width, net.heads, net.graph_layers, net.align_block) == (12, 384, 6, 6, 8)
    assert net.align_hidden == (2048, 2048) and net.lambda_align == 0.5
    assert (paper.noise.sigma_max, paper.sampler.steps, paper.preset_name) == (80.0, 16, "paper")
    with pytest.raises(ValueError):
        FlagConfig.preset("huge")
    with pytest.raises(ValueError):
        NetworkConfig(mode="gan")
    with pytest.raises(ValueError):
        NetworkConfig(depth=3, align_block=4)


def test_paper_preset_size():
    with torch.device("meta"):
        m = FlagModel(FlagConfig.preset("paper"), 200, 1024, gene_prior=torch.zeros(200, 1152))
    n = m.n_params()
    dit = sum(p.numel() for p in m.blocks.parameters())
    print(f"\npaper preset: {n / 1e6:.1f} M parameters ({dit / 1e6:.1f} M in DiT blocks)")
    assert 20e6 < n < 100e6 and 25e6 < dit < 40e6


def test_edm_schedule():
    edm = EDM(sigma_min=0.002, sigma_max=20.0)
    ts = edm.schedule(5)
    assert ts.shape == (6,) and ts[0].item() == pytest.approx(20.0) and ts[-1].item() == 0.0
    assert ts[-2].item() == pytest.approx(0.002, rel=1e-4)
    assert torch.all(ts[:-1] > ts[1:])
    assert edm.nfe(5) == 9 and edm.nfe(5, "euler") == 5
    # exact denoiser of a point mass at 0.5 -> the ODE lands on it
    x = torch.randn(4, 3) * 20
    out = edm.sample(lambda x, s: torch.full_like(x, 0.5), x, steps=4)
    torch.testing.assert_close(out, torch.full_like(x, 0.5))
    # preconditioning identities
    s = torch.tensor([0.1, 1.0, 10.0])
    c_skip, c_out, c_in, _ = edm.precond(s)
    sd2 = edm.sigma_data**2
    torch.testing.assert_close(c_skip, sd2 / (s**2 + sd2))
    torch.testing.assert_close(c_skip + c_out**2 / sd2, torch.ones(3))  # D keeps unit variance split
    torch.testing.assert_close(c_out, s * edm.sigma_data / (s**2 + sd2).sqrt())
    torch.testing.assert_close(c_in**2 * (s**2 + 1), torch.ones(3))


def test_solvers_on_gaussian_data():
    """Data ~ N(mu, s^2) has an exact denoiser and an exact ODE endpoint to compare with.

    D(x; sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2); the probability-flow
    ODE from x_T ends at mu + (x_T - mu) s / sqrt(s^2 + sigma_max^2).
    """
    edm = EDM(sigma_min=0.01, sigma_max=10.0, rho=5.0)
    mu, s = 1.5, 0.6
    z = torch.randn(2000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = mu + (z * 10.0 - mu) * s / (s**2 + 100.0) ** 0.5

    def denoise(x, sig):
        return (s**2 * x + sig**2 * mu) / (s**2 + sig**2)

    err = {}
    for solver in ("euler", "heun", "dpm2m"):
        out = edm.sample(denoise, z * 10.0, steps=4, solver=solver)
        err[solver] = (out - exact).abs().mean().item()
    # second-order multistep at 4 calls beats first-order Euler at 4 calls by a wide margin
    assert err["dpm2m"] < 0.05 and err["dpm2m"] < err["euler"] / 3, err
    assert EDM.nfe(4, "dpm2m") == 4 and EDM.nfe(4, "heun") == 7
    with pytest.raises(ValueError):
        edm.sample(denoise, z, steps=2, solver="rk4")
    with pytest.raises(ValueError):
        FlagConfig.preset("cpu", sample_solver="rk4")


def test_antithetic_pairs(toy, monkeypatch):
    """Antithetic sampling negates the initial noise of the second half of the samples."""
    torch.manual_seed(0)
    m = FlagModel(tiny(), G, D)
    h = m.encode_slide(toy["feats"], toy["graph"]).detach()
    # an identity "solver" exposes the initial noise as the samples
    monkeypatch.setattr(m.edm, "sample", lambda denoise, x, *a, **k: x)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    out = sample_expression(m, h, samples=4, antithetic=True, return_samples=True, generator=gen(), temperature=1.0)
    x = out["samples"]
    torch.testing.assert_close(x[2:], -x[:2])
    torch.testing.assert_close(out["mean"], torch.zeros(S, G))
    torch.testing.assert_close(out["std"], x.std(0, unbiased=False))  # population std for pairs
    ind = sample_expression(m, h, samples=4, antithetic=False, return_samples=True, generator=gen(), temperature=1.0)
    assert not torch.allclose(ind["samples"][2:], -ind["samples"][:2])
    torch.testing.assert_close(ind["std"], ind["samples"].std(0, unbiased=True))
    # odd counts keep one unpaired sample; one sample is never paired
    odd = sample_expression(m, h, samples=3, antithetic=True, return_samples=True, generator=gen(), temperature=1.0)
    torch.testing.assert_close(odd["samples"][2], -odd["samples"][0])
    assert sample_expression(m, h, samples=1, antithetic=True, return_samples=True)["samples"].shape[0] == 1


def test_real_data_smoke(her2st_dir):
    """20 training steps on real HER2ST counts (random features)."""
    from napari_flag.data import load_sample

    sample = load_sample("her2st:C2")
    X = sample.adata.X
    X = np.asarray(X.todense() if hasattr(X, "todense") else X, dtype=np.float64)
    top = np.argsort(-X.mean(0))[:50]
    y = np.log2(1 + X[:, top])
    y = ((y - y.mean(0)) / np.maximum(y.std(0), 1e-6)).astype(np.float32)
    n = y.shape[0]
    coords = sample.coords_um if sample.coords_um is not None else sample.coords
    feats = np.random.default_rng(0).normal(size=(n, 32)).astype(np.float32)
    graph = build_spatial_graph(coords, feats)
    torch.manual_seed(0)
    m = FlagModel(tiny(), 50, 32)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    x0 = torch.from_numpy(y)
    for _ in range(20):
        out = m.loss(x0, m.encode_slide(feats, graph))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        assert torch.isfinite(out["loss"])
    res = sample_expression(m, m.encode_slide(feats, graph).detach(), steps=2, samples=2)
    assert res["mean"].shape == (n, 50) and torch.isfinite(res["mean"]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_blend_on_cuda(toy):
    """The fast sampler keeps tensors and generators on the model's device."""
    torch.manual_seed(0)
    m = FlagModel(tiny(), G, D).cuda()
    h = m.encode_slide(toy["feats"].cuda(), toy["graph"]).detach()
    gen = lambda: torch.Generator(device="cuda").manual_seed(1)  # noqa: E731
    a = sample_expression(m, h, return_samples=True, keep_samples=1, generator=gen())
    b = sample_expression(m, h, return_samples=True, keep_samples=1, generator=gen(), chunk_rows=10)
    assert a["mean"].is_cuda and a["samples"].shape == (1, S, G)
    torch.testing.assert_close(a["mean"], b["mean"])
    assert (a["std"] > 0).all()


def test_neighbour_matrix(toy):
    g = toy["graph"]
    w = g.neighbour_matrix().to_dense()
    assert w.shape == (S, S)
    assert torch.all(w.diagonal() == 0)  # a spot's own value is never its neighbour mean
    torch.testing.assert_close(w.sum(1), torch.ones(S))
    src, dst = g.edge_index
    assert torch.all(w[dst, src] > 0) and int((w > 0).sum()) == g.num_edges


def _train_joint(m, toy, steps, lr=1e-2, seed=0, batch=None):
    opt = torch.optim.AdamW(m.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    w = toy["graph"].neighbour_matrix()
    hist = []
    for i in range(steps):
        idx = None if batch is None else torch.randperm(S, generator=gen)[:batch]
        h = m.encode_slide(toy["feats"], toy["graph"])
        x0 = toy["x0"] if idx is None else toy["x0"][idx]
        out = m.loss(x0, h if idx is None else h[idx], generator=gen, neighbours=(w, toy["x0"], idx))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        hist.append(out["denoise"].item())
    return np.array(hist)


def test_joint_denoising(toy):
    """Joint mode: starts as the condition-only model, learns from neighbours' noisy values, samples the slide
    together (chunking-independent) and refuses to run without the neighbour matrix."""
    torch.manual_seed(0)
    base = FlagModel(tiny(P_mean=0.0, P_std=1.0), G, D)
    torch.manual_seed(0)
    joint = FlagModel(tiny(P_mean=0.0, P_std=1.0, joint=True), G, D)
    assert joint.is_joint and not base.is_joint
    h = joint.encode_slide(toy["feats"], toy["graph"]).detach()
    x = torch.randn(S, G)
    sig = torch.full((S, 1), 1.5)
    # zero-initialised neighbour embedding: at init the joint model is the condition-only one
    state = {k: v for k, v in joint.state_dict().items() if not k.startswith("nbr_embed.")}
    base.load_state_dict(state)
    torch.testing.assert_close(joint.denoise(x, sig, h, nbr=torch.randn(S, G)), base.denoise(x, sig, h))
    with pytest.raises(ValueError, match="neighbour"):
        joint.denoise(x, sig, h)
    with pytest.raises(ValueError, match="neighbours"):
        joint.loss(toy["x0"], h)
    with pytest.raises(ValueError, match="diffusion"):
        tiny(mode="regression", joint=True)

    hist = _train_joint(joint, toy, steps=60, batch=24)
    assert hist[-10:].mean() < 0.85 * hist[:10].mean()
    assert joint.nbr_embed.proj.weight.abs().sum() > 0  # the neighbour path is used
    w = toy["graph"].neighbour_matrix()
    h = joint.encode_slide(toy["feats"], toy["graph"]).detach()
    with pytest.raises(ValueError, match="neighbour matrix"):
        sample_expression(joint, h, steps=3, samples=2)
    a = sample_expression(joint, h, steps=3, samples=2, neighbours=w, return_samples=True,
                          generator=torch.Generator().manual_seed(3))
    calls = []
    b = sample_expression(joint, h, steps=3, samples=2, neighbours=w, return_samples=True,
                          generator=torch.Generator().manual_seed(3), chunk_rows=10,
                          progress=lambda d, t: calls.append((d, t)))
    assert len(calls) > 3 and calls[-1][0] == calls[-1][1]  # per chunk and call: cancellable mid-step
    assert a["mean"].shape == (S, G) and a["samples"].shape == (2, S, G)
    assert torch.isfinite(a["mean"]).all() and (a["std"] > 0).all()
    torch.testing.assert_close(a["mean"], b["mean"])
    torch.testing.assert_close(a["samples"], b["samples"])
    # the neighbours matter: a different neighbour matrix changes the samples
    c = sample_expression(joint, h, steps=3, samples=2, neighbours=torch.eye(S).to_sparse(), return_samples=True,
                          generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(a["samples"], c["samples"])


def test_graph_encoder_in_blocks_matches_whole(toy, monkeypatch):
    """Whole-slide inference runs the graph attention per block of target spots: same context H."""
    from napari_flag.model.flag import GraphLayer

    torch.manual_seed(0)
    m = FlagModel(tiny(graph_layers=2), G, D).eval()
    with torch.no_grad():
        whole = m.encode_slide(toy["feats"], toy["graph"])
        monkeypatch.setattr(GraphLayer, "CHUNK_EDGES", 10)
        monkeypatch.setattr(GraphLayer, "CHUNK_NODES", 7)
        # edges in any order: blocks are cut after sorting by target
        perm = torch.randperm(toy["graph"].num_edges)
        g = type(toy["graph"])(toy["graph"].edge_index[:, perm], toy["graph"].edge_attr[perm], S)
        blocks = m.encode_slide(toy["feats"], g)
    torch.testing.assert_close(blocks, whole, rtol=1e-5, atol=1e-5)


class _BlindAtTop(torch.nn.Module):
    """A denoiser whose network part ignores its input at sigma_max (what sharing the first call assumes)
    and uses it below; joint or not."""

    def __init__(self, real: FlagModel):
        super().__init__()
        self.real, self.cfg, self.edm, self.n_genes = real, real.cfg, real.edm, real.n_genes
        self.is_joint = real.is_joint

    @property
    def device(self):
        return self.real.device

    def denoise(self, x, sigma, h, guidance=1.0, nbr=None):
        if float(sigma[0]) == self.edm.sigma_max:  # c_skip x + c_out F(h): F blind to x
            c_skip = self.edm.precond(sigma)[0]
            return c_skip * x + self.real.denoise(torch.zeros_like(x), sigma, h, guidance,
                                                  nbr=None if nbr is None else torch.zeros_like(nbr))
        return self.real.denoise(x, sigma, h, guidance, nbr=nbr)


@pytest.mark.parametrize("joint", [False, True])
def test_shared_first_call(toy, joint):
    """The fast sampler's samples share their call at sigma_max: one call fewer per extra sample, and the
    very same draws when the network is blind to its input there."""
    torch.manual_seed(0)
    m = FlagModel(tiny(joint=joint), G, D)
    _train_joint(m, toy, steps=5) if joint else _train(m, toy, steps=5)
    h = m.encode_slide(toy["feats"], toy["graph"]).detach()
    kw = dict(neighbours=toy["graph"].neighbour_matrix() if joint else None, return_samples=True, chunk_rows=20)
    blind = _BlindAtTop(m)
    rows = []
    real = blind.denoise
    blind.denoise = lambda x, *a, **k: rows.append(x.shape[0]) or real(x, *a, **k)
    shared = sample_expression(blind, h, share_first=True, generator=torch.Generator().manual_seed(2), **kw)
    assert sum(rows) == 5 * S  # 1 shared call + 2 samples x 2 calls
    rows.clear()
    each = sample_expression(blind, h, share_first=False, generator=torch.Generator().manual_seed(2), **kw)
    assert sum(rows) == 6 * S
    for k in ("mean", "std", "samples"):
        torch.testing.assert_close(shared[k], each[k])
    assert calls_per_spot(4, "dpm2m", 2, True, True) == 5 and calls_per_spot(4, "dpm2m", 2, True) == 6
    assert calls_per_spot(4, "dpm2m", 8, False, True) == 32  # the plain mean makes every call
    # the real network does look at its input at sigma_max: sharing is then an approximation, not a no-op
    a = sample_expression(m, h, share_first=True, generator=torch.Generator().manual_seed(2), **kw)
    b = sample_expression(m, h, share_first=False, generator=torch.Generator().manual_seed(2), **kw)
    assert not torch.allclose(a["samples"], b["samples"])


def test_training_noise_share_at_sigma_max():
    edm = EDM(P_max=0.25)
    s = edm.sample_sigma(20000, torch.Generator().manual_seed(0))
    top = (s == edm.sigma_max).float().mean().item()
    assert abs(top - 0.25) < 0.02
    rest = s[s != edm.sigma_max].log()
    assert abs(rest.mean().item() - edm.P_mean) < 0.05 and abs(rest.std().item() - edm.P_std) < 0.05
    # P_max = 0 draws exactly EDM's log-normal (same stream as before the option existed)
    torch.testing.assert_close(EDM(P_max=0.0).sample_sigma(100, torch.Generator().manual_seed(1)),
                               (torch.randn(100, generator=torch.Generator().manual_seed(1)) * EDM.P_std
                                + EDM.P_mean).exp())
    assert EDM.from_config(FlagConfig(noise=NoiseConfig(P_max=0.3))).P_max == 0.3
    assert EDM() == EDM.from_config(NoiseConfig())  # one source of defaults


# a checkpoint's model_config as written before the parts: one flat dict (the bundled model's
# keys), with the key an even older version wrote (align_dim)
OLD_FLAT = {
    "mode": "diffusion", "graph": True, "align": True, "feat_dim_proj": 128, "feat_dropout": 0.1, "cond_dim": 64,
    "graph_kind": "transformer", "graph_layers": 2, "graph_heads": 4, "graph_dropout": 0.0, "depth": 3, "width": 32,
    "heads": 1, "mlp_ratio": 2.0, "value_fourier": 16, "dropout": 0.0, "joint": True, "align_block": 2,
    "align_hidden": [128], "lambda_align": 0.5, "sigma_min": 0.01, "sigma_max": 10.0, "sigma_data": 1.0,
    "P_mean": -0.5, "P_std": 1.2, "rho": 5.0, "P_max": 0.25, "regression_sigma": 1.0, "cond_dropout": 0.0,
    "guidance": 1.0, "sample_solver": "dpm2m", "sample_steps": 4, "sample_count": 2, "sample_mean": "blend",
    "sample_mean_like": 6, "sample_share_first": True, "sample_temperature": 0.7, "sample_antithetic": False,
    "preset_name": "cpu",
}


def test_stored_configs_migrate_old_keys_and_name_unknown_ones():
    cfg = FlagConfig.preset("cpu").to_dict()
    assert FlagConfig.from_dict({**cfg, "align_dim": 64}) == FlagConfig.from_dict(cfg)  # an older version's key
    less = {**cfg, "sampler": {k: v for k, v in cfg["sampler"].items() if k != "share_first"}}  # added since
    assert FlagConfig.from_dict(less).sampler.share_first == SamplerConfig().share_first
    with pytest.raises(ValueError, match="'warp_drive'"):
        FlagConfig.from_dict({**cfg, "warp_drive": 1})
    with pytest.raises(ValueError, match="'sampler.warp_drive'"):
        FlagConfig.from_dict({**cfg, "sampler": {**cfg["sampler"], "warp_drive": 1}})


def test_old_flat_checkpoint_config_migrates_to_the_parts():
    """Every key of a flat model_config lands in its part, by name; align_dim is listed as no longer stored."""
    old = {**OLD_FLAT, "depth": 4, "P_max": 0.1, "sample_count": 3, "sample_temperature": 0.9, "guidance": 1.5,
           "cond_dropout": 0.1, "align_dim": 64}
    cfg = FlagConfig.from_dict(old)
    assert (cfg.network.depth, cfg.network.cond_dropout, cfg.network.align_hidden) == (4, 0.1, (128,))
    assert (cfg.noise.P_max, cfg.noise.sigma_max) == (0.1, 10.0)
    assert (cfg.sampler.samples, cfg.sampler.temperature, cfg.sampler.guidance) == (3, 0.9, 1.5)
    # nothing dropped: every flat key but the listed legacy one reads back from the parts
    for key, value in old.items():
        if key in LEGACY_KEYS:
            continue
        if key == "preset_name":
            assert cfg.preset_name == value
            continue
        part, name = FLAT_KEYS[key]
        got = getattr(getattr(cfg, part), name)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    # the old flat dict and its nested rewrite are the same config, and the rewrite is the new layout
    assert FlagConfig.from_dict(cfg.to_dict()) == cfg
    assert set(cfg.to_dict()) == {"network", "noise", "sampler", "preset_name"}
    with pytest.raises(ValueError, match="'sample_temprature'.*'sample_temperature'"):
        FlagConfig.from_dict({**OLD_FLAT, "sample_temprature": 0.5})


def test_config_dict_round_trip():
    """to_dict is plain JSON data, nested by part; from_dict gives the same config back, for both presets."""
    for cfg in (FlagConfig(), FlagConfig.preset("paper"),
                FlagConfig.preset("cpu", depth=4, align_hidden=(16, 8), sigma_max=20.0, sample_mean="samples",
                                  guidance=2.0, preset_name="mine")):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert d == cfg.to_dict()
        back = FlagConfig.from_dict(d)
        assert back == cfg and back.to_dict() == d
        assert isinstance(back.network.align_hidden, tuple)
    parts = FlagConfig.preset("cpu", depth=4).to_dict()
    assert parts["network"]["depth"] == 4 and parts["sampler"]["samples"] == 2 and parts["noise"]["P_max"] == 0.25


def test_flat_keys_route_to_their_part():
    """Flat keys (YAML model sections, model.key=value) reach the part that owns them; nested parts work too."""
    cfg = FlagConfig.preset("cpu", sample_temperature=0.5, joint=False, P_max=0.1, heads=2, sample_count=3,
                            guidance=1.5, cond_dropout=0.2, regression_sigma=0.5)
    assert (cfg.network.joint, cfg.network.heads, cfg.network.cond_dropout) == (False, 2, 0.2)
    assert (cfg.noise.P_max, cfg.noise.regression_sigma) == (0.1, 0.5)
    assert (cfg.sampler.temperature, cfg.sampler.samples, cfg.sampler.guidance) == (0.5, 3, 1.5)
    assert cfg.network == NetworkConfig(joint=False, heads=2, cond_dropout=0.2)  # nothing else changed
    assert FlagConfig.preset("cpu", sampler={"temperature": 0.5}, network={"heads": 2}) == \
        FlagConfig.preset("cpu", sample_temperature=0.5, heads=2)
    assert route({"sample_mean_like": 8, "rho": 6.0, "depth": 2}) == \
        {"network": {"depth": 2}, "noise": {"rho": 6.0}, "sampler": {"mean_like": 8}}
    # every flat key a pre-split config had is routed (a field's flat key: its name, or sample_<...>)
    assert set(FLAT_KEYS) == set(OLD_FLAT) - {"preset_name"}
    # replace takes the same keys, nested mappings and whole parts
    new = cfg.replace(sample_steps=8, network={"depth": 2}, noise=NoiseConfig(rho=6.0))
    assert (new.sampler.steps, new.network.depth, new.network.heads, new.noise.rho, new.noise.P_max) == \
        (8, 2, 2, 6.0, 0.25)
    # presets: the paper's sizes, then the overrides
    paper = FlagConfig.preset("paper", heads=4, sample_temperature=0.7)
    assert (paper.network.width, paper.network.heads, paper.sampler.temperature, paper.sampler.steps) == \
        (384, 4, 0.7, 16)


@pytest.mark.parametrize("changes, key", [
    ({"warp_drive": 1}, "'warp_drive'"),
    ({"sample_temprature": 0.7}, "'sample_temprature'"),
    ({"temperature": 0.7}, "'temperature'"),  # a sampler field is reached by its flat key or sampler.<name>
    ({"sampler": {"sample_temperature": 0.7}}, "'sampler.sample_temperature'"),
    ({"network": {"warp": 1}}, "'network.warp'"),
])
def test_unknown_key_is_one_line_naming_it(changes, key):
    with pytest.raises(ValueError) as err:
        FlagConfig.preset("cpu", **changes)
    text = str(err.value)
    assert key in text and "\n" not in text
    with pytest.raises(ValueError, match=key):
        FlagConfig().replace(**changes)


def test_one_field_given_two_values_is_an_error():
    with pytest.raises(ValueError, match="given twice"):
        FlagConfig.preset("cpu", sample_count=2, sampler={"samples": 3})
    assert FlagConfig.preset("cpu", sample_count=3, sampler={"samples": 3}).sampler.samples == 3


def test_sampler_defaults_have_one_source():
    """sample_expression's settings, the model's defaults and EDM's schedule come from the config's parts."""
    assert EDM().sigma_max == NoiseConfig().sigma_max and EDM().P_max == NoiseConfig().P_max
    cfg = FlagConfig()
    assert cfg.sampler == SamplerConfig()
    assert cfg.replace(sample_temperature=0.5).sampler == SamplerConfig(temperature=0.5)
    with pytest.raises(ValueError, match="'warp'"):
        SamplerConfig().replace(warp=1)
    with pytest.raises(ValueError):
        SamplerConfig(steps=0)


def test_model_sampler_is_the_default_of_sample_expression(toy):
    """A call's keywords change the model's sampler for that call; set_sampler changes the model's own."""
    torch.manual_seed(0)
    m = FlagModel(tiny(), G, D)
    h = m.encode_slide(toy["feats"], toy["graph"]).detach()
    def gen():
        return torch.Generator().manual_seed(3)

    by_call = sample_expression(m, h, temperature=0.3, steps=2, generator=gen())
    assert m.cfg.sampler.temperature == 0.7  # the call changed nothing
    m.set_sampler(temperature=0.3, steps=2)
    assert m.cfg.sampler == SamplerConfig(temperature=0.3, steps=2) and m.cfg.network == tiny().network
    torch.testing.assert_close(sample_expression(m, h, generator=gen())["mean"], by_call["mean"], rtol=0, atol=0)
    same = sample_expression(m, h, m.cfg.sampler.replace(temperature=0.7), generator=gen())
    torch.testing.assert_close(same["mean"], sample_expression(m, h, temperature=0.7, generator=gen())["mean"])
    with pytest.raises(ValueError, match="'temprature'"):
        sample_expression(m, h, temprature=0.3)
