"""Phase 7 model tests (CPU, fp32, the ``tiny`` preset): parity with diffusers' DiT, the attention functions,
the per-token parts, non-square latents, the DDIM sampler against diffusers' own loop, and the FLOP count."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.models.embeddings import get_2d_sincos_pos_embed_from_grid
from torch.utils.flop_counter import FlopCounterMode

from module0_profiling.impl import impls_under_test
from phase6_tensor_parallel.dist_env import TPError, TPGroup
from phase7_dit_parallel import framework, load_impl, solution
from phase7_dit_parallel.config import PRESETS
from phase7_dit_parallel.flops import step_flops
from phase7_dit_parallel.model import (
    block,
    embed,
    explicit_attention,
    final,
    position_embedding,
    sdpa_attention,
    unpatchify,
)
from phase7_dit_parallel.oracle import to_diffusers
from phase7_dit_parallel.sampler import sample
from phase7_dit_parallel.weights import random_weights

CFG = PRESETS["tiny"]


def _inputs(seed: int, batch: int, height: int, width: int):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, CFG.in_channels, height, width, generator=g)
    timesteps = torch.randint(0, 1000, (batch,), generator=g)
    labels = torch.randint(0, CFG.num_classes + 1, (batch,), generator=g)  # the null class included
    return latents, timesteps, labels


@pytest.mark.parametrize("impl", impls_under_test(["framework", "solution"]))
@pytest.mark.parametrize("latent_size", [8, 6])  # a 4x4 and an odd 3x3 patch grid
def test_matches_diffusers_dit(impl, latent_size):
    w = random_weights(CFG, seed=latent_size)
    latents, timesteps, labels = _inputs(100 + latent_size, 3, latent_size, latent_size)
    with torch.no_grad():
        expected = to_diffusers(w, latent_size)(latents, timestep=timesteps, class_labels=labels).sample
    got = load_impl(impl).build(w)(latents, timesteps, labels)
    assert got.shape == (3, CFG.out_channels, latent_size, latent_size)
    assert expected.abs().mean() > 0.1  # every path contributes: not a near-zero output
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_attention_functions_match_float64_math():
    g = torch.Generator().manual_seed(7)
    q, k, v = (3 * torch.randn(2, 3, 17, 8, generator=g) for _ in range(3))  # peaked softmax rows
    q64, k64, v64 = q.double(), k.double(), v.double()
    expected = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q64, k64) / 8 ** 0.5, dim=-1) @ v64
    for attend in (explicit_attention, sdpa_attention):
        torch.testing.assert_close(attend(q, k, v).double(), expected, rtol=1e-5, atol=1e-5)


def test_block_and_final_are_per_token():
    """What sequence parallelism relies on: on any subset of tokens, block (with a per-token attend) and
    final give that subset of the full result."""
    w = random_weights(CFG, seed=3)
    latents, timesteps, labels = _inputs(4, 2, 8, 8)
    x, cond = embed(w, latents, timesteps, labels)
    subset = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(5))[:7]
    per_token_attend = lambda q, k, v: v * q.sigmoid()
    full = block(w.blocks[0], x, cond, per_token_attend)
    torch.testing.assert_close(block(w.blocks[0], x[:, subset], cond, per_token_attend), full[:, subset])
    torch.testing.assert_close(final(w, x[:, subset], cond), final(w, x, cond)[:, subset])


def test_non_square_latent_embedding_and_unpatchify():
    """diffusers' DiT takes square latents only; its pieces still check ours on a 4x6 patch grid."""
    w = random_weights(CFG, seed=9)
    latents, timesteps, labels = _inputs(10, 2, 8, 12)
    gh, gw = 4, 6
    cols, rows = torch.arange(gw, dtype=torch.float64), torch.arange(gh, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy")).reshape(2, 1, gh, gw)  # diffusers' layout
    pos = get_2d_sincos_pos_embed_from_grid(CFG.hidden, grid)
    torch.testing.assert_close(position_embedding(CFG.hidden, gh, gw), pos)

    tokens, _ = embed(w, latents, timesteps, labels)
    conv = F.conv2d(latents, w.patch_w, w.patch_b, stride=CFG.patch).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, conv + pos.float(), rtol=1e-5, atol=1e-5)

    out = torch.randn(2, gh * gw, CFG.patch ** 2 * CFG.out_channels)
    p, c = CFG.patch, CFG.out_channels
    expected = torch.einsum("nhwpqc->nchpwq", out.reshape(2, gh, gw, p, p, c)).reshape(2, c, gh * p, gw * p)
    torch.testing.assert_close(unpatchify(CFG, out, 8, 12), expected, rtol=0, atol=0)


def _diffusers_ddim(transformer, latents, class_labels, steps, guidance_scale):
    """diffusers' ``DiTPipeline.__call__`` loop without the VAE decode (its batch-doubled form)."""
    channels = latents.shape[1]
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                              beta_schedule="linear", clip_sample=False)
    guided = guidance_scale > 1
    model_input = torch.cat([latents] * 2) if guided else latents
    null = torch.full_like(class_labels, CFG.num_classes)
    labels = torch.cat([class_labels, null]) if guided else class_labels
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        if guided:
            half = model_input[: len(model_input) // 2]
            model_input = torch.cat([half, half])
        model_input = scheduler.scale_model_input(model_input, t)
        with torch.no_grad():
            noise_pred = transformer(model_input, timestep=t[None].expand(len(model_input)),
                                     class_labels=labels).sample
        if guided:
            eps, rest = noise_pred[:, :channels], noise_pred[:, channels:]
            cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
            half_eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
            noise_pred = torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)
        model_output, _ = torch.split(noise_pred, channels, dim=1)
        model_input = scheduler.step(model_output, t, model_input).prev_sample
    return model_input.chunk(2)[0] if guided else model_input


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_sampler_matches_diffusers_ddim_loop(guidance_scale):
    w = random_weights(CFG, seed=11)
    labels = torch.tensor([3, 7])
    seed, steps = 12, 4
    noise = torch.randn(2, CFG.in_channels, 8, 8, generator=torch.Generator().manual_seed(seed))
    expected = _diffusers_ddim(to_diffusers(w, 8), noise, labels, steps, guidance_scale)
    got = sample(framework.build(w), labels, latent_size=8, steps=steps, guidance_scale=guidance_scale,
                 seed=seed)
    assert (expected - noise).abs().mean() > 0.1  # the loop moved the latents
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


CPU_SDPA = "aten._scaled_dot_product_flash_attention_for_cpu"


@pytest.mark.parametrize("impl,attention_op", [(framework, "aten.bmm"), (solution, CPU_SDPA)])
def test_step_flops_match_torch_flop_counter(impl, attention_op):
    w = random_weights(CFG, seed=13)
    latents, timesteps, labels = _inputs(14, 2, 8, 6)
    model = impl.build(w)
    with FlopCounterMode(display=False) as counter:
        model(latents, timesteps, labels)
    counted = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    expected = step_flops(CFG, batch=2, tokens=12)
    assert counter.get_total_flops() == expected["total"]
    assert counted[attention_op] == expected["attention"]
    assert expected["total"] == expected["attention"] + expected["mlp"] + expected["other"]


def test_framework_refuses_a_group():
    w = random_weights(CFG, seed=15)
    with pytest.raises(TPError, match="one device") as err:
        framework.build(w, group=TPGroup(rank=0, world=2))
    assert "\n" not in str(err.value) and "solution" in str(err.value)
    framework.build(w, group=TPGroup())  # a group of one is one device


def test_solution_hands_a_group_to_sp_forward(monkeypatch):
    """The SP branch's wiring only (the SP math is ``test_p7_parallel``'s): arguments in, result out."""
    calls = []
    fake = types.ModuleType("phase7_dit_parallel.sequence_parallel")
    fake.sp_forward = lambda *args: calls.append(args) or args[1] * 2
    monkeypatch.setitem(__import__("sys").modules, "phase7_dit_parallel.sequence_parallel", fake)
    w = random_weights(CFG, seed=16)
    group = TPGroup(rank=1, world=4)
    latents, timesteps, labels = _inputs(17, 1, 8, 8)
    out = solution.build(w, group=group, parallel="ring")(latents, timesteps, labels)
    assert torch.equal(out, latents * 2)
    (args,) = calls
    assert args[0] is w and args[2] is timesteps and args[3] is labels
    assert args[4:] == (group, "ring", sdpa_attention)
    with pytest.raises(ValueError, match="ulysses, ring"):
        solution.build(w, group=group, parallel="tree")


def test_random_weights_are_seeded_and_nonzero():
    a, b, c = random_weights(CFG, seed=1), random_weights(CFG, seed=1), random_weights(CFG, seed=2)
    pairs = list(zip(a.tensors(), b.tensors(), c.tensors(), strict=True))
    assert all(torch.equal(x, y) and not torch.equal(x, z) and x.std() > 0 for x, y, z in pairs)
    half = a.to(torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in half.tensors())
    assert half.num_parameters() == a.num_parameters()
