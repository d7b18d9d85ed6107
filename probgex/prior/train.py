"""Training loop of a learned prior's network (its schedule: `prior.options.Training`): optax Adam with gradient clipping on random minibatches,
an exponential moving average of the weights (the result), held-out early stopping, a rich progress bar.

The held-out loss is evaluated every `eval_every` steps with a fixed key and several noise draws per
held-out latent, so its changes reflect the weights, not the noise. `eval_every` steps run as one jitted
`lax.scan`; the host reads losses once per evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from probgex.inference.loop import EarlyStopping, reporter
from probgex.prior.options import Training


class PriorHistory(NamedTuple):
    train: list[float]  # mean minibatch loss over each block of eval_every steps
    heldout: list[float]  # held-out loss of the averaged weights after each block
    best_step: int


LossFn = Callable[[nnx.Module, jax.Array, jax.Array, jax.Array], jax.Array]


def train_network(net: nnx.Module, loss_fn: LossFn, key: jax.Array, z: np.ndarray, c: np.ndarray,
                  z_val: np.ndarray, c_val: np.ndarray, config: Training,
                  label: str = "prior", progress: bool = True) -> tuple[nnx.State, PriorHistory]:
    """Minimise loss_fn(net, key, z_batch, c_batch) over (z, c); early-stop on (z_val, c_val).

    Returns the parameter state with the best held-out loss (of the weight average) and the history.
    """
    graphdef, params = nnx.split(net)
    z, c = jnp.asarray(z, jnp.float32), jnp.asarray(c, jnp.float32)
    z_val, c_val = jnp.asarray(z_val, jnp.float32), jnp.asarray(c_val, jnp.float32)
    n = z.shape[0]
    batch = min(config.batch_size, n)
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.adam(config.learning_rate))

    def loss_of(p, k, zb, cb):
        return loss_fn(nnx.merge(graphdef, p), k, zb, cb)

    @jax.jit
    def block(carry, k, z, c):
        def step(carry, k):
            p, opt, ema = carry
            ki, kl = jax.random.split(k)
            idx = jax.random.randint(ki, (batch,), 0, n)
            loss, g = jax.value_and_grad(loss_of)(p, kl, z[idx], c[idx])
            updates, opt = tx.update(g, opt, p)
            p = optax.apply_updates(p, updates)
            ema = jax.tree.map(lambda e, q: config.ema * e + (1 - config.ema) * q, ema, p)
            return (p, opt, ema), loss

        carry, losses = jax.lax.scan(step, carry, jax.random.split(k, config.eval_every))
        return carry, losses.mean()

    @jax.jit
    def heldout_loss(p, k, z, c):
        keys = jax.random.split(k, config.n_eval_repeats)
        return jax.vmap(lambda kk: loss_of(p, kk, z, c))(keys).mean()

    k_train, k_eval = jax.random.split(key)
    carry = (params, tx.init(params), params)
    best, stopper = params, EarlyStopping(config.patience)
    hist = PriorHistory([], [], 0)
    n_blocks = -(-config.max_steps // config.eval_every)
    with reporter(progress, label, n_blocks * config.eval_every, unit="step") as bar:
        for i in range(n_blocks):
            carry, train_loss = block(carry, jax.random.fold_in(k_train, i), z, c)
            val = float(heldout_loss(carry[2], k_eval, z_val, c_val))
            train_loss = float(train_loss)
            if not np.isfinite(train_loss):
                raise FloatingPointError(f"the {label} loss became {train_loss} after {(i + 1) * config.eval_every} "
                                         "steps; lower the learning rate")
            hist.train.append(train_loss)
            hist.heldout.append(val)
            verdict = stopper.observe(val)
            if verdict == "improved":
                best = jax.tree.map(lambda a: a, carry[2])
                hist = hist._replace(best_step=(i + 1) * config.eval_every)
            bar.update((i + 1) * config.eval_every, f"loss {train_loss:.4f}  held-out {val:.4f}")
            if verdict == "stop":
                break
    return best, hist
