import os

import pytest
import torch

# the helper modules shared by several test files assert too: full assertion reports
pytest.register_assert_rewrite("compile_helpers", "gpu_helpers")


def pytest_configure(config):
    # pytest-timeout (installed on the GPU machine, used by scripts/gpu_check.sh) registers
    # this marker itself; without the plugin a test may still carry it.
    config.addinivalue_line("markers", "timeout(seconds): per-test time limit (pytest-timeout)")


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip cleanly where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# FUSED_RNN_TEST_TRACE=FILE: one line when each test starts and one when it ends, appended
# and closed at once, so that a test that hangs (and is killed with its process by a time
# limit) is named afterwards: the last "start" without its "end" (scripts/gpu_check.sh).
_TRACE = os.environ.get("FUSED_RNN_TEST_TRACE")


def _trace(*fields):
    with open(_TRACE, "a") as f:
        f.write("\t".join(fields) + "\n")


def pytest_runtest_logstart(nodeid, location):
    if _TRACE:
        _trace("start", nodeid)


_OUTCOME: dict[str, str] = {}


def pytest_runtest_logreport(report):
    # a test's outcome: "failed" if any phase failed, else the call's ("skipped" from setup)
    if _TRACE and (report.failed or report.when == "call" or report.skipped):
        if _OUTCOME.get(report.nodeid) != "failed":
            _OUTCOME[report.nodeid] = report.outcome


def pytest_runtest_logfinish(nodeid, location):
    if _TRACE:
        _trace("end", _OUTCOME.pop(nodeid, "passed"), nodeid)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(autouse=True)
def _autotune_isolated(monkeypatch):
    """Autotuning off and its cache in memory only, unless a test turns them on
    (tests/test_autotune.py): no test measures by surprise or reads another's cache, and
    nothing is written to the user's ~/.cache."""
    from fused_rnn import tuning

    monkeypatch.setenv(tuning.ENV, "off")
    monkeypatch.setenv(tuning.CACHE_ENV, "off")
    monkeypatch.delenv(tuning.GRAPHS_ENV, raising=False)
    tuning._SETTINGS.clear()
    tuning.clear()
    yield
    tuning._SETTINGS.clear()
    tuning.clear()
