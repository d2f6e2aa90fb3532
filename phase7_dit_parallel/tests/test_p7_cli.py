"""``python -m phase7_dit_parallel sample``: SP = 2 gives the one-device latents; bad input is one line, exit 2."""

from __future__ import annotations

import pytest
import torch

from phase7_dit_parallel import PRESETS, load_impl
from phase7_dit_parallel.cli import main
from phase7_dit_parallel.sampler import sample
from phase7_dit_parallel.weights import random_weights


def test_sample_over_two_ranks_equals_the_one_device_sampler(tmp_path):
    out = tmp_path / "latents.pt"
    assert main(["sample", "--labels", "3,5", "--steps", "4", "--seed", "9", "--sp", "2", "--parallel", "ring",
                 "--out", str(out)]) == 0
    weights = random_weights(PRESETS["tiny"], seed=9)
    with torch.no_grad():
        expected = sample(load_impl("framework").build(weights), [3, 5], latent_size=8, steps=4, seed=9)
    got = torch.load(out)
    assert got.shape == (2, PRESETS["tiny"].in_channels, 8, 8)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("argv,words", [
    (["--labels", "1,x"], "--labels"),
    (["--labels", "10"], "[0, 10)"),
    (["--latent", "7"], "patch size"),
    (["--sp", "3"], "--sp 3 must divide"),
    (["--sp", "8", "--parallel", "ulysses"], "heads"),
    (["--preset", "huge"], "--preset"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, capsys):
    assert main(["sample", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and "\n" not in err
