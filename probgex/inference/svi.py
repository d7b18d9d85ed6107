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

from probgex import rng as streams
from probgex._checks import check_choice
from probgex._heap import release_free_heap
from probgex.choices import DEVICE_DATA
from probgex.errors import SpecError
from probgex.data import CountData
from probgex.inference.loop import EarlyStopping, reporter, scale_learning_rate
from probgex.inference.plan import NETWORK
from probgex.inference.sharding import fetch, global_batch, local_mesh, n_devices, replicate
from probgex.inference.minibatch import Minibatches, high_bound, high_typical, listed
from probgex.inference.prefetch import prefetch
from probgex.inference.window import in_order_windows, put, read_windows
from probgex.inference.resume import Snapshot, flatten_opt_state, restore_opt_state
from probgex.models.batch import Batch, HighCounts


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Options of the fit loop. `Model.fit` builds it from its training plan (`inference.plan`), which
    owns the story-dependent defaults; the defaults here are the network stories' (`plan.NETWORK`)."""

    max_epochs: int = NETWORK.min_epochs
    batch_size: int = 128
    learning_rate: float = NETWORK.learning_rate
    clip_norm: float = 10.0
    patience: int = 10  # epochs without held-out improvement before stopping
    lr_reductions: int = NETWORK.lr_reductions  # learning-rate cuts on a plateau (patience // 2 stale epochs)
    lr_factor: float = 0.2  # ... by this factor, before early stopping may end the fit
    checkpoint_every: int = 10  # epochs; 0 disables checkpoints
    progress: bool = True
    device_data: str = "auto"  # "auto": keep the training counts on the device when they fit the budget
    device_budget_bytes: int = 2**30
    # per-parameter multipliers of the Adam step, by NumPyro param name (e.g. {"log_theta": 10.0}): Adam
    # moves every parameter by about the learning rate per step, too slowly for a log-concentration that
    # has to travel several units while the networks need small steps
    param_step_scale: tuple[tuple[str, float], ...] = NETWORK.step_scale
    count_split: bool = True  # NB / ZINB cVAE: the lgamma terms of the objective only on entries >= 2
    devices: int | None = 1  # local devices the minibatches are split across (None: all; `inference.sharding`)

    def __post_init__(self):
        for name in ("max_epochs", "batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise SpecError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        check_choice("device_data", self.device_data, DEVICE_DATA)
        if not (self.learning_rate > 0 and np.isfinite(self.learning_rate)):
            raise SpecError(f"learning_rate must be positive, got {self.learning_rate!r}")


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


WINDOWS_AHEAD = 1  # streamed windows read ahead of the one the device scans (`prefetch`; one more being read)
TRIM_EVERY = 8  # streamed windows between two returns of the C heap's free pages to the system
# the held-out rows of counts streamed from disk, read once and kept on the device when they take at most
# this (dense): every epoch evaluates the same rows, so re-reading them (for a .zarr store, decoding every
# stored chunk again to read every ~10th row) is work a small copy saves; larger, they stream in windows
# and memory stays flat in the number of cells (100k cells x 2,000 genes: 10k held-out rows, 80 MB)
HELD_DEVICE_BYTES = 128 * 2**20


def _to_device(data: CountData, rows: np.ndarray, chunk: int = 4096, *, high: bool = False) -> DeviceData:
    """The rows `rows` on the device (the training rows of a fit that keeps them there; windows of streamed
    counts are assembled on the host in one shape instead, `inference.window`)."""
    return _device_arrays(data, rows, chunk, high, rows)


def _device_arrays(data: CountData, rows: np.ndarray, chunk: int, high: bool, row_ids: np.ndarray) -> DeviceData:
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
                      row=jnp.asarray(np.asarray(row_ids, np.int32)))


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


def _gathered(dev: DeviceData, i, m, s, high_size: int | None) -> Batch:
    """The batch of the device-held rows `i` (mask `m`, ELBO scale `s`), listing its entries >= 2 in a list of
    `high_size` where given."""
    offset = None if dev.offset is None else dev.offset[i]
    high = None if high_size is None else device_high(dev, i, m, high_size)
    return Batch(dev.x[i], dev.log_lib[i], dev.design[i], dev.group[i], m, s, offset=offset, high=high, row=dev.row[i])


def make_epoch(svi: SVI, high_size: int | None = None):
    """One jitted call per epoch: `lax.scan` of the SVI step over a stack of minibatch index blocks
    gathered from device-resident data (no per-step host round trip; the state buffers are donated).
    With `high_size`, each step's batch lists its entries >= 2 (`device_high`, a list of that length:
    it must bound every block's number of such entries)."""

    def epoch(svi_state, dev: DeviceData, idx, mask, scale):
        def step(state, inp):
            return svi.update(state, _gathered(dev, *inp, high_size))

        return jax.lax.scan(step, svi_state, (idx, mask, scale))

    return jax.jit(epoch, donate_argnums=(0,))


def make_evaluate(svi: SVI, high_size: int | None = None):
    """The held-out counterpart of `make_epoch`: the loss of every index block at one state (`svi.evaluate`,
    the same key for every block, as a call per batch has), in one jitted call, the blocks one after another
    (`lax.map`: one block's activations at a time). Returns (blocks,) losses."""

    def evaluate(svi_state, dev: DeviceData, idx, mask, scale):
        return jax.lax.map(lambda inp: svi.evaluate(svi_state, _gathered(dev, *inp, high_size)), (idx, mask, scale))

    return jax.jit(evaluate)


def epoch_blocks(order: np.ndarray, batch_size: int, n_total: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions in `order` as (steps, B) index blocks, the last padded; masks; per-step ELBO scales
    (n_total / rows of the step; n_total the observations the ELBO stands for, len(order) when None)."""
    n = len(order)
    steps = -(-n // batch_size)
    idx = np.zeros(steps * batch_size, np.int32)
    idx[:n] = order
    mask = np.arange(steps * batch_size) < n
    real = mask.reshape(steps, batch_size).sum(1)
    total = n if n_total is None else n_total
    return idx.reshape(steps, batch_size), mask.reshape(steps, batch_size), (total / real).astype(np.float32)


class Resume(NamedTuple):
    """Where a resumed loop starts: the snapshot of a periodic checkpoint, with the best parameters and
    the history that checkpoint holds."""

    snapshot: Snapshot
    best_params: dict
    history: History


def _real_rows(batch: Batch, mesh):
    """Rows of the global batch this local part belongs to (several processes: their masks summed)."""
    if jax.process_count() == 1:
        return batch.mask.sum()
    from jax.experimental import multihost_utils

    return float(np.sum(multihost_utils.process_allgather(np.asarray(batch.mask).sum())))


def _windowed(windows, run) -> jax.Array:
    """`run(held, order, device arrays)` over windows of rows assembled on the host (`window.read_windows`,
    `window.in_order_windows`), the next one read in a background thread while the device works on this one;
    the losses of every window, concatenated."""
    losses = []
    for k, (held, order, arrays) in enumerate(prefetch(windows, WINDOWS_AHEAD)):
        if len(losses) >= 2:  # at most two windows in flight: the host reading ahead of the device
            losses[-2].block_until_ready()  # would hold every window read so far in memory
        if k % TRIM_EVERY == 0:  # buffers of windows done (and of the last pass): free, but held by the
            release_free_heap()  # C heap (`_heap`); a trim costs ~70 ms, so not every window
        losses.append(run(held, order, DeviceData(**put(arrays))))
    return jnp.concatenate(losses)


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
    procs = jax.process_count()  # several processes (`sharding.start_processes`): one global program
    # the count split's entry lists are per process: with several, the plain objective (the same ELBO)
    split = bool(config.count_split and story.count_split) and procs == 1
    mesh = local_mesh(config.devices)
    part = (jax.process_index(), procs)
    train = Minibatches(data, train_idx, config.batch_size, shuffle=True, rng=streams.host_rng(seed, "shuffle", 0),
                        high=split, multiple=n_devices(mesh), process=part)
    heldout = None
    if len(heldout_idx):
        heldout = Minibatches(data, heldout_idx, train.batch_size, shuffle=False, n_total=len(train_idx),
                              high=split, multiple=n_devices(mesh), process=part)
    svi = make_svi(story, config)
    update, evaluate = jax.jit(svi.update), jax.jit(svi.evaluate)
    svi_state = replicate(svi.init(streams.stream(seed, "init"), global_batch(next(iter(train)), mesh, train.local_size)),
                          mesh)
    host = jax.device_get if procs == 1 else fetch  # replicated arrays spanning other processes: the local copy
    steps_key = streams.stream(seed, "svi_steps")
    per_entry = 4 if data.offset is None else 8  # counts (+ the stage-1 offset), float32
    fits = len(train_idx) * data.n_genes * per_entry <= config.device_budget_bytes
    # counts streamed from disk stay there unless asked (a device copy would hold them all in memory)
    # several devices: sharded minibatches from the host (the device copy would be gathered across them)
    on_device = mesh is None and (config.device_data == "always"
                                  or (config.device_data == "auto" and fits and not data.streamed))
    # counts on disk, one device: windows of rows read as contiguous chunks, each scanned on the device
    windows = data.streamed and mesh is None and not on_device
    programs = {}  # the jitted scans, by (kind, list length)
    typical = high_typical(train.n_high, train.batch_size) if split else None
    if on_device:
        dev = _to_device(data, np.asarray(train_idx), high=split)
    if windows:  # every window padded to one shape: the rows of a full window, a bound on its entries >= 2
        window_rows = min(train.window_rows, len(train.index))
        window_high = high_bound(train.n_high, window_rows) if split else None

    def run_blocks(kind, state, dev, blocks, mb, n_high):
        """One scan over index blocks of device-held rows of `mb` ("train": steps; "heldout": losses at one
        state), with a list length that fits every block."""
        size = None
        if split:  # the shorter list unless a batch has more entries >= 2 than it holds
            need = int(np.where(blocks[1], n_high[blocks[0]], 0).sum(1).max())
            size = typical if need <= typical else mb.high_size
        if (kind, size) not in programs:
            programs[kind, size] = (make_epoch if kind == "train" else make_evaluate)(svi, size)
        return programs[kind, size](state, dev, *blocks)

    # the held-out rows: on the device beside the training rows where both fit, or, streamed from disk,
    # where they are few (HELD_DEVICE_BYTES); else, on one device, in windows read and put like the streamed
    # training windows, one scan each; else a batch at a time
    if heldout is not None:
        held_bytes = len(heldout_idx) * data.n_genes * per_entry
        both = len(train_idx) * data.n_genes * per_entry + held_bytes <= config.device_budget_bytes
        keep = (on_device and both) or (windows and held_bytes <= HELD_DEVICE_BYTES)
        held_dev = _to_device(data, np.asarray(heldout_idx), high=split) if keep else None
        held_windows = held_dev is None and mesh is None and procs == 1
        if held_windows:
            held_rows = min(heldout.window_rows, len(heldout.index))
            held_high = high_bound(heldout.n_high, held_rows) if split else None

    def heldout_loss(svi_state) -> float:
        """The held-out observations' summed negative ELBO (each block's loss scaled back to its rows)."""
        def blocks(n):
            return epoch_blocks(np.arange(n), heldout.batch_size, n_total=len(train_idx))

        if held_dev is not None:
            b = blocks(len(heldout_idx))
            losses, real = run_blocks("heldout", svi_state, held_dev, b, heldout, heldout.n_high), b[1].sum(1)
        elif held_windows:
            reals = []

            def run(held, order, dev):
                b = blocks(len(held))
                reals.append(b[1].sum(1))
                n_high = None if heldout.n_high is None else heldout.n_high[held]
                return run_blocks("heldout", svi_state, dev, b, heldout, n_high)

            losses = _windowed(in_order_windows(heldout, high=split, pad_rows=held_rows, pad_high=held_high), run)
            real = np.concatenate(reals)
            release_free_heap()  # the held-out windows' buffers, before the next epoch's first pool is read
        if held_dev is not None or held_windows:  # summed on the host in float64, as a batch at a time
            return float(np.sum(np.asarray(losses, np.float64) * real)) / len(train_idx)
        return sum(float(host(evaluate(svi_state, global_batch(b, mesh, heldout.local_size))))
                   * _real_rows(b, mesh) / len(train_idx) for b in heldout)

    if resume is None:
        epoch0, best_params = 0, host(svi.get_params(svi_state))
        hist = History([], [], 0)
        stopper = EarlyStopping(config.patience, config.lr_reductions)
    else:
        snap = resume.snapshot
        svi_state = svi_state._replace(optim_state=restore_opt_state(svi_state.optim_state, snap.opt_state))
        epoch0, best_params = snap.epoch, resume.best_params
        hist = History(list(resume.history.train), list(resume.history.heldout), resume.history.best_epoch)
        stopper = EarlyStopping(config.patience, snap.reductions_left, best=snap.best_loss, stale=snap.stale)
    n_train = len(train_idx)
    with reporter(config.progress, "fit", config.max_epochs, epoch0) as bar:
        for epoch in range(epoch0 + 1, config.max_epochs + 1):
            train.rng = rng = streams.host_rng(seed, "shuffle", epoch)
            svi_state = svi_state._replace(rng_key=jax.random.fold_in(steps_key, epoch))
            if on_device:  # positions into `dev`; the same shuffle as the host path's permutation(index)
                order = rng.permutation(len(train.index))
                svi_state, losses = run_blocks("train", svi_state, dev, epoch_blocks(order, train.batch_size), train,
                                               train.n_high)
            elif windows:  # counts on disk: each window of rows read once, put on the device, scanned over
                def run(held, order, dev):
                    nonlocal svi_state
                    n_high = None if train.n_high is None else train.n_high[held]
                    blocks = epoch_blocks(order, train.batch_size, n_total=len(train.index))
                    svi_state, part = run_blocks("train", svi_state, dev, blocks, train, n_high)
                    return part

                losses = _windowed(read_windows(train, high=split, pad_rows=window_rows, pad_high=window_high), run)
            else:
                losses = []
                for batch in train:
                    svi_state, loss = update(svi_state, global_batch(batch, mesh, train.local_size))
                    losses.append(loss if procs == 1 else jnp.asarray(fetch(loss)))
                losses = jnp.stack(losses)
            train_loss = float(jnp.mean(losses)) / n_train
            if not np.isfinite(train_loss):
                raise FloatingPointError(
                    f"the loss became {train_loss} at epoch {epoch}; lower the learning rate "
                    "(learning_rate=...) or check the counts; the last checkpoint is unchanged")
            hist.train.append(train_loss)
            # without a held-out split the last epoch's parameters are the result: each epoch is "best"
            verdict = "improved"
            if heldout is not None:
                loss = heldout_loss(svi_state)
                hist.heldout.append(float(loss) / len(heldout_idx))
                verdict = stopper.observe(hist.heldout[-1])
            if verdict == "improved":
                best_params = host(svi.get_params(svi_state))
                hist = hist._replace(best_epoch=epoch)
            bar.update(epoch, f"loss/obs {train_loss:.1f}" + (f"  held-out {hist.heldout[-1]:.1f}" if hist.heldout else ""))
            if verdict == "cut":  # a plateau: a smaller step before giving up (Adam's jitter ~ its step)
                svi_state = svi_state._replace(optim_state=scale_learning_rate(svi_state.optim_state, config.lr_factor))
            elif verdict == "stop":
                break
            # the checkpoint holds the loop as it enters the next epoch: a resumed loop continues from it
            if on_checkpoint and config.checkpoint_every and epoch % config.checkpoint_every == 0:
                snap = Snapshot(epoch=epoch, best_loss=float(stopper.best), stale=stopper.stale,
                                reductions_left=stopper.reductions,
                                opt_state=flatten_opt_state(host(svi_state.optim_state)))
                on_checkpoint(best_params, hist, False, snap)
    params = best_params
    if on_checkpoint:
        on_checkpoint(params, hist, True, None)
    return params, hist
