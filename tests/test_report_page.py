"""The calibration report reads for a biologist: a verdict that agrees with the PIT band test, a
sentence per section on what good looks like, captions, legends, integer-aligned rootogram bins, a
colour bar on the correlation maps; and the page renders in headless Chromium."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from probgex.diagnostics import plots
from probgex.diagnostics.pit import uniformity
from probgex.diagnostics.report_html import CAPTIONS
from probgex.diagnostics.verdict import verdict

LEVELS = ("0.5", "0.8", "0.9", "0.95")
CHROMIUM = "/usr/bin/chromium"


def _coverage(u):
    return {a: float(np.mean(np.abs(u - 0.5) <= float(a) / 2)) for a in LEVELS}


def test_verdict_follows_the_band_even_when_the_coverage_table_is_perfect():
    # PIT values in point masses placed so that every central interval holds exactly its nominal share
    points = [0.5, 0.2, 0.8, 0.07, 0.93, 0.03, 0.97, 0.01, 0.99]
    weights = [0.5, 0.15, 0.15, 0.05, 0.05, 0.025, 0.025, 0.025, 0.025]
    u = np.repeat(points, (np.array(weights) * 4000).astype(int))
    cov = _coverage(u)
    assert all(abs(cov[a] - float(a)) < 1e-9 for a in LEVELS)
    pooled = uniformity(u)
    assert not pooled["inside_band"]
    v = verdict(pooled, 1.0, {}, u, cov)
    assert v["status"] == "miscalibrated" and "coverage table is close to nominal" in v["text"]

    rng = np.random.default_rng(0)
    u = rng.uniform(size=4000)
    ok_program = {"correlated": {"uniformity": {"inside_band": True}}}
    assert verdict(uniformity(u), 0.99, ok_program, u, _coverage(u))["status"] == "calibrated"
    bad_program = {"correlated": {"uniformity": {"inside_band": False}}}
    v = verdict(uniformity(u), 0.99, bad_program, u, _coverage(u))
    assert v["status"] == "partly calibrated" and "correlated gene program" in v["text"]
    # too narrow predictions: PIT piles up in both tails, and the verdict says so
    u = np.concatenate([rng.uniform(0, 0.05, 800), rng.uniform(0.95, 1, 800), rng.uniform(size=2400)])
    v = verdict(uniformity(u), 0.5, {}, u, _coverage(u))
    assert v["status"] == "miscalibrated" and "too narrow" in v["text"] and "close to nominal" not in v["text"]


def test_rootogram_bins_are_integer_aligned_of_one_width_with_a_legend():
    y = np.random.default_rng(1).poisson(40, 500)
    e = plots.rootogram_edges(y)
    assert e[0] == 0 and e.dtype.kind == "i" and e[-1] > np.quantile(y, 0.995)
    assert len(set(np.diff(e))) == 1 and len(e) - 1 <= 30  # one width: no spikes at the wider bins
    assert plots.rootogram_edges(np.arange(20))[1] == 1  # small counts: a bin per count
    obs = [np.histogram(y, e)[0].astype(float)]
    fig = plots.rootograms(["g"], obs, obs, [e])
    ax = fig.axes[0]
    centres = sorted(p.get_x() + p.get_width() / 2 for p in ax.patches)
    np.testing.assert_allclose(centres, ax.lines[0].get_xdata())  # bars centred on the expected curve's points
    labels = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert any("observed" in t for t in labels) and any("expected" in t for t in labels)


def test_correlation_maps_have_a_colour_bar():
    rng = np.random.default_rng(2)
    stats = {k: (rng.uniform(1, 2, 20), rng.uniform(1, 2, (3, 20))) for k in ("mean", "variance", "zero_fraction", "cv")}
    obs = {k: (rng.uniform(1, 2, 9), rng.uniform(1, 2, (3, 9))) for k in ("library_size", "zero_fraction")}
    c = np.corrcoef(rng.normal(size=(30, 5)), rowvar=False)
    fig = plots.summary_statistics(stats, obs, (c, c))
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "correlation"]
    assert len(bars) == 1 and bars[0].get_ylim() == (-1.0, 1.0)


@pytest.fixture(scope="module")
def report_folder(glm_fit, small_adata, tmp_path_factory):
    from probgex.diagnostics import check

    folder = tmp_path_factory.mktemp("report") / "report"
    check(glm_fit, small_adata, n_samples=30, n_top_genes=12, program_size=6, n_random_programs=2,
          progress=False).save(folder)
    return folder


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *args], check=False, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs headless Chromium at /usr/bin/chromium "
                    "(Debian package `chromium`: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report_folder, tmp_path):
    from PIL import Image

    page = report_folder / "report.html"
    # every <img> decodes in the browser: a copy of the page reports it in its title after loading
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace(
        "</body>", "<script>window.addEventListener('load', () => { const im = [...document.images];"
        " document.title = 'IMAGES ' + im.filter(i => i.complete && i.naturalWidth > 0).length + '/' + im.length;"
        " });</script></body>"))
    dom = _chromium(["--dump-dom", probe.as_uri()], tmp_path)
    n = len(CAPTIONS)
    assert f"<title>IMAGES {n}/{n}</title>" in dom.stdout, dom.stdout[:300] + dom.stderr[-500:]

    shot = tmp_path / "report.png"
    _chromium([f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()], tmp_path)
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    px = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert px.shape == (2000, 1280, 3) and px.std() > 20  # not blank
    white = np.all(px > 245, axis=2).mean()
    assert 0.3 < white < 0.97  # a page with text and figures, not mostly white and not one block of colour
    # matplotlib's blue (C0) occurs only inside the figures: the PIT figure was drawn on the page
    c0 = np.all(np.abs(px - [31, 119, 180]) < 12, axis=2).sum()
    assert c0 > 300
    shutil.copy(shot, report_folder / "screenshot.png")  # kept beside the report for a look by eye
