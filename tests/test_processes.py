"""Several processes (`probgex fit --coordinator --num-processes --process-id`, JAX's distributed runtime
with gloo CPU collectives): two processes on 127.0.0.1, each reading its own part of every global batch,
end with the losses of the one-process fit of the same global batches (float32 rounding), and only
process 0 writes the model file."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

ROOT = Path(__file__).parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_follow_one(tmp_path):
    a = ad.read_h5ad(ROOT / "tests" / "data" / "kang_muscat.h5ad")
    rows = np.sort(np.random.default_rng(1).choice(a.n_obs, 400, replace=False))
    a[rows, :80].copy().write_h5ad(tmp_path / "d.h5ad")
    common = ["-m", "probgex.cli", "fit", str(tmp_path / "d.h5ad"), "--formula", "~ group_id",
              "--library", "observed", "--max-epochs", "4", "--batch-size", "64", "--holdout", "0.1"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, *common, "--out", str(tmp_path / f"m{i}.npz"),
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert (tmp_path / "m0.npz").is_file() and not (tmp_path / "m1.npz").exists()  # process 0 writes
    single = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one.npz")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    info = {}
    for name in ("m0", "one"):
        r = subprocess.run([sys.executable, "-m", "probgex.cli", "info", str(tmp_path / f"{name}.npz")], env=env,
                           capture_output=True, text=True, timeout=300)
        info[name] = json.loads(r.stdout)
    assert info["m0"]["fit_info"]["processes"] == 2 and info["m0"]["fit_info"]["devices"] == 2
    import probgex as pg

    two, one = pg.load(tmp_path / "m0.npz"), pg.load(tmp_path / "one.npz")
    np.testing.assert_allclose(two.history.train, one.history.train, rtol=2e-5)
    np.testing.assert_allclose(two.history.heldout, one.history.heldout, rtol=2e-5)
    np.testing.assert_allclose(two.params["gp_loc"], one.params["gp_loc"], rtol=1e-3, atol=1e-4)
