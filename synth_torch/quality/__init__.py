"""Quality checks of generated data (realism against real image sets)."""

from synth_torch.quality.realism import FEATURES, frechet_distance, image_features, load_real_images, realism_report

__all__ = ["FEATURES", "frechet_distance", "image_features", "load_real_images", "realism_report"]
