"""Write a model file with the flat latent layout (run with the code from before the nested options:
main at 820707a). A cVAE with a diffusion prior on conftest's small data; its predictions at seed 0."""
import sys, warnings
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import numpy as np, pandas as pd
import probgex as pg
from conftest import _small_adata
out = sys.argv[1]
a = _small_adata()
lat = pg.latent.Diffusion(dim=2, net=(8,), max_steps=40, batch_size=64, sampler="sde", sde_steps=5, rtol=1e-3, atol=1e-3)
fit = pg.Model("~ group", likelihood="nb", latent=lat, encoder=(8,), decoder=(8,)).fit(a, seed=0, max_epochs=3, progress=False)
fit.save(out + ".npz")
obs = pd.DataFrame({"group": ["a", "b", "c"]}, index=["o1", "o2", "o3"])
pred = fit.predict(obs, n_samples=16, seed=0, library_size=500.0)
np.save(out + "_pred_mean.npy", np.asarray(pred["mean"].values, np.float64))
print(fit.spec.to_dict()["latent"])
