"""--devices is checked with the other fit options, before any data are read: a whole number from 1 to
the local devices (this process sees one CPU device unless XLA_FLAGS splits it)."""

import jax
import pytest
from typer.testing import CliRunner

from probgex._checks import check_fit_options
from probgex.cli import app
from probgex.errors import SpecError


@pytest.mark.parametrize("devices,message", [(0, "devices must be a positive integer, got 0"),
                                             (99, "devices=99: this process sees"),
                                             (2.0, "devices must be a positive integer")])
def test_bad_devices_are_refused_up_front(devices, message):
    with pytest.raises(SpecError, match=message):
        check_fit_options(devices=devices)


def test_valid_devices_pass():
    for devices in (None, 1, len(jax.local_devices())):
        check_fit_options(devices=devices)
    check_fit_options(devices=99, count_devices=False)  # several processes: counted once they are joined


@pytest.mark.parametrize("devices,message", [("0", "devices must be a positive integer, got 0"),
                                             ("99", "devices=99: this process sees")])
def test_shell_refuses_bad_devices_before_reading_data(tmp_path, devices, message):
    # the data file does not exist: the devices error comes first, in one line, with exit code 2
    r = CliRunner().invoke(app, ["fit", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "m.npz"),
                                 "--devices", devices])
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "m.npz").exists()
