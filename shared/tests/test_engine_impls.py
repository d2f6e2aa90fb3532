"""``--impl`` specs: presets, per-phase overrides (last wins), module paths, ``auto`` per device, errors."""

from __future__ import annotations

import sys
import types

import pytest

from shared import framework, solution
from shared.impls import COMPONENTS, ImplSpecError, parse, quant_method, resolve


def test_default_is_every_solution_and_presets_apply_before_overrides():
    assert parse(None) == parse("solution") == solution.IMPLS
    assert parse("framework") == framework.IMPLS
    mixed = parse(["phase3=framework", "framework,phase0=solution", "phase3=reference"])
    assert mixed == {**framework.IMPLS, "phase0": "solution", "phase3": "reference"}
    assert parse({"4": "framework"})["phase4"] == "framework"  # digits accepted
    assert parse("phase3_paged_attention=solution")["phase3"] == "solution"  # directory names too


def test_every_phase_has_a_component_and_presets_name_only_known_choices():
    assert set(COMPONENTS) == set(solution.IMPLS) == set(framework.IMPLS)
    for preset in (solution.IMPLS, framework.IMPLS):
        for key, name in preset.items():
            assert name in COMPONENTS[key].names


def test_a_module_path_preset(monkeypatch):
    mine = types.ModuleType("my_engine_preset")
    mine.IMPLS = {"phase0": "framework", "phase3": "phase3_paged_attention.mine"}
    monkeypatch.setitem(sys.modules, "my_engine_preset", mine)
    got = parse("my_engine_preset")
    assert got["phase0"] == "framework" and got["phase3"] == "phase3_paged_attention.mine"
    assert got["phase4"] == solution.IMPLS["phase4"]


def test_auto_resolves_per_device_and_quant_names():
    impls = parse(None)
    assert resolve(impls, "cpu", native_block_manager=False)["phase1"] == "reference"
    assert resolve(impls, "cuda", native_block_manager=True) == {**impls, "phase1": "solution", "phase3": "solution"}
    assert resolve(impls, "cpu", native_block_manager=True)["phase3"] == "reference"
    assert quant_method(impls) is None
    assert [quant_method({"phase5": n}) for n in ("rtn", "framework", "solution", "gptq")] == ["rtn", "rtn", "awq", "gptq"]


@pytest.mark.parametrize("spec,needle", [
    ("phase7=solution", "unknown phase 'phase7'"),
    ("phase2=cuda", "unknown implementation 'cuda' for phase2"),
    ("phase4=", "unknown implementation '' for phase4"),
    ("fastest", "neither phaseN=NAME nor a preset"),
    ("shared.engine", "has no IMPLS dict"),
])
def test_bad_specs_name_the_choices(spec, needle):
    with pytest.raises(ImplSpecError, match=needle.replace("(", r"\(")) as info:
        parse(spec)
    assert "\n" not in str(info.value)
