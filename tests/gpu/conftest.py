"""Fixtures shared by the GPU tests (tests/conftest.py skips them without a CUDA device)."""

import pytest
import torch


@pytest.fixture
def precision():
    """Sets torch.backends.cudnn.allow_tf32 (which the fused kernels follow too)."""
    old = torch.backends.cudnn.allow_tf32
    yield lambda prec: setattr(torch.backends.cudnn, "allow_tf32", prec == "tf32")
    torch.backends.cudnn.allow_tf32 = old
