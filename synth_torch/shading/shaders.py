"""Shaders: G-buffer plus material and light tables in, linear colour out; and the image composition around them.

Two implementations of the :class:`Shader` protocol, chosen like render backends (:func:`get_shader`):

``"torch"``
    :class:`TorchShader`, the reference: dense torch over every pixel, differentiable (light, materials, poses,
    camera and defects reach the image through it), on any device. On the CPU it computes in float64 and rounds
    to float32, so vectorised and scalar code paths of transcendental functions cannot make a sample depend
    on its batch; on CUDA it computes in float32.
``"numba"``
    :class:`CompiledShader`, the same definitions fused into one compiled CPU kernel per pixel; no gradients.
``"auto"``
    ``"numba"`` on the CPU, ``"torch"`` elsewhere (and wherever a gradient is needed).

:func:`render_image` composes the full image: ground image textures (mipmapped :func:`~synth_torch.render.texture`),
the shader, background, silhouette antialiasing (:func:`~synth_torch.render.antialias`) and clamping.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

import synth_torch.render as dr
from synth_torch.render import cpu
from synth_torch.scene.gbuffer import SHADOW_DEPTH_RANGE, GBuffer, needs_grad
from synth_torch.scene.geometry import SceneGeometry
from synth_torch.shading.materials import (
    BACKGROUND,
    LightTable,
    MaterialTable,
    blinn_phong,
    environment_light,
    grain,
    pattern,
    shadow_lookup,
)
from synth_torch.spec.constants import on_device
from synth_torch.spec.types import SceneSpec

__all__ = ["SHADERS", "CompiledShader", "Shader", "TorchShader", "albedo_map", "background_color", "get_shader",
           "render_image"]

SHADERS = ("auto", "torch", "numba")


class Shader(Protocol):
    """Colour of every pixel from a G-buffer and the batch's material and light tables.

    ``__call__(gbuffer, materials, lights, albedo_map, background) -> [B, H, W, 3]`` linear RGB (not clamped),
    where ``albedo_map`` [B, H, W, 3] (or [B, H, W, 0]) replaces the ground's albedo and ``background`` is
    [B, 3] colours or [B, H, W, 3] images for pixels no surface covers.
    """

    name: str

    def __call__(self, gbuffer: GBuffer, materials: MaterialTable, lights: LightTable, albedo_map: Tensor,
                 background: Tensor) -> Tensor: ...


def _gather_slot(table: Tensor, slot: Tensor) -> Tensor:
    """Per-pixel rows ``table[b, slot[b, y, x]]`` for table [B, S+1, ...] and slot [B, H, W] (clamped to >= 0)."""
    B = slot.shape[0]
    index = slot.clamp(min=0).long().reshape(B, -1)
    if table.ndim == 2:
        return table.gather(1, index).view(slot.shape)
    out = table.gather(1, index[..., None].expand(-1, -1, table.shape[-1]))
    return out.view(*slot.shape, table.shape[-1])


class TorchShader:
    """The reference shader (module docstring)."""

    name = "torch"

    def __call__(self, gbuffer: GBuffer, materials: MaterialTable, lights: LightTable, albedo_map: Tensor,
                 background: Tensor) -> Tensor:
        g = gbuffer
        dtype = torch.float64 if g.slot.device.type == "cpu" else torch.float32
        slot = g.slot
        local = g.local.to(dtype)
        cs = _gather_slot(materials.coord_scale.to(dtype), slot)[..., None]
        x, y, z = (local * cs).unbind(-1)
        ph = _gather_slot(materials.phase.to(dtype), slot)
        mod = pattern(_gather_slot(materials.texture, slot), x, y, z, _gather_slot(materials.contrast.to(dtype), slot), ph)
        mod = mod * grain(x, y, z, _gather_slot(materials.grain.to(dtype), slot), ph)
        mod = mod * (1 - g.decal.to(dtype))
        albedo = _gather_slot(materials.albedo.to(dtype), slot)
        if albedo_map.shape[-1]:
            mapped = _gather_slot(materials.mapped, slot) & g.covered
            albedo = torch.where(mapped[..., None], albedo_map.to(dtype), albedo)
        albedo = albedo * mod[..., None]
        position = g.position.to(dtype)
        to_eye = -position / position.norm(dim=-1, keepdim=True).clamp_min(1e-8)

        def per_image(t: Tensor) -> Tensor:
            return t.to(dtype).view(-1, *([1] * (slot.ndim - 1)), *t.shape[1:])

        if g.shadow_depth.shape[-1]:
            shadow = shadow_lookup(g.shadow_depth, g.light.to(dtype), lights.shadow_softness.to(dtype))
        else:
            shadow = torch.ones_like(x)
        normal = g.normal.to(dtype)
        ambient = per_image(lights.ambient)[..., None] * environment_light(per_image(lights.environment), normal)
        specular = per_image(lights.specular) * _gather_slot(materials.specular.to(dtype), slot)
        color = blinn_phong(albedo, normal, per_image(lights.direction), to_eye, per_image(lights.radiance), ambient,
                            specular, per_image(lights.shininess), shadow)
        bg = background.to(dtype)
        bg = bg[:, None, None] if bg.ndim == 2 else bg
        return torch.where(g.covered[..., None], color, bg).to(torch.float32)


class CompiledShader:
    """The compiled CPU shader (module docstring); CPU tensors, no gradients."""

    name = "numba"

    def __call__(self, gbuffer: GBuffer, materials: MaterialTable, lights: LightTable, albedo_map: Tensor,
                 background: Tensor) -> Tensor:
        from synth_torch.shading import _kernels

        if gbuffer.slot.device.type != "cpu":
            raise ValueError(f"the 'numba' shader runs on CPU tensors, got {gbuffer.slot.device}; use shader='torch'")
        cpu.use_torch_threads()
        g = gbuffer
        B, H, W = g.slot.shape
        out = cpu.empty((B, H, W, 3), torch.float32)

        def rows(t: Tensor, c: int) -> object:
            return t.detach().contiguous().view(B * H, W * c).numpy()

        def f64(t: Tensor) -> object:
            return t.detach().double().contiguous().numpy()

        bg_image = background if background.ndim == 4 else torch.zeros(B, H, W, 0)
        bg_color = background if background.ndim == 2 else torch.zeros(B, 3)
        m, lt = materials, lights
        uniform = lt.environment.new_zeros(4, 4)
        uniform[3, 3] = 1.0
        with_env = not bool((lt.environment == uniform).all())
        _kernels.shade_rows(rows(g.slot, 1), rows(g.position, 3), rows(g.normal, 3), rows(g.local, 3),
                            rows(g.light, 3), rows(g.decal, 1), H, f64(m.albedo), m.texture.contiguous().numpy(),
                            f64(m.coord_scale), f64(m.contrast), f64(m.phase), f64(m.grain), f64(m.specular),
                            m.mapped.to(torch.uint8).contiguous().numpy(), f64(lt.direction),
                            f64(lt.radiance), f64(lt.ambient), f64(lt.specular), f64(lt.shininess),
                            f64(lt.shadow_softness), f64(lt.environment), with_env, g.shadow_depth.contiguous().numpy(),
                            SHADOW_DEPTH_RANGE, rows(albedo_map, albedo_map.shape[-1]), f64(bg_color),
                            rows(bg_image, bg_image.shape[-1]), out.view(B * H, W * 3).numpy())
        return out


def get_shader(name: str = "auto", device="cpu", grad: bool = False) -> Shader:
    """The shader called ``name`` (:data:`SHADERS`) for ``device``; ``"auto"`` is ``"numba"`` on the CPU when
    no gradient is needed, else ``"torch"``."""
    if name not in SHADERS:
        raise ValueError(f"shader must be one of {SHADERS}, got {name!r}")
    device = torch.device(device)
    if name == "auto":
        name = "numba" if device.type == "cpu" and not grad else "torch"
    if name == "numba" and device.type != "cpu":
        raise ValueError(f"shader 'numba' runs on the CPU only, got device {device}; use shader='torch' or 'auto'")
    return CompiledShader() if name == "numba" else TorchShader()


def background_color(spec: SceneSpec) -> Tensor:
    """[B, 3] flat background colour of the spec's surface."""
    return on_device(BACKGROUND[spec.surface], spec.device, torch.float32).expand(spec.batch_size, 3)


def albedo_map(spec: SceneSpec, gbuffer: GBuffer, ground_images: Tensor | None = None) -> Tensor:
    """Per-pixel albedo [B, H, W, 3] of the surfaces whose colour comes from images or files (the rows of
    ``MaterialTable.mapped``): ground images, the mesh files' base colour textures (mipmapped
    :func:`~synth_torch.render.texture` at ``gbuffer.uv``) and vertex colours (``gbuffer.color``); [B, H, W, 0]
    when the scene has none. Pixels are chosen by their slot's shape, without host synchronisation."""
    from synth_torch.scene.library import template_bank

    g = gbuffer
    B, H, W = g.slot.shape
    S = spec.num_slots
    textured = template_bank(spec.shapes).texture_index  # static facts of the shapes (CPU)
    if ground_images is None and not g.color.shape[-1] and not bool((textured >= 0).any()):
        return g.position[..., :0]
    if (ground_images is not None or bool((textured >= 0).any())) and not g.uv.shape[-1]:
        raise ValueError("image textures need a G-buffer built with uv=True")
    out = g.color if g.color.shape[-1] else torch.ones(B, H, W, 3, device=g.slot.device)
    if bool((textured >= 0).any()):
        shape = torch.cat((spec.objects.shape, spec.objects.shape.new_full((B, 1), -1)), 1)
        pixel_shape = _gather_slot(shape, g.slot.clamp(max=S))
        textures = template_bank(spec.shapes, g.slot.device).textures
        for k in range(textures.shape[0]):
            shapes_k = (textured == k).nonzero().flatten().tolist()
            chosen = torch.isin(pixel_shape, torch.tensor(shapes_k, device=g.slot.device)) & (g.slot >= 0) & (g.slot < S)
            sampled = dr.texture(textures[k:k + 1].contiguous(), g.uv.contiguous(), g.uv_da.contiguous(),
                                 filter_mode="linear-mipmap-linear")
            out = torch.where(chosen[..., None], sampled, out)
    if ground_images is not None:
        ground = dr.texture(ground_images.to(g.uv.device).contiguous(), g.uv.contiguous(), g.uv_da.contiguous(),
                            filter_mode="linear-mipmap-linear")
        out = torch.where((g.slot == S)[..., None], ground, out)
    return out


def render_image(spec: SceneSpec, geom: SceneGeometry, gbuffer: GBuffer, shader: Shader | str = "auto",
                 ground_images: Tensor | None = None, background: Tensor | None = None,
                 antialias: bool = True) -> Tensor:
    """The linear image [B, 3, H, W] in [0, 1]: shader output, background, antialiasing.

    Args:
        ground_images: [B, h, w, 3] texture of each image's ground (sampled with mipmapped
            :func:`~synth_torch.render.texture` through ``gbuffer.uv``), or None for procedural ground.
        background: [B, H, W, 3] images for empty pixels, or None for the surface's flat colour.

    Mesh textures and vertex colours (:func:`albedo_map`) need a G-buffer built with ``uv=True`` (textures).
    """
    if isinstance(shader, str):
        shader = get_shader(shader, gbuffer.slot.device, needs_grad(spec, gbuffer))
    color = shader(gbuffer, MaterialTable.from_spec(spec), LightTable.from_spec(spec),
                   albedo_map(spec, gbuffer, ground_images),
                   background_color(spec) if background is None else background)
    if antialias:
        color = dr.antialias(color.contiguous(), gbuffer.rast, gbuffer.clip, gbuffer.tri, topology_hash=geom.topology)
    return color.clamp(0, 1).permute(0, 3, 1, 2).contiguous()
