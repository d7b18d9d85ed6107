"""Resuming an interrupted fit (`Model.fit(resume=)`, `probgex fit --resume`): the resumed fit ends with
the parameters and history of the uninterrupted one, bit for bit on CPU (the same jitted programs on the
same inputs: the optimizer state is restored exactly and each epoch's shuffle and SVI keys depend only on
(seed, epoch)); a checkpoint of another model, data or options is refused; a finished fit is returned."""

import dataclasses
import warnings

import anndata as ad
import jax
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import probgex as pg
from probgex.cli import app
from probgex.fit import Fit

runner = CliRunner()
# 80 observations (8 held out), 5 steps per epoch; patience 6: the learning rate is cut at 3 stale epochs
# (twice), then the fit stops early (when this was written: cuts after epochs 6 and 9, the epoch-8
# checkpoint 1 epoch stale with 1 cut left, the stop after epoch 21 of 30)
OPTIONS = dict(seed=0, max_epochs=30, patience=6, batch_size=16, progress=False)
EVERY, KILLED_AT = 4, 12  # checkpoints every 4 epochs; killed while writing the epoch-12 one: epoch 8 remains


def _adata(n: int = 80, g: int = 12, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    group = np.array(["a", "b", "c"])[np.arange(n) % 3]
    mu = rng.uniform(5, 40, g) * np.exp(rng.normal(0, 0.5, (3, g)))[np.searchsorted(["a", "b", "c"], group)]
    x = rng.poisson(rng.gamma(10.0, mu / 10.0)).astype(np.float32)
    obs = pd.DataFrame({"group": group}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))


def _params_equal(a: dict, b: dict) -> bool:
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    return ta == tb and all(pa == pb and np.array_equal(np.asarray(x), np.asarray(y))
                            for (pa, x), (pb, y) in zip(la, lb, strict=True))


def _killed_at(epoch: int):
    """A Fit.save that dies (KeyboardInterrupt, as Ctrl-C) when asked to write the checkpoint of `epoch`."""
    real = Fit.save

    def save(self, where, **kw):
        if len(self.history.train) == epoch:
            raise KeyboardInterrupt
        return real(self, where, **kw)

    return save


def _load(path) -> Fit:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pg.IncompleteFitWarning)
        return pg.load(path)


@pytest.fixture(scope="module")
def uninterrupted():
    return pg.Model("~ group").fit(_adata(), **OPTIONS)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The checkpoint an interrupted fit left (a copy per test: resuming replaces it)."""
    path = tmp_path_factory.mktemp("resume") / "m.npz"
    mp = pytest.MonkeyPatch()
    mp.setattr(Fit, "save", _killed_at(KILLED_AT))
    try:
        with pytest.raises(KeyboardInterrupt):
            pg.Model("~ group").fit(_adata(), checkpoint_path=path, checkpoint_every=EVERY, **OPTIONS)
    finally:
        mp.undo()
    return path.read_bytes()


@pytest.fixture
def ckpt(interrupted, tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(interrupted)
    return path


def test_resumed_fit_equals_the_uninterrupted_one(uninterrupted, ckpt, monkeypatch):
    before = _load(ckpt)
    snap = before.snapshot
    assert before.finished is False and snap.epoch == KILLED_AT - EVERY == len(before.history.train)
    # the state carried over is not trivial: mid-plateau or between learning-rate cuts, and the fit then
    # stops early, so the counters decide where it ends
    assert snap.stale > 0 or 0 < snap.reductions_left < 2
    assert len(uninterrupted.history.train) < OPTIONS["max_epochs"]
    written, real = [], Fit.save
    monkeypatch.setattr(Fit, "save", lambda self, where, **kw: (written.append(len(self.history.train)),
                                                                 real(self, where, **kw))[1])
    # checkpoint_every does not change the result: every epoch's checkpoint shows where the fit went on
    resumed = pg.Model("~ group").fit(_adata(), resume=ckpt, **OPTIONS | {"checkpoint_every": 1})
    monkeypatch.undo()
    assert written[0] == snap.epoch + 1 and written[-1] == len(uninterrupted.history.train)
    assert _params_equal(resumed.params, uninterrupted.params)
    assert resumed.history == uninterrupted.history  # every epoch's losses, the best epoch
    assert list(resumed.heldout_obs) == list(uninterrupted.heldout_obs)
    final = pg.load(ckpt)  # the checkpoint file now holds the finished model, without the loop state
    assert final.finished is True and final.snapshot is None and _params_equal(final.params, uninterrupted.params)


def test_resuming_a_finished_fit_returns_it(uninterrupted, tmp_path):
    path = tmp_path / "done.npz"
    uninterrupted.save(path)
    before = path.read_bytes()
    with pytest.warns(UserWarning, match="finished fit .* nothing to resume"):
        again = pg.Model("~ group").fit(_adata(), resume=path, **OPTIONS)
    assert _params_equal(again.params, uninterrupted.params) and again.history == uninterrupted.history
    assert path.read_bytes() == before


@pytest.mark.parametrize("change, error, words", [
    (dict(model=pg.Model("~ 1")), pg.SpecError, "formula: '~ group' there, '~ 1' here"),
    (dict(model=pg.Model("~ group", likelihood="poisson")), pg.SpecError, "likelihood"),
    (dict(seed=1), pg.SpecError, "seed=0"),
    (dict(max_epochs=40), pg.SpecError, "max_epochs=30, this fit has max_epochs=40"),
    (dict(batch_size=32), pg.SpecError, "batch_size=16"),
    (dict(holdout=0.2), pg.SpecError, "held-out observations differ"),
    (dict(data=_adata()[:, :10]), pg.DataError, "12 genes, this data has 10"),
    (dict(data=_adata()[:70]), pg.DataError, "80 observations, this data has 70"),
    (dict(data=_adata(seed=1)), pg.DataError, "counts differ"),
])
def test_a_checkpoint_of_another_fit_is_refused(ckpt, change, error, words):
    """Another model, seed, option or data than the checkpoint's: a clear error, the checkpoint untouched."""
    before = ckpt.read_bytes()
    model = change.pop("model", pg.Model("~ group"))
    data = change.pop("data", _adata())
    with pytest.raises(error, match="cannot resume from") as e:
        model.fit(data, resume=ckpt, **(OPTIONS | change))
    assert words in str(e.value) and "\n" not in str(e.value)
    assert ckpt.read_bytes() == before


def test_a_checkpoint_without_loop_state_is_refused(ckpt, tmp_path):
    """A periodic checkpoint of an earlier probgex (no optimizer state) cannot be resumed."""
    old = dataclasses.replace(_load(ckpt), snapshot=None)  # a Fit is a frozen value
    old.save(tmp_path / "old.npz")
    with pytest.raises(pg.ModelFileError, match="without the optimizer state"):
        pg.Model("~ group").fit(_adata(), resume=tmp_path / "old.npz", **OPTIONS)


# ------------------------------------------------------------------ the shell
def _run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    return res, " ".join(res.output.split())


def test_shell_resume(tmp_path, monkeypatch):
    """`probgex fit ... --resume` after a kill continues from the checkpoint (its next checkpoint is the
    epoch-20 one, not epoch 10 again) and ends where the uninterrupted fit does; with nothing to resume it
    says so (exit 2); on the finished model it says there is nothing to resume (exit 0)."""
    data = tmp_path / "data.h5ad"
    _adata().write_h5ad(data)  # the shapes of the fits above: their compiled programs are reused
    args = ("fit", data, "--formula", "~ group", "--max-epochs", "24", "--batch-size", "16")
    out = tmp_path / "m.npz"
    res, msg = _run(*args, "--out", out, "--resume")
    assert res.exit_code == 2 and "no checkpoint" in msg and "without --resume" in msg
    monkeypatch.setattr(Fit, "save", _killed_at(20))  # checkpoints every 10 epochs: epoch 10 remains
    res, _ = _run(*args, "--out", out)
    assert res.exit_code not in (0, 2)  # Ctrl-C (typer exits 130)
    monkeypatch.undo()
    assert len(_load(out).history.train) == 10
    written, real = [], Fit.save
    monkeypatch.setattr(Fit, "save", lambda self, where, **kw: (written.append(len(self.history.train)),
                                                                 real(self, where, **kw))[1])
    res, msg = _run(*args, "--out", out, "--resume")
    monkeypatch.undo()
    assert res.exit_code == 0 and f"resumed from {out}" in msg, res.output
    assert written == [20, 24]  # the epoch-20 checkpoint and the finished model
    full = pg.Model("~ group").fit(_adata(), seed=0, max_epochs=24, batch_size=16, progress=False)
    resumed = pg.load(out)
    assert _params_equal(resumed.params, full.params) and resumed.history == full.history
    res, msg = _run(*args, "--out", out, "--resume")
    assert res.exit_code == 0 and "nothing to resume" in msg
    res, msg = _run(*args, "--out", out, "--resume", "--seed", "1")
    assert res.exit_code == 2 and "seed=0" in msg and "Traceback" not in res.output


@pytest.mark.slow
def test_learned_prior_fit_resumes_its_vae_stage_then_trains_the_prior(tmp_path, monkeypatch):
    """A Flow-prior cVAE killed in its VAE stage, and one whose VAE stage finished before the prior stage,
    both end with the uninterrupted fit's parameters (the prior stage reruns from its start)."""
    model = pg.Model("~ group", latent=pg.latent.Flow(dim=2, net={"hidden": (8,)}, training={"max_steps": 50}))
    options = dict(seed=0, max_epochs=6, batch_size=16, progress=False)
    full = model.fit(_adata(), **options)
    path = tmp_path / "m.npz"
    monkeypatch.setattr(Fit, "save", _killed_at(4))
    with pytest.raises(KeyboardInterrupt):
        model.fit(_adata(), checkpoint_path=path, checkpoint_every=2, **options)
    monkeypatch.undo()
    resumed = model.fit(_adata(), resume=path, **options)
    assert resumed.learned_prior_status == "trained" and _params_equal(resumed.params, full.params)
    full_fit = pg.load(path)  # the VAE stage of the finished fit, as a prior-stage interruption leaves it
    vae = dataclasses.replace(full_fit, params={k: v for k, v in full_fit.params.items() if k != "learned_prior"},
                              prior_history=None)  # a Fit is a frozen value
    vae.save(tmp_path / "vae.npz")
    again = model.fit(_adata(), resume=tmp_path / "vae.npz", **options)
    assert _params_equal(again.params, full.params) and again.history == full.history
