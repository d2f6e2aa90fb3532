"""TitanInfer's import name in a checkout: ``from titaninfer import LLMEngine, EngineConfig, SamplingParams`` and
``python -m titaninfer …`` (the ``titaninfer`` command) from the repository root or an editable install. The
engine lives in ``shared/``, the name the lessons import; the wheel installs ``shared/`` itself as
``titaninfer`` (pyproject's ``package-dir``) and leaves this directory out, so an installed distribution
claims no ``shared``."""

from phase0_prototype.sampling import SamplingParams
from shared.engine import EngineConfig, LLMEngine

__all__ = ["LLMEngine", "EngineConfig", "SamplingParams"]
