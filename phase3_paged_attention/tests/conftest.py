"""Phase 3 tests: the ``device`` fixture (Triton's interpreter on a CPU is set by the root conftest)."""

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE
