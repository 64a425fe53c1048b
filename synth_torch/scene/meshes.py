"""Triangle meshes: a container, procedural primitives and file loading.

Positions share vertex indices across the whole surface (so antialiasing sees true silhouettes); normals
and texture coordinates have their own index buffers (``normal_faces``, ``uv_faces``), as in nvdiffrast's
samples, so sharp creases and UV seams need no duplicated positions. Faces wind counter-clockwise seen
from outside (right-handed outward normals). Units are metres; primitives are centred at the origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".stl", ".off")


@dataclass(frozen=True)
class Mesh:
    """Shapes: vertices [V, 3] float32; faces [F, 3] int64; normals [Vn, 3]; normal_faces [F, 3];
    uvs [Vt, 2]; uv_faces [F, 3]. Optional surface colour from the file: colors [V, 3] per-vertex RGB in [0, 1]
    (interpolated like positions), texture [h, w, 3] RGB in [0, 1] sampled at ``uvs`` (row 0 is ``v = 0``).
    None when the file has none."""

    vertices: torch.Tensor
    faces: torch.Tensor
    normals: torch.Tensor
    normal_faces: torch.Tensor
    uvs: torch.Tensor
    uv_faces: torch.Tensor
    colors: torch.Tensor | None = None
    texture: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name, cols in (("vertices", 3), ("faces", 3), ("normals", 3), ("normal_faces", 3), ("uvs", 2),
                           ("uv_faces", 3)):
            t = getattr(self, name)
            if t.ndim != 2 or t.shape[1] != cols:
                raise ValueError(f"Mesh.{name} must have shape [N, {cols}], got {tuple(t.shape)}")
        if self.faces.shape[0] == 0:
            raise ValueError("Mesh has no faces")
        if not (self.normal_faces.shape[0] == self.uv_faces.shape[0] == self.faces.shape[0]):
            raise ValueError("faces, normal_faces and uv_faces must have the same number of rows")
        for idx, data, name in ((self.faces, self.vertices, "faces"), (self.normal_faces, self.normals, "normal_faces"),
                                (self.uv_faces, self.uvs, "uv_faces")):
            if int(idx.min()) < 0 or int(idx.max()) >= data.shape[0]:
                raise ValueError(f"Mesh.{name} indexes rows outside [0, {data.shape[0]})")
        for name in ("vertices", "normals", "uvs"):
            if not torch.isfinite(getattr(self, name)).all():
                raise ValueError(f"Mesh.{name} contains NaN or infinite values")
        if self.colors is not None and tuple(self.colors.shape) != (self.vertices.shape[0], 3):
            raise ValueError(f"Mesh.colors must have shape [{self.vertices.shape[0]}, 3], got {tuple(self.colors.shape)}")
        if self.texture is not None and (self.texture.ndim != 3 or self.texture.shape[-1] != 3):
            raise ValueError(f"Mesh.texture must have shape [h, w, 3], got {tuple(self.texture.shape)}")

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    def face_areas(self) -> torch.Tensor:
        """[F] triangle areas."""
        v = self.vertices[self.faces]
        return 0.5 * torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]).norm(dim=-1)

    def transformed(self, matrix: torch.Tensor) -> Mesh:
        """Apply a 4x4 affine transform; normals use the inverse transpose and are renormalised."""
        A, t = matrix[:3, :3].to(self.vertices), matrix[:3, 3].to(self.vertices)
        normals = self.normals @ torch.linalg.inv(A)
        return replace(self, vertices=self.vertices @ A.T + t,
                       normals=normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    def scaled(self, scale) -> Mesh:
        """Scale by a float or per-axis [3] factor about the origin."""
        s = torch.as_tensor(scale, dtype=torch.float32).expand(3)
        return self.transformed(torch.diag(torch.cat((s, torch.ones(1)))))

    def compacted(self) -> Mesh:
        """The same surface with unreferenced and duplicate normals and texture coordinates removed."""
        def dedupe(rows: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            unique, inverse = torch.unique(rows[index.flatten()], dim=0, return_inverse=True)
            return unique, inverse.view_as(index)

        normals, normal_faces = dedupe(self.normals, self.normal_faces)
        uvs, uv_faces = dedupe(self.uvs, self.uv_faces)
        return replace(self, normals=normals, normal_faces=normal_faces, uvs=uvs, uv_faces=uv_faces)

    def bounds(self) -> torch.Tensor:
        """[2, 3] axis-aligned (min, max) corners."""
        return torch.stack((self.vertices.amin(0), self.vertices.amax(0)))


def join(meshes: list[Mesh]) -> tuple[Mesh, torch.Tensor]:
    """Concatenate meshes into one (indices offset); returns it and the owner index per face [F]."""
    if not meshes:
        raise ValueError("join needs at least one mesh")
    out = {}  # surface colours are dropped: the parts' textures cannot share one image
    for data, idx in (("vertices", "faces"), ("normals", "normal_faces"), ("uvs", "uv_faces")):
        sizes = torch.tensor([getattr(m, data).shape[0] for m in meshes])
        offsets = torch.cumsum(sizes, 0) - sizes
        out[data] = torch.cat([getattr(m, data) for m in meshes])
        out[idx] = torch.cat([getattr(m, idx) + int(o) for m, o in zip(meshes, offsets)])
    owner = torch.cat([torch.full((m.num_faces,), i, dtype=torch.long) for i, m in enumerate(meshes)])
    return Mesh(**out), owner


def _mesh(vertices, faces, normals, normal_faces, uvs, uv_faces) -> Mesh:
    f = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    i = lambda x: torch.as_tensor(x, dtype=torch.long)  # noqa: E731
    return Mesh(f(vertices), i(faces), f(normals), i(normal_faces), f(uvs), i(uv_faces))


def _revolve(profile: list[tuple[float, float]], segment_normals: list[tuple[tuple[float, float], tuple[float, float]]],
             segments: int) -> Mesh:
    """Surface of revolution about z from a profile (r_k, z_k), k = 0..n, with r_0 = r_n = 0 (poles).

    ``segment_normals[k]`` gives the (n_r, n_z) normal at the start and end of profile segment k, so
    smooth and creased profiles share one code path. The profile runs from the bottom pole to the top.
    """
    n, m = len(profile) - 1, segments
    ring = lambda k, j: 1 + (k - 1) * m + (j % m)  # noqa: E731  vertex index of ring k (1..n-1)
    top = 1 + (n - 1) * m
    az = [2 * math.pi * j / m for j in range(m)]
    verts = [(0.0, 0.0, profile[0][1])]
    for k in range(1, n):
        r, z = profile[k]
        verts += [(r * math.cos(a), r * math.sin(a), z) for a in az]
    verts.append((0.0, 0.0, profile[n][1]))
    vid = lambda k, j: 0 if k == 0 else (top if k == n else ring(k, j))  # noqa: E731

    normals, uvs = [], []
    lengths = [0.0]
    for k in range(n):
        lengths.append(lengths[-1] + math.dist(profile[k], profile[k + 1]))
    for k in range(n):
        for end in range(2):
            nr, nz = segment_normals[k][end]
            normals += [(nr * math.cos(a), nr * math.sin(a), nz) for a in az + [2 * math.pi * (j + 0.5) / m
                                                                               for j in range(m)]]
    uvs = [(j / m, lengths[k] / lengths[-1]) for k in range(n + 1) for j in range(m + 1)]
    uvs += [((j + 0.5) / m, lengths[k] / lengths[-1]) for k in (0, n) for j in range(m)]
    nid = lambda k, end, j: (2 * k + end) * 2 * m + j  # noqa: E731  j in [0, 2m): 2m.. are pole mid-azimuths
    tid = lambda k, j: k * (m + 1) + j  # noqa: E731
    pole_uv = lambda k, j: (n + 1) * (m + 1) + (0 if k == 0 else m) + j  # noqa: E731

    faces, nfaces, tfaces = [], [], []
    for k in range(n):
        for j in range(m):
            if k == 0:
                faces.append((0, vid(1, j + 1), vid(1, j)))
                nfaces.append((nid(0, 0, m + j), nid(0, 1, (j + 1) % m), nid(0, 1, j)))
                tfaces.append((pole_uv(0, j), tid(1, j + 1), tid(1, j)))
            elif k == n - 1:
                faces.append((vid(k, j), vid(k, j + 1), top))
                nfaces.append((nid(k, 0, j), nid(k, 0, (j + 1) % m), nid(k, 1, m + j)))
                tfaces.append((tid(k, j), tid(k, j + 1), pole_uv(n, j)))
            else:
                a, b, c, d = vid(k, j), vid(k, j + 1), vid(k + 1, j), vid(k + 1, j + 1)
                na, nb, nc, nd = nid(k, 0, j), nid(k, 0, (j + 1) % m), nid(k, 1, j), nid(k, 1, (j + 1) % m)
                ta, tb, tc, td = tid(k, j), tid(k, j + 1), tid(k + 1, j), tid(k + 1, j + 1)
                faces += [(a, b, d), (a, d, c)]
                nfaces += [(na, nb, nd), (na, nd, nc)]
                tfaces += [(ta, tb, td), (ta, td, tc)]
    return _mesh(verts, faces, normals, nfaces, uvs, tfaces)


def _unit(r: float, z: float) -> tuple[float, float]:
    n = math.hypot(r, z)
    return (r / n, z / n)


def _check_positive(**sizes) -> None:
    for name, value in sizes.items():
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be positive and finite, got {value}")


def sphere(radius: float = 0.5, segments: int = 32, rings: int = 16) -> Mesh:
    """UV sphere with ``segments`` around z and ``rings`` from pole to pole (smooth normals)."""
    _check_positive(radius=radius)
    polar = [math.pi * k / rings for k in range(rings + 1)]  # from the bottom pole
    profile = [(radius * math.sin(a) if 0 < k < rings else 0.0, -radius * math.cos(a)) for k, a in enumerate(polar)]
    norm = [(math.sin(a), -math.cos(a)) for a in polar]
    return _revolve(profile, [(norm[k], norm[k + 1]) for k in range(rings)], segments)


def capsule(radius: float = 0.25, length: float = 0.5, segments: int = 32, rings: int = 8) -> Mesh:
    """Cylinder of ``length`` between two hemispheres of ``radius`` (total height length + 2 radius)."""
    _check_positive(radius=radius, length=length)
    half = [math.pi / 2 * k / rings for k in range(rings + 1)]
    bottom = [(radius * math.sin(a), -length / 2 - radius * math.cos(a)) for a in half]
    top = [(radius * math.cos(a), length / 2 + radius * math.sin(a)) for a in half]
    profile = bottom + top
    profile[0], profile[-1] = (0.0, profile[0][1]), (0.0, profile[-1][1])
    norm = [_unit(math.sin(a), -math.cos(a)) for a in half] + [_unit(math.cos(a), math.sin(a)) for a in half]
    return _revolve(profile, [(norm[k], norm[k + 1]) for k in range(len(profile) - 1)], segments)


def cylinder(radius: float = 0.5, height: float = 1.0, segments: int = 32) -> Mesh:
    """Closed cylinder along z with flat caps (creased normals at the rims)."""
    _check_positive(radius=radius, height=height)
    profile = [(0.0, -height / 2), (radius, -height / 2), (radius, height / 2), (0.0, height / 2)]
    down, side, up = (0.0, -1.0), (1.0, 0.0), (0.0, 1.0)
    return _revolve(profile, [(down, down), (side, side), (up, up)], segments)


def cone(radius: float = 0.5, height: float = 1.0, segments: int = 32) -> Mesh:
    """Closed cone along z, base at -height/2, apex at +height/2."""
    _check_positive(radius=radius, height=height)
    profile = [(0.0, -height / 2), (radius, -height / 2), (0.0, height / 2)]
    slant = _unit(height, radius)
    return _revolve(profile, [((0.0, -1.0), (0.0, -1.0)), (slant, slant)], segments)


def box(size=(1.0, 1.0, 1.0)) -> Mesh:
    """Axis-aligned box with 8 shared corners, one normal per face and a full [0,1]^2 UV square per face."""
    sx, sy, sz = (float(s) for s in torch.as_tensor(size, dtype=torch.float32).expand(3))
    _check_positive(width=sx, depth=sy, height=sz)
    corners = [((i & 1) - 0.5, ((i >> 1) & 1) - 0.5, ((i >> 2) & 1) - 0.5) for i in range(8)]
    verts = [(x * sx, y * sy, z * sz) for x, y, z in corners]
    quads = [((0, 2, 3, 1), (0, 0, -1)), ((4, 5, 7, 6), (0, 0, 1)), ((0, 1, 5, 4), (0, -1, 0)),
             ((2, 6, 7, 3), (0, 1, 0)), ((0, 4, 6, 2), (-1, 0, 0)), ((1, 3, 7, 5), (1, 0, 0))]
    faces, nfaces, tfaces, normals = [], [], [], []
    for q, ((a, b, c, d), n) in enumerate(quads):
        normals.append(n)
        faces += [(a, b, c), (a, c, d)]
        nfaces += [(q, q, q)] * 2
        tfaces += [(0, 1, 2), (0, 2, 3)]
    return _mesh(verts, faces, normals, nfaces, [(0, 0), (1, 0), (1, 1), (0, 1)], tfaces)


def torus(major_radius: float = 0.4, minor_radius: float = 0.15, segments: int = 32, sides: int = 16) -> Mesh:
    """Torus around z: tube of ``minor_radius`` whose centre circle has ``major_radius``."""
    _check_positive(major_radius=major_radius, minor_radius=minor_radius)
    if minor_radius >= major_radius:
        raise ValueError(f"torus needs minor_radius < major_radius, got {minor_radius} >= {major_radius}")
    verts, normals, uvs, faces, tfaces = [], [], [], [], []
    for i in range(segments):
        a = 2 * math.pi * i / segments
        for j in range(sides):
            b = 2 * math.pi * j / sides
            n = (math.cos(b) * math.cos(a), math.cos(b) * math.sin(a), math.sin(b))
            verts.append(((major_radius + minor_radius * math.cos(b)) * math.cos(a),
                          (major_radius + minor_radius * math.cos(b)) * math.sin(a), minor_radius * math.sin(b)))
            normals.append(n)
    uvs = [(i / segments, j / sides) for i in range(segments + 1) for j in range(sides + 1)]
    for i in range(segments):
        for j in range(sides):
            a, b = i * sides + j, ((i + 1) % segments) * sides + j
            c, d = i * sides + (j + 1) % sides, ((i + 1) % segments) * sides + (j + 1) % sides
            faces += [(a, b, d), (a, d, c)]
            ta, tb, tc, td = i * (sides + 1) + j, (i + 1) * (sides + 1) + j, i * (sides + 1) + j + 1, \
                (i + 1) * (sides + 1) + j + 1
            tfaces += [(ta, tb, td), (ta, td, tc)]
    return _mesh(verts, faces, normals, faces, uvs, tfaces)


def plane(size=(1.0, 1.0), subdivisions: int = 1) -> Mesh:
    """Open square grid in the z = 0 plane facing +z, ``subdivisions`` quads per side, UV over [0, 1]^2."""
    sx, sy = (float(s) for s in torch.as_tensor(size, dtype=torch.float32).expand(2))
    _check_positive(width=sx, depth=sy)
    n = int(subdivisions)
    if n < 1:
        raise ValueError(f"subdivisions must be >= 1, got {subdivisions}")
    uvs = [(i / n, j / n) for j in range(n + 1) for i in range(n + 1)]
    verts = [((u - 0.5) * sx, (v - 0.5) * sy, 0.0) for u, v in uvs]
    faces = []
    for j in range(n):
        for i in range(n):
            a, b, c, d = j * (n + 1) + i, j * (n + 1) + i + 1, (j + 1) * (n + 1) + i, (j + 1) * (n + 1) + i + 1
            faces += [(a, b, d), (a, d, c)]
    return _mesh(verts, faces, [(0.0, 0.0, 1.0)], [(0, 0, 0)] * len(faces), uvs, faces)


PRIMITIVES = {"box": box, "sphere": sphere, "cylinder": cylinder, "cone": cone, "torus": torus, "plane": plane,
              "capsule": capsule}


def _surface_colors(visual, num_vertices: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(per-vertex colours [V, 3], texture [h, w, 3]) in [0, 1] from a trimesh visual, None where absent.

    Texture visuals give their material's base colour texture (glTF ``baseColorTexture``, an OBJ's ``map_Kd``)
    times its base colour factor, or, without an image, that colour on every vertex; colour visuals give their
    vertex colours (face colours averaged onto the vertices)."""
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        material = visual.material
        factor = getattr(material, "baseColorFactor", None)  # glTF: multiplies its texture
        factor = None if factor is None else np.asarray(factor, dtype=np.float64)[:3] / 255.0
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        if image is not None and getattr(visual, "uv", None) is not None:
            texture = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
            texture = texture[::-1]  # image rows run down from v = 1; our row 0 is v = 0
            return None, texture if factor is None else texture * factor
        if factor is None:  # an OBJ material's diffuse colour
            factor = np.asarray(material.main_color, dtype=np.float64)[:3] / 255.0
        return np.broadcast_to(factor, (num_vertices, 3)).copy(), None
    if kind in ("vertex", "face"):
        return np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0, None
    return None, None


def load_mesh(path: str | Path) -> Mesh:
    """Load an OBJ/PLY/GLB/GLTF/STL/OFF file with trimesh (scenes are merged into one mesh).

    Vertex normals come from the file or trimesh; UVs from the file when present, else zeros; the surface
    colour (a base colour texture, a base colour, or vertex colours) when the file has one.
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for one that cannot be
    read, is empty or is degenerate.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"unsupported mesh format {path.suffix!r} for {path}; expected one of {MESH_SUFFIXES}")
    try:
        loaded = trimesh.load(path, force="mesh", process=True)
    except Exception as exc:  # trimesh raises many kinds of errors for bad files
        raise ValueError(f"cannot read mesh file {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise ValueError(f"mesh file {path} contains no triangles")
    loaded.update_faces(loaded.nondegenerate_faces())  # zero-area faces have no normal
    if len(loaded.faces) == 0:
        raise ValueError(f"mesh file {path} is degenerate (zero total area)")
    loaded.remove_unreferenced_vertices()
    faces = torch.tensor(np.array(loaded.faces), dtype=torch.long)
    uv = getattr(loaded.visual, "uv", None)
    has_uv = uv is not None and len(uv) == len(loaded.vertices)
    uvs = torch.tensor(np.array(uv), dtype=torch.float32) if has_uv else torch.zeros((len(loaded.vertices), 2))
    colors, texture = _surface_colors(loaded.visual, len(loaded.vertices))
    if texture is not None and not has_uv:
        texture = None
    as_float = lambda a: None if a is None else torch.tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    mesh = Mesh(torch.tensor(np.array(loaded.vertices), dtype=torch.float32), faces,
                torch.tensor(np.array(loaded.vertex_normals), dtype=torch.float32), faces, uvs, faces,
                as_float(colors), as_float(texture))
    if float(mesh.face_areas().sum()) <= 0:
        raise ValueError(f"mesh file {path} is degenerate (zero total area)")
    return mesh
