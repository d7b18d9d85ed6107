"""Model files: exact save/load round trips, and every damaged or foreign file refused with a
ModelFileError that says what is wrong (never unpickled)."""

import io
import json
import zipfile

import jax
import numpy as np
import pytest

from probgex.errors import ModelFileError
from probgex.fit import Fit, load
from probgex.inference import checkpoint

HEADER = "__header__.npy"


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def _write_members(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _read_npy(data: bytes) -> np.ndarray:
    return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)


def _header(members) -> dict:
    return json.loads(_read_npy(members[HEADER]).tobytes().decode())


def _with_header(members, header: dict) -> dict[str, bytes]:
    blob = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    return members | {HEADER: _npy(blob)}


def _assert_same_params(a: dict, b: dict) -> None:
    la, ta = jax.tree_util.tree_flatten_with_path(a)
    lb, tb = jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb
    for (pa, x), (pb, y) in zip(la, lb, strict=True):
        assert pa == pb
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(pa))


def _assert_same_model(a: Fit, b: Fit) -> None:
    _assert_same_params(a.params, b.params)
    assert a.spec == b.spec and a.encoding == b.encoding and a.dims == b.dims
    assert list(a.var_names) == list(b.var_names)
    assert a.history == b.history and a.group_levels == b.group_levels
    np.testing.assert_array_equal(a.heldout_obs, b.heldout_obs)
    np.testing.assert_array_equal(a.log_mean, b.log_mean)


@pytest.fixture(scope="module")
def saved_glm(glm_fit, tmp_path_factory):
    return glm_fit.save(tmp_path_factory.mktemp("files") / "glm.npz")


# ------------------------------------------------------------------ round trips
def test_glm_round_trip_is_exact(glm_fit, saved_glm, small_adata):
    loaded = load(saved_glm)
    _assert_same_model(glm_fit, loaded)
    obs = small_adata.obs.iloc[[0, 1, 2, 9]]
    a = glm_fit.predict(obs, n_samples=20, seed=5)
    b = loaded.predict(obs, n_samples=20, seed=5)
    for name in ("counts", "mean", "sd", "lower", "upper"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert a["counts"].values.any()  # not trivially equal
    np.testing.assert_array_equal(glm_fit.coefficients()["mean"].values, loaded.coefficients()["mean"].values)
    np.testing.assert_array_equal(glm_fit.log_predictive_density(small_adata[:8], n_samples=10).values,
                                  loaded.log_predictive_density(small_adata[:8], n_samples=10).values)


def test_cvae_round_trip_is_exact(cvae_fit, small_adata, tmp_path):
    path = cvae_fit.save(tmp_path / "cvae.npz")
    loaded = load(path)
    _assert_same_model(cvae_fit, loaded)
    assert loaded.group_levels == ["x", "y"] and loaded.spec.dispersion_key == "batch"
    obs = small_adata.obs.iloc[[0, 4, 8]]
    a = cvae_fit.predict(obs, n_samples=20, seed=2)
    b = loaded.predict(obs, n_samples=20, seed=2)
    np.testing.assert_array_equal(a["counts"].values, b["counts"].values)
    np.testing.assert_array_equal(a["mean"].values, b["mean"].values)
    ra = cvae_fit.reconstruct(small_adata[:3], n_samples=10, seed=1)
    rb = loaded.reconstruct(small_adata[:3], n_samples=10, seed=1)
    np.testing.assert_array_equal(ra["counts"].values, rb["counts"].values)


def test_a_loaded_model_saves_the_same_content(saved_glm, tmp_path):
    again = load(saved_glm).save(tmp_path / "again.npz")
    a, b = _members(saved_glm), _members(again)
    assert a.keys() == b.keys()
    assert _header(a) == _header(b)
    for name in a:
        if name != HEADER:
            np.testing.assert_array_equal(_read_npy(a[name]), _read_npy(b[name]))


def test_file_has_no_pickled_content(saved_glm):
    """Every member is a plain numeric or string array, readable with allow_pickle=False."""
    with np.load(saved_glm, allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
    header = _header(_members(saved_glm))
    assert header["format"] == "probgex-model" and len(header["sha256"]) == 64


# ------------------------------------------------------------------ damaged files
@pytest.mark.parametrize("keep", [0, 100, 0.5, -22, -1], ids=["empty", "100-bytes", "half", "no-end-record", "last-byte"])
def test_truncated_file_refused(saved_glm, tmp_path, keep):
    data = saved_glm.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[:n])
    with pytest.raises(ModelFileError, match="truncated|corrupt"):
        load(cut)


def test_damaged_bytes_inside_an_array_refused(saved_glm, tmp_path):
    """A flipped byte in a stored array (zip structure intact): refused, as corrupt or by checksum."""
    data = bytearray(saved_glm.read_bytes())
    members = _members(saved_glm)
    raw = members["param['gp_loc'].npy"]
    at = data.find(raw) + len(raw) - 3  # inside the array's data, past its .npy header
    data[at] ^= 0xFF
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt|checksum"):
        load(bad)


def test_tampered_parameter_fails_checksum(saved_glm, tmp_path):
    """One float changed and the archive rebuilt (valid zip, same header): the SHA-256 catches it."""
    members = _members(saved_glm)
    name = "param['gp_loc'].npy"
    arr = _read_npy(members[name]).copy()
    arr[0, 0] += 0.5
    bad = tmp_path / "tampered.npz"
    _write_members(bad, members | {name: _npy(arr)})
    with pytest.raises(ModelFileError, match="checksum"):
        load(bad)
    # the rebuilt archive itself is fine: unchanged members load
    ok = tmp_path / "rebuilt.npz"
    _write_members(ok, members)
    _assert_same_params(load(ok).params, load(saved_glm).params)


def test_edited_header_fails_checksum(saved_glm, small_adata, tmp_path):
    """Swapping the order of the levels of `group` (and the matching column names) in the header
    makes a consistent-looking model that predicts group b with group c's coefficients."""
    members = _members(saved_glm)
    header = _header(members)
    header["encoding"]["levels"]["group"] = ["a", "c", "b"]
    header["encoding"]["columns"] = ["Intercept", "group[T.c]", "group[T.b]"]
    bad = tmp_path / "edited.npz"
    _write_members(bad, _with_header(members, header))
    with pytest.raises(ModelFileError, match="checksum"):
        load(bad)


def test_removed_or_added_array_fails_checksum(saved_glm, tmp_path):
    members = _members(saved_glm)
    bad = tmp_path / "extra.npz"
    _write_members(bad, members | {"extra.npy": _npy(np.zeros(3))})
    with pytest.raises(ModelFileError, match="checksum"):
        load(bad)
    dropped = {k: v for k, v in members.items() if k != "param['gp_scale_diag'].npy"}
    _write_members(bad, dropped)
    with pytest.raises(ModelFileError):
        load(bad)


# ------------------------------------------------------------------ foreign files
def test_missing_path_refused(tmp_path):
    with pytest.raises(ModelFileError, match="no model file"):
        load(tmp_path / "nope.npz")
    with pytest.raises(ModelFileError):
        load(tmp_path)  # a directory


def test_plain_npz_refused(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.arange(3), b=np.ones((2, 2)))
    with pytest.raises(ModelFileError, match="not a probgex model file"):
        load(path)


def test_not_a_zip_refused(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("formula = '~ group'\n")
    with pytest.raises(ModelFileError):
        load(path)


def test_other_format_or_version_refused(saved_glm, tmp_path):
    members = _members(saved_glm)
    header = _header(members)
    bad = tmp_path / "bad.npz"
    _write_members(bad, _with_header(members, header | {"format": "something-else"}))
    with pytest.raises(ModelFileError, match="not a probgex model file"):
        load(bad)
    _write_members(bad, _with_header(members, header | {"version": 99}))
    with pytest.raises(ModelFileError, match="version"):
        load(bad)


def test_corrupt_or_incomplete_header_refused(saved_glm, tmp_path):
    members = _members(saved_glm)
    bad = tmp_path / "bad.npz"
    _write_members(bad, members | {HEADER: _npy(np.frombuffer(b"{not json", dtype=np.uint8))})
    with pytest.raises(ModelFileError, match="header"):
        load(bad)
    header = _header(members)
    del header["spec"]
    _write_members(bad, _with_header(members, header))
    with pytest.raises(ModelFileError, match="header"):
        load(bad)


def test_parameters_not_matching_the_header_refused(saved_glm, tmp_path):
    """A self-consistent file (valid checksum) whose parameters do not fit the spec in its header."""
    header, arrays = checkpoint.read(saved_glm)
    arrays["param['gp_loc']"] = arrays["param['gp_loc']"][:, :-1]
    bad = tmp_path / "mismatch.npz"
    checkpoint.write(bad, {k: v for k, v in header.items() if k not in ("format", "version", "sha256")}, arrays)
    with pytest.raises(ModelFileError, match="shape"):
        load(bad)


class _Payload:
    """Unpickling this object would create the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def _touch(path):
    open(path, "w").close()


def test_object_arrays_are_refused_not_unpickled(saved_glm, tmp_path):
    """The loader reads with allow_pickle=False: an object array in the archive is refused with a
    ModelFileError and never unpickled (its payload would create a marker file)."""
    marker = tmp_path / "unpickled"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, payload, allow_pickle=True)
    members = _members(saved_glm)
    for name in ("param['gp_loc'].npy", "evil.npy"):  # replacing a parameter, or as an extra member
        bad = tmp_path / "pickled.npz"
        _write_members(bad, members | {name: buf.getvalue()})
        with pytest.raises(ModelFileError):
            load(bad)
        assert not marker.exists()
    # the payload is live: loading it with pickle allowed does run it
    with np.load(bad, allow_pickle=True) as npz:
        npz["evil"]
    assert marker.exists()
