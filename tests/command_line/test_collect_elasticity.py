"""`sensitivity collect` puts each task's /elasticity scalars (pressure, bulk and shear
moduli, the solver report) in its table row; tasks without the group leave them empty."""

from __future__ import annotations

import csv
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner

from sensitivity.cli.main import main


def _result(path: Path, seed: int, elasticity: dict | None) -> None:
    from sensitivity.systems import random_packing, write_result

    system = random_packing(8, phi=0.9, seed=seed)
    write_result(
        path, system=system,
        relaxation={"minimizer": "fire", "steps": 10, "energy": 1e-3, "max_force": 1e-13,
                    "stop_reason": "ftol", "converged": True, "ftol": 1e-12,
                    "max_steps": 100},
        responses={"d": {"dx_dtheta": np.ones((8, 2)), "report": {
            "theta": 1.0, "kind": "diameter", "iterations": 3, "residual": 1e-12,
            "converged": True}}},
        rattlers=np.zeros(8, bool), zero_modes={}, parameters={"config": {}},
        timings={}, elasticity=elasticity)


def test_collect_tabulates_the_elasticity_attributes(tmp_path: Path):
    runs = tmp_path / "runs"
    moduli = [{"pressure": 0.01 * (k + 1), "bulk_modulus": 0.5 + k, "shear_modulus": 0.05 * k,
               "converged": True, "iterations": 40 + k, "stress": -0.01 * np.eye(2),
               "elastic_tensor": np.zeros((2, 2, 2, 2))} for k in range(2)]
    for k, e in enumerate([*moduli, None]):
        (runs / f"t{k}").mkdir(parents=True)
        _result(runs / f"t{k}" / "sensitivity.h5", k, e)
    done = CliRunner().invoke(main, ["collect", str(runs), "-o", str(tmp_path / "summary")])
    assert done.exit_code == 0, done.output
    with open(tmp_path / "summary.csv") as stream:
        rows = sorted(csv.DictReader(stream), key=lambda r: r["directory"])
    for row, e in zip(rows, moduli):
        for key in ("pressure", "bulk_modulus", "shear_modulus"):
            assert float(row[f"elasticity.{key}"]) == e[key]
        assert int(row["elasticity.iterations"]) == e["iterations"]
        assert row["elasticity.converged"] == "True"
    assert rows[2]["elasticity.pressure"] == ""  # no /elasticity: empty, not an error
    with h5py.File(tmp_path / "summary.h5") as f:
        pressure = f["table/elasticity.pressure"][()]
        order = np.argsort([d.decode() for d in f["table/directory"][()]])
        np.testing.assert_array_equal(pressure[order][:2], [0.01, 0.02])
        assert np.isnan(pressure[order][2])
