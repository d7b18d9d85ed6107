"""Micro-benchmarks for predict's parts on one real block (200 draws x 32 cells x 2,000 genes of the
benchmark's cVAE-NB; run predict_profile.py first for the model):
  python benchmarks/predict_micro.py block   # save the block to /tmp/probgex-scale/block.npz
  python benchmarks/predict_micro.py write [NAME ...]  # HDF5 layouts / filters (hdf5plugin ones if installed)
  python benchmarks/predict_micro.py sample  # samplers, interval sorts, copies
  python benchmarks/predict_micro.py intervals  # the intervals' sort before / after narrowing to int32
"""
import sys


def block():
    import sys; from pathlib import Path; sys.path.insert(0, str(Path(__file__).resolve().parent))

    import numpy as np
    import scipy.sparse as sp
    from _common import load

    import probgex as pg
    from probgex import library
    from probgex import rng as streams
    from probgex.inference import predict as P
    a = load("kang_ctrl5")
    a = a[:, np.sort(np.argsort(-np.asarray(sp.csr_matrix(a.X).sum(0)).ravel())[:2000])].copy()
    pick = np.random.default_rng(100_000).choice(a.n_obs, 100_000, replace=True)[:32]
    obs = a.obs.iloc[pick].copy(); obs.index = [f"c{i}" for i in range(32)]
    fit = pg.load("/tmp/probgex-scale/model.npz")
    data = P.metadata(fit, obs, None)
    rng, key = streams.host_rng(0, "sampling"), streams.stream(0, "predictive")
    rows, d = next(P.predictive_blocks(fit, data, 200, key))
    d = d.scaled(library.draw_training(rng, fit.dims.lib_loc, fit.dims.lib_scale, (200, 32, 1)))
    c = d.sample(rng)
    np.savez("/tmp/probgex-scale/block.npz", mu=d.mu, theta=d.params["theta"], counts=c)
    print(c.shape, c.dtype, (c == 0).mean(), c.max(), (d.mu > 4).mean())


def write():
    import os
    import sys
    import time

    import h5py
    import numpy as np
    b = np.load("/tmp/probgex-scale/block.npz"); c = b["counts"].astype(np.int32)
    S, R, G = c.shape; NB = 8
    blocks = [np.roll(c, 7 * i, axis=2) for i in range(NB)]  # 8 different-looking blocks
    extra = {}
    try:
        import hdf5plugin
        extra = {"blosc-zstd1+bitshuffle (hdf5plugin)": dict(chunks=(1, R, G), **hdf5plugin.Blosc(cname="zstd", clevel=1, shuffle=hdf5plugin.Blosc.BITSHUFFLE)),
                 "blosc-lz4+bitshuffle (hdf5plugin)": dict(chunks=(1, R, G), **hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.BITSHUFFLE)),
                 "zstd1 + shuffle (hdf5plugin)": dict(chunks=(1, R, G), shuffle=True, **hdf5plugin.Zstd(clevel=1))}
    except ImportError:
        pass
    cases = {
     "current: chunks (1,256,G), shuffle+gzip1": dict(chunks=(1, 256, G), compression="gzip", compression_opts=1, shuffle=True),
     "chunks (1,32,G), shuffle+gzip1": dict(chunks=(1, R, G), compression="gzip", compression_opts=1, shuffle=True),
     "chunks (8,32,G), shuffle+gzip1": dict(chunks=(8, R, G), compression="gzip", compression_opts=1, shuffle=True),
     "chunks (1,32,G), gzip1, no shuffle": dict(chunks=(1, R, G), compression="gzip", compression_opts=1),
     "chunks (1,32,G), shuffle+lzf": dict(chunks=(1, R, G), compression="lzf", shuffle=True),
     "chunks (1,32,G), none": dict(chunks=(1, R, G)),
     "current chunks (1,256,G), 1 GiB chunk cache": dict(chunks=(1, 256, G), compression="gzip", compression_opts=1, shuffle=True, rdcc=True),
     **extra}
    only = sys.argv[2:]
    for name, kw in cases.items():
        if only and not any(o in name for o in only): continue
        kw = dict(kw); rdcc = kw.pop("rdcc", False)
        path = "/tmp/probgex-scale/w.h5"
        fkw = dict(rdcc_nbytes=2**30, rdcc_nslots=100003) if rdcc else {}
        c0, w0 = time.process_time(), time.perf_counter()
        with h5py.File(path, "w", **fkw) as f:
            d = f.create_dataset("counts", (S, R * NB, G), dtype="i4", **kw)
            for i, blk in enumerate(blocks):
                d[:, i * R:(i + 1) * R, :] = blk
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        size = os.path.getsize(path); os.remove(path)
        print(f"{name:50s} cpu {cpu:6.2f} s  wall {wall:6.2f} s  file {size/2**20:7.1f} MiB  ({size/(S*R*NB*G*4):.3f} of raw)  per 1k cells: {cpu*1000/(R*NB):6.1f} CPU s", flush=True)


def sample():
    import os
    import time

    import numpy as np
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from probgex.models import likelihoods as lk
    b = np.load("/tmp/probgex-scale/block.npz"); mu, th, c = b["mu"], b["theta"], b["counts"]
    rng = np.random.default_rng(0)
    def t(label, f, reps=2):
        f(); c0 = time.process_time(); w0 = time.perf_counter()
        for _ in range(reps): r = f()
        cpu = (time.process_time() - c0) / reps; wall = (time.perf_counter() - w0) / reps
        print(f"{label:60s} cpu {cpu:6.3f} s wall {wall:6.3f} s  per 1k cells (x31.25): {cpu*31.25:6.1f} CPU s", flush=True)
        return r
    t("gp_sample_inverse (current)", lambda: lk.gp_sample_inverse(rng, mu, th))
    t("numpy negative_binomial(theta, theta/(theta+mu))", lambda: rng.negative_binomial(th, th / (th + mu)))
    t("numpy gamma + poisson", lambda: rng.poisson(rng.gamma(th, mu / th)))
    import jax
    import jax.numpy as jnp
    mu32, th32 = jnp.asarray(mu, jnp.float32), jnp.asarray(th, jnp.float32)
    @jax.jit
    def jnb(key, mu, th):
        k1, k2 = jax.random.split(key)
        return jax.random.poisson(k2, jax.random.gamma(k1, th) * mu / th).astype(jnp.int32)
    key = jax.random.key(0)
    t("jax.random gamma+poisson on CPU (jit, f32, int32 out)", lambda: np.asarray(jnb(key, mu32, th32)), reps=1)
    print("--- intervals over 200 draws")
    ci = c.astype(np.int32)
    t("np.sort(axis=0) int64 (current)", lambda: np.sort(c, axis=0))
    t("np.sort(axis=0) int32", lambda: np.sort(ci, axis=0))
    S = c.shape[0]; ks = sorted({min(S - 1, max(0, int(np.ceil(q * S)) - 1)) for L in (0.5, 0.8, 0.9, 0.95) for q in ((1 - L) / 2, (1 + L) / 2)})
    t(f"np.partition(axis=0, kth={len(ks)} ranks) int32", lambda: np.partition(ci, ks, axis=0))
    print("--- moments / copies")
    t("theta broadcast contiguous copy (f8)", lambda: np.ascontiguousarray(np.broadcast_to(th[:1], mu.shape)))
    t("mu * lib (f8)", lambda: mu * 1.5)
    t("counts int64 -> int32 cast", lambda: c.astype(np.int32))


def intervals():
    """`summarize`'s intervals before (np.sort of the int64 draws) and after (`narrow_counts`: min / max
    and the int32 cast, then the sort) on one block of 200 draws x 32 cells x 2,000 genes: the saved real
    block where it exists, else NB draws with log-means ~ N(-1, 2) and theta 0.5."""
    import os
    import time

    import numpy as np

    from probgex.inference.predictive import empirical_intervals, narrow_counts
    levels = (0.5, 0.8, 0.9, 0.95)
    if os.path.exists("/tmp/probgex-scale/block.npz"):
        c = np.load("/tmp/probgex-scale/block.npz")["counts"].astype(np.int64)
    else:
        rng = np.random.default_rng(0)
        mu = np.exp(rng.normal(-1, 2, size=(1, 32, 2000)))
        c = rng.negative_binomial(0.5, 0.5 / (0.5 + mu), size=(200, 32, 2000)).astype(np.int64)
    for label, f in (("int64 sort (before)", lambda: empirical_intervals(c, levels)),
                     ("narrow_counts + int32 sort (after)", lambda: empirical_intervals(narrow_counts(c), levels)),
                     ("  of which narrow_counts", lambda: narrow_counts(c))):
        f()
        c0 = time.process_time()
        for _ in range(5):
            f()
        print(f"{label:40s} {(time.process_time() - c0) / 5 * 1000 / c.shape[1]:5.2f} CPU s per 1,000 cells", flush=True)


if __name__ == "__main__":
    {"block": block, "write": write, "sample": sample, "intervals": intervals}[sys.argv[1]]()
