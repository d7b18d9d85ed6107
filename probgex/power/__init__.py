"""Power and sample size: a DESeq2-style NB GLM test vectorized in JAX (`de_test` on real data),
experiments simulated from a fitted model, and power curves carrying the fit's uncertainty."""

from probgex.power.de import de_test

__all__ = ["de_test"]
