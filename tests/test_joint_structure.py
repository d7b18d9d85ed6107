"""The new helper of benchmarks/joint_structure.py (issue 13 item 3): its energy distance."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
from scipy.stats import energy_distance as scipy_energy

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _module():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("joint_structure", BENCH / "joint_structure.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_energy_distance_matches_scipy_in_one_dimension_and_is_zero_for_identical_samples():
    js = _module()
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(150, 1)), rng.normal(0.7, 1.5, size=(120, 1))
    # scipy's is the square root of 2E|A-B| - E|A-A'| - E|B-B'| (empirical distributions, V-statistics)
    assert np.isclose(np.sqrt(js.energy_distance(a, b)), scipy_energy(a[:, 0], b[:, 0]), rtol=1e-10)
    assert abs(js.energy_distance(a, a)) < 1e-12
    c = rng.normal(size=(100, 5))
    assert js.energy_distance(c, c + 2.0) > js.energy_distance(c, rng.normal(size=(100, 5))) > 0
