"""Test configuration: every test runs in float64, compiled for speed of compilation.

The suite compiles thousands of small programs and runs each a few times: XLA's CPU backend
optimisation (LLVM's expensive passes) costs more than it saves there, so the tests turn it
down, and use XLA:CPU's older loop-fusion code generation, which compiles these programs in
about half the time of the MLIR fusion emitters, in one piece rather than split for parallel
code generation (its threads only contend on the cores the test workers already use; measured
about 10% less compile time) (``XLA_FLAGS``, set before jax is imported and inherited by the
subprocesses the tests start). Results are the same programs without the optimisation
passes; a user's run and the benchmarks keep XLA's defaults.
``SENSITIVITY_TEST_XLA_DEFAULTS=1`` runs the suite with them.

One persistent compilation cache serves the whole run, in a fresh folder that the run's
first process makes and removes: xdist's workers and the subprocesses the tests start inherit
it (``JAX_COMPILATION_CACHE_DIR``, which the command line also follows), so a program that one
of them compiled is loaded by the others, and no test writes to the user's own cache. Measured
as alternating whole runs: 341 / 328 s without it, 307 / 284 s with it. Tests that change the
cache options get them back (:func:`_persistent_cache_stays_with_its_test`).

``SENSITIVITY_TEST_TIMES=path`` appends each test's wall time (setup + call + teardown) to
``path`` as it finishes, one ``seconds<TAB>node id`` line per phase, so the slow tests of a
run are known even when it is interrupted (``pytest --durations`` prints only at the end).
Each line also gives the seconds that phase spent compiling (tracing, lowering and XLA's
backend compile, from jax.monitoring) and the number of backend compilations:
``seconds<TAB>phase<TAB>node id<TAB>compile seconds<TAB>compilations``.
"""

import json
import os
import shutil
import tempfile

import pytest

_FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
                 " --xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")
if not os.environ.get("SENSITIVITY_TEST_XLA_DEFAULTS"):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

_RUN_CACHE = "SENSITIVITY_TEST_RUN_CACHE"  # set by the run's first process, for the others
_MADE_RUN_CACHE = _RUN_CACHE not in os.environ
if _MADE_RUN_CACHE:
    os.environ[_RUN_CACHE] = tempfile.mkdtemp(prefix="sensitivity-tests-jax-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_RUN_CACHE]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # as the command line does
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

_TIMES = os.environ.get("SENSITIVITY_TEST_TIMES")
_COMPILE = [0.0, 0]  # seconds compiling, backend compilations, in the current phase

if _TIMES:
    from jax import monitoring

    def _on_duration(event, seconds, **_):
        if event.startswith("/jax/core/compile/"):
            _COMPILE[0] += seconds
            _COMPILE[1] += event.endswith("backend_compile_duration")

    monitoring.register_event_duration_secs_listener(_on_duration)


_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(autouse=True)
def _persistent_cache_stays_with_its_test():
    """A test that points JAX's persistent compilation cache elsewhere, or turns it off,
    would do so for the rest of the worker's process: put the options back after the test
    (the run's shared cache), and the cache with them."""
    before = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
    yield
    if any(getattr(jax.config, name) != value for name, value in before.items()):
        for name, value in before.items():
            jax.config.update(name, value)
        from jax._src import compilation_cache  # no public way to forget the open cache

        compilation_cache.reset_cache()


def pytest_runtest_logreport(report):
    if _TIMES and getattr(report, "node", None) is None:  # not xdist's copy of a worker's
        with open(_TIMES, "a") as handle:
            handle.write(f"{report.duration:.3f}\t{report.when}\t{report.nodeid}"
                         f"\t{_COMPILE[0]:.3f}\t{_COMPILE[1]}\n")
        _COMPILE[:] = [0.0, 0]


def pytest_configure(config):
    """Under ``-n`` (pytest-xdist), each test module runs whole on one worker (``--dist
    loadscope``) unless ``--dist`` is given: its module-scoped relaxed packings are built, and
    its programs compiled, once rather than on both workers. The modules go out longest
    first (:func:`pytest_collection_modifyitems`), so that no long module is left for the
    end while the other worker idles."""
    if getattr(config.option, "dist", "no") == "load" and not _explicit_dist(config):
        config.option.dist = "loadscope"
        config.option.loadscopereorder = False


def _explicit_dist(config):
    return any(arg.startswith(("--dist", "-d")) for arg in config.invocation_params.args)


_DURATIONS = os.path.join(os.path.dirname(__file__), "durations.json")


@pytest.hookimpl(trylast=True)  # after -m and -k deselected what they deselect
def pytest_collection_modifyitems(config, items):
    """Modules in decreasing order of their selected tests' measured seconds
    (``tests/durations.json``: each test's setup + call + teardown in one run of the suite
    under load, the tests over 0.5 s; only the order matters; regenerate it from a
    ``SENSITIVITY_TEST_TIMES`` file with ``python tests/durations.py TIMES``)."""
    # the workers collect (the controller only schedules what they collected, in their order)
    if not hasattr(config, "workerinput") or _explicit_dist(config):
        return
    try:
        with open(_DURATIONS) as handle:
            seconds = json.load(handle)
    except (OSError, ValueError):
        return
    weight = {}
    for item in items:
        module = item.nodeid.split("::")[0]
        weight[module] = weight.get(module, 0.0) + seconds.get(item.nodeid, 0.1)
    order = {item.nodeid: k for k, item in enumerate(items)}
    items.sort(key=lambda item: (-weight[item.nodeid.split("::")[0]], order[item.nodeid]))


def pytest_unconfigure(config):
    if _MADE_RUN_CACHE:  # xdist's controller (or the only process) made it: the last to end
        shutil.rmtree(os.environ[_RUN_CACHE], ignore_errors=True)
