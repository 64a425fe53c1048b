"""Release notes: what changed between two dataset versions, in Markdown a reviewer reads without the YAML.

:func:`release_notes` compares two manifests (export folders or registry versions; ``synth-torch datasets diff
A B`` prints them and ``promote`` stores them) section by section:

* **Scenario**: parameters added, removed or changed (``camera.distance: uniform [0.45, 0.75] -> ...``), slices
  added, removed or changed with their weights and shares, and structural changes (classes' shapes, sizes,
  textures, surfaces, image folders);
* **Generation**: seed, sample range, resolution, sensor, options, code and library versions;
* **Assets**: added, removed, modified (same path, new content) or moved (same content, new path), by sha256;
* **Label schema**: classes added, removed, renamed or renumbered, conventions, the annotation rule;
* **Counts** per slice and per class, before and after;
* **Quality gates**: every gate's status and figures before and after, its thresholds, and which gates were run
  again on B's content.
"""

from __future__ import annotations

from dataclasses import dataclass

from synth_torch.export.manifest import VALIDATION, manifest_digest
from synth_torch.governance.exports import ExportView
from synth_torch.governance.gates import flatten, gate_classes
from synth_torch.spec.params import SECTIONS

MAX_FIGURE_ROWS = 40


def _flat(d: dict) -> dict:
    return flatten(d, keep_lists=8)


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a label for the reader, the folder, the manifest digest and the manifest."""

    label: str
    path: str
    manifest_digest: str
    manifest: dict


def side_of_folder(root) -> Side:
    view = ExportView(root)
    return Side(str(root), str(view.root), manifest_digest(view.root), view.manifest)


def fmt(value) -> str:
    """A scenario value as a reader writes it: ``uniform [0.45, 0.75]``, ``0.3``, ``choice [a, b], p [...]``."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items()) if value else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def _short(digest: str | None) -> str:
    return "-" if not digest else digest.replace("sha256:", "")[:16]


def _params(section_dict: dict) -> dict[str, object]:
    """Parameter name (``section.key``) -> value of the parameter sections of a (slice of a) scenario."""
    return {f"{sec}.{k}": v for sec in SECTIONS for k, v in (section_dict.get(sec) or {}).items()}


def _changes(a: dict, b: dict, what: str) -> list[str]:
    """Bullets for keys added to, removed from or changed between two flat mappings."""
    out = []
    lead = f"- {what} " if what else "- "
    for key in sorted(set(a) | set(b)):
        if key not in a:
            out.append(f"{lead}`{key}` added: {fmt(b[key])}")
        elif key not in b:
            out.append(f"{lead}`{key}` removed (was {fmt(a[key])})")
        elif a[key] != b[key]:
            out.append(f"{lead}`{key}`: {fmt(a[key])} -> {fmt(b[key])}")
    return out


def _table(header: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _scenario(a: dict | None, b: dict) -> list[str]:
    sb = b["scenario"]["normalised"]
    if a is None:
        lines = [f"First release of scenario `{sb['name']}` ({_short(b['scenario']['digest'])}):"]
        lines += [f"- `{k}`: {fmt(v)}" for k, v in sorted(_params(sb).items())]
        bullets, table = _slices({}, sb["slices"])
        return lines + bullets + table
    sa = a["scenario"]["normalised"]
    if a["scenario"]["digest"] == b["scenario"]["digest"]:
        return ["No change (same scenario digest)."]
    lines = _changes(_params(sa), _params(sb), "parameter")
    structure_a = {k: v for k, v in sa.items() if k not in SECTIONS and k not in ("slices", "categories", "defect_types")}
    structure_b = {k: v for k, v in sb.items() if k not in SECTIONS and k not in ("slices", "categories", "defect_types")}
    lines += _changes(structure_a, structure_b, "setting")
    for key, label in (("categories", "category"), ("defect_types", "defect type")):
        ca = {c["name"]: c for c in sa.get(key, [])}
        cb = {c["name"]: c for c in sb.get(key, [])}
        for name in sorted(set(ca) | set(cb)):
            if name not in ca:
                lines.append(f"- {label} `{name}` added: {fmt({k: v for k, v in cb[name].items() if k != 'name'})}")
            elif name not in cb:
                lines.append(f"- {label} `{name}` removed")
            else:
                lines += _changes({k: v for k, v in ca[name].items()}, {k: v for k, v in cb[name].items()},
                                  f"{label} `{name}`:")
    bullets, table = _slices(sa["slices"], sb["slices"])
    lines += bullets
    if not lines:
        lines.append("The scenario's settings are unchanged; its digest changed with the contents of its assets "
                     "(see Assets).")
    return lines + table


def _slices(a: dict, b: dict) -> tuple[list[str], list[str]]:
    """(bullets of slices added, removed or changed; a table of every slice's weight and share)."""
    lines = []
    for name in b:
        if name not in a:
            over = _params(b[name])
            lines.append(f"- slice `{name}` added (weight {fmt(b[name]['weight'])})"
                         + (": " + "; ".join(f"`{k}` {fmt(v)}" for k, v in over.items()) if over else ""))
    for name in a:
        if name not in b:
            lines.append(f"- slice `{name}` removed (weight {fmt(a[name]['weight'])})")
    total_a = sum(s["weight"] for s in a.values()) or 1.0
    total_b = sum(s["weight"] for s in b.values()) or 1.0
    for name in a:
        if name in b:
            if a[name]["weight"] != b[name]["weight"]:
                lines.append(f"- slice `{name}` weight {fmt(a[name]['weight'])} -> {fmt(b[name]['weight'])} (share "
                             f"{a[name]['weight'] / total_a:.1%} -> {b[name]['weight'] / total_b:.1%})")
            lines += _changes(_params(a[name]), _params(b[name]), f"slice `{name}`:")
    rows = []
    for name in list(a) + [n for n in b if n not in a]:
        wa, wb = a.get(name, {}).get("weight"), b.get(name, {}).get("weight")
        rows.append([f"`{name}`", "-" if wa is None else f"{wa:g}", "-" if wa is None else f"{wa / total_a:.1%}",
                     "-" if wb is None else f"{wb:g}", "-" if wb is None else f"{wb / total_b:.1%}",
                     "" if wa == wb else "**changed**"])
    return lines, ["", "Slice weights (share of samples):", ""] + _table(
        ["slice", "weight A", "share A", "weight B", "share B", ""], rows)


def _generation(a: dict, b: dict) -> list[str]:
    ga = {**a["generation"], "synth_torch": a["synth_torch"], "environment": a["environment"]}
    gb = {**b["generation"], "synth_torch": b["synth_torch"], "environment": b["environment"]}
    flat_a, flat_b = _flat(ga), _flat(gb)
    return _changes(flat_a, flat_b, "") or ["No change."]


def _assets(a: list[dict], b: list[dict]) -> list[str]:
    by_hash_a = {x["sha256"]: x for x in a}
    by_hash_b = {x["sha256"]: x for x in b}
    by_path_a = {x["path"]: x for x in a}
    by_path_b = {x["path"]: x for x in b}
    rows = []
    for x in b:
        if x["sha256"] in by_hash_a:
            old = by_hash_a[x["sha256"]]
            if old["path"] != x["path"]:
                rows.append(["moved", x["role"], f"{old['path']} -> {x['path']}", _short(x["sha256"])])
        elif x["path"] in by_path_a:
            rows.append(["modified", x["role"], x["path"], f"{_short(by_path_a[x['path']]['sha256'])} -> "
                                                           f"{_short(x['sha256'])}"])
        else:
            rows.append(["added", x["role"], x["path"], _short(x["sha256"])])
    for x in a:
        if x["sha256"] not in by_hash_b and x["path"] not in by_path_b:
            rows.append(["removed", x["role"], x["path"], _short(x["sha256"])])
    if not rows:
        return [f"No change ({len(b)} asset file(s), same contents)."]
    return _table(["change", "role", "path", "sha256"], rows)


def _label_schema(a: dict, b: dict) -> list[str]:
    ca = {c["id"]: c for c in a["classes"]}
    cb = {c["id"]: c for c in b["classes"]}
    ida = {c["name"]: c["id"] for c in a["classes"]}
    lines = []
    for cid in sorted(set(ca) | set(cb)):
        if cid not in ca:
            name = cb[cid]["name"]
            lines.append(f"- class `{name}` added as id {cid}" if name not in ida else
                         f"- class `{name}` renumbered: id {ida[name]} -> {cid}")
        elif cid not in cb:
            lines.append(f"- class id {cid} `{ca[cid]['name']}` removed")
        elif ca[cid] != cb[cid]:
            lines.append(f"- class id {cid}: {fmt(ca[cid])} -> {fmt(cb[cid])}")
    rest_a = _flat({k: v for k, v in a.items() if k != "classes"})
    rest_b = _flat({k: v for k, v in b.items() if k != "classes"})
    return lines + _changes(rest_a, rest_b, "") or ["No change."]


def _counts(a: dict | None, b: dict) -> list[str]:
    ca = a["counts"] if a else {"images": 0, "slices": {}, "classes": {}}
    cb = b["counts"]
    rows = [["**images**", ca["images"], cb["images"], f"{cb['images'] - ca['images']:+d}"]]
    for name in list(ca["slices"]) + [n for n in cb["slices"] if n not in ca["slices"]]:
        x, y = ca["slices"].get(name, 0), cb["slices"].get(name, 0)
        rows.append([f"slice `{name}`", x, y, f"{y - x:+d}"])
    lines = _table(["", "A", "B", "change"], rows) + [""]
    rows = []
    for name in list(ca["classes"]) + [n for n in cb["classes"] if n not in ca["classes"]]:
        x = ca["classes"].get(name, {"instances": 0, "images": 0})
        y = cb["classes"].get(name, {"instances": 0, "images": 0})
        rows.append([f"`{name}`", x["instances"], y["instances"], f"{y['instances'] - x['instances']:+d}",
                     x["images"], y["images"]])
    return lines + _table(["class", "instances A", "instances B", "change", "images A", "images B"], rows)


def _gates(a: dict | None, b: dict) -> list[str]:
    va = (a or {}).get(VALIDATION) or {}
    vb = b.get(VALIDATION) or {}
    ga, gb = va.get("gates", {}), vb.get("gates", {})
    if not gb:
        return ["B has no gate results (synth-torch validate was not run on it)."]
    current = vb["content_digest"] == b["files"]["content_digest"]
    lines = [f"B's verdict: **{'PASSED' if vb['passed'] else 'FAILED'}** (validated {vb['validated']}"
             + ("" if current else ", on other content") + f"); required gates: {', '.join(vb['required']) or 'none'}."
             + ("" if not va else f" A's verdict: {'PASSED' if va['passed'] else 'FAILED'}."), ""]
    rows = []
    for name in list(gb) + [n for n in ga if n not in gb]:
        x, y = ga.get(name), gb.get(name)
        rerun = ("not run for B" if y is None else
                 f"run on B's content {y['run']['at']}" if y["run"]["content_digest"] == b["files"]["content_digest"]
                 else "results of other content")
        rows.append([f"`{name}`", x["status"] if x else "-", y["status"] if y else "-", rerun])
    lines += _table(["gate", "A", "B", "B's run"], rows)
    for name in gb:
        x, y = ga.get(name), gb[name]
        title = f" ({gate_classes()[name].title})" if name in gate_classes() else ""
        lines += ["", f"**{name}**{title}: {y['summary']}"]
        if x is not None and x["thresholds"] != y["thresholds"]:
            lines += _changes(_flat(x["thresholds"]), _flat(y["thresholds"]), "threshold")
        figures = gate_classes()[name].key_figures if name in gate_classes() else flatten
        fa, fb = figures(x["figures"]) if x and x["figures"] else {}, figures(y["figures"]) if y["figures"] else {}
        keys = list(fb) + [k for k in fa if k not in fb]
        rows = [[f"`{k}`", fmt(fa.get(k, "-")), fmt(fb.get(k, "-"))] for k in keys[:MAX_FIGURE_ROWS]]
        if rows:
            lines += [""] + _table(["figure", "A", "B"], rows)
        if len(keys) > MAX_FIGURE_ROWS:
            lines.append(f"({len(keys) - MAX_FIGURE_ROWS} more figures in the manifests)")
        if y["failures"]:
            lines += [""] + [f"- {msg}" for msg in y["failures"][:10]]
    return lines


def release_notes(a: Side | None, b: Side) -> str:
    """Markdown release notes of ``b`` against ``a`` (None: a first release)."""
    mb, ma = b.manifest, a.manifest if a else None
    title = f"# Release notes: {b.label}" + (f" (against {a.label})" if a else " (first release)")
    rows = []
    for label, get in (("folder", lambda s, m: s.path), ("manifest digest", lambda s, m: _short(s.manifest_digest)),
                       ("content digest", lambda s, m: _short(m["files"]["content_digest"])),
                       ("scenario", lambda s, m: f"{m['scenario']['name']} {_short(m['scenario']['digest'])}"),
                       ("created", lambda s, m: m["created"]),
                       ("samples", lambda s, m: f"{m['generation']['count']} (indices "
                                                f"{m['generation']['sample_index_start']}.."
                                                f"{m['generation']['sample_index_stop'] - 1}, seed {m['generation']['seed']})"),
                       ("command", lambda s, m: f"`{m['command']}`")):
        rows.append([label, get(a, ma) if a else "-", get(b, mb)])
    out = [title, ""] + _table(["", "A", "B"], rows)
    out += ["", "## Scenario", ""] + _scenario(ma, mb)
    out += ["", "## Generation", ""] + (_generation(ma, mb) if ma else ["First release."])
    out += ["", "## Assets", ""] + _assets(ma["assets"] if ma else [], mb["assets"])
    out += ["", "## Label schema", ""] + (_label_schema(ma["label_schema"], mb["label_schema"]) if ma else
                                          [", ".join(f"{c['id']} `{c['name']}`" for c in mb["label_schema"]["classes"])])
    out += ["", "## Counts", ""] + _counts(ma, mb)
    out += ["", "## Quality gates", ""] + _gates(ma, mb)
    return "\n".join(out) + "\n"
