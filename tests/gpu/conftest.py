"""Fixtures shared by the GPU tests (tests/conftest.py skips them without a CUDA device)."""

import pytest
import torch

import fused_rnn
from gpu_helpers import load_extension_or_fail


@pytest.fixture(scope="module")
def ext():
    """The extension with the fused forward (a test file may narrow it with its own)."""
    mod = load_extension_or_fail()
    assert hasattr(torch.ops.fused_rnn, "_fused_forward"), "the extension has no _fused_forward"
    return mod


@pytest.fixture(autouse=True)
def _fused_kernel_asked_for():
    """The GPU tests are the kernels' tests: modules and functional calls here run the fused
    kernel (``auto`` would send small or uncovered shapes to cuDNN), and a call the kernel
    cannot run raises instead of passing on another path. Tests of the other paths say so
    with their own ``fused_rnn.backend(...)`` block, which wins (innermost)."""
    with fused_rnn.backend("fused"):
        yield


@pytest.fixture
def sync(request, monkeypatch):
    """The forward kernel's synchronisation policy for one test: parametrize ``sync``
    indirectly with "flags" or "grid" (gpu_helpers.SYNC_POLICIES) and FUSED_RNN_SYNC is set
    to it for the test, restored afterwards (monkeypatch); None, or a test that does not
    parametrize it: the environment as it is (the default, unless the caller exported one).
    Returns the policy (or None)."""
    policy = getattr(request, "param", None)
    if policy is not None:
        monkeypatch.setenv("FUSED_RNN_SYNC", policy)
    return policy


@pytest.fixture
def precision():
    """Sets torch.backends.cudnn.allow_tf32 (which the fused kernels follow too)."""
    old = torch.backends.cudnn.allow_tf32
    yield lambda prec: setattr(torch.backends.cudnn, "allow_tf32", prec == "tf32")
    torch.backends.cudnn.allow_tf32 = old
