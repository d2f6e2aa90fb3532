"""``phase0_prototype.dev``: the variants lessons and GPU scripts compare leave the product state as found."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")


def test_pdl_off_switches_every_device_off_and_restores_the_cache(monkeypatch):
    from phase0_prototype.dev import pdl_off
    from phase0_prototype.kernels import gemv

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(gemv, "_PDL", {0: True})
    with pdl_off():
        assert gemv._PDL == {0: False, 1: False}
    assert gemv._PDL == {0: True}
    with pytest.raises(RuntimeError), pdl_off():
        raise RuntimeError("a failed variant")
    assert gemv._PDL == {0: True}  # restored on the way out of an error too
