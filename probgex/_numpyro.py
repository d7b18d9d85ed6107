"""numpyro loaded whole, whoever imported it first.

arviz (arviz_base.io_numpyro) registers numpyro in `sys.modules` as a lazy_loader stub; a later
`import numpyro.distributions` then runs the package without binding its submodules as attributes
(`numpyro.distributions.distribution` is missing), and `numpyro.factor`, which reads that attribute, fails
inside JAX tracing. `load()` imports numpyro's distributions and binds every loaded numpyro submodule to
its parent package. `probgex.models.story.build_story`, through which every fit and every loaded model
builds its story, calls it before any numpyro code runs, and `diagnostics.arviz` before it imports arviz.
"""

from __future__ import annotations

import sys


def load() -> None:
    import numpyro.distributions  # noqa: F401  (a real import if arviz has not stubbed numpyro yet)

    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("numpyro."):
            continue
        parent, _, child = name.rpartition(".")
        package = sys.modules.get(parent)
        if package is not None and child not in vars(package):
            setattr(package, child, module)
