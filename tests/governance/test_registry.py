"""The registry's life cycle (register, approve, promote with release notes, rollback, retire), its refusals,
its append-only audit log, and concurrent writers from several processes."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sqlite3

import pytest

from synth_torch.cli import main
from synth_torch.export._io import dumps_pretty
from synth_torch.export import read_manifest
from synth_torch.governance.exports import GovernanceError
from synth_torch.governance.gates import validate
from synth_torch.governance.registry import Registry


def version_of(clean_export, dst, k: int, validated: bool = True):
    """A copy of the clean export that is a distinct version (another creation time), validated."""
    shutil.copytree(clean_export, dst)
    m = read_manifest(dst)
    m["created"] = f"2030-01-01T00:00:{k:02d}Z"
    (dst / "manifest.json").write_bytes(dumps_pretty(m))
    if validated:
        assert validate(dst, only=["manifest", "labels"]).passed
    return dst


@pytest.fixture
def versions(clean_export, tmp_path):
    return [version_of(clean_export, tmp_path / f"v{k}", k) for k in range(1, 4)]


def test_life_cycle_with_rollback(versions, tmp_path, capsys):
    db = tmp_path / "registry.sqlite"
    with Registry(db) as reg:
        refs = [reg.register(v, name="tt", by="alice", note=f"export {k}").ref for k, v in enumerate(versions, 1)]
        assert refs == ["tt@1", "tt@2", "tt@3"]
        with pytest.raises(GovernanceError, match="already registered as tt@1"):
            reg.register(versions[0], name="tt")
        with pytest.raises(GovernanceError, match="not approved"):
            reg.promote("tt@1")
        reg.approve("tt@1", by="bob", note="spot-checked 20 images")
        first = reg.promote("tt@1", by="carol", note="first release")
        assert first["previous"] is None and "(first release)" in first["notes"]
        for ref in ("tt@2", "tt@3"):
            reg.approve(ref, by="bob", note="ok")
            reg.promote(ref, by="carol")
        assert reg.released("tt") == 3 and reg.get("tt@released").version == 3
        assert reg.rollback("tt", note="tt@3 breaks the detector", by="dave") == (3, 2)
        assert reg.rollback("tt", note="tt@2 too", by="dave") == (2, 1)
        with pytest.raises(GovernanceError, match="only released version"):
            reg.rollback("tt", note="again")
        with pytest.raises(GovernanceError, match="is the released version"):
            reg.retire("tt@1", note="x")
        reg.retire("tt@2", note="superseded", by="erin")
        reg.promote("tt@3", by="carol", note="fixed the detector instead")
        assert reg.rollback("tt", note="skip the retired one") == (3, 1)  # tt@2 is retired: passed over
        with pytest.raises(GovernanceError, match="retired"):
            reg.promote("tt@2")
        statuses = {v.ref: v.status for v in reg.versions("tt")}
        assert statuses == {"tt@1": "released", "tt@2": "retired", "tt@3": "approved"}
        actions = [(r["action"], r["who"], r["version"]) for r in reg.audit("tt")]
        assert actions == [("register", "alice", 1), ("register", "alice", 2), ("register", "alice", 3),
                           ("approve", "bob", 1), ("promote", "carol", 1), ("approve", "bob", 2),
                           ("promote", "carol", 2), ("approve", "bob", 3), ("promote", "carol", 3),
                           ("rollback", "dave", 2), ("rollback", "dave", 1), ("retire", "erin", 2),
                           ("promote", "carol", 3), ("rollback", reg._who(None), 1)]
        assert all(r["at"] and r["who"] for r in reg.audit())
        assert reg.get("tt@2").manifest["created"] == "2030-01-01T00:00:02Z"  # kept as registered
    assert main(["datasets", "show", "tt@3", "--registry", str(db), "--notes"]) == 0
    out = capsys.readouterr().out
    assert "# Release notes: tt@3 (against tt@1)" in out and "rolled back from" in out  # its last promotion
    assert main(["datasets", "list", "--registry", str(db)]) == 0
    assert "tt@2" in capsys.readouterr().out


def test_nothing_is_deleted_or_rewritten(versions, tmp_path):
    db = tmp_path / "registry.sqlite"
    with Registry(db) as reg:
        reg.register(versions[0], name="tt")
        reg.approve("tt@1", by="bob", note="ok")
    con = sqlite3.connect(db)
    for sql in ("DELETE FROM versions", "DELETE FROM audit", "UPDATE audit SET who = 'mallory'",
                "UPDATE versions SET path = '/elsewhere'", "DELETE FROM approvals", "UPDATE approvals SET by = 'x'"):
        with pytest.raises(sqlite3.IntegrityError):
            con.execute(sql)
    con.close()
    with Registry(db) as reg:
        assert len(reg.audit()) == 2 and reg.get("tt@1").status == "approved"


def test_promote_refuses_failed_missing_or_changed_gates(clean_export, tmp_path):
    unvalidated = version_of(clean_export, tmp_path / "a", 1, validated=False)
    failing = version_of(clean_export, tmp_path / "b", 2)
    changed = version_of(clean_export, tmp_path / "c", 3)
    with Registry(tmp_path / "r.sqlite") as reg:
        for k, v in enumerate((unvalidated, failing, changed), 1):
            reg.register(v, name="tt")
            reg.approve(f"tt@{k}", by="bob", note="ok")
        with pytest.raises(GovernanceError, match="no gate results"):
            reg.promote("tt@1")
        label = sorted((failing / "yolo/labels/train").glob("*.txt"))[0]
        label.write_text("7 0.5 0.5 2.0 0.1\n")
        assert not validate(failing, only=["manifest", "labels"]).passed
        with pytest.raises(GovernanceError, match=r"did not pass \(failed: \['manifest', 'labels'\]"):
            reg.promote("tt@2")
        m = read_manifest(changed)
        m["command"] = "edited"
        (changed / "manifest.json").write_bytes(dumps_pretty(m))
        with pytest.raises(GovernanceError, match="now holds another export"):
            reg.promote("tt@3")
        assert reg.released("tt") is None


def test_bad_references_and_arguments(versions, tmp_path, capsys):
    db = str(tmp_path / "r.sqlite")
    with Registry(db) as reg:
        reg.register(versions[0], name="tt")
        with pytest.raises(GovernanceError, match=r"no dataset tt@7 .*versions: \[1\]"):
            reg.get("tt@7")
        with pytest.raises(GovernanceError, match="bad dataset name"):
            reg.get("../x@1")
        with pytest.raises(GovernanceError, match="needs --note"):
            reg.rollback("tt", note=" ")
    with pytest.raises(SystemExit) as exc:
        main(["datasets", "promote", "tt@1", "--registry", db])
    assert exc.value.code == 2 and "not approved" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["datasets", "register", str(tmp_path / "nothing"), "--registry", db])
    assert exc.value.code == 2 and "not a complete synth-torch export" in capsys.readouterr().err


def _worker(db, root, barrier, out):
    barrier.wait()
    with Registry(db, timeout=120) as reg:
        v = reg.register(root, name="shared", by=root.name)
        reg.approve(v.ref, by=root.name, note="concurrent")
        reg.promote(v.ref, by=root.name)
        out.put(v.version)


def test_concurrent_writers_from_several_processes(clean_export, tmp_path):
    n = 4
    roots = [version_of(clean_export, tmp_path / f"w{k}", k) for k in range(n)]
    db = tmp_path / "shared.sqlite"
    Registry(db).close()
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(db, r, barrier, out)) for r in roots]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    assert sorted(out.get(timeout=5) for _ in range(n)) == list(range(1, n + 1))
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    with Registry(db) as reg:
        assert [v.version for v in reg.versions("shared")] == list(range(1, n + 1))
        assert sorted(v.path.rsplit("/", 1)[-1] for v in reg.versions("shared")) == [f"w{k}" for k in range(n)]
        audit = reg.audit("shared")
        assert len(audit) == 3 * n and sorted(r["action"] for r in audit).count("promote") == n
        releases = reg.releases("shared")
        # promotions serialised: each one's "previous" is the one promoted just before it
        assert [r["previous"] for r in releases] == [None] + [r["version"] for r in releases[:-1]]
        assert reg.released("shared") == releases[-1]["version"]
        assert json.loads(json.dumps(releases[-1]["validation"]))["passed"]
