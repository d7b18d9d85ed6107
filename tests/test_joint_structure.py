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


def test_train_cells_subsample_is_a_seeded_subset_without_replacement():
    import anndata as ad

    js = _module()
    a = ad.AnnData(np.arange(300, dtype=np.float32).reshape(100, 3))
    a.obs_names = [f"c{i}" for i in range(100)]
    assert js.subsample(a, None, 0) is a
    s0, s0b, s1 = js.subsample(a, 20, 0), js.subsample(a, 20, 0), js.subsample(a, 20, 1)
    assert s0.n_obs == 20 and s0.obs_names.is_unique and set(s0.obs_names) <= set(a.obs_names)
    assert list(s0.obs_names) == list(s0b.obs_names)  # same seed and size: same cells
    assert set(s0.obs_names) != set(s1.obs_names)  # another seed: another subset
    np.testing.assert_array_equal(s0.X, a[s0.obs_names].X)  # rows keep their counts
