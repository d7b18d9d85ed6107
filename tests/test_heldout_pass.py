"""The held-out pass of the fit loop as one jitted call over index blocks (`svi.make_evaluate`): every
block's loss equals `svi.evaluate` on that block built batch by batch on the host, and the fit's held-out
history is the same whichever route the held-out rows take (on the device beside the training rows, or
in windows put on the device one at a time)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probgex.data import from_anndata
from probgex.inference.minibatch import high_bound, high_per_row, make_batch
from probgex.inference.svi import TrainConfig, _to_device, epoch_blocks, fit_svi, make_evaluate, make_svi
from probgex.models.story import Dims, build_story
from probgex.spec import ModelSpec

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def kang():
    a = ad.read_h5ad(DATA / "kang_muscat.h5ad")
    return a[np.sort(np.random.default_rng(0).choice(a.n_obs, 600, replace=False))].copy()


def _story(adata, kind="nb"):
    spec = ModelSpec.create("~ group_id", kind, 4, encoder=(32,), decoder=(32,))
    data = from_anndata(adata, spec.formula, likelihood=kind, empty="keep")
    lib = np.log(data.library_size)
    dims = Dims(data.n_design, data.n_genes, 1, 0, float(lib.mean()), float(lib.std()), 0)
    return build_story(spec, dims, np.zeros(data.n_genes, np.float32)), data


def _counted_heldout_windows(monkeypatch) -> list[int]:
    """The rows of every held-out window the fit loop reads from now on (`window.in_order_windows`), listed."""
    from probgex.inference import svi as svi_mod

    windows: list[int] = []
    real = svi_mod.in_order_windows

    def counted(*args, **kwargs):
        for w in real(*args, **kwargs):
            windows.append(len(w[0]))
            yield w

    monkeypatch.setattr(svi_mod, "in_order_windows", counted)
    return windows


@pytest.mark.parametrize("kind,split", [("nb", False), ("nb", True), ("zinb", True)])
def test_block_losses_equal_evaluate_on_host_built_batches(kang, kind, split):
    """Each block's loss from the one jitted call is `svi.evaluate` of the same rows built on the host
    (`make_batch`, zero-padded and masked, the per-batch ELBO scale), the last block partly padded; with
    the count split, the device's entry lists give the host list's loss."""
    story, data = _story(kang, kind)
    svi = make_svi(story, TrainConfig(max_epochs=1, progress=False))
    rows = np.random.default_rng(1).choice(data.n_obs, 300, replace=False)  # 3 blocks of 128, the last 44 rows
    size = high_bound(high_per_row(data, rows), 128) if split else None
    state = svi.init(jax.random.PRNGKey(0), make_batch(data, rows[:128], 128, 1.0, high_size=size))
    state = svi.update(state, make_batch(data, rows[:128], 128, 2.0, high_size=size))[0]  # not the initial params
    dev = _to_device(data, rows, high=split)
    blocks = epoch_blocks(np.arange(len(rows)), 128, n_total=900)
    got = np.asarray(make_evaluate(svi, size)(state, dev, *(jnp.asarray(b) for b in blocks)))
    want = [float(svi.evaluate(state, make_batch(data, rows[s : s + 128], 128, 900 / len(rows[s : s + 128]),
                                                 high_size=size, row_ids=np.arange(s, min(s + 128, 300)))))
            for s in range(0, 300, 128)]
    assert got.shape == (3,) and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=2e-5)
    assert abs(want[2] / want[0] - 1) > 1e-3  # the blocks differ: a wrong block order would show


def test_the_heldout_history_is_the_same_on_the_device_and_in_windows(kang, monkeypatch):
    """A budget that holds the training rows but not the held-out rows beside them sends the held-out pass
    through windows put one at a time (`window.in_order_windows`, several windows here); the training is the
    same program on the same rows, so the train history is identical and the held-out one equal to float
    rounding."""
    windows = _counted_heldout_windows(monkeypatch)
    story, data = _story(kang)
    order = np.random.default_rng(0).permutation(data.n_obs)
    train, held = order[:300], order[300:]  # 300 held-out rows: windows of 16 x 8 rows, 3 of them
    per_row = data.n_genes * 4
    hist = {}
    for name, budget, device in (("device", 10**12, "auto"), ("windows", 320 * per_row, "auto")):
        cfg = TrainConfig(max_epochs=3, batch_size=8, patience=10, progress=False, checkpoint_every=0,
                          device_data=device, device_budget_bytes=budget)
        hist[name] = fit_svi(story, data, train, held, cfg, seed=3)[1]
        if name == "device":
            assert windows == []  # held on the device: no window read
    assert windows == [128, 128, 44] * 3  # every held-out row once an epoch, in windows
    assert hist["windows"].train == hist["device"].train
    np.testing.assert_allclose(hist["windows"].heldout, hist["device"].heldout, rtol=1e-6)
    assert len(hist["device"].heldout) == 3 and hist["device"].heldout[-1] < hist["device"].heldout[0]


def test_a_streamed_fit_keeps_few_heldout_rows_on_the_device_with_the_same_history(kang, tmp_path, monkeypatch):
    """Counts streamed from an .h5ad: the held-out rows, few (HELD_DEVICE_BYTES), are read once and kept on
    the device; above that they stream in windows each epoch. The same training windows either way, so the
    train history is identical and the held-out one equal to float rounding; the windows route reads the
    held-out rows every epoch, the kept route never."""
    import probgex as pg
    from probgex.inference import svi as svi_mod

    path = tmp_path / "k.h5ad"
    kang.write_h5ad(path)
    windows = _counted_heldout_windows(monkeypatch)
    model = pg.Model("~ group_id", likelihood="nb", latent=pg.latent.Gaussian(dim=2), encoder=(8,), decoder=(8,),
                     library="observed")
    opts = dict(seed=2, max_epochs=3, patience=9, batch_size=8, progress=False, memory_budget=0)
    kept = model.fit(path, **opts)
    assert kept.fit_info["streamed"] and windows == []
    monkeypatch.setattr(svi_mod, "HELD_DEVICE_BYTES", 0)
    streamed = model.fit(path, **opts)
    assert len(windows) == 3 * -(-len(kept.heldout_obs) // 128)  # every epoch, windows of 16 batches of 8
    assert streamed.history.train == kept.history.train
    np.testing.assert_allclose(streamed.history.heldout, kept.history.heldout, rtol=1e-6)
