"""Power and sample size: a DESeq2-style NB GLM test vectorized in JAX (`de_test` on real data),
experiments simulated from a fitted model (`simulate`; per-gene fold changes from the fit's posterior,
optionally shrunk across genes by empirical Bayes: `effects`), and power curves carrying the fit's
uncertainty (`curve`, `power_grid`, `plot_curve`). Single-cell studies are tested and planned at the
subject level: `pseudobulk` sums each subject's cells, `pseudobulk_curve` gives power in subjects per
group at a chosen number of cells per subject. What a small pilot's choice of replicates leaves unknown
(`replicates`: the jackknife of its dispersion level, `dispersion_level`) enters the intervals through
`curve(..., pilot=)` or `truth_from_pilot(..., key=)`, the plug-in of the pilot's own estimates."""

from probgex.power.curve import curve, plot_curve, power_grid
from probgex.power.de import de_test
from probgex.power.plugin import truth_from_pilot
from probgex.power.pseudobulk import pseudobulk
from probgex.power.replicates import dispersion_level
from probgex.power.simulate import Truth, truth_from_fit
from probgex.power.subjects import pseudobulk_curve

__all__ = ["Truth", "curve", "de_test", "dispersion_level", "plot_curve", "power_grid", "pseudobulk",
           "pseudobulk_curve", "truth_from_fit", "truth_from_pilot"]
