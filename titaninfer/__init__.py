"""TitanInfer's import name: ``from titaninfer import LLMEngine, EngineConfig, SamplingParams``, and
``python -m titaninfer …`` (the ``titaninfer`` command). The engine itself lives in the repository's
``shared/`` package (the lessons import it by that name); this package only names it."""

from phase0_prototype.sampling import SamplingParams
from shared.engine import EngineConfig, LLMEngine

__all__ = ["LLMEngine", "EngineConfig", "SamplingParams"]
