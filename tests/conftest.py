"""Test configuration: every test runs in float64.

``SENSITIVITY_TEST_TIMES=path`` appends each test's wall time (setup + call + teardown) to
``path`` as it finishes, one ``seconds<TAB>node id`` line per phase, so the slow tests of a
run are known even when it is interrupted (``pytest --durations`` prints only at the end).
"""

import os

import jax

jax.config.update("jax_enable_x64", True)

_TIMES = os.environ.get("SENSITIVITY_TEST_TIMES")


def pytest_runtest_logreport(report):
    if _TIMES:
        with open(_TIMES, "a") as handle:
            handle.write(f"{report.duration:.3f}\t{report.when}\t{report.nodeid}\n")
