"""A θ's linear-solve report is one type (SolveReport), written and read by systems io: the
attributes of /sensitivity/<name> are those the attribute dicts wrote before the type (same
names, values, HDF5 types; the same order on the forward-mode paths), every attribute a run
writes is a typed field, and files written before the type (or by hand) still read."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from sensitivity.systems import SolveReport, random_packing, read_result, write_result
from sensitivity.systems._h5 import write_tree

#: /sensitivity/<name> attributes as runs wrote them before SolveReport, in their order
#: (values from `sensitivity run` files: examples/elasticity.yaml's shear, a vector θ by
#: batched Krylov solves, one by the sparse factorization, a relaxation that failed).
REACH = "pairs within 1.5 x the interaction range at x*"
SCALAR = {"kind": "strain", "species": -1, "theta": 0.0, "theta_meaning": "strain ε_xy",
          "component": "xy", "solver": "cg", "method": "forward mode",
          "preconditioner": "block_jacobi", "tol": 1e-10, "iterations": 93,
          "iterations_total": 93, "residual": 2.99e-10, "relative_residual": 6.6e-11,
          "solver_relative_residual": 5.9e-11, "converged": True, "inconsistency": 8.2e-18,
          "n_solves": 1, "time_s": 0.058, "time_compile_s": 8.57,
          "batched_with": ["shear", "small_diameter"], "linear_range_plus": 9.2e-4,
          "linear_range_plus_pair": [24, 46], "linear_range_plus_event": "opens",
          "linear_range_minus": -1.8e-4, "linear_range_minus_pair": [4, 38],
          "linear_range_minus_event": "closes", "linear_range_reach": REACH}
ITERATIVE = {"kind": "diameters", "species": -1, "theta": [1.0, 1.4, 1.0],
             "theta_meaning": "every particle's diameter", "solver": "cg",
             "method": "forward mode, 3 batched iterative solves",
             "preconditioner": "block_jacobi", "tol": 1e-10, "iterations": 55,
             "iterations_total": 154, "residual": 7.9e-11, "relative_residual": 9.6e-11,
             "solver_relative_residual": 9.8e-11, "converged": True, "inconsistency": 0.0,
             "n_solves": 3, "time_s": 0.0039, "time_compile_s": 1.85, "many_rhs": "iterative",
             "reason": "sensitivity.many_rhs is 'iterative'"}
FACTORIZATION = {**{k: v for k, v in ITERATIVE.items() if k not in ("time_s", "time_compile_s",
                                                                    "many_rhs", "reason")},
                 "solver": "sparse_lu", "preconditioner": "none", "iterations": 1,
                 "many_rhs": "factorization", "reason": "sensitivity.many_rhs is 'factorization'",
                 "time_s": 0.098, "time_compile_s": 1.32, "time_rhs_s": 0.052,
                 "time_factor_s": 0.019, "factor_fill": 1.96, "factor_levels": [34, 34],
                 "factor_unknowns": 64, "rhs_jvps": 11}
SKIPPED = {"kind": "diameter", "converged": False, "species": 0,
           "skipped": "FIRE did not converge in 3 steps"}


def _write(path, reports):
    system = random_packing(3, dim=2, phi=0.5, seed=1)
    responses = {name: {"dx_dtheta": np.zeros((3, 3, 2) if r.kind == "diameters" else (3, 2)),
                        "report": r} for name, r in reports.items()}
    return write_result(path, system=system, relaxation={}, responses=responses,
                        rattlers=np.zeros(3, bool), zero_modes={}, parameters={}, timings={})


@pytest.mark.parametrize("attrs, same_order", [(SCALAR, True), (ITERATIVE, True),
                                                (FACTORIZATION, False), (SKIPPED, False)],
                         ids=["scalar", "iterative", "factorization", "skipped"])
def test_the_attributes_are_those_the_dict_wrote(tmp_path, attrs, same_order):
    """Every attribute a run writes is a field (nothing in ``extra``); the group holds the
    attributes the dict wrote with the same HDF5 types and values, in the same order on the
    forward-mode paths (the factorization's and a skipped θ's follow the declared order)."""
    report = SolveReport.from_attrs(attrs)
    assert report.extra == {}
    path = _write(tmp_path / "typed.h5", {"t": report})
    with h5py.File(tmp_path / "dict.h5", "w") as handle:  # the writer before SolveReport
        write_tree(handle.create_group("t", track_order=True), attrs, "/sensitivity/t")
    with h5py.File(path, "r") as typed, h5py.File(tmp_path / "dict.h5", "r") as old:
        new_attrs, old_attrs = typed["sensitivity/t"].attrs, old["t"].attrs
        assert (list(new_attrs) == list(attrs)) is same_order
        assert sorted(new_attrs) == sorted(old_attrs) == sorted(attrs)
        for key in attrs:
            assert new_attrs.get_id(key).dtype == old_attrs.get_id(key).dtype, key
            np.testing.assert_array_equal(new_attrs[key], old_attrs[key], err_msg=key)
    back = read_result(path).responses["t"]["report"]
    assert isinstance(back, SolveReport) and back.to_attrs().keys() == report.to_attrs().keys()
    assert back.converged is attrs["converged"] and back.kind == attrs["kind"]
    # equal as the file holds it: θ's components and the pairs come back as arrays
    assert back == report and back != report.replace(iterations=-1)


def test_an_older_file_still_reads(tmp_path):
    """A group holding only some fields plus unknown ones (a hand-written or older file)
    reads: missing fields None, the rest in ``extra``, written back unchanged."""
    path = _write(tmp_path / "old.h5", {"t": SolveReport(kind="diameter")})
    with h5py.File(path, "r+") as handle:
        group = handle["sensitivity/t"]
        for key in list(group.attrs):
            del group.attrs[key]
        group.attrs["iterations"] = np.int64(12)
        group.attrs["residual_norm"] = 3e-11  # a name this version does not write
    result = read_result(path)
    report = result.responses["t"]["report"]
    assert report == SolveReport(iterations=12, extra={"residual_norm": 3e-11})
    assert result.converged is True and result.response("t").converged is None
    assert report.replace(converged=False, note="x") == SolveReport(
        iterations=12, converged=False, extra={"residual_norm": 3e-11, "note": "x"})
    again = read_result(_write(tmp_path / "again.h5", {"t": report}))
    assert again.responses["t"]["report"] == report
