"""CPU-checkable arithmetic of the solution's launch and of the bench's byte count."""

import pytest
import torch

from phase2_rope_cuda.solution import LaunchConfig, chunks_per_head, launch_shape
from phase2_rope_cuda.workload import RopeShape, counted_bytes


@pytest.mark.parametrize("dtype,head_dim,chunks", [(torch.bfloat16, 64, 4), (torch.float16, 128, 8),
                                                   (torch.float32, 64, 8), (torch.float32, 128, 16)])
def test_one_thread_per_16_bytes_of_each_half(dtype, head_dim, chunks):
    assert chunks_per_head(head_dim, dtype) == chunks
    elem = torch.empty((), dtype=dtype).element_size()
    assert chunks * 16 == head_dim // 2 * elem  # the chunks tile half a head exactly


@pytest.mark.parametrize("tokens", [1, 7, 4097, 16384])
@pytest.mark.parametrize("heads", [2, 36, 72, 520])
@pytest.mark.parametrize("config", [LaunchConfig(1, 32), LaunchConfig(2, 256), LaunchConfig(4, 512), LaunchConfig(1, 2048)])
def test_launch_covers_every_token_and_head(tokens, heads, config):
    head_dim, dtype = 128, torch.float32
    grid, (per_token, tokens_per_block) = launch_shape(tokens, heads, head_dim, dtype, config)
    chunks = chunks_per_head(head_dim, dtype)
    assert per_token % chunks == 0 and per_token * tokens_per_block <= 1024
    assert grid[0] * tokens_per_block >= tokens > (grid[0] - 1) * tokens_per_block
    lanes = per_token // chunks
    # the kernel walks heads lane, lane + lanes, ...: every head is visited by exactly one lane
    visited = sorted(h for lane in range(lanes) for h in range(lane, heads, lanes))
    assert visited == list(range(heads))


def test_counted_bytes_tinyllama_shape():
    shape = RopeShape(tokens=16384, q_heads=32, kv_heads=4, head_dim=64, dtype=torch.bfloat16)
    qk = 16384 * 36 * 64 * 2
    assert counted_bytes(shape, distinct_positions=1000) == 2 * qk + 1000 * 64 * 4


@pytest.mark.parametrize("heads", [1, 5, 36, 520])
@pytest.mark.parametrize("head_dim", [2, 64, 96, 128, 256])
def test_v2_shared_grid_covers_every_pair_of_every_head_once(heads, head_dim):
    from phase2_rope_cuda.staged import launch_shape as staged_launch

    (tokens, tiles), (pairs, heads_per_block) = staged_launch(11, heads, head_dim)
    assert tokens == 11 and pairs == head_dim // 2 and pairs * heads_per_block <= 1024
    covered = [t * heads_per_block + y for t in range(tiles) for y in range(heads_per_block)]
    assert sorted(h for h in covered if h < heads) == list(range(heads))  # each head in exactly one tile
    assert tiles <= 65535 and len(covered) - heads < heads_per_block  # at most one partial tile
