"""Quality gates: named checks of an export with thresholds from config, figures and a pass or fail.

A gate is a small class (:class:`Gate`) with a ``name``, its configurable ``defaults`` (thresholds and options)
and ``run(context) -> GateResult``. :func:`validate` runs the configured gates on an export, merges their
results into the manifest's ``validation`` section (atomically; the manifest digest leaves that section out)
and returns a :class:`ValidationReport`; :func:`format_table` prints it. ``docs/governance.md`` documents every
gate, its figures and its thresholds.

A gates file (``--gates gates.yaml``) maps gate names to settings; every key is checked::

    labels: {box_tolerance_px: 0.001}
    statistical: {max_ratio: 4.0, min_images: 8}
    privacy_generated: {max_distance: 6}
    utility: {enabled: true, steps: 60, min_score: 0.05}

Each gate also takes ``enabled`` (run it) and ``required`` (promotion needs it to have run and passed).
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from synth_torch.export._io import dumps_pretty, write_atomic
from synth_torch.export.manifest import MANIFEST, VALIDATION, code_version
from synth_torch.governance.exports import ExportView, GovernanceError

PASS, FAIL, SKIP = "pass", "fail", "skip"
MAX_FAILURES = 20  # failure messages kept per gate (the figures count all of them)


@contextlib.contextmanager
def quiet_lightning():
    """Silence Lightning's start-up banners and advice while a gate or suite runs a Trainer inside a command."""
    import logging
    import warnings

    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            warnings.filterwarnings("ignore", message=".*(val_dataloader|LeafSpec|litlogger|eval mode).*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class GateContext:
    """What a gate may look at: the export, the real reference folder (statistics, utility) and the protected
    real set (privacy; defaults to the reference)."""

    export: ExportView
    reference: Path | None = None
    protected: Path | None = None
    cache: dict = field(default_factory=dict)  # shared by the gates of one run (e.g. the protected set's hashes)


@dataclass
class GateResult:
    """One gate's outcome: ``status`` pass, fail or skip (with the reason in ``summary``), the thresholds it
    applied, its measured ``figures`` (JSON), the first failure messages, and when and on what data it ran."""

    name: str
    status: str
    summary: str
    thresholds: dict
    figures: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    required: bool = True
    run: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_dict(self) -> dict:
        return {"status": self.status, "required": self.required, "summary": self.summary,
                "thresholds": self.thresholds, "figures": self.figures, "failures": self.failures[:MAX_FAILURES],
                "run": self.run}


class Findings:
    """Problems a gate found: a count per kind, and the first :data:`MAX_FAILURES` messages."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.messages: list[str] = []

    def add(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if len(self.messages) < MAX_FAILURES:
            self.messages.append(f"[{kind}] {message}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        return ", ".join(f"{k} {n}" for k, n in sorted(self.counts.items())) or "none"


class Gate(ABC):
    """A named check. Subclasses set ``name``, ``title`` and ``defaults`` (every setting with its default: the
    type of each default is the type a gates file must give), and implement :meth:`check`."""

    name: ClassVar[str]
    title: ClassVar[str]
    defaults: ClassVar[dict]
    required_by_default: ClassVar[bool] = True
    enabled_by_default: ClassVar[bool] = True

    def __init__(self, **settings):
        unknown = sorted(set(settings) - set(self.defaults) - {"enabled", "required"})
        if unknown:
            raise GovernanceError(f"gates.{self.name}: unknown key(s) {unknown}; allowed: "
                                  f"{sorted(self.defaults) + ['enabled', 'required']}")
        self.enabled = _typed(settings.get("enabled", self.enabled_by_default), True, f"gates.{self.name}.enabled")
        self.required = _typed(settings.get("required", self.required_by_default), True, f"gates.{self.name}.required")
        self.settings = {k: _typed(settings.get(k, v), v, f"gates.{self.name}.{k}") for k, v in self.defaults.items()}

    @classmethod
    def key_figures(cls, figures: dict) -> dict:
        """The figures a release note compares (``a.b`` key -> scalar); default: every scalar leaf."""
        return flatten(figures)

    def result(self, status: str, summary: str, figures: dict | None = None, failures=()) -> GateResult:
        return GateResult(self.name, status, summary, dict(self.settings), figures or {}, list(failures),
                          self.required)

    def skip(self, reason: str) -> GateResult:
        return self.result(SKIP, reason)

    @abstractmethod
    def check(self, ctx: GateContext) -> GateResult:
        """Run the check on ``ctx.export``."""

    def run(self, ctx: GateContext) -> GateResult:
        t0 = time.perf_counter()
        at = utc_now()
        out = self.check(ctx)
        out.run = {"at": at, "seconds": round(time.perf_counter() - t0, 3), "content_digest": ctx.export.content_digest}
        return out


def flatten(d: dict, keep_lists: int = 0, prefix: str = "") -> dict:
    """Scalar leaves of nested mappings as ``a.b.c`` keys; lists of at most ``keep_lists`` scalars are kept as
    values, other lists left out."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, keep_lists, key + "."))
        elif not isinstance(v, list):
            out[key] = v
        elif len(v) <= keep_lists and all(not isinstance(x, (dict, list)) for x in v):
            out[key] = v
    return out


def _typed(value, default, key: str):
    """``value`` checked against the type of ``default`` (ints are accepted for floats; None defaults take
    anything YAML gives; list defaults take lists)."""
    if default is None or value is None and not isinstance(default, bool):
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise GovernanceError(f"{key}: expected {type(default).__name__}, got {value!r}")
    return value


def gate_classes() -> dict[str, type[Gate]]:
    """Every gate, by name, in the order they run."""
    from synth_torch.governance.label_gates import LabelValidityGate, ManifestGate
    from synth_torch.governance.privacy_gates import AssetDuplicateGate, FaceGate, GeneratedDuplicateGate
    from synth_torch.governance.stat_gates import StatisticalGate
    from synth_torch.governance.utility_gate import UtilityGate

    classes = (ManifestGate, LabelValidityGate, StatisticalGate, AssetDuplicateGate, FaceGate,
               GeneratedDuplicateGate, UtilityGate)
    return {c.name: c for c in classes}


def load_gates(config=None) -> list[Gate]:
    """Every gate configured from ``config``: None (defaults), a mapping, or a YAML file path."""
    if config is None:
        config = {}
    elif isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise GovernanceError(f"gates file not found: {path}")
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise GovernanceError(f"gates file {path} is not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise GovernanceError(f"gates: expected a mapping of gate name -> settings, got {type(config).__name__}")
    classes = gate_classes()
    unknown = sorted(set(config) - set(classes))
    if unknown:
        raise GovernanceError(f"gates: unknown gate(s) {unknown}; gates are {list(classes)}")
    gates = []
    for name, cls in classes.items():
        settings = config.get(name) or {}
        if not isinstance(settings, dict):
            raise GovernanceError(f"gates.{name}: expected a mapping of settings, got {settings!r}")
        gates.append(cls(**settings))
    return gates


@dataclass
class ValidationReport:
    """The gates run now (``results``) and the manifest's whole ``validation`` section after merging them."""

    root: Path
    results: list[GateResult]
    validation: dict

    @property
    def passed(self) -> bool:
        return self.validation["passed"]

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if r.status == FAIL]


def overall(gates: dict, required: list[str]) -> bool:
    """No recorded gate failed, and every required gate ran and passed."""
    return all(g["status"] != FAIL for g in gates.values()) and all(
        gates.get(name, {}).get("status") == PASS for name in required)


def validate(root, reference=None, protected=None, gates=None, only=None, write: bool = True) -> ValidationReport:
    """Run the enabled gates (or just ``only``) on the export at ``root`` and merge the results into its
    manifest's ``validation`` section (written atomically unless ``write`` is False).

    Args:
        reference: a real image folder (statistical and utility gates); protected: the protected real set of the
            privacy gates (default: ``reference``).
        gates: None, a mapping or a gates YAML file (:func:`load_gates`); only: gate names to run (others keep
            their earlier results).
    """
    view = ExportView(root)
    configured = load_gates(gates)
    names = [g.name for g in configured]
    if only is not None:
        only = [only] if isinstance(only, str) else list(only)
        bad = sorted(set(only) - set(names))
        if bad:
            raise GovernanceError(f"--only: unknown gate(s) {bad}; gates are {names}")
    for label, folder in (("--reference", reference), ("--protected", protected)):
        if folder is not None and not Path(folder).is_dir():
            raise GovernanceError(f"{label} folder not found: {folder}")
    ctx = GateContext(view, Path(reference) if reference else None,
                      Path(protected) if protected else (Path(reference) if reference else None))
    results = [g.run(ctx) for g in configured if (g.name in only if only is not None else g.enabled)]

    previous = view.manifest.get(VALIDATION) or {}
    recorded = dict(previous.get("gates", {})) if previous.get("content_digest") == view.content_digest else {}
    for r in results:
        recorded[r.name] = r.to_dict()
    recorded = {n: recorded[n] for n in names if n in recorded}
    required = [g.name for g in configured if g.required and g.enabled]
    history = list(previous.get("history", [])) + [{"at": utc_now(), "gates": {r.name: r.status for r in results},
                                                   "passed": overall({r.name: r.to_dict() for r in results}, [])}]
    section = {"passed": overall(recorded, required), "validated": utc_now(), "content_digest": view.content_digest,
               "synth_torch": code_version(), "required": required, "gates": recorded, "history": history}
    if write:
        manifest = {k: v for k, v in view.manifest.items() if k != VALIDATION}
        manifest[VALIDATION] = section
        write_atomic(view.root / MANIFEST, dumps_pretty(manifest), unique=True)
    return ValidationReport(view.root, results, section)


def format_table(report: ValidationReport) -> str:
    """The gates run now as a fixed-width table (gate, status, summary), then the failures, then the verdict."""
    rows = [(r.name, r.status.upper() + ("" if r.required else " (optional)"), r.summary) for r in report.results]
    w0 = max([len("gate")] + [len(r[0]) for r in rows])
    w1 = max([len("status")] + [len(r[1]) for r in rows])
    lines = [f"{'gate':<{w0}}  {'status':<{w1}}  figures", f"{'-' * w0}  {'-' * w1}  {'-' * 7}"]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    for r in report.results:
        if r.failures:
            lines.append(f"\n{r.name} failures ({len(r.failures)} shown):")
            lines += [f"  - {msg}" for msg in r.failures[:MAX_FAILURES]]
    v = report.validation
    missing = [n for n in v["required"] if v["gates"].get(n, {}).get("status") != PASS]
    verdict = "PASSED" if v["passed"] else "FAILED"
    lines.append(f"\n{report.root}: validation {verdict}" + (f" (required gates not passed: {', '.join(missing)})"
                                                             if missing else ""))
    return "\n".join(lines)


def describe_validation(manifest: dict) -> str:
    """Lines for ``synth-torch datasets show``: the recorded verdict and each gate's status and summary."""
    v = manifest.get(VALIDATION)
    if not v:
        return "  validation none (run synth-torch validate)"
    current = v["content_digest"] == manifest["files"]["content_digest"]
    lines = [f"  validation {'PASSED' if v['passed'] else 'FAILED'} ({v['validated']}"
             + ("" if current else "; for other content: re-run validate") + ")"]
    for name, g in v["gates"].items():
        lines.append(f"    {name}: {g['status']}{'' if g['required'] else ' (optional)'} - {g['summary']}")
    return "\n".join(lines)
