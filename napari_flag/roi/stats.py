"""What regions express and how two differ: region averages per joint sample, summarised.

Every statistic here is computed per posterior sample first (the average of
a region's spots in that sample), then summarised over samples, so the
spatial correlation between spots is in the intervals.  A region's average
is a mean over many spots, close to normal across samples, so intervals and
probabilities use the samples' mean and standard deviation (normal
quantiles): with a few dozen samples that is far steadier between seeds than
the samples' own 2.5% and 97.5% quantiles (benchmarks/results/regions.json).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import FlagInputError

__all__ = ["CREDIBLE", "DE_COLUMNS", "SUMMARY_COLUMNS", "RegionResult"]

SUMMARY_COLUMNS = ["region", "gene", "n_spots", "mean", "lower", "upper"]
DE_COLUMNS = ["gene", "difference", "lower", "upper", "prob_greater"]
#: the credible level of every interval
CREDIBLE = 0.95


def _z() -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + CREDIBLE / 2.0))


def _interval(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The central :data:`CREDIBLE` interval of a normal with the samples' mean and standard deviation."""
    m, sd = x.mean(axis=axis), x.std(axis=axis, ddof=1)
    return m - _z() * sd, m + _z() * sd


def _prob_positive(d: np.ndarray) -> np.ndarray:
    """P(d > 0) per column under the same normal approximation (0 or 1 when the samples do not vary)."""
    from scipy.stats import norm

    m, sd = d.mean(axis=0), d.std(axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = norm.cdf(m / sd)
    return np.where(sd > 0, p, (m > 0).astype(float))


@dataclass
class RegionResult:
    """Region averages of a prediction: ``averages[r]`` is ``(n_draws, genes)``, region ``r``'s average
    expression in each joint posterior sample; ``measured[r]`` the measured average (when the slide has
    counts); ``membership[r]`` its spots; ``slide_mean``/``slide_sd`` the prediction's per-gene mean and
    spread over all spots (for ranking a region's genes)."""

    names: list[str]
    genes: list[str]
    membership: np.ndarray  # (R, S) bool
    averages: np.ndarray  # (R, n_draws, G)
    slide_mean: np.ndarray  # (G,)
    slide_sd: np.ndarray  # (G,)
    measured: np.ndarray | None = None  # (R, G), NaN for genes the slide lacks
    regions: list = field(default_factory=list)  # the Region objects (geometry), for export
    info: dict = field(default_factory=dict)  # n_draws, seed, temperature, checkpoint, seconds
    pair: tuple[str, str] | None = None  # the comparison asked for, if any

    @property
    def de(self):
        """:meth:`compare` of the pair asked for (``None`` when none was)."""
        return None if self.pair is None else self.compare(*self.pair)

    def index(self, name: str) -> int:
        """Position of region ``name``; an unknown name is an error listing the known ones."""
        if name not in self.names:
            raise FlagInputError(f"unknown region {name!r}; the regions are: {', '.join(self.names)}")
        return self.names.index(name)

    @property
    def n_spots(self) -> np.ndarray:
        return self.membership.sum(axis=1)

    def summary(self):
        """Long table ``region, gene, n_spots, mean, lower, upper`` (the 95% interval of the region's average)."""
        import pandas as pd

        lo, hi = _interval(self.averages, axis=1)
        mean = self.averages.mean(axis=1)
        R, G = mean.shape
        df = pd.DataFrame({
            "region": np.repeat(self.names, G), "gene": np.tile(self.genes, R),
            "n_spots": np.repeat(self.n_spots, G), "mean": mean.ravel(), "lower": lo.ravel(), "upper": hi.ravel(),
        })
        if self.measured is not None:
            df["measured"] = self.measured.ravel()
        return df

    def compare(self, a: str, b: str):
        """Genes by ``|difference|``: ``difference`` = average(a) - average(b) (posterior mean), its 95%
        interval and ``prob_greater`` = P(average(a) > average(b)), plus ``measured_difference`` when known."""
        import pandas as pd

        ia, ib = self.index(a), self.index(b)
        if ia == ib:
            raise FlagInputError(f"compare: {a!r} with itself; choose two different regions")
        d = self.averages[ia] - self.averages[ib]  # (n_draws, G): the difference in each joint sample
        lo, hi = _interval(d)
        df = pd.DataFrame({"gene": self.genes, "difference": d.mean(axis=0), "lower": lo, "upper": hi,
                           "prob_greater": _prob_positive(d)})
        if self.measured is not None:
            df["measured_difference"] = self.measured[ia] - self.measured[ib]
        order = np.argsort(-np.abs(df["difference"].to_numpy()), kind="stable")
        return df.iloc[order].reset_index(drop=True)

    def top_genes(self, name: str, n: int = 10) -> list[str]:
        """The genes most above their slide-wide level in region ``name`` (in slide standard deviations)."""
        r = self.index(name)
        z = (self.averages[r].mean(axis=0) - self.slide_mean) / np.maximum(self.slide_sd, 1e-8)
        return [self.genes[j] for j in np.argsort(-z, kind="stable")[:n]]

    def measurements(self, genes: list[str] | None = None) -> dict[str, dict[str, float]]:
        """``{region: {measurement: value}}`` as QuPath shows them: spot count, then each gene's mean and
        interval (``genes``: default the region's top 10)."""
        out = {}
        for r, name in enumerate(self.names):
            keep = genes if genes is not None else self.top_genes(name)
            lo, hi = _interval(self.averages[r])
            m = {"FLAG spots": float(self.n_spots[r])}
            for g in keep:
                j = self.genes.index(g)
                m.update({f"FLAG {g} mean": float(self.averages[r, :, j].mean()),
                          f"FLAG {g} lower": float(lo[j]), f"FLAG {g} upper": float(hi[j])})
            out[name] = m
        return out
