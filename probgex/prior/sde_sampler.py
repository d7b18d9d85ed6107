"""Reverse-time SDE sampling of the VP-SDE diffusion prior with diffrax: Euler-Maruyama or Heun (for
this additive-noise SDE the Ito and Stratonovich forms agree, so Heun converges with strong order 1),
the Brownian motion from a `VirtualBrownianTree` (reproducible from its key, any step size)."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import lineax as lx

from probgex.prior.dynamics import VPSDE
from probgex.prior.nets import VectorFieldNet, guided
from probgex.prior.options import SDE


def sde_sample(sde: VPSDE, net: VectorFieldNet, key: jax.Array, c: jax.Array, dim: int, options: SDE,
               guidance: float = 0.0) -> jax.Array:
    """(N, dim) draws by integrating the reverse-time SDE from N(0, I) at t = 1 down to t = eps."""
    n = c.shape[0]
    k0, kb = jax.random.split(key)
    y0 = jax.random.normal(k0, (n * dim,), jnp.float32)
    t1, t0 = sde.t_noise, sde.t_data
    dt = (t1 - t0) / options.n_steps
    bm = diffrax.VirtualBrownianTree(t0, t1, tol=dt / 4, shape=(n * dim,), key=kb)
    drift = lambda t, y, args: sde.reverse_drift(net, y.reshape(n, dim), t, c, guidance).reshape(-1)  # noqa: E731
    diffusion = lambda t, y, args: lx.DiagonalLinearOperator(jnp.broadcast_to(sde.diffusion(t), y.shape))  # noqa: E731
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm))
    solver = diffrax.Euler() if options.solver == "euler" else diffrax.Heun()
    sol = diffrax.diffeqsolve(terms, solver, t0=t1, t1=t0, dt0=-dt, y0=y0, saveat=diffrax.SaveAt(t1=True),
                              max_steps=options.n_steps + 2)
    z = sol.ys[-1].reshape(n, dim)
    if options.denoise:
        a, s = sde.alpha_sigma(jnp.asarray(t0))
        z = (z - s * guided(sde.noise_predictor(net), z, jnp.asarray(t0), c, guidance)) / a
    return z
