"""Shading: material and light tables, the reference and compiled shaders, and image composition."""

from synth_torch.shading.materials import LightTable, MaterialTable
from synth_torch.shading.shaders import SHADERS, CompiledShader, Shader, TorchShader, get_shader, render_image

__all__ = ["SHADERS", "CompiledShader", "LightTable", "MaterialTable", "Shader", "TorchShader", "get_shader",
           "render_image"]
