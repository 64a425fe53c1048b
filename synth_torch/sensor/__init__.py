"""Photometric sensor effects (exposure, white balance, blur, vignetting, noise, gamma, colour, JPEG).

Parameters, units, neutral values and the order of operations are in ``docs/sensor.md``.
"""

from synth_torch.sensor.effects import SENSOR_DEFAULTS, SENSOR_ORDER, apply_sensor, motion_blur_kernel

__all__ = ["SENSOR_DEFAULTS", "SENSOR_ORDER", "apply_sensor", "motion_blur_kernel"]
