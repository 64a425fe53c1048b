"""Scenarios: validated descriptions of what to generate, and sampling them into scene specs."""

from synth_torch.scenario.config import Scenario, load_scenario
from synth_torch.scenario.distributions import ConfigError, Dist
from synth_torch.scenario.sampler import ScenarioSampler, SceneParams

__all__ = ["ConfigError", "Dist", "Scenario", "ScenarioSampler", "SceneParams", "load_scenario"]
