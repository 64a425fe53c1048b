"""The compiled (numba) forward of the dense label pass: the reference is
:func:`synth_torch.labels.passes.dense_labels_torch` (tests compare them bit for bit)."""

from __future__ import annotations

import numba

from synth_torch.render import cpu  # noqa: F401  (threading set-up before any kernel)


@numba.njit(parallel=True, cache=True)
def dense_labels(slot, defect, position, normal, inst_label, num_objects, instance, semantic, depth, normals, boxes,
                 counts):
    """Per image b (one work item each): slot, defect [B, H, W]; position, normal [B, H, W, 3]; inst_label [B, N]
    class id of each instance slot. Writes instance, semantic [B, H, W] int64; depth [B, 1, H, W]; normals
    [B, 3, H, W]; boxes [B, N, 4] tight xyxy at pixel edges (zeros for absent instances); counts [B, N]."""
    B, H, W = slot.shape
    N = inst_label.shape[1]
    for b in numba.prange(B):
        for n in range(N):
            counts[b, n] = 0
            boxes[b, n, 0], boxes[b, n, 1], boxes[b, n, 2], boxes[b, n, 3] = W, H, -1, -1
        for y in range(H):
            for x in range(W):
                s = slot[b, y, x]
                d = defect[b, y, x]
                inst = 0
                if d > 0:
                    inst = num_objects + d
                elif 0 <= s < num_objects:
                    inst = s + 1
                instance[b, y, x] = inst
                semantic[b, y, x] = inst_label[b, inst - 1] if inst > 0 else 0
                depth[b, 0, y, x] = position[b, y, x, 2]
                for c in range(3):
                    normals[b, c, y, x] = normal[b, y, x, c]
                if inst > 0:
                    n = inst - 1
                    counts[b, n] += 1
                    boxes[b, n, 0] = min(boxes[b, n, 0], x)
                    boxes[b, n, 1] = min(boxes[b, n, 1], y)
                    boxes[b, n, 2] = max(boxes[b, n, 2], x + 1)
                    boxes[b, n, 3] = max(boxes[b, n, 3], y + 1)
        for n in range(N):
            if counts[b, n] == 0:
                boxes[b, n, 0], boxes[b, n, 1], boxes[b, n, 2], boxes[b, n, 3] = 0, 0, 0, 0
