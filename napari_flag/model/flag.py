"""FLAG: a graph-conditioned diffusion transformer over gene tokens.

Three parts, as in the paper:

1. ``SlideEncoder``: visual features -> per-spot context ``H_spatial`` with a
   few graph-attention layers over the spatial kNN graph (edge features:
   distance weight and visual cosine similarity).  Runs once per slide; the
   graph is a *condition*, never a diffusion target.
2. A DiT over the G gene tokens of each spot (token = gene identity embedding +
   embedding of the noisy value); noise level and ``H_spatial`` modulate every
   block through adaLN-Zero.  One scalar out per token.
3. GFM alignment (training only): hidden states after block ``align_block``
   are projected to the prior's width and pulled towards a frozen per-gene
   embedding table with a negative cosine loss.

The model works in per-gene standardised units; the caller standardises
targets and de-standardises predictions.
"""
from __future__ import annotations

import math
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import FlagConfig, NetworkConfig
from .diffusion import EDM, timestep_features

__all__ = ["FlagModel"]


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # x (B, T, W); shift/scale (B, W): one modulation per spot, shared by its tokens
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class ValueEmbed(nn.Module):
    """Scalar value -> token vector via fixed log-spaced Fourier features + a linear map.

    Fourier features let a single linear layer represent sharp functions of the
    value (a plain ``Linear(1, W)`` can only scale one direction).
    """

    def __init__(self, width: int, n_freq: int):
        super().__init__()
        self.register_buffer(
            "freqs", 2 * math.pi * torch.logspace(-2, 3, n_freq, base=2.0), persistent=False
        )
        self.proj = nn.Linear(2 * n_freq + 1, width)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        a = v[..., None] * self.freqs
        return self.proj(torch.cat([v[..., None], a.sin(), a.cos()], dim=-1))


class NoiseEmbed(nn.Module):
    def __init__(self, width: int, freq_dim: int = 64):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(c_noise, self.freq_dim))


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, w))


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated (adaLN-Zero) by the spot condition."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float = 0.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, width)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = torch.addcmul(x, g1[:, None], self.attn(_modulate(self.norm1(x), sh1, sc1)))
        return torch.addcmul(x, g2[:, None], self.mlp(_modulate(self.norm2(x), sh2, sc2)))


class FinalLayer(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.out(_modulate(self.norm(x), shift, scale)).squeeze(-1)


class GraphLayer(nn.Module):
    """Residual graph attention (edge-aware) followed by a residual feed-forward."""

    def __init__(self, width: int, heads: int, kind: str, dropout: float):
        super().__init__()
        from torch_geometric.nn import GATv2Conv, TransformerConv

        self.kind = kind
        self.norm1 = nn.LayerNorm(width)
        if kind == "transformer":
            self.conv = TransformerConv(
                width, width // heads, heads=heads, edge_dim=2, dropout=dropout, root_weight=True
            )
        else:
            self.conv = GATv2Conv(
                width, width // heads, heads=heads, edge_dim=2, dropout=dropout, add_self_loops=True
            )
        self.norm2 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    # Above this many edges, inference runs the attention per block of target
    # spots: the per-edge queries, keys, values and messages (E x width each)
    # are then bounded by the block instead of growing with the slide (a
    # whole-slide graph's edges held ~25 kB per spot at once).
    CHUNK_EDGES = 1 << 16
    CHUNK_NODES = 4096

    def forward(self, x, edge_index, edge_attr):
        xn = self.norm1(x)
        if self.kind == "transformer" and not torch.is_grad_enabled() and edge_index.shape[1] > self.CHUNK_EDGES:
            x = x + self._conv_blocks(xn, edge_index, edge_attr)
        else:
            x = x + self.conv(xn, edge_index, edge_attr)
        return x + self.ffn(self.norm2(x))

    def _conv_blocks(self, xn, edge_index, edge_attr):
        """``conv`` over all spots, one block of target spots at a time (the same result)."""
        dst = edge_index[1]
        order = torch.argsort(dst, stable=True)
        ei, ea, dst = edge_index[:, order], edge_attr[order], dst[order]
        out = torch.empty_like(xn)
        n = xn.shape[0]
        for a in range(0, n, self.CHUNK_NODES):
            b = min(a + self.CHUNK_NODES, n)
            lo, hi = (int(i) for i in torch.searchsorted(dst, torch.tensor([a, b], device=dst.device)))
            local = torch.stack([ei[0, lo:hi], ei[1, lo:hi] - a])
            out[a:b] = self.conv((xn, xn[a:b]), local, ea[lo:hi])
        return out


class SlideEncoder(nn.Module):
    """Visual features (+ spatial graph) -> H_spatial (S, cond_dim)."""

    def __init__(self, cfg: NetworkConfig, feat_dim: int):
        super().__init__()
        p = cfg.feat_dim_proj
        self.inp = nn.Sequential(
            nn.Dropout(cfg.feat_dropout), nn.Linear(feat_dim, p), nn.GELU(), nn.Linear(p, p)
        )
        self.layers = nn.ModuleList(
            GraphLayer(p, cfg.graph_heads, cfg.graph_kind, cfg.graph_dropout)
            for _ in range(cfg.graph_layers if cfg.graph else 0)
        )
        self.out = nn.Sequential(nn.LayerNorm(p), nn.Linear(p, cfg.cond_dim))

    def forward(self, feats: torch.Tensor, graph=None) -> torch.Tensor:
        x = self.inp(feats)
        if len(self.layers):
            if graph is None:  # no neighbours known: every spot is on its own
                ei = torch.zeros(2, 0, dtype=torch.long, device=x.device)
                ea = torch.zeros(0, 2, dtype=x.dtype, device=x.device)
            else:
                ei, ea = graph.edge_index.to(x.device), graph.edge_attr.to(x.device, x.dtype)
            for layer in self.layers:
                x = layer(x, ei, ea)
        return self.out(x)


class FlagModel(nn.Module):
    """FLAG denoiser (``cfg.network.mode == "diffusion"``) or its regression ablation.

    Parameters
    ----------
    cfg : the model's settings (its network's sizes and switches, noise schedule and sampler defaults).
    n_genes : G, the panel size (one token per gene).
    feat_dim : width of the visual features.
    gene_prior : optional frozen (G, d_e) gene embedding table for the alignment loss.
    prior_mask : optional (G,) bool, False for genes missing from the table.
    """

    def __init__(
        self,
        cfg: FlagConfig,
        n_genes: int,
        feat_dim: int,
        gene_prior: torch.Tensor | None = None,
        prior_mask: torch.Tensor | None = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.n_genes = int(n_genes)
        self.feat_dim = int(feat_dim)
        self.edm = EDM.from_config(cfg)
        net = cfg.network
        w = net.width

        # Feature standardisation, set by the trainer from training slides
        # (set_feature_stats) and saved with the weights.
        self.register_buffer("feat_mean", torch.zeros(feat_dim))
        self.register_buffer("feat_std", torch.ones(feat_dim))

        self.encoder = SlideEncoder(net, feat_dim)
        self.gene_embed = nn.Embedding(self.n_genes, w)
        nn.init.normal_(self.gene_embed.weight, std=0.5)
        self.value_embed = ValueEmbed(w, net.value_fourier)
        # joint denoising: the neighbours' noisy value of each gene, embedded like its own
        self.nbr_embed = ValueEmbed(w, net.value_fourier) if net.joint else None
        self.noise_embed = NoiseEmbed(w)
        self.cond_proj = nn.Sequential(nn.Linear(net.cond_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.null_cond = nn.Parameter(torch.zeros(net.cond_dim)) if net.cond_dropout > 0 else None
        self.blocks = nn.ModuleList(
            DiTBlock(w, net.heads, net.mlp_ratio, net.dropout) for _ in range(net.depth)
        )
        self.final = FinalLayer(w)

        # GFM alignment: only built when it can be used.
        self.projector = None
        self.align_dim: int | None = None
        if net.align and gene_prior is not None:
            prior = _tensor(gene_prior, torch.float32)
            if prior.shape[0] != self.n_genes:
                raise ValueError(f"gene_prior has {prior.shape[0]} rows, expected {self.n_genes}")
            mask = (
                torch.ones(self.n_genes, dtype=torch.bool, device=prior.device)
                if prior_mask is None
                else _tensor(prior_mask, torch.bool).to(prior.device)
            )
            mask = mask & (prior.norm(dim=1) > 0)  # all-zero rows mark missing genes too
            if prior.is_meta or bool(mask.any()):
                # the prior's width is a property of the table, not of the config: kept here
                self.align_dim = int(prior.shape[1])
                dims = [w, *net.align_hidden, self.align_dim]
                mods: list[nn.Module] = []
                for i in range(len(dims) - 1):
                    mods.append(nn.Linear(dims[i], dims[i + 1]))
                    if i < len(dims) - 2:
                        mods.append(nn.SiLU())
                self.projector = nn.Sequential(*mods)
                self.register_buffer("gene_prior", F.normalize(prior, dim=1))
                self.register_buffer("prior_mask", mask)
        self._init_weights()

    # ------------------------------------------------------------------ utils
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # adaLN-Zero: every block starts as the identity and the output at 0
        # (the D(x) = c_skip x prior in diffusion mode, the gene mean in regression).
        zero = [b.ada[1] for b in self.blocks] + [self.final.ada[1], self.final.out]
        if self.nbr_embed is not None:  # joint starts as the condition-only model
            zero.append(self.nbr_embed.proj)
        for lin in zero:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def set_sampler(self, **changes) -> None:
        """Change the sampler defaults this model predicts with (:class:`~napari_flag.model.config.SamplerConfig`
        fields, e.g. ``temperature=0.7``); the network and its weights are unchanged."""
        self.cfg = self.cfg.replace(sampler=self.cfg.sampler.replace(**changes))

    @property
    def device(self) -> torch.device:
        return self.gene_embed.weight.device

    @property
    def has_graph(self) -> bool:
        return len(self.encoder.layers) > 0

    @property
    def is_joint(self) -> bool:
        return self.nbr_embed is not None

    @property
    def has_align(self) -> bool:
        return self.projector is not None

    def n_params(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    _ALIGN_KEYS = ("projector.", "gene_prior", "prior_mask")

    def load_weights(self, state: dict) -> None:
        """``load_state_dict`` that tolerates alignment-only entries.

        The projector and prior table matter for training only, so a model
        built without a prior (inference) loads a checkpoint trained with one.
        """
        if not self.has_align:
            state = {k: v for k, v in state.items() if not k.startswith(self._ALIGN_KEYS)}
        self.load_state_dict(state, strict=True)

    @torch.no_grad()
    def set_feature_stats(self, feats) -> None:
        """Standardise visual features with the training set's mean/std (stored in the weights)."""
        f = _tensor(feats, torch.float32).to(self.feat_mean.device)
        self.feat_mean.copy_(f.mean(0))
        self.feat_std.copy_(f.std(0).clamp_min(1e-6))

    # ---------------------------------------------------------------- encoder
    def encode_slide(self, feats, graph=None) -> torch.Tensor:
        """Per-spot context ``H`` (S, cond_dim) from visual features and the spatial graph.

        Called once per slide; the result conditions every denoising step.
        """
        f = torch.as_tensor(feats, dtype=torch.float32, device=self.device)
        f = (f - self.feat_mean) / self.feat_std
        return self.encoder(f, graph if self.has_graph else None)

    # ------------------------------------------------------------------ trunk
    def _trunk(self, v: torch.Tensor, c_noise: torch.Tensor, h: torch.Tensor, keep_hidden: bool = False,
               nbr: torch.Tensor | None = None):
        """Raw network F: token values ``v`` (B, G), ``c_noise`` (B,), context ``h`` (B, cond);
        ``nbr`` (B, G): the neighbours' scaled noisy values (joint denoising only)."""
        c = self.noise_embed(c_noise) + self.cond_proj(h)
        x = self.gene_embed.weight[None] + self.value_embed(v)
        if self.nbr_embed is not None:
            if nbr is None:
                raise ValueError("a joint-denoising model needs the neighbours' noisy values (nbr)")
            x = x + self.nbr_embed(nbr)
        hidden = None
        for i, blk in enumerate(self.blocks):
            x = blk(x, c)
            if keep_hidden and i + 1 == self.cfg.network.align_block:
                hidden = x
        return self.final(x, c), hidden

    def _drop_cond(self, h: torch.Tensor, generator=None) -> torch.Tensor:
        if self.null_cond is None or not self.training:
            return h
        drop = torch.rand(h.shape[0], 1, generator=generator, device=_dev(generator, h)).to(h.device)
        return torch.where(drop < self.cfg.network.cond_dropout, self.null_cond.expand_as(h), h)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, h: torch.Tensor, guidance: float = 1.0,
                nbr: torch.Tensor | None = None):
        """EDM denoiser D(x; sigma | h) with ``sigma`` (B, 1); optional classifier-free guidance.

        ``nbr`` (B, G), joint denoising only: ``W x`` at the same ``sigma``, the
        graph-neighbour mean of the noisy values (scaled by ``c_in`` like ``x``).
        """
        c_skip, c_out, c_in, c_noise = self.edm.precond(sigma)
        nb = None if nbr is None else c_in * nbr
        if guidance != 1.0 and self.null_cond is not None:
            n = x.shape[0]
            out, _ = self._trunk(
                (c_in * x).repeat(2, 1), c_noise[:, 0].repeat(2), torch.cat([h, self.null_cond.expand_as(h)]),
                nbr=None if nb is None else nb.repeat(2, 1),
            )
            out = out[n:] + guidance * (out[:n] - out[n:])
        else:
            out, _ = self._trunk(c_in * x, c_noise[:, 0], h, nbr=nb)
        return c_skip * x + c_out * out

    def predict_regression(self, h: torch.Tensor) -> torch.Tensor:
        """Deterministic prediction of the regression ablation (zero values, fixed noise level)."""
        b = h.shape[0]
        v = torch.zeros(b, self.n_genes, device=h.device, dtype=h.dtype)
        c_noise = torch.full((b,), math.log(self.cfg.noise.regression_sigma) / 4, device=h.device)
        return self._trunk(v, c_noise, h)[0]

    # ------------------------------------------------------------------- loss
    def loss(self, x0: torch.Tensor, h: torch.Tensor, generator=None, neighbours=None) -> dict[str, torch.Tensor]:
        """Training loss on standardised targets ``x0`` (B, G) with contexts ``h`` (B, cond_dim).

        ``neighbours`` (joint denoising only): ``(W, x0_all, idx)`` with the
        slide's sparse (S, S) :meth:`~napari_flag.graph.SpatialGraph.neighbour_matrix`,
        its targets (S, G) and the batch's rows ``idx`` (B,) (None: all).  The
        whole slide is noised with one noise field and every batch spot's
        neighbours at that spot's noise level, as in sampling, where all spots
        share each step's sigma.

        Returns ``loss = denoise + lambda_align * align``; ``align`` is 0 when
        alignment is off or no prior table was given.
        """
        x0 = x0.to(self.device, torch.float32)
        h = self._drop_cond(h, generator)
        b = x0.shape[0]
        if self.cfg.network.mode == "regression":
            v = torch.zeros_like(x0)
            c_noise = torch.full((b,), math.log(self.cfg.noise.regression_sigma) / 4, device=x0.device)
            out, hidden = self._trunk(v, c_noise, h, keep_hidden=self.has_align)
            denoise = F.mse_loss(out, x0)
        else:
            sigma = self.edm.sample_sigma(b, generator, x0.device)[:, None]
            nbr = None
            if self.is_joint:
                if neighbours is None:
                    raise ValueError("a joint-denoising model trains on whole slides: pass neighbours=(W, x0_all, idx)")
                w, x_all, idx = neighbours
                x_all = x_all.to(x0.device, torch.float32)
                eps = torch.randn(x_all.shape, generator=generator, device=_dev(generator, x0)).to(x0.device)
                wx, we = torch.sparse.mm(w, x_all), torch.sparse.mm(w, eps)
                if idx is not None:
                    eps, wx, we = eps[idx], wx[idx], we[idx]
                noise, nbr = eps, wx + sigma * we  # W (x0 + sigma eps): neighbours at this spot's sigma
            else:
                noise = torch.randn(x0.shape, generator=generator, device=_dev(generator, x0)).to(x0.device)
            x, c_in, c_noise, target = self.edm.training_target(x0, noise, sigma)
            out, hidden = self._trunk(c_in * x, c_noise[:, 0], h, keep_hidden=self.has_align,
                                      nbr=None if nbr is None else c_in * nbr)
            denoise = F.mse_loss(out, target)
        align = self._align_loss(hidden) if self.has_align else denoise.new_zeros(())
        return {"loss": denoise + self.cfg.network.lambda_align * align, "denoise": denoise, "align": align}

    def _align_loss(self, hidden: torch.Tensor) -> torch.Tensor:
        idx = self.prior_mask.nonzero(as_tuple=True)[0]
        z = F.normalize(self.projector(hidden[:, idx]), dim=-1)  # (B, G', d_e)
        return -(z * self.gene_prior[idx][None]).sum(-1).mean()


def _tensor(x, dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _dev(generator, like: torch.Tensor):
    return generator.device if generator is not None else like.device
