"""Per-spot discriminative baselines on the same frozen visual features.

``RidgeBaseline`` follows the HEST-Benchmark linear probe (standardise features,
PCA to 256, ridge with alpha = 100 / (n_components * n_targets)), with one
deliberate change: an intercept is fitted.  HEST fits none, which leaves PCC
unchanged but inflates MSE/MAE on uncentred log-count targets.

``MLPBaseline`` is a small two-layer perceptron, the "regression without the
graph or the generative head" reference.

Both save to a dict of tensors and plain Python values (``state_dict``), which
``torch.load(weights_only=True)`` and JSON+npz can both carry; no pickle.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["RidgeBaseline", "MLPBaseline"]


def _stack(parts: Sequence, name: str) -> np.ndarray:
    if isinstance(parts, np.ndarray) or isinstance(parts, torch.Tensor):
        parts = [parts]
    arrs = [np.asarray(p.detach().cpu() if isinstance(p, torch.Tensor) else p, dtype=np.float64) for p in parts]
    if not arrs:
        raise ValueError(f"{name}: empty list")
    return np.concatenate(arrs, axis=0)


def _arr(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


class RidgeBaseline:
    """HEST-style linear probe.

    alpha : ``"hest"`` (default: 100 / (n_components * n_targets), i.e. almost
        unregularised once there are hundreds of genes) or a float.
    n_pca : components kept (capped by the number of training spots / features).
    """

    name = "ridge"

    def __init__(self, alpha: float | str = "hest", n_pca: int = 256, seed: int = 0):
        self.alpha = alpha
        self.n_pca = int(n_pca)
        self.seed = int(seed)
        self._p: dict[str, np.ndarray] | None = None

    def fit(self, feats_list, targets_list) -> "RidgeBaseline":
        from sklearn.decomposition import PCA
        from sklearn.linear_model import Ridge

        x, y = _stack(feats_list, "feats"), _stack(targets_list, "targets")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{x.shape[0]} feature rows but {y.shape[0]} target rows")
        mu, sd = x.mean(0), x.std(0)
        sd[sd < 1e-8] = 1.0
        xs = (x - mu) / sd
        k = max(1, min(self.n_pca, x.shape[0] - 1, x.shape[1]))
        pca = PCA(n_components=k, random_state=self.seed).fit(xs)
        z = pca.transform(xs)
        alpha = 100.0 / (k * y.shape[1]) if self.alpha == "hest" else float(self.alpha)
        reg = Ridge(alpha=alpha, fit_intercept=True).fit(z, y)
        # Fold standardisation, PCA and ridge into one affine map: pred = x @ W + b.
        proj = pca.components_.T / sd[:, None]  # (D, k)
        w = proj @ reg.coef_.T  # (D, G)
        b = reg.intercept_ - (mu / sd + pca.mean_) @ pca.components_.T @ reg.coef_.T
        self._p = {"W": w.astype(np.float32), "b": np.asarray(b, dtype=np.float32)}
        self.alpha_ = alpha
        return self

    def predict(self, feats) -> np.ndarray:
        if self._p is None:
            raise RuntimeError("RidgeBaseline is not fitted")
        x = _arr(feats).astype(np.float64)
        return (x @ self._p["W"] + self._p["b"]).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        if self._p is None:
            raise RuntimeError("RidgeBaseline is not fitted")
        return {
            "kind": self.name,
            "alpha": self.alpha if isinstance(self.alpha, str) else float(self.alpha),
            "alpha_": float(self.alpha_),
            "n_pca": self.n_pca,
            "seed": self.seed,
            "W": _t(self._p["W"]),
            "b": _t(self._p["b"]),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "RidgeBaseline":
        m = cls(alpha=state["alpha"], n_pca=int(state["n_pca"]), seed=int(state.get("seed", 0)))
        m._p = {"W": _arr(state["W"]).astype(np.float32), "b": _arr(state["b"]).astype(np.float32)}
        m.alpha_ = float(state.get("alpha_", np.nan))
        return m


class _MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d_out)
        )

    def forward(self, x):
        return self.net(x)


class MLPBaseline:
    """Two-layer perceptron on standardised features, MSE on per-gene standardised targets."""

    name = "mlp"

    def __init__(
        self,
        hidden: int = 256,
        epochs: int = 100,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        dropout: float = 0.2,
        batch_size: int = 256,
        seed: int = 0,
    ):
        self.hidden, self.epochs, self.lr = int(hidden), int(epochs), float(lr)
        self.weight_decay, self.dropout = float(weight_decay), float(dropout)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self._net: _MLP | None = None
        self._stats: dict[str, np.ndarray] = {}

    def fit(self, feats_list, targets_list) -> "MLPBaseline":
        x, y = _stack(feats_list, "feats"), _stack(targets_list, "targets")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{x.shape[0]} feature rows but {y.shape[0]} target rows")
        xm, xs = x.mean(0), x.std(0)
        ym, ys = y.mean(0), y.std(0)
        xs[xs < 1e-8] = 1.0
        ys[ys < 1e-8] = 1.0
        self._stats = {k: v.astype(np.float32) for k, v in dict(xm=xm, xs=xs, ym=ym, ys=ys).items()}
        xt, yt = _t((x - xm) / xs), _t((y - ym) / ys)
        g = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _MLP(x.shape[1], self.hidden, y.shape[1], self.dropout)
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            n = xt.shape[0]
            net.train()
            for _ in range(self.epochs):
                perm = torch.randperm(n, generator=g)
                for a in range(0, n, self.batch_size):
                    i = perm[a : a + self.batch_size]
                    loss = nn.functional.mse_loss(net(xt[i]), yt[i])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        net.eval()
        self._net = net
        return self

    @torch.no_grad()
    def predict(self, feats) -> np.ndarray:
        if self._net is None:
            raise RuntimeError("MLPBaseline is not fitted")
        s = self._stats
        x = _t((_arr(feats).astype(np.float32) - s["xm"]) / s["xs"])
        return (self._net(x).numpy() * s["ys"] + s["ym"]).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        if self._net is None:
            raise RuntimeError("MLPBaseline is not fitted")
        hp = dict(
            hidden=self.hidden, epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
            dropout=self.dropout, batch_size=self.batch_size, seed=self.seed,
        )
        d_in = int(self._stats["xm"].shape[0])
        d_out = int(self._stats["ym"].shape[0])
        state: dict[str, Any] = {"kind": self.name, "d_in": d_in, "d_out": d_out, **hp}
        state.update({f"stat.{k}": _t(v) for k, v in self._stats.items()})
        state.update({f"net.{k}": v.detach().clone() for k, v in self._net.state_dict().items()})
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "MLPBaseline":
        hp = {k: state[k] for k in ("hidden", "epochs", "lr", "weight_decay", "dropout", "batch_size", "seed")}
        m = cls(**hp)
        m._stats = {k[5:]: _arr(v).astype(np.float32) for k, v in state.items() if k.startswith("stat.")}
        net = _MLP(int(state["d_in"]), m.hidden, int(state["d_out"]), m.dropout)
        net.load_state_dict({k[4:]: torch.as_tensor(_arr(v)) for k, v in state.items() if k.startswith("net.")})
        net.eval()
        m._net = net
        return m
