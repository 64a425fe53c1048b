"""Mesh primitives and loading: topology, orientation and size against closed forms."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from synth_torch.scene.meshes import Mesh, box, capsule, cone, cylinder, join, load_mesh, plane, sphere, torus

R, H_, L = 0.3, 0.8, 0.5  # radius, height, capsule length
MAJOR, MINOR = 0.4, 0.12

# name -> (builder taking a resolution n, exact volume, exact area)
CLOSED = {
    "sphere": (lambda n: sphere(R, segments=2 * n, rings=n), 4 / 3 * math.pi * R**3, 4 * math.pi * R**2),
    "cylinder": (lambda n: cylinder(R, H_, segments=n), math.pi * R**2 * H_, 2 * math.pi * R * H_ + 2 * math.pi * R**2),
    "cone": (lambda n: cone(R, H_, segments=n), math.pi * R**2 * H_ / 3, math.pi * R * (R + math.hypot(R, H_))),
    "capsule": (lambda n: capsule(R, L, segments=2 * n, rings=max(2, n // 4)),
                math.pi * R**2 * L + 4 / 3 * math.pi * R**3,
                2 * math.pi * R * L + 4 * math.pi * R**2),
    "torus": (lambda n: torus(MAJOR, MINOR, segments=2 * n, sides=n), 2 * math.pi**2 * MAJOR * MINOR**2,
              4 * math.pi**2 * MAJOR * MINOR),
    "box": (lambda n: box((0.2, 0.5, 0.9)), 0.2 * 0.5 * 0.9, 2 * (0.2 * 0.5 + 0.5 * 0.9 + 0.2 * 0.9)),
}


def signed_volume(m: Mesh) -> float:
    """Divergence theorem: sum of signed tetrahedra with the origin (positive for outward winding)."""
    v = m.vertices.double()[m.faces]
    return float((v[:, 0] * torch.linalg.cross(v[:, 1], v[:, 2])).sum() / 6)


def area(m: Mesh) -> float:
    v = m.vertices.double()[m.faces]
    return float(0.5 * torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]).norm(dim=-1).sum())


def face_normals(m: Mesh) -> torch.Tensor:
    v = m.vertices.double()[m.faces]
    n = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    return n / n.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("name", sorted(CLOSED))
def test_watertight_every_directed_edge_has_its_reverse_once(name):
    m = CLOSED[name][0](16)
    edges = Counter()
    for a, b, c in m.faces.tolist():
        assert len({a, b, c}) == 3, f"degenerate face {(a, b, c)}"
        edges.update(((a, b), (b, c), (c, a)))
    assert max(edges.values()) == 1, "a directed edge is used twice (inconsistent winding or non-manifold)"
    missing = [e for e in edges if (e[1], e[0]) not in edges]
    assert not missing, f"{len(missing)} boundary edges, e.g. {missing[:3]}"
    # Every face has positive area and every vertex is used.
    assert (m.face_areas() > 0).all()
    assert torch.equal(torch.unique(m.faces), torch.arange(m.vertices.shape[0]))


def test_plane_is_open_with_a_square_boundary():
    m = plane((2.0, 1.0), subdivisions=3)
    edges = Counter()
    for a, b, c in m.faces.tolist():
        edges.update(((a, b), (b, c), (c, a)))
    boundary = [e for e in edges if (e[1], e[0]) not in edges]
    assert len(boundary) == 4 * 3  # 3 edges per side
    assert area(m) == pytest.approx(2.0, rel=1e-6)
    torch.testing.assert_close(face_normals(m).float(), torch.tensor([0.0, 0.0, 1.0]).expand(m.num_faces, 3))
    torch.testing.assert_close(m.bounds(), torch.tensor([[-1.0, -0.5, 0.0], [1.0, 0.5, 0.0]]))


@pytest.mark.parametrize("name", sorted(CLOSED) + ["plane"])
def test_normals_point_outward(name):
    m = CLOSED[name][0](12) if name != "plane" else plane(subdivisions=2)
    fn = face_normals(m)
    interp = m.normals.double()[m.normal_faces].mean(1)
    assert ((fn * interp).sum(-1) > 0).all(), "face winding disagrees with the shading normals"
    assert torch.allclose(m.normals.norm(dim=-1), torch.ones(m.normals.shape[0]), atol=1e-5)
    if name in ("plane", "torus"):
        return
    # Convex shapes centred at the origin: the face normal points away from the centre.
    centroid = m.vertices.double()[m.faces].mean(1)
    assert ((fn * centroid).sum(-1) > 0).all()
    assert signed_volume(m) > 0


def test_torus_normals_point_away_from_the_tube_axis():
    m = torus(MAJOR, MINOR, segments=24, sides=12)
    c = m.vertices.double()[m.faces].mean(1)
    ring = torch.nn.functional.pad(c[:, :2] / c[:, :2].norm(dim=-1, keepdim=True) * MAJOR, (0, 1))
    assert ((face_normals(m) * (c - ring)).sum(-1) > 0).all()


@pytest.mark.parametrize("name", sorted(CLOSED))
def test_volume_and_area_converge_to_closed_forms(name):
    build, volume, surface = CLOSED[name]
    errors = []
    for n in (8, 16, 32):
        m = build(n)
        errors.append((abs(signed_volume(m) - volume) / volume, abs(area(m) - surface) / surface))
    if name == "box":
        assert errors[0][0] < 1e-6 and errors[0][1] < 1e-6
        return
    # Inscribed tessellations: error O(1/n^2), so below ~10 / n^2 and shrinking with the resolution.
    assert errors[-1][0] < 0.02 and errors[-1][1] < 0.02, errors
    assert errors[2][0] < errors[1][0] < errors[0][0], errors
    assert errors[2][1] < errors[1][1] < errors[0][1], errors


def test_cylinder_volume_equals_inscribed_prism_exactly():
    for n in (5, 12, 40):
        expected = n / 2 * math.sin(2 * math.pi / n) * R**2 * H_
        assert signed_volume(cylinder(R, H_, segments=n)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", sorted(CLOSED))
def test_bounds_and_uvs(name):
    m = CLOSED[name][0](16)
    assert (m.uvs >= 0).all() and (m.uvs <= 1).all()
    assert m.faces.dtype == m.normal_faces.dtype == m.uv_faces.dtype == torch.int64
    assert m.vertices.dtype == torch.float32
    lo, hi = m.bounds()
    torch.testing.assert_close(lo, -hi, atol=1e-6, rtol=0)  # centred at the origin
    expected_half = {"sphere": (R, R, R), "cylinder": (R, R, H_ / 2), "cone": (R, R, H_ / 2),
                     "capsule": (R, R, L / 2 + R), "torus": (MAJOR + MINOR, MAJOR + MINOR, MINOR),
                     "box": (0.1, 0.25, 0.45)}[name]
    torch.testing.assert_close(hi, torch.tensor(expected_half), atol=1e-5, rtol=0)


def test_join_offsets_indices_and_reports_owners():
    a, b, c = box(), sphere(segments=8, rings=4), plane(subdivisions=2)
    joined, owner = join([a, b, c])
    assert joined.vertices.shape[0] == a.vertices.shape[0] + b.vertices.shape[0] + c.vertices.shape[0]
    assert torch.equal(owner, torch.tensor([0] * a.num_faces + [1] * b.num_faces + [2] * c.num_faces))
    for i, m in enumerate((a, b, c)):
        rows = owner == i
        # Each part's faces address exactly the same positions, normals and uvs as before.
        torch.testing.assert_close(joined.vertices[joined.faces[rows]], m.vertices[m.faces])
        torch.testing.assert_close(joined.normals[joined.normal_faces[rows]], m.normals[m.normal_faces])
        torch.testing.assert_close(joined.uvs[joined.uv_faces[rows]], m.uvs[m.uv_faces])
    assert signed_volume(join([a, box().transformed(torch.eye(4) + torch.tensor(
        [[0, 0, 0, 3.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))])[0]) == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(ValueError, match="at least one"):
        join([])


def test_scaled_and_transformed_keep_normals_outward():
    m = sphere(0.5, 16, 8).scaled((2.0, 1.0, 0.5))
    assert signed_volume(m) > 0
    fn = face_normals(m)
    interp = m.normals.double()[m.normal_faces].mean(1)
    assert ((fn * interp).sum(-1) > 0).all()
    torch.testing.assert_close(m.bounds()[1], torch.tensor([1.0, 0.5, 0.25]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("ext", ["obj", "ply", "stl", "off"])
def test_load_mesh_round_trip_through_trimesh(tmp_path, ext):
    import trimesh
    src = sphere(0.4, segments=12, rings=6)
    path = tmp_path / f"ball.{ext}"
    trimesh.Trimesh(src.vertices.numpy(), src.faces.numpy(), process=False).export(path)
    loaded = load_mesh(path)
    assert loaded.num_faces == src.num_faces
    # Same point set (formats may reorder or re-merge vertices) and same oriented solid.
    key = lambda v: sorted(map(tuple, (v * 1e4).round().int().tolist()))  # noqa: E731
    assert key(loaded.vertices) == key(src.vertices)
    assert signed_volume(loaded) == pytest.approx(signed_volume(src), rel=1e-5)
    assert area(loaded) == pytest.approx(area(src), rel=1e-5)
    interp = loaded.normals.double()[loaded.normal_faces].mean(1)
    assert ((face_normals(loaded) * interp).sum(-1) > 0).all()
    assert loaded.uvs.shape == (loaded.vertices.shape[0], 2)


def test_load_mesh_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_mesh(tmp_path / "missing.obj")
    (tmp_path / "points.xyz").write_text("0 0 0\n")
    with pytest.raises(ValueError, match="unsupported mesh format"):
        load_mesh(tmp_path / "points.xyz")
    (tmp_path / "line.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match="degenerate|no triangles"):
        load_mesh(tmp_path / "line.obj")
    (tmp_path / "empty.obj").write_text("")
    with pytest.raises(ValueError, match="no triangles"):
        load_mesh(tmp_path / "empty.obj")


def test_mesh_validation_names_the_field():
    good = box()
    fields = dict(vertices=good.vertices, faces=good.faces, normals=good.normals, normal_faces=good.normal_faces,
                  uvs=good.uvs, uv_faces=good.uv_faces)
    cases = [
        (dict(vertices=good.vertices[:, :2]), "vertices"),
        (dict(faces=good.faces + 100), "faces"),
        (dict(uv_faces=good.uv_faces[:3]), "same number of rows"),
        (dict(faces=good.faces[:0], normal_faces=good.normal_faces[:0], uv_faces=good.uv_faces[:0]), "no faces"),
        (dict(vertices=good.vertices.clone().fill_(float("nan"))), "NaN"),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            Mesh(**(fields | change))


@pytest.mark.parametrize("call,match", [
    (lambda: sphere(radius=0.0), "radius"),
    (lambda: cylinder(height=-1.0), "height"),
    (lambda: torus(0.2, 0.3), "minor_radius"),
    (lambda: plane(subdivisions=0), "subdivisions"),
    (lambda: box((1.0, float("inf"), 1.0)), "depth"),
])
def test_primitive_argument_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
