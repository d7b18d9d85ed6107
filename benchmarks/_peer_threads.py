"""Thread limits of the peer scripts run in the peer venvs (_scvi_run.py, _scgen_run.py, scale_peer.py): the
BLAS / OpenMP variables must be set before torch is imported (`limit`), torch's and scvi-tools' own settings
after (`apply`). Imports nothing outside the standard library, so it works in any venv."""

import os


def limit(threads: int) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    return threads


def apply(threads: int) -> None:
    import scvi
    import torch
    torch.set_num_threads(threads)
    scvi.settings.num_threads = threads
