"""``rasterize``: the public op, its validation and its autograd function."""

from __future__ import annotations

import numpy as np
import torch

from synth_torch.render import _raster, cpu
from synth_torch.render.context import RasterizeContext, nvdiffrast_ops


def _check_inputs(pos: torch.Tensor, tri: torch.Tensor, resolution, ranges) -> tuple[int, int, bool]:
    if not torch.is_tensor(pos) or pos.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"pos must be a float32 or float64 tensor, got {type(pos).__name__} "
                        f"{getattr(pos, 'dtype', '')}")
    if pos.ndim not in (2, 3) or pos.shape[-1] != 4:
        raise ValueError(f"pos must have shape [B, V, 4] (instanced) or [V, 4] (range mode), got {tuple(pos.shape)}")
    if not torch.is_tensor(tri) or tri.is_floating_point() or tri.dtype == torch.bool or tri.ndim != 2 \
            or tri.shape[1] != 3:
        raise ValueError(f"tri must be an integer tensor of shape [T, 3], got "
                         f"{(tri.dtype, tuple(tri.shape)) if torch.is_tensor(tri) else type(tri).__name__}")
    if len(resolution) != 2 or int(resolution[0]) <= 0 or int(resolution[1]) <= 0:
        raise ValueError(f"resolution must be (height, width) with positive entries, got {tuple(resolution)}")
    instanced = pos.ndim == 3
    if instanced and ranges is not None:
        raise ValueError("ranges is only valid in range mode (pos of shape [V, 4])")
    if not instanced:
        if ranges is None:
            raise ValueError("range mode (pos of shape [V, 4]) needs ranges of shape [B, 2] (start, count)")
        if not torch.is_tensor(ranges) or ranges.is_floating_point() or ranges.ndim != 2 or ranges.shape[1] != 2 \
                or ranges.device.type != "cpu":
            got = ((ranges.dtype, tuple(ranges.shape), str(ranges.device)) if torch.is_tensor(ranges)
                   else type(ranges).__name__)
            raise ValueError(f"ranges must be a CPU integer tensor of shape [B, 2], got {got}")
        if (ranges < 0).any() or ((ranges[:, 0] + ranges[:, 1]) > tri.shape[0]).any():
            raise ValueError(f"ranges select triangles outside tri (T = {tri.shape[0]})")
    if tri.numel() and (int(tri.min()) < 0 or int(tri.max()) >= pos.shape[-2]):
        raise ValueError(f"tri indexes vertices in [{int(tri.min())}, {int(tri.max())}] but pos has "
                         f"{pos.shape[-2]} vertices")
    # numpy on CPU: a torch reduction here would wake torch's thread pool right before the numba kernels
    finite = np.isfinite(pos.detach().numpy()).all() if pos.device.type == "cpu" else bool(torch.isfinite(pos).all())
    if not finite:
        raise ValueError("pos contains NaN or infinite values")
    num_images = pos.shape[0] if instanced else ranges.shape[0]
    pairs = num_images * tri.shape[0] if instanced else int(ranges[:, 1].sum())
    if pairs >= 2**31 or tri.shape[0] >= 2**24:
        raise ValueError(f"too many triangles: {pairs} image-triangle pairs (limit 2**31) and T = {tri.shape[0]} "
                         "(limit 2**24, ids are stored in a float channel)")
    return num_images, pos.shape[-2], instanced


def _band_rows(num_images: int, height: int) -> int:
    """Rows per work item: enough items (4 per thread) to keep every thread busy, never fewer than 8 rows."""
    import numba

    threads = numba.get_num_threads()
    bands = max(1, -(-4 * threads // max(num_images, 1)))
    return max(8, -(-height // bands))


class _Rasterize(torch.autograd.Function):
    """Forward: visibility + closed-form values on a backend. Backward: autograd through
    :func:`_raster.barycentrics` recomputed in float64 from ``pos`` for the visible triangles, whose
    ids are read back from the id channel of ``rast``."""

    @staticmethod
    def forward(ctx, pos, tri, ranges, height, width, grad_db, backend):
        num_images, num_vertices, instanced = _check_inputs(pos, tri, (height, width), ranges)
        if backend == "cpu":
            rast, rast_db = _rasterize_cpu(pos, tri, ranges, num_images, num_vertices, instanced, height, width)
        else:
            tri_long = tri.to(device=pos.device, dtype=torch.long)
            setup = _raster.triangle_setup(pos.reshape(-1, 4), tri_long, ranges, num_images, num_vertices,
                                           instanced, height, width)
            index = _raster.visibility_torch(setup, num_images, height, width)
            rast, rast_db = _raster.fill_torch(setup, index, height, width, pos.dtype)
        ctx.save_for_backward(pos, tri, rast)
        ctx.dims = (height, width, grad_db, instanced)
        return rast, rast_db

    @staticmethod
    def backward(ctx, grad_rast, grad_rast_db):
        pos, tri, rast = ctx.saved_tensors
        height, width, with_db, instanced = ctx.dims
        ids = rast[..., 3].to(torch.long) - 1
        b, py, px = (ids >= 0).nonzero(as_tuple=True)
        vidx = tri.to(device=pos.device, dtype=torch.long)[ids[b, py, px]]
        if instanced:
            vidx = vidx + (b * pos.shape[1])[:, None]
        with_db = with_db and grad_rast_db is not None
        with torch.enable_grad():
            p = pos.detach().to(torch.float64).requires_grad_(True)
            u, v, db = _raster.barycentrics(p.reshape(-1, 4), vidx, _raster.pixel_ndc(px, width),
                                            _raster.pixel_ndc(py, height), width, height, with_db)
            outputs, grads = [u, v], [grad_rast[b, py, px, 0], grad_rast[b, py, px, 1]]
            if with_db:
                outputs.append(db)
                grads.append(grad_rast_db[b, py, px])
            grads = [g.to(torch.float64) for g in grads]
            (grad_pos,) = torch.autograd.grad(outputs, [p], grads, allow_unused=True)
        grad_pos = torch.zeros_like(pos) if grad_pos is None else grad_pos.to(pos.dtype)
        return grad_pos, None, None, None, None, None, None


def cpu_setup(pos, tri, ranges, num_images, num_vertices, instanced, height, width):
    """Inputs of the ``cpu`` kernels: (pos [N, 4], tri int32, vbox, vcode, image_offsets, tri_start, vert_offset)
    as numpy arrays, after the per-vertex setup."""
    from synth_torch.render import _numba_kernels as nk

    nk.use_torch_threads()
    T = tri.shape[0]
    if instanced:
        image_offsets = np.arange(num_images + 1, dtype=np.int64) * T
        tri_start = np.zeros(num_images, dtype=np.int64)
        vert_offset = np.arange(num_images, dtype=np.int64) * num_vertices
    else:
        r = ranges.to(torch.int64).numpy()
        image_offsets = np.concatenate(([0], np.cumsum(r[:, 1]))).astype(np.int64)
        tri_start = np.ascontiguousarray(r[:, 0])
        vert_offset = np.zeros(num_images, dtype=np.int64)
    pos_np = pos.detach().reshape(-1, 4).contiguous().numpy()
    tri_np = tri.to(torch.int32).contiguous().numpy()
    vbox = np.empty((pos_np.shape[0], 4), dtype=np.int32)
    vcode = np.empty(pos_np.shape[0], dtype=np.uint8)
    setup_vertices = nk.setup_vertices if len(pos_np) >= nk.PARALLEL_VERTICES else nk.setup_vertices_serial
    setup_vertices(pos_np, height, width, vbox, vcode)
    return pos_np, tri_np, vbox, vcode, image_offsets, tri_start, vert_offset


def _rasterize_cpu(pos, tri, ranges, num_images, num_vertices, instanced, height, width):
    """``cpu`` backend: numba setup, visibility and fill; every output value is written by the kernel."""
    from synth_torch.render import _numba_kernels as nk

    rast = cpu.empty((num_images, height, width, 4), pos.dtype)
    rast_db = cpu.empty((num_images, height, width, 4), pos.dtype)
    if num_images == 0:
        return rast, rast_db
    pos_np, tri_np, vbox, vcode, image_offsets, tri_start, vert_offset = cpu_setup(
        pos, tri, ranges, num_images, num_vertices, instanced, height, width)
    out = rast.view(num_images * height, width * 4).numpy()
    out_db = rast_db.view(num_images * height, width * 4).numpy()
    band_rows = _band_rows(num_images, height)
    if band_rows >= height:  # enough images to keep every thread busy: one work item per image
        nk.rasterize_images(pos_np, tri_np, vbox, vcode, image_offsets, tri_start, vert_offset, height, width, out,
                            out_db)
    else:  # few images: set up once, then split each image into row bands
        M = int(image_offsets[-1])
        coef = np.empty((M, 13), dtype=np.float64)
        bbox = np.empty((M, 5), dtype=np.int32)
        if M:
            nk.setup_triangles(pos_np, tri_np, vbox, vcode, image_offsets, tri_start, vert_offset, height, width,
                               coef, bbox)
        nk.rasterize_bands(pos_np, tri_np, coef, bbox, image_offsets, tri_start, vert_offset, height, width,
                           band_rows, out, out_db)
    return rast, rast_db


def rasterize(ctx: RasterizeContext, pos: torch.Tensor, tri: torch.Tensor, resolution, ranges=None,
              grad_db: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Rasterize triangles to (u, v, z/w, triangle_id + 1), with nvdiffrast's semantics (docs/rendering.md).

    Args:
        ctx: a :class:`RasterizeContext` (device and backend).
        pos: clip-space vertex positions, float32 or float64.
        tri: integer vertex indices (int32 as in nvdiffrast; any integer dtype is accepted).
        resolution: (height, width) in pixels.
        ranges: range mode only: CPU integer tensor of (first triangle, triangle count) per image.
        grad_db: propagate gradients from ``rast_db`` to ``pos``.

    Shape:
        - pos: [B, V, 4] (instanced mode: one mesh, B poses) or [V, 4] (range mode, with ``ranges`` [B, 2]).
        - tri: [T, 3].
        - rast, rast_db: [B, H, W, 4], dtype of ``pos``.

    Returns:
        rast: ``(u, v, z/w, triangle_id + 1)``, zeros where no triangle covers the pixel centre. Triangle ids
        index ``tri`` (global ids in range mode). Vertex 0 has weight u, vertex 1 weight v, vertex 2 weight
        1 - u - v (perspective-correct). Row 0 is NDC y = -1; pixel (i, j) has its centre at NDC
        ``((2i + 1) / W - 1, (2j + 1) / H - 1)``. Centres on shared edges go to exactly one triangle; depth
        ties go to the lowest triangle id; ``z/w`` outside ``[-1, 1]`` is clipped per pixel.
        rast_db: ``(du/dX, du/dY, dv/dX, dv/dY)`` in pixel units (always returned, as with nvdiffrast's CUDA
        context; ``grad_db=False`` only stops its gradient).

    Gradients reach ``pos`` (x, y, w) through u, v and rast_db; z/w and ids carry none, as in nvdiffrast.
    Triangle ids are exact up to 2**24 (they are stored in a float channel, as in nvdiffrast).

    Example:
        >>> import torch, synth_torch.render as dr
        >>> ctx = dr.RasterizeContext(device="cpu")
        >>> pos = torch.tensor([[[-1., -1, 0, 1], [1, -1, 0, 1], [-1, 1, 0, 1]]])
        >>> rast, _ = dr.rasterize(ctx, pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (4, 4))
        >>> int((rast[..., 3] > 0).sum())  # 6 centres strictly inside; the 4 on the diagonal belong to its other side
        6
    """
    if not isinstance(ctx, RasterizeContext):
        raise TypeError(f"ctx must be a RasterizeContext, got {type(ctx).__name__}")
    ctx.check_device(pos, tri)
    height, width = int(resolution[0]), int(resolution[1])
    if ctx.backend == "nvdiffrast":
        nvdr = nvdiffrast_ops()

        return nvdr.rasterize(ctx._native, pos.contiguous(), tri.to(torch.int32).contiguous(), (height, width),
                              ranges=ranges, grad_db=grad_db)
    rast, rast_db = _Rasterize.apply(pos, tri, ranges, height, width, bool(grad_db), ctx.backend)
    return rast, rast_db
