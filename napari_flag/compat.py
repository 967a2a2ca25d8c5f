"""Does a slide suit a model?  Checks to run before predicting, and to record after.

A model predicts its own gene panel from patches of a fixed physical size.
A slide can defeat it quietly: another species (symbols that never match),
a scan so coarse that a patch is a handful of pixels, an unknown pixel size,
no tissue.  :func:`check_compatibility` lists what it finds as
:class:`Issue` s; warnings let a run go on, errors should stop it
(:func:`raise_for_errors`).  ``[i.to_dict() for i in issues]`` is what goes
into ``uns['flag']['compatibility']``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import FlagInputError

__all__ = [
    "Issue",
    "check_compatibility",
    "raise_for_errors",
    "guess_species",
    "MIN_PATCH_PX",
    "MIN_GENE_SHARE",
]

#: a patch narrower than this many image pixels carries no morphology
MIN_PATCH_PX = 16
#: below this share of the model's genes measured, metrics cover too little of the panel
MIN_GENE_SHARE = 0.5
#: share of symbols in one style needed to name a species
_SPECIES_SHARE = 0.8

_HAS_LETTER = re.compile(r"[A-Za-z]")
_HUMAN_ORF = re.compile(r"^C[0-9XY]+orf[0-9]+$")


@dataclass(frozen=True)
class Issue:
    """One finding: a short ``code``, ``level`` "warning" or "error", a one-line ``message``."""

    code: str
    level: str
    message: str
    setting: str | None = None  # what the user can set to fix it (see FlagInputError)

    def __post_init__(self) -> None:
        if self.level not in ("warning", "error"):
            raise ValueError(f"level must be 'warning' or 'error', not {self.level!r}")

    @property
    def is_error(self) -> bool:
        return self.level == "error"

    def to_dict(self) -> dict:
        return {"code": self.code, "level": self.level, "message": self.message}


def guess_species(genes: Iterable[str]) -> str | None:
    """'human', 'mouse' or ``None``, from how the symbols are written.

    Ensembl ids tell it outright (``ENSG`` / ``ENSMUSG``).  Otherwise HGNC
    symbols are upper case (``ERBB2``, apart from ``C1orf112`` and kin) and
    MGI symbols capitalised (``Erbb2``, ``mt-Co1``); a species is named when at least 80% of the symbols that
    have letters follow its style.
    """
    genes = [str(g) for g in genes if _HAS_LETTER.search(str(g) or "")]
    if not genes:
        return None
    ens_h = sum(g.startswith("ENSG") for g in genes)
    ens_m = sum(g.startswith("ENSMUSG") for g in genes)
    if max(ens_h, ens_m) >= _SPECIES_SHARE * len(genes):
        return "human" if ens_h > ens_m else "mouse"
    human_style = [g == g.upper() or bool(_HUMAN_ORF.search(g)) for g in genes]  # C1orf112 is human
    upper = sum(human_style)
    capital = len(genes) - upper  # has lower-case letters: Erbb2, mt-Co1, 4930444P10Rik
    if upper >= _SPECIES_SHARE * len(genes):
        return "human"
    if capital >= _SPECIES_SHARE * len(genes):
        return "mouse"
    return None


def _pixel_issues(sample, patch_um: float, patch_px: int) -> list[Issue]:
    if sample.image is None:
        return [Issue("no_image", "error", "no H&E image; prediction needs one")]
    scale = float(sample.image.scale)  # image pixels per full-resolution pixel
    if not sample.pixel_size_um:
        d = float(sample.spot_diameter_px or 0.0)
        if d > 0:
            return [Issue(
                "pixel_size_unknown", "warning",
                f"pixel size unknown; patches sized from the spot diameter ({d * scale:.0f} px)",
            )]
        return [Issue("pixel_size_unknown", "error", "pixel size unknown", setting="pixel_size_um")]
    side = float(patch_um) / float(sample.pixel_size_um) * scale
    um_px = float(sample.pixel_size_um) / scale
    if side < MIN_PATCH_PX:
        return [Issue(
            "patch_too_small", "error",
            f"patch would be {side:.0f} px ({patch_um:g} um at {um_px:.3g} um/px); "
            f"the model needs at least {MIN_PATCH_PX} px: open a finer scan of this slide",
        )]
    if side < patch_px / 2:
        return [Issue(
            "coarse_image", "warning",
            f"coarse image: a {patch_um:g} um patch is {side:.0f} px ({um_px:.3g} um/px), "
            f"upsampled {patch_px / side:.1f}x to the model's {patch_px} px",
        )]
    return []


def check_compatibility(
    sample,
    genes: Sequence[str],
    patch_um: float,
    patch_px: int,
    tissue_fraction: float | None = None,
) -> list[Issue]:
    """What stands between ``sample`` and a model with panel ``genes`` and patch size.

    * gene share (slides with expression only): a warning when under half of
      the model's genes are measured on the slide;
    * species: a warning when the slide's symbols and the model's panel are
      written in different species' styles;
    * resolution: an error when a ``patch_um`` patch would be under 16 image
      pixels, a warning when it is upsampled more than 2x to ``patch_px`` or
      when the pixel size is unknown;
    * tissue: an error when ``tissue_fraction`` (of a tissue mask) is 0.
    """
    issues: list[Issue] = []
    genes = [str(g) for g in genes]
    slide_genes = [str(g) for g in sample.adata.var_names]
    if sample.has_counts and genes:
        have = set(slide_genes)
        n = sum(g in have for g in genes)
        if n < MIN_GENE_SHARE * len(genes):
            lower = {g.lower() for g in slide_genes}
            n_ci = sum(g.lower() in lower for g in genes)
            extra = f" ({n_ci} when case is ignored: another species' symbols?)" if n_ci > n else ""
            issues.append(Issue("gene_share", "warning", f"{n} of {len(genes)} model genes are measured here{extra}"))
    if slide_genes and genes:
        sp_slide, sp_model = guess_species(slide_genes), guess_species(genes)
        if sp_slide and sp_model and sp_slide != sp_model:
            issues.append(Issue(
                "species", "warning",
                f"the slide's genes look {sp_slide}, the model's panel {sp_model}",
            ))
    issues += _pixel_issues(sample, patch_um, patch_px)
    if tissue_fraction is not None and not tissue_fraction > 0:
        issues.append(Issue("no_tissue", "error", "no tissue found"))
    return issues


def raise_for_errors(issues: Iterable[Issue], source) -> None:
    """Stop on the first error: ``FlagInputError("<source>: <message>")``."""
    for i in issues:
        if i.is_error:
            raise FlagInputError(f"{source}: {i.message}", setting=i.setting)
