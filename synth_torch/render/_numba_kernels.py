"""Compiled visibility and fill pass of the ``cpu`` backend (numba, parallel over image row bands).

Every pixel belongs to exactly one (image, band) work item and triangles are visited in ascending id
order inside it, so the result never depends on thread count or timing. The arithmetic mirrors
:func:`synth_torch.render._raster.visibility_torch` expression by expression (float64 coverage and
depth, float32 depth comparison, lowest id on ties), which the backend-agreement tests check.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def _covered(e, a, b):
    return e > 0.0 or (e == 0.0 and (a > 0.0 or (a == 0.0 and b > 0.0)))


@numba.njit(parallel=True, cache=True)
def rasterize_bands(edges, zrow, bbox, tri_ids, image_offsets, height, width, band_rows, index, rast, rast_db):
    """Fill ``index`` [B,H,W] (setup row or -1), ``rast`` [B,H,W,4] and ``rast_db`` [B,H,W,4] in place."""
    num_images = index.shape[0]
    bands = (height + band_rows - 1) // band_rows
    for item in numba.prange(num_images * bands):
        b = item // bands
        r0 = (item % bands) * band_rows
        r1 = min(r0 + band_rows, height) - 1
        zbuf = np.full((r1 - r0 + 1, width), np.inf, dtype=np.float32)
        for m in range(image_offsets[b], image_offsets[b + 1]):
            y0 = max(bbox[m, 1], r0)
            y1 = min(bbox[m, 3], r1)
            if y0 > y1:
                continue
            a0, b0, c0 = edges[m, 0, 0], edges[m, 0, 1], edges[m, 0, 2]
            a1, b1, c1 = edges[m, 1, 0], edges[m, 1, 1], edges[m, 1, 2]
            a2, b2, c2 = edges[m, 2, 0], edges[m, 2, 1], edges[m, 2, 2]
            za, zb, zc = zrow[m, 0], zrow[m, 1], zrow[m, 2]
            for j in range(y0, y1 + 1):
                yn = (2.0 * j + 1.0) / height - 1.0
                for i in range(bbox[m, 0], bbox[m, 2] + 1):
                    xn = (2.0 * i + 1.0) / width - 1.0
                    if not _covered(a0 * xn + b0 * yn + c0, a0, b0):
                        continue
                    if not _covered(a1 * xn + b1 * yn + c1, a1, b1):
                        continue
                    if not _covered(a2 * xn + b2 * yn + c2, a2, b2):
                        continue
                    depth = za * xn + zb * yn + zc
                    if depth < -1.0 or depth > 1.0:
                        continue
                    d32 = np.float32(depth)
                    if d32 < zbuf[j - r0, i]:
                        zbuf[j - r0, i] = d32
                        index[b, j, i] = m
        for j in range(r0, r1 + 1):
            yn = (2.0 * j + 1.0) / height - 1.0
            for i in range(width):
                m = index[b, j, i]
                if m < 0:
                    continue
                xn = (2.0 * i + 1.0) / width - 1.0
                e0 = edges[m, 0, 0] * xn + edges[m, 0, 1] * yn + edges[m, 0, 2]
                e1 = edges[m, 1, 0] * xn + edges[m, 1, 1] * yn + edges[m, 1, 2]
                e2 = edges[m, 2, 0] * xn + edges[m, 2, 1] * yn + edges[m, 2, 2]
                s = e0 + e1 + e2
                rast[b, j, i, 0] = e0 / s
                rast[b, j, i, 1] = e1 / s
                rast[b, j, i, 2] = zrow[m, 0] * xn + zrow[m, 1] * yn + zrow[m, 2]
                rast[b, j, i, 3] = tri_ids[m] + 1
                sa = edges[m, 0, 0] + edges[m, 1, 0] + edges[m, 2, 0]
                sb = edges[m, 0, 1] + edges[m, 1, 1] + edges[m, 2, 1]
                ss = s * s
                rast_db[b, j, i, 0] = (edges[m, 0, 0] * s - e0 * sa) / ss * (2.0 / width)
                rast_db[b, j, i, 1] = (edges[m, 0, 1] * s - e0 * sb) / ss * (2.0 / height)
                rast_db[b, j, i, 2] = (edges[m, 1, 0] * s - e1 * sa) / ss * (2.0 / width)
                rast_db[b, j, i, 3] = (edges[m, 1, 1] * s - e1 * sb) / ss * (2.0 / height)
