"""The residual story around a fixed stage-1 mean predictor m(c):

    log mu_ng = log l_n + log m_g(c_n) + h(z_n, c_n)_g,   z_n ~ p(z | c_n),   x_ng ~ its count family

Stage 1 enters as data (`Batch.offset`, the log mean fraction per observation and gene, computed once
from the frozen predictor), so no gradient can reach it; stage 2 is the conditional VAE of `cvae.py`
with the decoder's softmax replaced by an additive log-scale correction h whose last-layer bias is the
per-gene intercept correction. That head starts at zero, so the fit starts at the stage-1 mean.
"""

from __future__ import annotations

import jax.numpy as jnp

from probgex.models.cvae import CVAE

LOG_MU_MAX = 30.0  # log mu is capped here (e^30 ~ 1e13 counts): an early large step cannot overflow


class Residual(CVAE):
    """NumPyro model and guide of the residual story (everything but the mean head as in `CVAE`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        head = self.decoder.heads[0]
        head.kernel.value = jnp.zeros_like(head.kernel.value)
        head.bias.value = jnp.zeros_like(head.bias.value)

    def _log_mean(self, out, log_lib, offset):
        if offset is None:
            raise ValueError("the residual story needs the stage-1 offset in the batch (Batch.offset)")
        return jnp.minimum(log_lib[..., None] + offset + out, LOG_MU_MAX)
