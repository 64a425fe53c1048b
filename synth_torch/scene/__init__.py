"""Scene geometry and rasterization passes: mesh templates, image assets, batch assembly and the G-buffer."""

from synth_torch.scene.gbuffer import GBuffer, build_gbuffer
from synth_torch.scene.geometry import SceneGeometry, assemble

__all__ = ["GBuffer", "SceneGeometry", "assemble", "build_gbuffer"]
