"""The pilot's own DESeq2-style estimates as the truth of the simulation (the powsimR / PROPER view),
optionally with the uncertainty of the pilot's dispersion level (`replicates`).

Per gene: the reference group's expected share of a library (from the pilot's mean share over the two
groups and the MLE log2 fold change), the MAP dispersion and the MLE log2 fold change of `de_test` on
the pilot. Every draw repeats these values, so without `key` the power interval is Monte Carlo error
only; with `key`, each draw's dispersions move together by the jackknife uncertainty of the pilot's
dispersion level. On bottomly's weak effects this plug-in predicted the realized recall within 0-5
points, where the GLM posterior over-predicted by 4-13 (benchmarks/README.md, power_validation).
"""

from __future__ import annotations

import numpy as np

from probgex.errors import DataError


def truth_from_pilot(pilot, contrast: tuple[str, str, str], n_draws: int = 16, *, key=None):
    """A `Truth` (with its per-gene log2 fold changes) from a two-group pilot's DESeq2-style estimates
    of `~ column` on the samples of the two contrasted levels; `key` (a PRNG key or an int seed) adds the pilot's
    dispersion-level uncertainty (`replicates.with_level_uncertainty`)."""
    from probgex.power.de import _check_contrast, de_test
    from probgex import rng as streams
    from probgex.power.simulate import Truth

    col, level, ref = _check_contrast(contrast, pilot.obs)
    if not isinstance(n_draws, int) or n_draws < 1:
        raise DataError(f"n_draws must be a positive integer, got {n_draws!r}")
    lab = pilot.obs[col].astype(str).to_numpy()
    pilot = pilot[(lab == ref) | (lab == level)]
    res = de_test(pilot, f"~ {col}", (col, level, ref))
    x = np.asarray(pilot.X.toarray() if hasattr(pilot.X, "toarray") else pilot.X, np.float64)
    share = (x / x.sum(1, keepdims=True)).mean(0)
    ok = res["dispersion"].notna().to_numpy() & (share > 0)
    l2 = res["log2FoldChange"].to_numpy()[ok]
    n_lev = int((pilot.obs[col].astype(str) == level).sum())
    # pooled mean share = (n_ref base + n_lev base 2^lfc) / N
    base = pilot.n_obs * share[ok] / (pilot.n_obs - n_lev + n_lev * 2.0**l2)
    truth = Truth.fixed(base, res["dispersion"].to_numpy()[ok], n_draws=n_draws,
                        genes=np.asarray(pilot.var_names)[ok], lfc=l2)
    if key is None:
        return truth
    from probgex.power.replicates import dispersion_level, with_level_uncertainty

    return with_level_uncertainty(truth, dispersion_level(pilot, f"~ {col}", (col, level, ref)), streams.host_rng(key, "dispersion_level"))
