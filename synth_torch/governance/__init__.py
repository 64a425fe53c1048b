"""Datasets as governed artifacts (``docs/governance.md``): quality gates whose results go into the manifest,
a SQLite registry with approvals, a ``released`` alias, rollbacks and an audit log, release notes, and scenario
suites run as regression tests of model checkpoints.

Example:
    >>> from synth_torch.governance import validate
    >>> report = validate("data/defects-v1", reference="../shared/real/magnetic_tile")  # doctest: +SKIP
    >>> report.passed, [r.status for r in report.results]  # doctest: +SKIP
    (True, ['pass', 'pass', 'pass', 'skip', 'skip', 'pass'])
"""

from synth_torch.governance.exports import ExportView, GovernanceError
from synth_torch.governance.gates import Gate, GateResult, ValidationReport, format_table, load_gates, validate
from synth_torch.governance.notes import release_notes, side_of_folder
from synth_torch.governance.registry import Registry
from synth_torch.governance.suites import SuiteResult, run_suite

__all__ = ["ExportView", "Gate", "GateResult", "GovernanceError", "Registry", "SuiteResult", "ValidationReport",
           "format_table", "load_gates", "release_notes", "run_suite", "side_of_folder", "validate"]
