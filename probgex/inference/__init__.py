"""Fitting by SVI, prediction, and model files."""
