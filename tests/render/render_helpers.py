"""Geometry for the render tests, written independently of ``synth_torch.render``.

Pixel conventions restated here (see docs/rendering.md): pixel (i, j) has its centre at pixel coordinates
``(i + 0.5, j + 0.5)``, i.e. NDC ``((2 i + 1) / W - 1, (2 j + 1) / H - 1)``; ``rast[b, j, i]`` is row j;
row 0 is NDC y = -1.
"""

from __future__ import annotations

import math

import torch

import synth_torch.render as dr

F64 = torch.float64


def ndc_from_pixel(p: float, size: int) -> float:
    """Pixel coordinate (0 .. size along one axis) to NDC."""
    return 2.0 * p / size - 1.0


def pixel_centres(H: int, W: int, dtype=F64) -> tuple[torch.Tensor, torch.Tensor]:
    """NDC (x, y) of every pixel centre, each [H, W]."""
    xs = (2.0 * torch.arange(W, dtype=dtype) + 1.0) / W - 1.0
    ys = (2.0 * torch.arange(H, dtype=dtype) + 1.0) / H - 1.0
    return xs[None, :].expand(H, W), ys[:, None].expand(H, W)


def perspective(fov_deg: float = 60.0, near: float = 0.5, far: float = 20.0, aspect: float = 1.0,
                dtype=F64) -> torch.Tensor:
    """OpenGL-style projection (camera looks down -z; z/w = -1 at the near plane, +1 at the far plane)."""
    f = 1.0 / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[f / aspect, 0, 0, 0], [0, f, 0, 0],
                         [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
                         [0, 0, -1, 0]], dtype=dtype)


def to_clip(points: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """[..., 3] camera-space points -> [..., 4] clip space."""
    return torch.cat((points, torch.ones_like(points[..., :1])), -1) @ proj.T


def pixel_rays(H: int, W: int, proj: torch.Tensor) -> torch.Tensor:
    """Camera-space directions [H, W, 3] through each pixel centre (for a projection from :func:`perspective`)."""
    xn, yn = pixel_centres(H, W, proj.dtype)
    return torch.stack((xn / proj[0, 0], yn / proj[1, 1], -torch.ones_like(xn)), -1)


def ray_triangle(rays: torch.Tensor, v0, v1, v2):
    """Möller-Trumbore from the origin: (t [..], b1 [..], b2 [..]) with hit point ``t * ray``.

    The hit is ``(1 - b1 - b2) v0 + b1 v1 + b2 v2``; t may be negative (behind the eye).
    """
    e1, e2 = v1 - v0, v2 - v0
    p = torch.linalg.cross(rays, e2.expand_as(rays), dim=-1)
    det = (p * e1).sum(-1)
    s = -v0
    b1 = (p * s).sum(-1) / det
    q = torch.linalg.cross(s.expand_as(rays), e1.expand_as(rays), dim=-1)
    b2 = (q * rays).sum(-1) / det
    t = (q * e2).sum(-1) / det
    return t, b1, b2


def uv_sphere(rings: int = 16, segments: int = 24, radius: float = 1.0, dtype=torch.float32):
    """A closed, consistently wound UV sphere: vertices [V, 3], triangles [T, 3] int32."""
    verts = [(0.0, radius, 0.0)]
    for r in range(1, rings):
        th = math.pi * r / rings
        for s in range(segments):
            ph = 2 * math.pi * s / segments
            verts.append((radius * math.sin(th) * math.cos(ph), radius * math.cos(th),
                          radius * math.sin(th) * math.sin(ph)))
    verts.append((0.0, -radius, 0.0))
    last = len(verts) - 1
    tris = [(0, 1 + (s + 1) % segments, 1 + s) for s in range(segments)]
    for r in range(rings - 2):
        for s in range(segments):
            a, b = 1 + r * segments + s, 1 + r * segments + (s + 1) % segments
            tris += [(a, b, b + segments), (a, b + segments, a + segments)]
    base = 1 + (rings - 2) * segments
    tris += [(last, base + s, base + (s + 1) % segments) for s in range(segments)]
    return torch.tensor(verts, dtype=dtype), torch.tensor(tris, dtype=torch.int32)


def sphere_scene(batch: int, seed: int, rings: int = 16, segments: int = 24, dtype=torch.float32):
    """``batch`` spheres at random positions in front of a perspective camera: pos [B, V, 4], tri [T, 3]."""
    g = torch.Generator().manual_seed(seed)
    v, tri = uv_sphere(rings, segments, dtype=F64)
    offs = torch.stack(((torch.rand(batch, generator=g, dtype=F64) - 0.5) * 3,
                        (torch.rand(batch, generator=g, dtype=F64) - 0.5) * 3,
                        -3.0 - 3 * torch.rand(batch, generator=g, dtype=F64)), 1)
    return to_clip(v[None] + offs[:, None], perspective()).to(dtype), tri


def random_soup(batch: int, num_tri: int, seed: int, dtype=torch.float32, spread: float = 1.5):
    """Random clip-space triangles: varied sizes, some crossing w = 0 and the near/far planes."""
    g = torch.Generator().manual_seed(seed)
    centre = (torch.rand(batch, num_tri, 1, 3, generator=g, dtype=F64) - 0.5) * 2 * spread
    centre[..., 2] = -(1.0 + 6.0 * torch.rand(batch, num_tri, 1, generator=g, dtype=F64))
    size = 0.05 + 1.5 * torch.rand(batch, num_tri, 1, 1, generator=g, dtype=F64) ** 3
    pts = centre + size * torch.randn(batch, num_tri, 3, 3, generator=g, dtype=F64)
    pos = to_clip(pts, perspective(near=0.5, far=8.0)).reshape(batch, num_tri * 3, 4)
    tri = torch.arange(num_tri * 3, dtype=torch.int32).reshape(num_tri, 3)
    return pos.to(dtype), tri


def quad(x0: float, y0: float, x1: float, y1: float, z: float = 0.0, dtype=torch.float32):
    """Axis-aligned NDC rectangle as two triangles sharing the diagonal (x0, y0)-(x1, y1); w = 1."""
    pos = torch.tensor([[[x0, y0, z, 1.0], [x1, y0, z, 1.0], [x1, y1, z, 1.0], [x0, y1, z, 1.0]]], dtype=dtype)
    tri = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    return pos, tri


def context(backend: str = "cpu") -> dr.RasterizeContext:
    """``"cpu"`` (numba) and ``"torch"`` on the CPU; ``"cuda"``: the torch reference on the GPU."""
    return dr.RasterizeContext("cuda", "torch") if backend == "cuda" else dr.RasterizeContext("cpu", backend)


def render(pos, tri, resolution, backend: str = "cpu", ranges=None, grad_db: bool = True):
    """Rasterize on ``backend``'s device (inputs moved there) and return ``(rast, rast_db)`` on the CPU."""
    ctx = context(backend)
    rast, db = dr.rasterize(ctx, pos.to(ctx.device), tri.to(ctx.device), resolution, ranges=ranges, grad_db=grad_db)
    return rast.cpu(), db.cpu()
