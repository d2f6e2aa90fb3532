"""The CUDA implementations refuse CPU tensors with one line that points to the reference."""

import pytest
import torch

from module0_profiling.impl import ImplError, impls_under_test
from phase2_rope_cuda import RopeDeviceError, build_cos_sin_cache, load_impl


@pytest.mark.parametrize("impl", impls_under_test(["framework", "phase2_rope_cuda.staged", "solution"]))
def test_cuda_impl_on_cpu_points_to_reference(impl):
    q, k = torch.randn(3, 4, 64), torch.randn(3, 2, 64)
    with pytest.raises(RopeDeviceError, match=r"phase2_rope_cuda\.reference\.apply_rope_"):
        load_impl(impl).apply_rope_(q, k, torch.arange(3), build_cos_sin_cache(64, 8))


def test_unknown_impl_names_the_choices():
    with pytest.raises(ImplError, match="framework, solution"):
        load_impl("phase2_rope_cuda.no_such_module")


def test_reference_impl_loads_and_runs_on_cpu():
    q, k = torch.randn(3, 4, 64), torch.randn(3, 2, 64)
    q0 = q.clone()
    load_impl("reference").apply_rope_(q, k, torch.tensor([0, 5, 2]), build_cos_sin_cache(64, 8))
    torch.testing.assert_close(q[0], q0[0])  # position 0 is the identity rotation
    assert not torch.allclose(q[1], q0[1])
