"""The SVI fit loop: Adam with gradient clipping (optax), minibatches, held-out early stopping,
explicit seeds, a progress bar and periodic checkpoints from which a fit can be resumed.

The loop state is a NamedTuple updated by pure jitted functions (the optax pattern); the step is
compiled once (fixed batch shapes) and the host reads the losses back once per epoch, not per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import SVI, Trace_ELBO
from numpyro.optim import optax_to_numpyro
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from probgex import rng as streams
from probgex.data import CountData
from probgex.inference.minibatch import Minibatches, high_typical, listed
from probgex.inference.resume import Snapshot, flatten_opt_state, restore_opt_state
from probgex.models.batch import Batch, HighCounts


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Options of the fit loop."""

    max_epochs: int = 200
    batch_size: int = 128
    learning_rate: float = 1e-3
    clip_norm: float = 10.0
    patience: int = 10  # epochs without held-out improvement before stopping
    lr_reductions: int = 2  # times the learning rate is cut on a plateau (patience // 2 stale epochs)
    lr_factor: float = 0.2  # ... by this factor, before early stopping may end the fit
    checkpoint_every: int = 10  # epochs; 0 disables checkpoints
    progress: bool = True
    device_data: str = "auto"  # "auto": keep the training counts on the device when they fit the budget
    device_budget_bytes: int = 2**30
    # per-parameter multipliers of the Adam step, by NumPyro param name (e.g. {"log_theta": 10.0}): Adam
    # moves every parameter by about the learning rate per step, too slowly for a log-concentration that
    # has to travel several units while the networks need small steps
    param_step_scale: tuple[tuple[str, float], ...] = ()
    count_split: bool = True  # NB / ZINB cVAE: the lgamma terms of the objective only on entries >= 2

    def __post_init__(self):
        for name in ("max_epochs", "batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.device_data not in ("auto", "always", "never"):
            raise ValueError(f"device_data must be 'auto', 'always' or 'never', got {self.device_data!r}")
        if not (self.learning_rate > 0 and np.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")


class LoopState(NamedTuple):
    svi_state: object
    epoch: int
    best_loss: float
    best_params: dict
    stale: int  # epochs since the best held-out loss


class History(NamedTuple):
    """Negative ELBO per observation, up to the data constant sum_g log x_ng! (the training objective
    omits it; scores such as `Fit.log_predictive_density` include it)."""

    train: list[float]  # mean over the epoch's steps
    heldout: list[float]  # the same on the held-out observations (empty without a held-out split)
    best_epoch: int


def make_svi(story, config: TrainConfig) -> SVI:
    """SVI with Trace_ELBO and Adam after global-norm clipping; the learning rate lives in the optimizer
    state (optax.inject_hyperparams), so a plateau can lower it without recompiling."""
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)
    chain = [optax.clip_by_global_norm(config.clip_norm), adam]
    if config.param_step_scale:
        chain.append(_scale_steps(dict(config.param_step_scale)))
    optimizer = optax_to_numpyro(optax.chain(*chain))
    return SVI(story.model, story.guide, optimizer, loss=Trace_ELBO())


def _scale_steps(factors: dict[str, float]) -> optax.GradientTransformation:
    """Multiply the updates of the named top-level parameters by their factors."""

    def update(updates, state, params=None):
        return {k: jax.tree.map(lambda u, f=factors.get(k, 1.0): u * f, v) for k, v in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_learning_rate(svi_state, factor: float):
    """The same SVI state with the learning rate (of `make_svi`'s optimizer) multiplied by `factor`."""
    step, (params, (clip, adam, *rest)) = svi_state.optim_state
    hyper = dict(adam.hyperparams, learning_rate=adam.hyperparams["learning_rate"] * factor)
    return svi_state._replace(optim_state=(step, (params, (clip, adam._replace(hyperparams=hyper), *rest))))


class DeviceData(NamedTuple):
    """The training rows held on the device, gathered by index inside the jitted epoch."""

    x: jax.Array
    log_lib: jax.Array
    design: jax.Array
    group: jax.Array
    offset: jax.Array | None = None
    # the entries >= 2 per row, CSR-like (row r: positions high_ptr[r]:high_ptr[r + 1]), or None
    high_ptr: jax.Array | None = None
    high_gene: jax.Array | None = None
    high_count: jax.Array | None = None
    row: jax.Array | None = None  # each row's position in the data (the GLM's per-sample quality)


def _to_device(data: CountData, rows: np.ndarray, chunk: int = 4096, *, high: bool = False) -> DeviceData:
    x = np.empty((len(rows), data.n_genes), np.float32)
    counts, genes, values = [np.zeros(1, np.int64)], [], []
    for start in range(0, len(rows), chunk):
        block = x[start : start + chunk] = data.rows(rows[start : start + chunk])
        if high:  # the entries listed for the count term, per row (row-major order)
            r, g = np.nonzero(listed(block))
            counts.append(np.bincount(r, minlength=len(block)))
            genes.append(g.astype(np.int32))
            values.append(block[r, g])
    groups = np.zeros(len(rows), np.int32) if data.groups is None else data.groups[rows]
    offset = None if data.offset is None else jnp.asarray(data.offset[rows].astype(np.float32))
    extra = ()
    if high:
        ptr = np.cumsum(np.concatenate(counts)).astype(np.int32)
        extra = tuple(jnp.asarray(np.concatenate(a)) for a in ([ptr], genes + [np.zeros(0, np.int32)],
                                                                values + [np.zeros(0, np.float32)]))
    if not high:
        extra = (None, None, None)
    return DeviceData(jnp.asarray(x), jnp.asarray(np.log(data.library_size[rows]).astype(np.float32)),
                      jnp.asarray(data.design[rows]), jnp.asarray(groups.astype(np.int32)), offset, *extra,
                      row=jnp.asarray(np.asarray(rows, np.int32)))


def device_high(dev: DeviceData, idx: jax.Array, mask: jax.Array, size: int) -> HighCounts:
    """The entries >= 2 of the rows `idx` (masked rows count none) as a `HighCounts` list of `size`."""
    n = jnp.where(mask, dev.high_ptr[idx + 1] - dev.high_ptr[idx], 0)
    ends = jnp.cumsum(n)
    k = jnp.arange(size, dtype=ends.dtype)
    row = jnp.minimum(jnp.searchsorted(ends, k, side="right"), idx.shape[0] - 1).astype(jnp.int32)
    valid = k < ends[-1]
    pos = jnp.where(valid, dev.high_ptr[idx[row]] + k - (ends[row] - n[row]), 0)
    gene = jnp.where(valid, jnp.take(dev.high_gene, pos, mode="clip"), 0)
    count = jnp.where(valid, jnp.take(dev.high_count, pos, mode="clip"), 0.0)
    return HighCounts(row, gene, count)


def make_epoch(svi: SVI, high_size: int | None = None):
    """One jitted call per epoch: `lax.scan` of the SVI step over a stack of minibatch index blocks
    gathered from device-resident data (no per-step host round trip; the state buffers are donated).
    With `high_size`, each step's batch lists its entries >= 2 (`device_high`, a list of that length:
    it must bound every block's number of such entries)."""

    def epoch(svi_state, dev: DeviceData, idx, mask, scale):
        def step(state, inp):
            i, m, s = inp
            offset = None if dev.offset is None else dev.offset[i]
            high = None if high_size is None else device_high(dev, i, m, high_size)
            return svi.update(state, Batch(dev.x[i], dev.log_lib[i], dev.design[i], dev.group[i], m, s,
                                           offset=offset, high=high, row=dev.row[i]))

        return jax.lax.scan(step, svi_state, (idx, mask, scale))

    return jax.jit(epoch, donate_argnums=(0,))


def epoch_blocks(order: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions in `order` as (steps, B) index blocks, the last padded; masks; per-step ELBO scales."""
    n = len(order)
    steps = -(-n // batch_size)
    idx = np.zeros(steps * batch_size, np.int32)
    idx[:n] = order
    mask = np.arange(steps * batch_size) < n
    real = mask.reshape(steps, batch_size).sum(1)
    return idx.reshape(steps, batch_size), mask.reshape(steps, batch_size), (n / real).astype(np.float32)


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]fit[/] epoch {task.completed}/{task.total}"), BarColumn(),
                    TextColumn("{task.fields[msg]}"), TimeElapsedColumn(), disable=not enabled)


class Resume(NamedTuple):
    """Where a resumed loop starts: the snapshot of a periodic checkpoint, with the best parameters and
    the history that checkpoint holds."""

    snapshot: Snapshot
    best_params: dict
    history: History


def fit_svi(story, data: CountData, train_idx: np.ndarray, heldout_idx: np.ndarray,
            config: TrainConfig, seed,
            on_checkpoint: Callable[[dict, History, bool, Snapshot | None], None] | None = None,
            resume: Resume | None = None) -> tuple[dict, History]:
    """Fit `story` (an object with NumPyro `model` and `guide` over a Batch) by SVI.

    Returns the parameters with the best held-out loss (the last ones without a held-out split) and
    the loss history. `seed`: an int or a JAX key (`probgex.rng`); epoch e's minibatch order and SVI
    step keys depend on (seed, e) only. `on_checkpoint(params, history, finished, snapshot)` is called
    every `checkpoint_every` epochs (finished=False, with the loop's `Snapshot` after that epoch) and at
    the end (finished=True, snapshot None) with the best parameters so far. With `resume`, the loop
    continues after the snapshot's epoch and ends as the uninterrupted loop would have.
    """
    split = bool(config.count_split and getattr(story, "count_split", False))
    train = Minibatches(data, train_idx, config.batch_size, shuffle=True, rng=streams.host_rng(seed, "shuffle", 0),
                        high=split)
    heldout = None
    if len(heldout_idx):
        heldout = Minibatches(data, heldout_idx, train.batch_size, shuffle=False, n_total=len(train_idx),
                              high=split)
    svi = make_svi(story, config)
    update, evaluate = jax.jit(svi.update), jax.jit(svi.evaluate)
    svi_state = svi.init(streams.stream(seed, "init"), next(iter(train)))
    steps_key = streams.stream(seed, "svi_steps")
    per_entry = 4 if data.offset is None else 8  # counts (+ the stage-1 offset), float32
    fits = len(train_idx) * data.n_genes * per_entry <= config.device_budget_bytes
    on_device = config.device_data == "always" or (config.device_data == "auto" and fits)
    if on_device:
        dev, run_epochs = _to_device(data, np.asarray(train_idx), high=split), {}
        typical = high_typical(train.n_high, train.batch_size) if split else None
    if resume is None:
        state = LoopState(svi_state, 0, np.inf, jax.device_get(svi.get_params(svi_state)), 0)
        hist = History([], [], 0)
        reductions = config.lr_reductions
    else:
        snap = resume.snapshot
        svi_state = svi_state._replace(optim_state=restore_opt_state(svi_state.optim_state, snap.opt_state))
        state = LoopState(svi_state, snap.epoch, snap.best_loss, resume.best_params, snap.stale)
        hist = History(list(resume.history.train), list(resume.history.heldout), resume.history.best_epoch)
        reductions = snap.reductions_left
    n_train = len(train_idx)
    with _progress(config.progress) as bar:
        task = bar.add_task("fit", total=config.max_epochs, completed=state.epoch, msg="")
        for epoch in range(state.epoch + 1, config.max_epochs + 1):
            train.rng = rng = streams.host_rng(seed, "shuffle", epoch)
            svi_state = state.svi_state._replace(rng_key=jax.random.fold_in(steps_key, epoch))
            if on_device:  # positions into `dev`; the same shuffle as the host path's permutation(index)
                order = rng.permutation(len(train.index))
                blocks = epoch_blocks(order, train.batch_size)
                size = None
                if split:  # the shorter list unless a batch of this epoch has more entries >= 2 than it holds
                    need = int(np.where(blocks[1], train.n_high[blocks[0]], 0).sum(1).max())
                    size = typical if need <= typical else train.high_size
                if size not in run_epochs:
                    run_epochs[size] = make_epoch(svi, size)
                svi_state, losses = run_epochs[size](svi_state, dev, *blocks)
            else:
                losses = []
                for batch in train:
                    svi_state, loss = update(svi_state, batch)
                    losses.append(loss)
                losses = jnp.stack(losses)
            train_loss = float(jnp.mean(losses)) / n_train
            if not np.isfinite(train_loss):
                raise FloatingPointError(
                    f"the loss became {train_loss} at epoch {epoch}; lower the learning rate "
                    "(learning_rate=...) or check the counts; the last checkpoint is unchanged")
            hist.train.append(train_loss)
            loss = train_loss
            if heldout is not None:
                loss = sum(float(evaluate(svi_state, b)) * b.mask.sum() / n_train for b in heldout)
                loss = float(loss) / len(heldout_idx)
                hist.heldout.append(loss)
            # without a held-out split the last epoch's parameters are the result: each epoch is "best"
            if heldout is None or loss < state.best_loss:
                state = LoopState(svi_state, epoch, loss, jax.device_get(svi.get_params(svi_state)), 0)
                hist = hist._replace(best_epoch=epoch)
            else:
                state = state._replace(svi_state=svi_state, epoch=epoch, stale=state.stale + 1)
            bar.update(task, completed=epoch, msg=f"loss/obs {train_loss:.1f}"
                       + (f"  held-out {hist.heldout[-1]:.1f}" if hist.heldout else ""))
            if heldout is not None and reductions and state.stale >= max(1, config.patience // 2):
                reductions -= 1  # a plateau: a smaller step before giving up (Adam's jitter ~ its step)
                state = state._replace(svi_state=scale_learning_rate(state.svi_state, config.lr_factor), stale=0)
            elif heldout is not None and state.stale >= config.patience:
                break
            # the checkpoint holds the loop as it enters the next epoch: a resumed loop continues from it
            if on_checkpoint and config.checkpoint_every and epoch % config.checkpoint_every == 0:
                snap = Snapshot(epoch=epoch, best_loss=float(state.best_loss), stale=state.stale,
                                reductions_left=reductions, opt_state=flatten_opt_state(state.svi_state.optim_state))
                on_checkpoint(state.best_params, hist, False, snap)
    params = state.best_params
    if on_checkpoint:
        on_checkpoint(params, hist, True, None)
    return params, hist
