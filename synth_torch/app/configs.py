"""The Hydra configuration shipped with the package, and the ``scenario`` config group.

``CONFIG_DIR`` is ``synth_torch/configs`` (package data; the repository's top-level ``configs/`` points to it), so
``synth-torch train`` and ``synth-torch eval`` work from a plain ``pip install``.

The ``scenario`` group is served by :class:`ScenarioSource`, a Hydra config source (``synthscenario://`` in the
primary configs' search path): ``scenario=<builtin>`` (``defects``, ``tabletop``) and ``scenario=<path.yaml>``
both give the scenario's complete normalised form (:meth:`~synth_torch.scenario.Scenario.to_dict`, file paths made
absolute), so every section and parameter is a config key that the command line overrides without ``+``:
``scenario.camera.distance=[0.8,1.2]``. Uniform ranges appear as ``[lo, hi]`` and constants as numbers; an override
replaces a value by another number or range (``~key`` then ``+key={loguniform:[a,b]}`` switches to another kind).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from omegaconf import OmegaConf

from synth_torch.scenario.config import ConfigError, builtin_scenarios, load_scenario

__all__ = ["CONFIG_DIR", "ScenarioSource", "scenario_node"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUP = "scenario"


def _friendly(value):
    """Distributions as a person writes them: ``{uniform: [a, b]}`` -> ``[a, b]``."""
    if isinstance(value, dict):
        if set(value) == {"uniform"}:
            return list(value["uniform"])
        return {k: _friendly(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_friendly(v) for v in value]
    return value


def scenario_node(source: str) -> dict:
    """The config node of ``scenario=<source>``: a built-in name or a YAML path (relative to the working
    directory), as its normalised dict with absolute file paths."""
    return _friendly(load_scenario(source).to_dict(absolute=True))


class ScenarioSource(ConfigSource):
    """Hydra config source of the ``scenario`` group (module docstring)."""

    @staticmethod
    def scheme() -> str:
        return "synthscenario"

    @staticmethod
    def _option(config_path: str) -> str | None:
        prefix = GROUP + "/"
        if not config_path.startswith(prefix):
            return None
        option = config_path[len(prefix):]
        return option[: -len(".yaml")] if option.endswith(".yaml") and option[:-5] in builtin_scenarios() else option

    def load_config(self, config_path: str) -> ConfigResult:
        option = self._option(config_path)
        try:
            node = scenario_node(option)
        except ConfigError as exc:
            raise ConfigLoadError(f"scenario={option}: {exc}") from exc
        return ConfigResult(config=OmegaConf.create(node), path=self.full_path(), provider=self.provider,
                            header={"package": GROUP})

    def available(self) -> bool:
        return True

    def is_group(self, config_path: str) -> bool:
        return config_path.rstrip("/") in ("", GROUP)

    def is_config(self, config_path: str) -> bool:
        option = self._option(config_path)
        if option is None or option == "":
            return False
        return option in builtin_scenarios() or (option.endswith((".yaml", ".yml")) and Path(option).is_file())

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        if config_path.rstrip("/") == GROUP and results_filter in (None, ObjectType.CONFIG):
            return list(builtin_scenarios())
        if config_path == "" and results_filter in (None, ObjectType.GROUP):
            return [GROUP]
        return []


Plugins.instance().register(ScenarioSource)

