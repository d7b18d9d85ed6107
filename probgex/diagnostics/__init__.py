"""Posterior predictive checks and calibration diagnostics: `check(fit, heldout)` -> Report."""

from probgex.diagnostics.arviz import to_datatree
from probgex.diagnostics.check import check
from probgex.diagnostics.pit import genes_inside_band, simultaneous_band, uniformity
from probgex.diagnostics.report import Report

__all__ = ["Report", "check", "genes_inside_band", "simultaneous_band", "to_datatree", "uniformity"]
