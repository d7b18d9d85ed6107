"""Memory estimates made before any work, so that a size option far beyond the machine (a latent
dimension of 10**9, 10**9 predictive draws) is refused with the estimate and the option to change,
instead of dying inside JAX or NumPy minutes later."""

from __future__ import annotations

import os

from probgex.errors import SpecError

GIB = 2**30


def available_bytes() -> int:
    """Memory available to new allocations: MemAvailable of /proc/meminfo, else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63


def require(estimate: float, what: str, fix: str) -> None:
    """Refuse (SpecError) when `estimate` bytes exceed the memory available now."""
    have = available_bytes()
    if estimate > have:
        raise SpecError(f"{what} needs about {estimate / GIB:,.1f} GiB of memory, more than the "
                        f"{have / GIB:,.1f} GiB available; {fix}")


def mlp_params(n_in: int, hidden, n_out: int) -> int:
    """Weights and biases of a dense network n_in -> hidden... -> n_out."""
    sizes = [int(n_in), *map(int, hidden), int(n_out)]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def fit_bytes(spec, n_genes: int, n_design: int, batch_size: int) -> float:
    """Training memory of a cVAE / residual model: parameters, gradients, two Adam moments and the best
    copy (5 x 4 bytes per parameter) plus one batch's activations (x 8, forward and backward)."""
    latent = spec.latent
    if latent is None:
        return 0.0
    dim = int(latent.dim)
    params = (mlp_params(n_genes + n_design, spec.encoder, 2 * dim + 2)
              + mlp_params(dim + n_design, spec.decoder, 2 * n_genes)
              + mlp_params(n_design, getattr(latent, "hidden", ()), 2 * dim))
    widths = n_genes * 4 + dim * 4 + sum(spec.encoder) + sum(spec.decoder)
    return 20.0 * params + 8.0 * 4 * batch_size * widths


def draws_bytes(n_samples: int, n_obs: int, n_genes: int, n_levels: int, keep_counts: bool) -> float:
    """Prediction memory: the kept count draws (int64, samples x obs x genes) with the summaries, plus one
    block of draws (at least 8 rows or 2**24 entries: mean, concentration and a sample, 8 bytes each)."""
    kept = (8.0 * n_samples * n_obs * n_genes if keep_counts else 0.0) + 8.0 * (2 * n_levels + 2) * n_obs * n_genes
    return kept + 3 * 8.0 * max(2**24, n_samples * 8 * n_genes)
