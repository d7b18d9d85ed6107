"""The report's one-line verdict. It rests on the PIT band test, not on the coverage table: interval
coverage looks at a few central intervals and can be close to nominal while the PIT ECDF (the whole
predictive distribution) is far outside its simultaneous band."""

from __future__ import annotations

import numpy as np

GENES_PASSING_MIN = 0.9  # each gene's own 99% band: about 99% of genes pass under calibration
MARGINAL = 1.25  # an excursion below 1.25 band half-widths is called marginal in the text (status unchanged)
COVERAGE_CLOSE = 0.02  # a coverage table within 2 points of nominal at every level "looks fine"


def pit_shape(u: np.ndarray) -> str:
    """What the PIT values say about the predictive distribution, in words (empty when nothing stands out)."""
    u = np.ravel(u)
    tails = float(np.mean((u < 0.05) | (u > 0.95)))
    below = float(np.mean(u < 0.5))
    # (share, above this: the first reading, below this: the second)
    readings = [
        (tails, 0.12, 0.08,
         f"{tails:.0%} of held-out counts fall in the outer 10% of their predictive distributions "
         "(10% expected): the predictions are too narrow (overconfident)",
         f"only {tails:.0%} of held-out counts fall in the outer 10% of their predictive "
         "distributions (10% expected): the predictions are too wide"),
        (below, 0.55, 0.45,
         f"{below:.0%} of held-out counts lie below their predictive median (50% expected): "
         "the model over-predicts",
         f"{1 - below:.0%} of held-out counts lie above their predictive median (50% expected): "
         "the model under-predicts"),
    ]
    words = [high_text if share > high else low_text
             for share, high, low, high_text, low_text in readings if share > high or share < low]
    return "; ".join(words) + ("." if words else "")


def verdict(pit_pooled: dict, fraction_genes_passing: float, programs: dict, u: np.ndarray,
            coverage: dict[str, float] | None = None) -> dict:
    """{"status": "calibrated" | "partly calibrated" | "miscalibrated", "text": one or two sentences}.

    miscalibrated: the pooled PIT ECDF leaves its simultaneous band. partly calibrated: it stays inside,
    but fewer than GENES_PASSING_MIN of the genes pass their own band, or a gene-program sum fails its band.
    """
    band = f"{pit_pooled['prob']:.0%}"
    if not pit_pooled["inside_band"]:
        shape = pit_shape(u)
        close = coverage is not None and max(abs(c - float(a)) for a, c in coverage.items()) <= COVERAGE_CLOSE
        note = ("The coverage table is close to nominal, which does not contradict this: coverage looks at a few "
                "central intervals, the band at the whole predictive distribution." if close else "")
        return {"status": "miscalibrated",
                "text": f"Not calibrated{', marginally' if pit_pooled['max_excursion'] < MARGINAL else ''}: the "
                        f"PIT ECDF of all held-out counts leaves its {band} simultaneous band "
                        f"(largest excursion {pit_pooled['max_excursion']:.1f} band half-widths; inside the band "
                        f"is at most 1). {shape[:1].upper() + shape[1:] + ' ' if shape else ''}{note}".strip()}
    problems = []
    if fraction_genes_passing < GENES_PASSING_MIN:
        problems.append(f"{1 - fraction_genes_passing:.0%} of genes leave their own {band} PIT band "
                        f"(about {1 - pit_pooled['prob']:.0%} expected)")
    failing = [k for k, v in programs.items() if not v["uniformity"]["inside_band"]]
    if "correlated" in failing:
        problems.append("the sum over the correlated gene program is not calibrated (the model misses correlation "
                        "between these genes: a latent factor or a missing covariate)")
    random = [k for k in failing if k != "correlated"]
    if random:
        n_random = sum(k != "correlated" for k in programs)
        problems.append(f"sums over {len(random)} of {n_random} random gene sets are not calibrated (errors shared "
                        "between genes: library size, a missing covariate or parameter uncertainty)")
    if problems:
        return {"status": "partly calibrated",
                "text": f"Calibrated overall (the pooled PIT ECDF stays inside its {band} band), but "
                        + " and ".join(problems) + "."}
    return {"status": "calibrated",
            "text": f"Calibrated: the PIT ECDF of all held-out counts stays inside its {band} simultaneous band, "
                    f"{fraction_genes_passing:.0%} of genes pass their own band"
                    + (" and every gene-program sum passes its band." if programs else ".")}
