"""Datasets shipped with probgex.

`schurch_yeast`: 48 wild-type vs 48 snf2-knockout Saccharomyces cerevisiae RNA-seq replicates
(Schurch et al. 2016, RNA 22:839; Gierlinski et al. 2015, Bioinformatics 31:3625), from
github.com/bartongroup/profDGE48, MIT license (see probgex/_data/SCHURCH_YEAST_LICENSE).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad

DATA = Path(__file__).parent / "_data"


def schurch_yeast() -> ad.AnnData:
    """96 bulk samples x 7,126 genes of raw counts; obs: strain (WT / Snf2), rep, flagged_bad_rep
    (the 10 replicates the authors flagged as bad)."""
    return ad.read_h5ad(DATA / "schurch_yeast.h5ad")
