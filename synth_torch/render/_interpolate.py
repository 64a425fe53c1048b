"""``interpolate``: perspective-correct vertex attributes from rasterizer output (nvdiffrast semantics)."""

from __future__ import annotations

import os

import numpy as np
import torch

from synth_torch.render import cpu
from synth_torch.render._dispatch import check_finite, check_same_device, use_nvdiffrast
from synth_torch.render.context import nvdiffrast_ops


def _diff_indices(diff_attrs, num_attrs: int) -> list[int]:
    if diff_attrs is None:
        return []
    if isinstance(diff_attrs, str):
        if diff_attrs != "all":
            raise ValueError(f"diff_attrs must be 'all' or a list of attribute indices, got {diff_attrs!r}")
        return list(range(num_attrs))
    out = []
    for i in diff_attrs:
        j = int(i) + num_attrs if int(i) < 0 else int(i)
        if not 0 <= j < num_attrs:
            raise ValueError(f"diff_attrs index {i} out of range for {num_attrs} attributes")
        out.append(j)
    return out


def pixel_attributes(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor):
    """Gather the three vertex attributes of the triangle visible at each covered pixel.

    Returns (b, py, px) index tensors of covered pixels, their (u, v) [P] and vertex attributes [P, 3, C].
    """
    ids = rast[..., 3].to(torch.long) - 1
    b, py, px = (ids >= 0).nonzero(as_tuple=True)
    vi = tri.to(device=attr.device, dtype=torch.long)[ids[b, py, px]]  # [P, 3]
    if attr.ndim == 2:
        flat = attr
    elif attr.shape[0] == 1:
        flat = attr[0]
    else:
        flat = attr.reshape(-1, attr.shape[-1])
        vi = vi + (b * attr.shape[1])[:, None]
    return (b, py, px), rast[b, py, px, 0], rast[b, py, px, 1], flat[vi]


def _use_kernel(attr: torch.Tensor, rast: torch.Tensor, rast_db: torch.Tensor | None) -> bool:
    """The compiled forward serves CPU calls that need no gradient; autograd goes through the torch path."""
    tensors = [t for t in (attr, rast, rast_db) if t is not None]
    if os.environ.get("SYNTH_TORCH_RENDER_BACKEND", "auto") == "torch":
        return False
    if any(t.device.type != "cpu" or t.dtype != rast.dtype for t in tensors):
        return False
    if rast.dtype not in (torch.float32, torch.float64):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _interpolate_cpu(attr, rast, tri, rast_db, idx):
    from synth_torch.render import _numba_kernels as nk

    nk.use_torch_threads()
    B, H, W, _ = rast.shape
    a = attr if attr.ndim == 3 else attr[None]
    tri32 = tri.to(device="cpu", dtype=torch.int32).contiguous()
    if tri32.numel() and (int(tri32.min()) < 0 or int(tri32.max()) >= a.shape[1]):
        raise ValueError(f"tri indexes vertices in [{int(tri32.min())}, {int(tri32.max())}] but attr has "
                         f"{a.shape[1]} vertices")
    out = cpu.empty((B, H, W, a.shape[2]), rast.dtype)
    out_da = cpu.empty((B, H, W, 2 * len(idx)), rast.dtype)
    bad = np.zeros(B * H, dtype=np.uint8)
    rast_np = rast.detach().contiguous().view(B * H, W * 4).numpy()
    db_np = rast_db.detach().contiguous().view(B * H, W * 4).numpy() if rast_db is not None else rast_np
    nk.interpolate_rows(a.detach().contiguous().numpy(), rast_np, tri32.numpy(), db_np,
                        np.asarray(idx, dtype=np.int64), rast_np.dtype.type(1), H,
                        out.view(B * H, W * a.shape[2]).numpy(), out_da.view(B * H, W * 2 * len(idx)).numpy(), bad)
    if bad.any():
        raise ValueError(f"rast holds triangle ids beyond tri (T = {tri.shape[0]}); pass the tri given to rasterize")
    return out, out_da


def interpolate(attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor, rast_db: torch.Tensor | None = None,
                diff_attrs=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolate vertex attributes ``u a_0 + v a_1 + (1 - u - v) a_2`` over covered pixels (docs/rendering.md).

    Args:
        attr: per-vertex attributes: per image, shared by all images, or range-mode layout (indexed by the
            global ids in ``rast``).
        rast: output of :func:`rasterize`.
        tri: the triangles that were rasterized.
        rast_db: second output of :func:`rasterize`; needed when ``diff_attrs`` is given.
        diff_attrs: ``'all'`` or a list of attribute indices whose pixel derivatives to output.

    Shape:
        - attr: [B, V, C], [1, V, C] or [V, C].
        - rast, rast_db: [B, H, W, 4]; tri: [T, 3].
        - out: [B, H, W, C], zeros on empty pixels.
        - out_da: [B, H, W, 2 * len(diff_attrs)], interleaved ``(dA_i/dX, dA_i/dY)`` per selected attribute
          in pixel units, or [B, H, W, 0].

    Gradients reach ``attr``, the (u, v) channels of ``rast`` and ``rast_db``. On CPU, calls that need no
    gradient run a compiled kernel; the others (and ``SYNTH_TORCH_RENDER_BACKEND=torch``) run torch code.

    Example:
        >>> import torch, synth_torch.render as dr
        >>> pos = torch.tensor([[[-1., -1, 0, 1], [3, -1, 0, 1], [-1, 3, 0, 1]]])
        >>> tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
        >>> rast, _ = dr.rasterize(dr.RasterizeContext(device="cpu"), pos, tri, (2, 2))
        >>> out, _ = dr.interpolate(pos[..., :2], rast, tri)  # NDC x, y of each pixel centre
        >>> out[0, 1, 0].tolist()
        [-0.5, 0.5]
    """
    if attr.ndim not in (2, 3) or rast.ndim != 4 or rast.shape[-1] != 4:
        raise ValueError(f"expected attr [B,V,C], [1,V,C] or [V,C] and rast [B,H,W,4], got {tuple(attr.shape)} "
                         f"and {tuple(rast.shape)}")
    if attr.ndim == 3 and attr.shape[0] not in (1, rast.shape[0]):
        raise ValueError(f"attr batch {attr.shape[0]} matches neither 1 nor rast's batch {rast.shape[0]}")
    idx = _diff_indices(diff_attrs, attr.shape[-1])
    if idx and rast_db is None:
        raise ValueError("diff_attrs needs rast_db (the second output of rasterize)")
    check_same_device("interpolate", attr=attr, rast=rast, rast_db=rast_db)
    check_finite("interpolate", attr=attr)
    if use_nvdiffrast(attr, rast):
        nvdr = nvdiffrast_ops()

        return nvdr.interpolate(attr.contiguous(), rast, tri.to(device=rast.device, dtype=torch.int32),
                                rast_db=rast_db, diff_attrs=diff_attrs)
    if rast_db is not None and rast_db.shape != rast.shape:
        raise ValueError(f"rast_db must have the shape of rast {tuple(rast.shape)}, got {tuple(rast_db.shape)}")
    if _use_kernel(attr, rast, rast_db):
        return _interpolate_cpu(attr, rast, tri, rast_db, idx)
    B, H, W, _ = rast.shape
    C = attr.shape[-1]
    (b, py, px), u, v, a = pixel_attributes(attr, rast, tri)
    values = u[:, None] * a[:, 0] + v[:, None] * a[:, 1] + (1.0 - u - v)[:, None] * a[:, 2]
    out = attr.new_zeros((B, H, W, C)).index_put((b, py, px), values)
    if not idx:
        return out, attr.new_zeros((B, H, W, 0))
    db = rast_db[b, py, px]  # [P, 4] (du/dX, du/dY, dv/dX, dv/dY)
    sel = a[:, :, idx]
    d_u, d_v = sel[:, 0] - sel[:, 2], sel[:, 1] - sel[:, 2]
    dx = db[:, 0:1] * d_u + db[:, 2:3] * d_v
    dy = db[:, 1:2] * d_u + db[:, 3:4] * d_v
    da = torch.stack((dx, dy), dim=-1).reshape(-1, 2 * len(idx))
    out_da = attr.new_zeros((B, H, W, 2 * len(idx))).index_put((b, py, px), da)
    return out, out_da
