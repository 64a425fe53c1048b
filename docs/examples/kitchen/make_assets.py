"""Write the example's own assets (meshes and environment images) with trimesh and Pillow, deterministically:

    python docs/examples/kitchen/make_assets.py

* ``meshes/bottles/``: two bottles as glTF binaries (Y-up, as glTF files are): one with a base colour, one with a
  base colour texture (a label) on cylindrical texture coordinates;
* ``meshes/mug/mug.obj`` (+ ``.mtl`` and texture): a mug modelled in centimetres, Z-up, with a texture;
* ``meshes/apple.ply``: an apple with vertex colours;
* ``environments/``: two equirectangular images (a sky over a brown floor, a warm room).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

HERE = Path(__file__).resolve().parent


def _lathe(profile: list[tuple[float, float]], segments: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Surface of revolution about +y of (radius, height) points, with cylindrical texture coordinates (u around,
    v up) and a seam column of duplicated vertices, so that u runs 0..1 without wrapping."""
    heights = np.array([h for _, h in profile])
    verts, uvs, faces = [], [], []
    for k, (r, h) in enumerate(profile):
        for j in range(segments + 1):
            a = 2 * math.pi * j / segments
            verts.append((r * math.cos(a), h, -r * math.sin(a)))
            uvs.append((j / segments, (h - heights.min()) / np.ptp(heights)))
    n = segments + 1
    for k in range(len(profile) - 1):
        for j in range(segments):
            a, b, c, d = k * n + j, k * n + j + 1, (k + 1) * n + j, (k + 1) * n + j + 1
            faces += [(a, b, d), (a, d, c)]
    return np.array(verts), np.array(faces), np.array(uvs)


def _bottle_profile(neck: float) -> list[tuple[float, float]]:
    return [(0.0, 0.0), (0.9, 0.0), (1.0, 0.15), (1.0, 2.0), (0.9, 2.4), (neck, 2.9), (neck, 3.6), (0.0, 3.6)]


def bottles() -> None:
    out = HERE / "meshes" / "bottles"
    out.mkdir(parents=True, exist_ok=True)
    v, f, uv = _lathe(_bottle_profile(0.35))
    plain = trimesh.Trimesh(v, f, process=False)
    plain.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(
        baseColorFactor=[40, 140, 60, 255], metallicFactor=0.0, roughnessFactor=0.3))
    plain.export(out / "green_bottle.glb")
    v, f, uv = _lathe(_bottle_profile(0.28))
    label = np.zeros((128, 256, 3), np.uint8)
    label[:] = (150, 60, 30)  # brown glass
    label[40:88] = (235, 225, 200)  # a paper label band
    label[52:76, ::16] = (200, 20, 30)  # red marks on it
    textured = trimesh.Trimesh(v, f, process=False)
    textured.visual = trimesh.visual.TextureVisuals(uv=uv, material=trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(label), metallicFactor=0.0, roughnessFactor=0.4))
    textured.export(out / "label_bottle.glb")


def mug() -> None:
    out = HERE / "meshes" / "mug"
    out.mkdir(parents=True, exist_ok=True)
    v, f, uv = _lathe([(0.0, 0.0), (4.0, 0.0), (4.2, 9.0), (3.8, 9.0), (3.6, 0.6), (0.0, 0.6)], segments=40)
    v = v[:, [0, 2, 1]] * np.array([1, -1, 1])  # this one is modelled Z-up, in centimetres
    body = trimesh.Trimesh(v, f, process=False)
    pattern = np.full((128, 128, 3), 245, np.uint8)
    pattern[::16] = pattern[:, ::16] = (40, 90, 200)  # a blue grid on white porcelain
    body.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(pattern))
    body.export(out / "mug.obj")


def apple() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    v = sphere.vertices.copy()
    v[:, 2] *= 0.9 - 0.15 * np.exp(-8 * (1 - v[:, 2]))  # a dimple at the top
    t = (v[:, 2] - v[:, 2].min()) / np.ptp(v[:, 2])
    colors = np.stack([200 - 40 * t, 40 + 150 * t * (1 - t), 30 + 0 * t, 255 + 0 * t], -1).astype(np.uint8)
    trimesh.Trimesh(v, sphere.faces, vertex_colors=colors, process=False).export(HERE / "meshes" / "apple.ply")


def environments() -> None:
    out = HERE / "environments"
    out.mkdir(parents=True, exist_ok=True)
    H, W = 64, 128
    polar = (np.arange(H) + 0.5) / H * math.pi
    up = np.cos(polar)[:, None, None]
    sky = np.where(up > 0, np.array([0.45, 0.65, 1.0]) * (0.6 + 0.4 * up), np.array([0.35, 0.25, 0.15]))
    sky = np.broadcast_to(sky, (H, W, 3)).copy()
    sky[8:14, 20:28] = 1.0  # the sun
    Image.fromarray((sky * 255).round().astype(np.uint8)).save(out / "sky.png")
    room = np.where(up > -0.2, np.array([1.0, 0.75, 0.45]) * (0.5 + 0.5 * np.clip(up, 0, 1)),
                    np.array([0.2, 0.15, 0.1]))
    Image.fromarray((np.broadcast_to(room, (H, W, 3)) * 255).round().astype(np.uint8)).save(out / "warm_room.png")


if __name__ == "__main__":
    bottles()
    mug()
    apple()
    environments()
    print(f"wrote the assets under {HERE}")
