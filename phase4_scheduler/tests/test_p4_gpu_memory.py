"""``--gpu-memory-utilization`` (vLLM's flag): the KV pool from a share of GPU memory, checked as arithmetic on
fresh random sizes, and refused by name where it cannot apply."""

import random

import pytest

from phase0_prototype.errors import ModelError
from phase4_scheduler.blocks import blocks_for_memory


def test_blocks_fill_the_share_left_by_weights_and_activations():
    rng = random.Random()
    for _ in range(50):
        total, util = rng.randrange(8, 200) * 2**30, rng.uniform(0.3, 0.98)
        in_use, act, block = rng.randrange(0, 4 * 2**30), rng.randrange(0, 2**30), rng.randrange(2**14, 2**22)
        if util * total - in_use - act < block:
            with pytest.raises(ModelError, match="gpu-memory-utilization"):
                blocks_for_memory(util, total, in_use, act, block)
            continue
        n = blocks_for_memory(util, total, in_use, act, block)
        assert in_use + act + n * block <= util * total < in_use + act + (n + 1) * block


@pytest.mark.parametrize("bad", [0, 1.5, -0.2])
def test_a_share_outside_0_1_is_refused(bad):
    with pytest.raises(ModelError, match=r"must be in \(0, 1\]"):
        blocks_for_memory(bad, 2**34, 0, 0, 2**20)


def test_cpu_engine_refuses_the_flag_by_name():
    from phase0_prototype import load_model
    from phase4_scheduler import SchedulerConfig
    from phase4_scheduler.engine import BatchingConfig, BatchingEngine

    model = load_model("random:tiny", dtype="fp32", device="cpu")
    with pytest.raises(ModelError, match="on a CPU use --num-blocks"):
        BatchingEngine(model, BatchingConfig(SchedulerConfig(2, 32), gpu_memory_utilization=0.9))
