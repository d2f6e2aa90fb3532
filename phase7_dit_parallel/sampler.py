"""Classifier-free-guided DDIM around any ``DiTModel``: the loop a DiT serves, ``steps`` forwards per image.

As ``diffusers``' ``DiTPipeline``: DiT's linear betas (1e-4 … 0.02 over 1,000 training steps) in
``diffusers.DDIMScheduler``; with ``guidance_scale > 1`` the batch is doubled with the null class
(``num_classes``), guidance mixes the noise (eps) channels only, and the learned-variance half of the
output is dropped (DDIM does not use it). The latents stay fp32 between steps; only the model runs in
``dtype``. Every step has the same shapes — what CUDA graphs need (``solution``). The initial noise is
``torch.randn(shape, generator=torch.Generator().manual_seed(seed))`` on the CPU, so a seed gives the same
latents on any device. Limit: latents only (no VAE decode, the weights are random anyway).
"""

from __future__ import annotations

import sys

import torch
from diffusers import DDIMScheduler
from tqdm import tqdm

from phase7_dit_parallel.model import DiTModel


def dit_scheduler() -> DDIMScheduler:
    """DDIM with DiT's training noise schedule (no clipping: latents are not bounded like pixels)."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=False)


def sample(model: DiTModel, labels: torch.Tensor | list[int], *, latent_size: int, steps: int = 50,
           guidance_scale: float = 4.0, seed: int = 0, device: torch.device | str = "cpu",
           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Latents ``[len(labels), in_channels, latent_size, latent_size]`` (fp32) after ``steps`` DDIM steps."""
    cfg = model.config
    labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    guided = guidance_scale > 1
    model_labels = torch.cat([labels, torch.full_like(labels, cfg.num_classes)]) if guided else labels
    shape = (labels.numel(), cfg.in_channels, latent_size, latent_size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    scheduler = dit_scheduler()
    scheduler.set_timesteps(steps)
    for t in tqdm(scheduler.timesteps, desc="DDIM", disable=not sys.stderr.isatty()):
        model_in = torch.cat([x, x]) if guided else x
        out = model(model_in.to(dtype), t.expand(model_labels.numel()).to(device), model_labels)
        eps = out[:, : cfg.in_channels].float()
        if guided:
            cond, uncond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
        x = scheduler.step(eps, t, x).prev_sample
    return x
