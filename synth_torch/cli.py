"""The ``synth-torch`` command line.

``synth-torch preview [SECTION.PARAM=VALUE ...]``
    Render samples of a scenario into one PNG grid (no empty cells), each tile titled with its slice and showing
    instance masks, tight boxes, class names and keypoints, optionally beside depth, instance and normals panels
    (``--panels``); scenario overrides on the command line (see ``docs/labels.md`` for what each label means).
``synth-torch demo``
    Render a lit, textured, antialiased grid of the mesh primitives with the public rendering API
    (:mod:`synth_torch.render`, :mod:`synth_torch.camera`, :mod:`synth_torch.scene.meshes`): a first run
    that needs nothing but the package.
``synth-torch bench [ARGS...]``
    Throughput of the live stream against reading samples from disk, side by side, with a per-stage breakdown
    (:mod:`synth_torch.benchmark`; ``synth-torch bench --help``).
``synth-torch export SCENARIO --n N --resolution R --format coco,yolo,kitti,webdataset --out DIR``
    Write a dataset with a manifest (``docs/export.md``): sharded with ``--shard I/N`` or SLURM array /
    torchrun variables, resumable by running the same command again.
``synth-torch validate DIR [--reference REAL_DIR] [--gates gates.yaml]``
    Run the quality gates on an export, print a table, record the results in its manifest; exit status 1 when
    a gate fails (``docs/governance.md``).
``synth-torch datasets show DIR``
    Print an export's manifest readably (or the progress of one still being written).
``synth-torch train [OVERRIDES...]``, ``synth-torch eval [OVERRIDES...]``
    The Hydra applications (:mod:`synth_torch.app`) with the configs shipped in the package: every further
    argument is a Hydra override (``experiment=tabletop_det``, ``scenario=my.yaml``, ``-m seed=0,1,2``).
``synth-torch datasets register|list|show|approve|promote|rollback|retire|log|diff``
    The dataset registry (SQLite), its audit log and release notes (``docs/governance.md``).
``synth-torch suite run CHECKPOINT --scenario S [--baseline FILE] [--update-baseline]``
    Score a checkpoint on fixed per-slice suites; exit status 1 on a regression against the baseline.

Heavy imports happen inside the commands, so ``synth-torch --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synth_torch.fileio import save_png_atomic, writable_folder


class CLIError(Exception):
    """A user error: printed as ``synth-torch: error: ...`` with exit status 2."""


def _check_writable(out: Path) -> Path:
    out = Path(out)
    if out.is_dir():
        raise CLIError(f"--out {str(out)!r} is a directory; give a file name such as {str(out / 'grid.png')!r}")
    if out.suffix.lower() != ".png":
        raise CLIError(f"--out must be a .png file, got {str(out)!r}")
    try:
        writable_folder(out.parent if str(out.parent) else Path("."), create=False)
    except OSError as exc:
        raise CLIError(f"--out {str(out)!r}: {exc}") from None
    return out


def scenario_overrides(items: list[str]) -> dict:
    """``section.param=value`` command-line items (values in YAML: ``camera.distance=[0.8,1.2]``) as a nested dict."""
    import yaml

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or key.startswith("-"):
            raise CLIError(f"unrecognized argument {item!r}: scenario overrides look like camera.distance=[0.8,1.2]")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise CLIError(f"{key}: cannot read value {value!r}: {exc}") from None
    return out


def preview(args) -> Path:
    import torch

    from synth_torch import SynthDataset
    from synth_torch.loop.visuals import PANELS, label_tile, tile_grid
    from synth_torch.scenario.config import load_scenario
    from synth_torch.scenario.distributions import ConfigError

    out = _check_writable(Path(args.out))
    if args.n <= 0:
        raise CLIError(f"--n must be positive, got {args.n}")
    panels = tuple(p.strip() for p in args.panels.split(",") if p.strip())
    bad = [p for p in panels if p not in PANELS]
    if bad or not panels:
        raise CLIError(f"--panels: unknown {bad}; choose from {list(PANELS)}")
    try:
        scenario = load_scenario(args.scenario, scenario_overrides(args.overrides))
        ds = SynthDataset(scenario, batch_size=args.n, resolution=args.resolution, seed=args.seed)
    except ConfigError as exc:
        raise CLIError(str(exc)) from exc
    slice_id = None
    if args.slice is not None:
        if args.slice not in ds.slice_names:
            raise CLIError(f"unknown slice {args.slice!r} for scenario {ds.scenario.name!r}; "
                           f"choose one of {list(ds.slice_names)}")
        slice_id = torch.full((args.n,), ds.slice_names.index(args.slice))
    tiles = []
    for start in range(0, args.n, 16):  # bounded memory for large --n
        index = torch.arange(start, min(start + 16, args.n))
        batch = ds.render_batch(index, None if slice_id is None else slice_id[: len(index)])
        tiles += [label_tile(batch, i, panels) for i in range(len(batch))]
    save_png_atomic(tile_grid(tiles), out)
    return out


def _checker(size: int = 64, squares: int = 8):
    import torch

    i = torch.arange(size) * squares // size
    c = ((i[:, None] + i[None, :]) % 2).float()
    return (0.55 + 0.45 * c)[None, :, :, None].expand(1, size, size, 3).contiguous()


def demo_image(resolution: int = 256):
    """uint8 [3, R, R]: the seven primitives on a checkered floor, Blinn-Phong lit, textured, antialiased."""
    import math

    import torch

    import synth_torch.render as dr
    from synth_torch.camera import Camera, intrinsics, orbit_pose
    from synth_torch.scene.meshes import PRIMITIVES, join

    shapes = [name for name in PRIMITIVES if name != "plane"]
    parts, tints = [], []
    cols = 4
    for i, name in enumerate(shapes):
        mesh = PRIMITIVES[name]()
        lo, hi = mesh.bounds()
        mesh = mesh.scaled(0.8 / float((hi - lo).max()))
        lo = mesh.bounds()[0]
        x, y = (i % cols - (cols - 1) / 2) * 1.1, (i // cols - 0.5) * 1.1
        T = torch.eye(4)
        T[:3, 3] = torch.tensor([x, y, -float(lo[2])])  # resting on the floor
        parts.append(mesh.transformed(T))
        hue = i / len(shapes)
        tints.append(torch.tensor([0.5 + 0.5 * math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)]))
    floor = PRIMITIVES["plane"]((6.0, 4.0), subdivisions=1)
    parts.append(floor)
    tints.append(torch.tensor([0.9, 0.9, 0.9]))
    mesh, owner = join(parts)
    # Per-vertex tint (every part has its own vertices).
    vertex_owner = torch.zeros(mesh.vertices.shape[0], dtype=torch.long)
    vertex_owner[mesh.faces.flatten()] = owner.repeat_interleave(3)
    tint = torch.stack(tints)[vertex_owner]

    R = int(resolution)
    cam = Camera(intrinsics(1.1 * R, 1.1 * R, R / 2, R / 2), orbit_pose((0.0, 0.0, 0.3), 5.2, -1.25, 0.62), R, R,
                 near=0.5, far=20.0)
    ctx = dr.RasterizeContext(device="cpu")
    pos = cam.project_to_clip(mesh.vertices).contiguous()
    tri = mesh.faces.to(torch.int32)
    rast, rast_db = dr.rasterize(ctx, pos, tri, (R, R))
    normal, _ = dr.interpolate(mesh.normals[None], rast, mesh.normal_faces.to(torch.int32))
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    world, _ = dr.interpolate(mesh.vertices[None], rast, tri)
    color, _ = dr.interpolate(tint[None], rast, tri)
    uv, uv_da = dr.interpolate(mesh.uvs[None] * 2.0, rast, mesh.uv_faces.to(torch.int32), rast_db=rast_db,
                               diff_attrs="all")
    albedo = dr.texture(_checker(), uv.contiguous(), uv_da.contiguous(), filter_mode="linear-mipmap-linear")
    eye = torch.linalg.inv(cam.world_to_cam[0])[:3, 3]
    to_eye = eye - world
    to_eye = to_eye / to_eye.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    light = torch.tensor([0.5, -0.6, 0.8])
    light = light / light.norm()
    half = (light + to_eye) / (light + to_eye).norm(dim=-1, keepdim=True).clamp_min(1e-8)
    diffuse = (normal @ light).clamp_min(0)[..., None]
    specular = ((normal * half).sum(-1).clamp_min(0) ** 48)[..., None]
    shaded = albedo * color * (0.25 + 0.85 * diffuse) + 0.35 * specular
    covered = rast[..., 3:4] > 0
    sky = torch.tensor([0.80, 0.86, 0.93])
    image = torch.where(covered, shaded, sky)
    image = dr.antialias(image.contiguous(), rast, pos, tri)
    image = image.clamp(0, 1) ** (1 / 2.2)  # display gamma
    return (image[0].permute(2, 0, 1) * 255).round().to(torch.uint8)


def demo(args) -> Path:
    out = _check_writable(Path(args.out))
    if not 16 <= args.resolution <= 4096:
        raise CLIError(f"--resolution must lie in 16..4096, got {args.resolution}")
    save_png_atomic(demo_image(args.resolution), out)
    return out


def bench(args) -> None:
    from synth_torch.benchmark import main as bench_main

    bench_main(args.args)


def _resolution_arg(text: str):
    try:
        if "x" in text:
            h, w = text.lower().split("x")
            return int(h), int(w)
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 128 or 96x128 (height x width), got {text!r}")


def export(args) -> None:
    from synth_torch.export import ExportError, ExportOptions, export, manifest_digest
    from synth_torch.scenario.distributions import ConfigError

    options = ExportOptions(min_visible_pixels=args.min_visible_pixels, include_hidden=args.include_hidden,
                            yolo_polygons=args.yolo_polygons, depth_scale=args.depth_scale)
    try:
        result = export(args.scenario, n=args.n, resolution=args.resolution, out=args.out, formats=args.format,
                        seed=args.seed, start=args.start, shard=args.shard, chunk_size=args.chunk_size,
                        batch_size=args.batch_size, options=options, parents=args.parent, sensor=not args.no_sensor,
                        device=args.device, backend=args.backend, progress=not args.quiet)
    except (ExportError, ConfigError) as exc:
        raise CLIError(str(exc)) from exc
    except KeyboardInterrupt:
        print(f"\ninterrupted: {args.out} holds only whole files; run the same command again to resume",
              file=sys.stderr)
        raise SystemExit(130) from None
    i, n = result.shard
    if result.complete:
        print(f"wrote {result.root} ({result.manifest['counts']['images']} images; manifest "
              f"{manifest_digest(result.root)})")
        if args.wandb:
            from synth_torch.export.lineage import log_export_artifact

            print(f"logged wandb artifact {log_export_artifact(result.root)}")
    else:
        print(f"shard {i}/{n} done ({len(result.written)} chunk(s) written); {len(result.pending)} chunk(s) pending "
              f"in other shards; the last shard to finish writes {result.root}/manifest.json")


def _registry(args):
    from synth_torch.governance.registry import Registry

    return Registry(args.registry)


def _governed(func):
    """Run a governance command, turning its errors into CLI errors."""

    def run(args):
        from synth_torch.export import ExportError
        from synth_torch.governance.exports import GovernanceError

        try:
            return func(args)
        except (GovernanceError, ExportError) as exc:
            raise CLIError(str(exc)) from exc

    return run


@_governed
def datasets_show(args) -> None:
    from synth_torch.export import describe, read_manifest
    from synth_torch.governance.gates import describe_validation
    from synth_torch.governance.registry import describe_version, describe_versions, parse_ref

    if Path(args.target).is_dir():
        print(describe(args.target))
        if (Path(args.target) / "manifest.json").is_file():
            print(describe_validation(read_manifest(args.target)))
        return
    name, version = parse_ref(args.target)
    with _registry(args) as reg:
        print(describe_version(reg, args.target, notes=args.notes) if version else describe_versions(reg, name))


@_governed
def datasets_list(args) -> None:
    from synth_torch.governance.registry import describe_versions

    with _registry(args) as reg:
        print(describe_versions(reg, args.name))


@_governed
def datasets_register(args) -> None:
    with _registry(args) as reg:
        v = reg.register(args.dir, name=args.name, by=args.by, note=args.note)
    print(f"registered {v.ref} ({v.manifest_digest}) in {reg.path}")


@_governed
def datasets_approve(args) -> None:
    with _registry(args) as reg:
        v = reg.approve(args.ref, by=args.by, note=args.note)
    print(f"approved {v.ref} by {args.by}")


@_governed
def datasets_promote(args) -> None:
    with _registry(args) as reg:
        release = reg.promote(args.ref, by=args.by, note=args.note)
    name = args.ref.partition("@")[0]
    was = f" (was {name}@{release['previous']})" if release["previous"] is not None else " (first release)"
    print(f"released {name}@{release['version']}{was}; release notes stored in {reg.path}\n")
    print(release["notes"])


@_governed
def datasets_rollback(args) -> None:
    with _registry(args) as reg:
        old, new = reg.rollback(args.name, note=args.note, by=args.by)
    print(f"rolled back {args.name}: released is now {args.name}@{new} (was @{old})")


@_governed
def datasets_retire(args) -> None:
    with _registry(args) as reg:
        v = reg.retire(args.ref, note=args.note, by=args.by)
    print(f"retired {v.ref}")


@_governed
def datasets_log(args) -> None:
    from synth_torch.governance.registry import describe_audit

    with _registry(args) as reg:
        print(describe_audit(reg, args.name))


@_governed
def datasets_diff(args) -> None:
    from synth_torch.export._io import write_atomic
    from synth_torch.governance.notes import release_notes, side_of_folder

    sides = []
    reg = None
    for ref in (args.a, args.b):
        if Path(ref).is_dir():
            sides.append(side_of_folder(ref))
        else:
            reg = reg or _registry(args)
            name, number = reg.resolve(ref)
            sides.append(reg.side(name, number))
    if reg is not None:
        reg.close()
    text = release_notes(*sides)
    if args.out:
        write_atomic(Path(args.out), text.encode(), unique=True)
        print(f"wrote {args.out}")
    else:
        print(text, end="")


@_governed
def suite_run(args) -> int:
    from synth_torch.governance.suites import run_suite

    slice_tolerances = {}
    for item in args.slice_tolerance:
        name, sep, value = item.rpartition("=")
        try:
            slice_tolerances[name] = float(value)
        except ValueError:
            raise CLIError(f"--slice-tolerance expects SLICE=VALUE, got {item!r}") from None
        if not sep or not name:
            raise CLIError(f"--slice-tolerance expects SLICE=VALUE, got {item!r}")
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()] if text else None  # noqa: E731
    result = run_suite(args.checkpoint, args.scenario, samples_per_slice=args.samples_per_slice,
                       resolution=args.resolution, seed=args.seed, slices=split(args.slices),
                       model_config=args.model_config, baseline=args.baseline, update_baseline=args.update_baseline,
                       tolerance=args.tolerance, slice_tolerances=slice_tolerances, metrics=split(args.metrics),
                       out=args.out, batch_size=args.batch_size, device=args.device, sensor=not args.no_sensor)
    print(result.markdown(), end="")
    name = result.data["suite"]["scenario"]["name"]
    print(f"\nwrote {Path(args.out) / (name + '.json')} and {name}.md")
    return 1 if result.regressions else 0


def validate(args) -> int:
    from synth_torch.governance.exports import GovernanceError
    from synth_torch.governance.gates import format_table, validate

    only = [g.strip() for g in args.only.split(",") if g.strip()] if args.only else None
    try:
        report = validate(args.dir, reference=args.reference, protected=args.protected, gates=args.gates, only=only,
                          write=not args.no_write)
    except GovernanceError as exc:
        raise CLIError(str(exc)) from exc
    print(format_table(report))
    if not args.no_write:
        print(f"results recorded in {Path(args.dir) / 'manifest.json'} (validation)")
    return 0 if report.passed else 1


def hydra_app(args) -> None:
    """Run ``synth_torch.app.<module>`` as ``python -m`` would, so that Lightning's DDP launcher re-runs it."""
    import runpy

    module = {"train": "synth_torch.app.train", "eval": "synth_torch.app.evaluate"}[args.command]
    sys.argv = [f"synth-torch {args.command}", *args.args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synth-torch", description="Online synthetic data for computer vision.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("preview", help="render a labeled grid of scenario samples to a PNG")
    p.add_argument("--scenario", default="tabletop", help="built-in name (tabletop, defects) or YAML path")
    p.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
    p.add_argument("--out", default="preview.png", help="output PNG (written atomically)")
    p.add_argument("--slice", default=None, help="render every sample from this named slice")
    p.add_argument("--resolution", type=int, default=128, help="image size in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--panels", default="labels", help="comma-separated panels per sample: labels, image, depth, "
                   "instance, normals (default: labels)")
    p.add_argument("overrides", nargs="*", metavar="SECTION.PARAM=VALUE",
                   help="scenario overrides, e.g. camera.distance=[0.8,1.2] objects.count=3")
    p.set_defaults(func=preview)

    d = sub.add_parser("demo", help="render lit, textured, antialiased primitives with the public render API")
    d.add_argument("--out", default="demo.png")
    d.add_argument("--resolution", type=int, default=256)
    d.set_defaults(func=demo)

    b = sub.add_parser("bench", help="stream throughput against a dataset on disk, with a per-stage breakdown",
                       description="Every further argument goes to the benchmark "
                       "(use `synth-torch bench -- --help` for its options).")
    b.set_defaults(func=bench)

    e = sub.add_parser("export", help="write a dataset (COCO, YOLO, KITTI, WebDataset) with a manifest",
                       description="Render samples START..START+N-1 of a scenario and write them in every format "
                       "under DIR with manifest.json (docs/export.md). Running the same command again resumes; "
                       "--shard I/N (or SLURM_ARRAY_TASK_ID/COUNT, RANK/WORLD_SIZE) splits the work across "
                       "processes writing into the same DIR.")
    e.add_argument("scenario", help="built-in name (tabletop, defects) or YAML path")
    e.add_argument("--n", type=int, required=True, help="number of samples")
    e.add_argument("--resolution", type=_resolution_arg, default=128, help="image size: 128 or HxW (default 128)")
    e.add_argument("--format", default="coco,yolo,kitti,webdataset",
                   help="comma-separated formats: coco, yolo, kitti, webdataset (default: all)")
    e.add_argument("--out", required=True, help="dataset folder (new, empty, or an export to resume)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--start", type=int, default=0, help="first sample index (default 0)")
    e.add_argument("--shard", default=None, help="I/N: write only shard I of N (default: from SLURM/torchrun "
                   "variables, else 0/1)")
    e.add_argument("--chunk-size", type=int, default=500, help="samples per chunk = WebDataset shard (default 500)")
    e.add_argument("--batch-size", type=int, default=16, help="images rendered at once (default 16)")
    e.add_argument("--min-visible-pixels", type=int, default=1, help="annotate instances with at least this many "
                   "visible pixels (default 1)")
    e.add_argument("--include-hidden", action="store_true", help="also annotate valid instances below that (COCO, "
                   "KITTI)")
    e.add_argument("--yolo-polygons", action="store_true", help="YOLO segmentation polygons instead of boxes")
    e.add_argument("--depth-scale", type=float, default=0.001, help="metres per unit in 16-bit depth PNGs")
    e.add_argument("--no-sensor", action="store_true", help="skip the scenario's sensor effects")
    e.add_argument("--device", default="cpu")
    e.add_argument("--backend", default="auto")
    e.add_argument("--parent", action="append", default=[], metavar="DIR",
                   help="an export this dataset derives from (repeatable; recorded in the manifest)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("--wandb", action="store_true", help="log the finished export as a wandb dataset Artifact "
                   "(offline unless WANDB_MODE says otherwise)")
    e.set_defaults(func=export)

    for name, text in (("train", "train on the live stream (Hydra; `synth-torch train --help` lists the config groups)"),
                       ("eval", "score a checkpoint on the slice suites and real splits (Hydra: ckpt_path=...)")):
        t = sub.add_parser(name, help=text, add_help=False,
                           description="Every further argument is a Hydra override (docs/training.md).")
        t.set_defaults(func=hydra_app)

    v = sub.add_parser("validate", help="run the quality gates on an export and record the results in its manifest",
                       description="Run the quality gates (labels, manifest, statistical, privacy_assets, "
                       "privacy_faces, privacy_generated, utility) on an export, print a table and record the results "
                       "in manifest.json. Exit status 1 when a gate fails or a required gate has not passed "
                       "(docs/governance.md).")
    v.add_argument("dir", help="an export folder")
    v.add_argument("--reference", default=None, metavar="REAL_DIR",
                   help="real image folder for the statistical (and utility) gates")
    v.add_argument("--protected", default=None, metavar="DIR",
                   help="protected real images for the privacy gates (default: --reference)")
    v.add_argument("--gates", default=None, metavar="GATES_YAML", help="gate settings and thresholds (YAML)")
    v.add_argument("--only", default=None, help="comma-separated gates to run (the others keep earlier results)")
    v.add_argument("--no-write", action="store_true", help="do not record the results in the manifest")
    v.set_defaults(func=validate)

    su = sub.add_parser("suite", help="scenario suites: regression tests of a checkpoint per slice")
    su_sub = su.add_subparsers(dest="suite_command", required=True)
    r = su_sub.add_parser("run", help="score a checkpoint on fixed per-slice suites; compare with a baseline",
                          description="Render fixed, deterministic per-slice suites of a scenario, score the "
                          "checkpoint on each slice, write JSON and Markdown, and compare with --baseline. Exit "
                          "status 1 on a regression (docs/governance.md).")
    r.add_argument("checkpoint", help="a Lightning checkpoint of a synth_torch.loop.tasks task")
    r.add_argument("--scenario", required=True, help="built-in name or YAML path: its slices are the suites")
    r.add_argument("--baseline", default=None, metavar="FILE", help="a suite result JSON to compare with")
    r.add_argument("--update-baseline", action="store_true", help="record this result as --baseline")
    r.add_argument("--out", default="suite-results", metavar="DIR", help="where <scenario>.json/.md go "
                   "(default suite-results)")
    r.add_argument("--model-config", default=None, metavar="YAML", help="the model's Hydra config (default: the "
                   "run's .hydra/config.yaml beside the checkpoints folder)")
    r.add_argument("--samples-per-slice", type=int, default=32)
    r.add_argument("--resolution", type=_resolution_arg, default=64)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--slices", default=None, help="comma-separated slices (default: all of the scenario's)")
    r.add_argument("--tolerance", type=float, default=None, help="allowed drop of a metric (absolute; default: "
                   "the baseline's, else 0.02)")
    r.add_argument("--slice-tolerance", action="append", default=[], metavar="SLICE=VALUE",
                   help="tolerance of one slice (repeatable)")
    r.add_argument("--metrics", default=None, help="comma-separated metrics to gate (default: the baseline's, else "
                   "all but loss)")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--device", default="cpu")
    r.add_argument("--no-sensor", action="store_true", help="render without the scenario's sensor effects")
    r.set_defaults(func=suite_run)

    reg = argparse.ArgumentParser(add_help=False)
    reg.add_argument("--registry", default=None, metavar="PATH", help="registry SQLite file (default: "
                     "$SYNTH_TORCH_REGISTRY, else ~/.synth-torch/registry.sqlite)")
    who = argparse.ArgumentParser(add_help=False)
    who.add_argument("--by", default=None, metavar="WHO", help="who acts (default: the login name)")
    ds = sub.add_parser("datasets", help="inspect, register, approve, release and compare datasets",
                        description="Exports and the dataset registry (docs/governance.md).")
    ds_sub = ds.add_subparsers(dest="datasets_command", required=True)
    c = ds_sub.add_parser("show", parents=[reg], help="an export folder's manifest, or a registered NAME[@VERSION]")
    c.add_argument("target", metavar="DIR|NAME[@VERSION]")
    c.add_argument("--notes", action="store_true", help="also print the release notes stored at promotion")
    c.set_defaults(func=datasets_show)
    c = ds_sub.add_parser("list", parents=[reg], help="registered versions and their status")
    c.add_argument("name", nargs="?", default=None)
    c.set_defaults(func=datasets_list)
    c = ds_sub.add_parser("register", parents=[reg, who], help="register an export folder as a new version")
    c.add_argument("dir")
    c.add_argument("--name", default=None, help="dataset name (default: the scenario's name)")
    c.add_argument("--note", default="", help="why")
    c.set_defaults(func=datasets_register)
    c = ds_sub.add_parser("approve", parents=[reg], help="approve NAME@VERSION")
    c.add_argument("ref", metavar="NAME@VERSION")
    c.add_argument("--by", required=True, metavar="WHO")
    c.add_argument("--note", required=True, help="why")
    c.set_defaults(func=datasets_approve)
    c = ds_sub.add_parser("promote", parents=[reg, who], help="move the released alias to an approved version "
                          "whose gates passed; stores the release notes")
    c.add_argument("ref", metavar="NAME@VERSION")
    c.add_argument("--note", default="", help="why")
    c.set_defaults(func=datasets_promote)
    c = ds_sub.add_parser("rollback", parents=[reg, who], help="move released back to the previous released version")
    c.add_argument("name")
    c.add_argument("--note", required=True, help="why")
    c.set_defaults(func=datasets_rollback)
    c = ds_sub.add_parser("retire", parents=[reg, who], help="mark a version retired (nothing is deleted)")
    c.add_argument("ref", metavar="NAME@VERSION")
    c.add_argument("--note", required=True, help="why")
    c.set_defaults(func=datasets_retire)
    c = ds_sub.add_parser("log", parents=[reg], help="the audit log (of NAME)")
    c.add_argument("name", nargs="?", default=None)
    c.set_defaults(func=datasets_log)
    c = ds_sub.add_parser("diff", parents=[reg], help="release notes of B against A (export folders or "
                          "NAME@VERSION), as Markdown")
    c.add_argument("a", metavar="A")
    c.add_argument("b", metavar="B")
    c.add_argument("--out", default=None, metavar="FILE", help="write the Markdown to FILE (atomically)")
    c.set_defaults(func=datasets_diff)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("bench", "train", "eval"):
        args.args = extra[1:] if extra[:1] == ["--"] else extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        result = args.func(args)
    except CLIError as exc:
        parser.exit(2, f"synth-torch: error: {exc}\n")
    if isinstance(result, Path):
        print(f"wrote {result}")
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
