"""The dataset registry: immutable versions of exports, approvals, a movable ``released`` alias, an audit log.

One SQLite file (``--registry PATH``, ``$SYNTH_TORCH_REGISTRY``, default ``~/.synth-torch/registry.sqlite``)
holds it. ``register`` gives an export folder the next version number of its name and keeps its manifest as it
was; a version is never rewritten or deleted (``retire`` only marks it). ``approve`` records who approved it and
why; ``promote`` moves ``released`` to it only when it is approved, not retired, its folder still holds the
registered export and its recorded gates passed on that content, and stores the release notes against the
version released before; ``rollback`` moves ``released`` back to the version released before the current one
(promotions push, rollbacks pop, retired versions are passed over). Every action writes an audit row (who,
when, what, why) in the same transaction as its effect.

Concurrency: every change runs in one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock, waited for up to
``timeout`` seconds), so concurrent commands from several processes serialise: no version number is given
twice and no audit row is lost. Triggers make the audit, approvals and releases tables append-only, refuse
every ``DELETE``, and let a version row change only by being retired.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from synth_torch.export.manifest import VALIDATION, manifest_digest
from synth_torch.governance.exports import ExportView, GovernanceError
from synth_torch.governance.gates import utc_now

ENV = "SYNTH_TORCH_REGISTRY"
DEFAULT_PATH = Path("~/.synth-torch/registry.sqlite")
SCHEMA_VERSION = 1
RELEASED = "released"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_TABLES = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS versions (
        name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL,
        manifest_digest TEXT NOT NULL, content_digest TEXT NOT NULL, scenario_digest TEXT NOT NULL,
        manifest TEXT NOT NULL, registered_at TEXT NOT NULL, registered_by TEXT NOT NULL,
        retired_at TEXT, retired_by TEXT,
        PRIMARY KEY (name, version), UNIQUE (name, manifest_digest))""",
    """CREATE TABLE IF NOT EXISTS approvals (
        id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
        by TEXT NOT NULL, at TEXT NOT NULL, note TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS releases (
        id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('promote', 'rollback')), previous INTEGER,
        by TEXT NOT NULL, at TEXT NOT NULL, note TEXT NOT NULL, validation TEXT, notes TEXT)""",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL,
        name TEXT, version INTEGER, note TEXT NOT NULL, details TEXT NOT NULL)""",
]
_TRIGGERS = [f"""CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table}
                 BEGIN SELECT RAISE(ABORT, 'the registry never {verb} {table} rows'); END"""
             for table in ("audit", "approvals", "releases") for op, verb in (("DELETE", "deletes"),
                                                                             ("UPDATE", "rewrites"))]
_TRIGGERS += ["""CREATE TRIGGER IF NOT EXISTS versions_no_delete BEFORE DELETE ON versions
                 BEGIN SELECT RAISE(ABORT, 'the registry never deletes versions rows'); END""",
              """CREATE TRIGGER IF NOT EXISTS versions_immutable BEFORE UPDATE OF name, version, path,
                 manifest_digest, content_digest, scenario_digest, manifest, registered_at, registered_by ON versions
                 BEGIN SELECT RAISE(ABORT, 'registered versions are immutable'); END"""]


def default_path() -> Path:
    return Path(os.environ.get(ENV) or DEFAULT_PATH).expanduser()


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME@VERSION`` (a number, ``released`` or ``latest``) -> (name, version text or None)."""
    name, _, version = str(ref).partition("@")
    if not _NAME.match(name):
        raise GovernanceError(f"bad dataset name {name!r}: letters, digits, '.', '_' and '-' only")
    if version and not (version.isdigit() or version in (RELEASED, "latest")):
        raise GovernanceError(f"bad version in {ref!r}: expected NAME@<number>, NAME@released or NAME@latest")
    return name, version or None


@dataclass(frozen=True)
class Version:
    """One registered dataset version (a row of ``versions`` with its derived status)."""

    name: str
    version: int
    path: str
    manifest_digest: str
    content_digest: str
    scenario_digest: str
    manifest: dict
    registered_at: str
    registered_by: str
    retired_at: str | None
    retired_by: str | None
    status: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class Registry:
    """The registry in the SQLite file ``path`` (created with its folder on first use)."""

    def __init__(self, path=None, timeout: float = 60.0):
        self.path = Path(path).expanduser() if path is not None else default_path()
        if self.path.exists() and not self.path.is_file():
            raise GovernanceError(f"--registry {self.path} is not a file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise GovernanceError(f"cannot open the registry {self.path}: {exc}") from None
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._write():
            for statement in _TABLES + _TRIGGERS:
                self._db.execute(statement)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) != SCHEMA_VERSION:
                raise GovernanceError(f"{self.path}: registry schema {row['value']}, this synth-torch reads "
                                      f"{SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def _write(self):
        """One write transaction (``BEGIN IMMEDIATE``: waits for SQLite's write lock), committed on success."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self):
        """A consistent snapshot for several reads."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def _audit(self, who: str, action: str, name: str | None, version: int | None, note: str, **details) -> None:
        self._db.execute("INSERT INTO audit (at, who, action, name, version, note, details) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (utc_now(), who, action, name, version, note, json.dumps(details, sort_keys=True)))

    @staticmethod
    def _who(by: str | None) -> str:
        who = (by or "").strip() or getpass.getuser()
        return who

    # ------------------------------------------------------------------ reads
    def released(self, name: str) -> int | None:
        """The version the ``released`` alias points at (None when nothing is released)."""
        stack = self._stack(name)
        return stack[-1] if stack else None

    def _stack(self, name: str) -> list[int]:
        """Released versions, oldest first: promotions push, rollbacks pop (to the version they record)."""
        stack: list[int] = []
        for row in self._db.execute("SELECT action, version FROM releases WHERE name = ? ORDER BY id", (name,)):
            if row["action"] == "promote":
                stack.append(row["version"])
            else:
                while stack and stack[-1] != row["version"]:
                    stack.pop()
        return stack

    def _row(self, name: str, version: int) -> sqlite3.Row:
        row = self._db.execute("SELECT * FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()
        if row is None:
            known = [r[0] for r in self._db.execute("SELECT version FROM versions WHERE name = ? ORDER BY version",
                                                     (name,))]
            raise GovernanceError(f"no dataset {name}@{version} in {self.path}"
                                  + (f" (versions: {known})" if known else " (no such name)"))
        return row

    def _version(self, row: sqlite3.Row) -> Version:
        name, version = row["name"], row["version"]
        if row["retired_at"]:
            status = "retired"
        elif self.released(name) == version:
            status = RELEASED
        elif self._db.execute("SELECT 1 FROM approvals WHERE name = ? AND version = ?", (name, version)).fetchone():
            status = "approved"
        else:
            status = "registered"
        return Version(name, version, row["path"], row["manifest_digest"], row["content_digest"],
                       row["scenario_digest"], json.loads(row["manifest"]), row["registered_at"], row["registered_by"],
                       row["retired_at"], row["retired_by"], status)

    def resolve(self, ref: str) -> tuple[str, int]:
        """``NAME@VERSION`` (number, ``released``, ``latest``) -> (name, version number)."""
        name, version = parse_ref(ref)
        if version is None:
            raise GovernanceError(f"{ref!r}: name a version, e.g. {name}@1, {name}@released or {name}@latest")
        if version == RELEASED:
            number = self.released(name)
            if number is None:
                raise GovernanceError(f"{name} has no released version")
            return name, number
        if version == "latest":
            row = self._db.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
            if row[0] is None:
                raise GovernanceError(f"no dataset named {name} in {self.path}")
            return name, int(row[0])
        return name, int(version)

    def get(self, ref: str) -> Version:
        with self._read():
            return self._version(self._row(*self.resolve(ref)))

    def versions(self, name: str | None = None) -> list[Version]:
        """Every version (of ``name``), by name then number."""
        with self._read():
            rows = self._db.execute("SELECT * FROM versions" + (" WHERE name = ?" if name else "")
                                    + " ORDER BY name, version", (name,) if name else ()).fetchall()
            return [self._version(r) for r in rows]

    def approvals(self, name: str, version: int) -> list[dict]:
        return [dict(r) for r in self._db.execute("SELECT by, at, note FROM approvals WHERE name = ? AND version = ? "
                                                  "ORDER BY id", (name, version))]

    def releases(self, name: str) -> list[dict]:
        """Every promotion and rollback of ``name``, oldest first (with the stored validation and notes)."""
        rows = self._db.execute("SELECT * FROM releases WHERE name = ? ORDER BY id", (name,)).fetchall()
        return [dict(r) | {"validation": json.loads(r["validation"]) if r["validation"] else None} for r in rows]

    def audit(self, name: str | None = None, version: int | None = None) -> list[dict]:
        """Audit rows (of ``name``, of ``version``), oldest first."""
        query, args = "SELECT * FROM audit", []
        if name is not None:
            query += " WHERE name = ?" + (" AND version = ?" if version is not None else "")
            args = [name] + ([version] if version is not None else [])
        return [dict(r) | {"details": json.loads(r["details"])} for r in self._db.execute(query + " ORDER BY id", args)]

    # ------------------------------------------------------------------ actions
    def register(self, root, name: str | None = None, by: str | None = None, note: str = "") -> Version:
        """Register the complete export at ``root`` as the next version of ``name`` (default: its scenario's)."""
        view = ExportView(root)
        name = name or view.manifest["scenario"]["name"]
        parse_ref(name)
        digest = manifest_digest(view.root)
        manifest = {k: v for k, v in view.manifest.items() if k != VALIDATION}
        who = self._who(by)
        with self._write():
            row = self._db.execute("SELECT version FROM versions WHERE name = ? AND manifest_digest = ?",
                                   (name, digest)).fetchone()
            if row is not None:
                raise GovernanceError(f"{view.root} ({digest}) is already registered as {name}@{row[0]}")
            version = self._db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?",
                                       (name,)).fetchone()[0]
            self._db.execute("INSERT INTO versions (name, version, path, manifest_digest, content_digest, "
                             "scenario_digest, manifest, registered_at, registered_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (name, version, str(view.root.resolve()), digest, view.content_digest,
                              manifest["scenario"]["digest"], json.dumps(manifest), utc_now(), who))
            self._audit(who, "register", name, version, note, path=str(view.root.resolve()), manifest_digest=digest,
                        content_digest=view.content_digest)
            return self._version(self._row(name, version))

    def approve(self, ref: str, by: str, note: str) -> Version:
        if not (by or "").strip():
            raise GovernanceError("approve needs --by WHO")
        if not (note or "").strip():
            raise GovernanceError("approve needs --note WHY")
        with self._write():
            name, version = self.resolve(ref)
            row = self._row(name, version)
            if row["retired_at"]:
                raise GovernanceError(f"{name}@{version} is retired; it cannot be approved")
            self._db.execute("INSERT INTO approvals (name, version, by, at, note) VALUES (?, ?, ?, ?, ?)",
                             (name, version, by.strip(), utc_now(), note))
            self._audit(by.strip(), "approve", name, version, note)
            return self._version(row)

    def check_promotable(self, name: str, version: int) -> dict:
        """The version's current validation section, or a :class:`GovernanceError` saying why it may not be
        promoted (not approved, retired, folder changed, gates not passed on this content)."""
        row = self._row(name, version)
        ref = f"{name}@{version}"
        if row["retired_at"]:
            raise GovernanceError(f"{ref} is retired")
        if not self.approvals(name, version):
            raise GovernanceError(f"{ref} is not approved (synth-torch datasets approve {ref} --by WHO --note WHY)")
        try:
            view = ExportView(row["path"])
            digest = manifest_digest(view.root)
        except (GovernanceError, OSError) as exc:
            raise GovernanceError(f"{ref}: its folder {row['path']} no longer holds the export: {exc}") from None
        if digest != row["manifest_digest"]:
            raise GovernanceError(f"{ref}: {row['path']} now holds another export ({digest}, registered "
                                  f"{row['manifest_digest']})")
        validation = view.manifest.get(VALIDATION)
        if not validation:
            raise GovernanceError(f"{ref} has no gate results: run synth-torch validate {row['path']}")
        if validation["content_digest"] != row["content_digest"]:
            raise GovernanceError(f"{ref}: the recorded gate results are for other content; re-run validate")
        if not validation["passed"]:
            bad = [n for n, g in validation["gates"].items() if g["status"] == "fail"]
            missing = [n for n in validation["required"] if validation["gates"].get(n, {}).get("status") != "pass"]
            raise GovernanceError(f"{ref}: its gates did not pass (failed: {bad or 'none'}; required but not "
                                  f"passed: {missing or 'none'})")
        return validation

    def promote(self, ref: str, by: str | None = None, note: str = "") -> dict:
        """Move ``released`` to ``ref``; returns the release row (with its Markdown ``notes``)."""
        from synth_torch.governance.notes import release_notes

        who = self._who(by)
        with self._write():
            name, version = self.resolve(ref)
            validation = self.check_promotable(name, version)
            previous = self.released(name)
            if previous == version:
                raise GovernanceError(f"{name}@{version} is already the released version")
            notes = release_notes(self.side(name, previous) if previous is not None else None,
                                  self.side(name, version))
            self._db.execute("INSERT INTO releases (name, version, action, previous, by, at, note, validation, notes) "
                             "VALUES (?, ?, 'promote', ?, ?, ?, ?, ?, ?)",
                             (name, version, previous, who, utc_now(), note, json.dumps(validation), notes))
            self._audit(who, "promote", name, version, note, previous=previous)
            return self.releases(name)[-1]

    def rollback(self, name: str, note: str, by: str | None = None) -> tuple[int, int]:
        """Move ``released`` back to the version released before the current one; returns (from, to)."""
        if not (note or "").strip():
            raise GovernanceError("rollback needs --note WHY")
        parse_ref(name)
        who = self._who(by)
        with self._write():
            stack = self._stack(name)
            if not stack:
                raise GovernanceError(f"{name} has no released version to roll back")
            current = stack.pop()
            while stack and self._row(name, stack[-1])["retired_at"]:
                stack.pop()
            if not stack:
                raise GovernanceError(f"{name}@{current} is the only released version (not retired); nothing to "
                                      f"roll back to")
            target = stack[-1]
            self._db.execute("INSERT INTO releases (name, version, action, previous, by, at, note) "
                             "VALUES (?, ?, 'rollback', ?, ?, ?, ?)", (name, target, current, who, utc_now(), note))
            self._audit(who, "rollback", name, target, note, previous=current)
            return current, target

    def retire(self, ref: str, note: str, by: str | None = None) -> Version:
        """Mark a version retired (kept, never promoted again); the released version cannot be retired."""
        if not (note or "").strip():
            raise GovernanceError("retire needs --note WHY")
        who = self._who(by)
        with self._write():
            name, version = self.resolve(ref)
            row = self._row(name, version)
            if row["retired_at"]:
                raise GovernanceError(f"{name}@{version} is already retired")
            if self.released(name) == version:
                raise GovernanceError(f"{name}@{version} is the released version: promote another version or roll "
                                      f"back first")
            self._db.execute("UPDATE versions SET retired_at = ?, retired_by = ? WHERE name = ? AND version = ?",
                             (utc_now(), who, name, version))
            self._audit(who, "retire", name, version, note)
            return self._version(self._row(name, version))

    def side(self, name: str, version: int):
        """A version as one side of release notes: its current manifest (with gate results) when its folder still
        holds it, else the manifest kept at registration."""
        from synth_torch.governance.notes import Side

        row = self._row(name, version)
        manifest = json.loads(row["manifest"])
        with contextlib.suppress(GovernanceError, OSError, ValueError):
            view = ExportView(row["path"])
            if manifest_digest(view.root) == row["manifest_digest"]:
                manifest = view.manifest
        return Side(f"{name}@{version}", row["path"], row["manifest_digest"], manifest)


def _folder_state(v: Version) -> str:
    try:
        return "present" if manifest_digest(v.path) == v.manifest_digest else "CHANGED (holds another export)"
    except OSError:
        return "MISSING"


def describe_versions(reg: Registry, name: str | None = None) -> str:
    """One line per version (of ``name``): ref, status, released marker, registration, folder."""
    rows = reg.versions(name)
    if not rows:
        return f"no datasets{' named ' + name if name else ''} in {reg.path}"
    lines = [f"{'dataset':<24} {'status':<10} {'images':>7}  {'registered':<20} {'by':<12} folder"]
    for v in rows:
        lines.append(f"{v.ref:<24} {v.status:<10} {v.manifest['counts']['images']:>7}  {v.registered_at:<20} "
                     f"{v.registered_by:<12} {v.path}")
    return "\n".join(lines)


def describe_version(reg: Registry, ref: str, notes: bool = False) -> str:
    """A version's record: identity, folder state, approvals, recorded gates, releases and its audit rows; with
    ``notes`` the release notes stored when it was promoted."""
    from synth_torch.governance.gates import describe_validation

    v = reg.get(ref)
    m = v.manifest
    lines = [f"{v.ref}  {v.status}" + (f" (retired {v.retired_at} by {v.retired_by})" if v.retired_at else ""),
             f"  folder     {v.path}  ({_folder_state(v)})",
             f"  manifest   {v.manifest_digest}", f"  content    {v.content_digest}",
             f"  scenario   {m['scenario']['name']}  {v.scenario_digest}",
             f"  samples    {m['counts']['images']} at {m['generation']['resolution'][1]}x{m['generation']['resolution'][0]}"
             f", seed {m['generation']['seed']}", f"  registered {v.registered_at} by {v.registered_by}"]
    for a in reg.approvals(v.name, v.version):
        lines.append(f"  approved   {a['at']} by {a['by']}: {a['note']}")
    try:
        current = ExportView(v.path).manifest if _folder_state(v) == "present" else m
    except GovernanceError:
        current = m
    lines.append(describe_validation(current))
    mine = [r for r in reg.releases(v.name) if v.version in (r["version"], r["previous"])]
    for r in mine:
        what = ("promoted to released" if r["action"] == "promote" and r["version"] == v.version else
                f"replaced as released by @{r['version']}" if r["action"] == "promote" else
                f"rolled back to (from @{r['previous']})" if r["version"] == v.version else
                f"rolled back from (to @{r['version']})")
        lines.append(f"  release    {r['at']} {what} by {r['by']}" + (f": {r['note']}" if r["note"] else ""))
    lines.append("  audit")
    for row in reg.audit(v.name, v.version):
        lines.append(f"    {row['id']:>5} {row['at']} {row['who']:<12} {row['action']:<9} {row['note']}")
    if notes:
        promoted = [r for r in mine if r["action"] == "promote" and r["version"] == v.version]
        lines += ["", promoted[-1]["notes"] if promoted else f"({v.ref} was never promoted: no stored release notes)"]
    return "\n".join(lines)


def describe_audit(reg: Registry, name: str | None = None) -> str:
    rows = reg.audit(name)
    if not rows:
        return "no audit rows"
    return "\n".join(f"{r['id']:>5} {r['at']} {r['who']:<12} {r['action']:<9} "
                     f"{(r['name'] or '') + ('@' + str(r['version']) if r['version'] is not None else ''):<20} "
                     f"{r['note']}" for r in rows)
