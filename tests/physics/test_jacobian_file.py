"""A large [P][N][d] Jacobian is written chunked, and slices of it read back alone (h5py)."""

import h5py
import numpy as np
import pytest

from sensitivity.systems._errors import InputError
from sensitivity.systems.generate import random_packing
from sensitivity.systems.io import read_result, write_result
from sensitivity.systems.jacobian_file import jacobian_layout, read_jacobian_slice


def _write(path, n, p):
    system = random_packing(n, seed=0)
    field = np.random.default_rng(1).standard_normal((p, n, 2))
    field[:, 3] = np.nan  # a rattler row
    write_result(path, system=system, relaxation={},
                 responses={"all": {"dx_dtheta": field, "report": {"kind": "diameters"}},
                            "one": {"dx_dtheta": field[0], "report": {"kind": "diameter"}}},
                 rattlers=np.arange(n) == 3, zero_modes={}, parameters={}, timings={})
    return field


def test_large_jacobian_is_chunked_and_slices_read_alone(tmp_path):
    path = tmp_path / "r.h5"
    n = 300  # 300 x 300 x 2 x 8 bytes = 1.4 MB: chunked
    field = _write(path, n, n)
    with h5py.File(path) as f:
        assert f["sensitivity/all/dx_dtheta"].chunks == (64, 64, 2)
        assert f["sensitivity/one/dx_dtheta"].chunks is None  # small: contiguous
    np.testing.assert_array_equal(read_jacobian_slice(path, "all", theta=7), field[7])
    np.testing.assert_array_equal(read_jacobian_slice(path, "all", particle=11), field[:, 11])
    np.testing.assert_array_equal(read_jacobian_slice(path, "all", particle=-1, axis=1),
                                  field[:, -1, 1])
    np.testing.assert_array_equal(read_jacobian_slice(path, "all", theta=2, particle=3),
                                  field[2, 3])  # NaN: the rattler
    np.testing.assert_array_equal(read_jacobian_slice(path, "one", particle=5), field[0, 5])
    np.testing.assert_array_equal(read_result(path).dx_dtheta("all"), field)  # still whole


def test_slice_errors_name_the_file_dataset_and_range(tmp_path):
    path = tmp_path / "r.h5"
    _write(path, 40, 40)
    with pytest.raises(InputError, match=r"dx_dtheta of shape \(40, 40, 2\): particle 40 is out "
                                         r"of range; the Jacobian has 40 along that axis"):
        read_jacobian_slice(path, "all", particle=40)
    with pytest.raises(InputError, match="is a scalar; pass theta=None"):
        read_jacobian_slice(path, "one", theta=0)
    with pytest.raises(InputError, match="/sensitivity/nope/dx_dtheta is missing; θ names in "
                                         "the file: all, one"):
        read_jacobian_slice(path, "nope")
    with pytest.raises(InputError, match="theta must be an integer or None"):
        read_jacobian_slice(path, "all", theta=1.5)


def test_layout_rule():
    assert jacobian_layout((4096, 4096, 2)) == {"chunks": (64, 64, 2)}
    assert jacobian_layout((10, 10, 2)) == {}
    assert jacobian_layout((4096, 2)) == {}
