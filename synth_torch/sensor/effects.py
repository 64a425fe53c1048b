"""Photometric sensor effects applied to rendered images, one parameter set per sample.

Every effect is photometric: pixels never move, so masks, boxes, keypoints and depth rendered for the
scene stay valid. Parameters, units, neutral values and the fixed order of operations are documented in
``docs/sensor.md``; the conventions that matter in code are repeated here:

* The input is treated as *linear* intensity in [0, 1]; ``sensor.gamma`` then encodes it for display.
* Axes: ``x`` runs along columns (W, rightwards), ``y`` along rows (H, downwards). A motion-blur angle is
  measured counter-clockwise *as displayed*, from the +x axis: 0 deg is horizontal, 90 deg vertical,
  45 deg runs from bottom-left to top-right.
* Noise is counter-based (:mod:`synth_torch.spec.random`), drawn from the per-sample ``keys``, so a
  sample's image never depends on which batch it was rendered in.
* A sample whose value of an effect's parameter is neutral is passed through that effect untouched
  (bit-exact); effects are computed only on the samples that use them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping

import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import adjust_gamma, adjust_hue, adjust_saturation_with_gray_subtraction, jpeg_codec_differentiable
from kornia.filters import get_gaussian_kernel1d

from synth_torch.render import cpu
from synth_torch.spec import params as registry
from synth_torch.spec.random import stable_hash, uniform

__all__ = ["SENSOR_DEFAULTS", "SENSOR_ORDER", "apply_sensor", "motion_blur_kernel"]

#: Neutral value of every parameter (the value that leaves the image unchanged), from the parameter registry.
SENSOR_DEFAULTS: dict[str, float] = {p.name: p.neutral for p in registry.section("sensor")}

#: The order in which :func:`apply_sensor` applies its effects.
SENSOR_ORDER: tuple[str, ...] = (
    "exposure",
    "white_balance",
    "motion_blur",
    "defocus",
    "vignetting",
    "noise",
    "clamp",
    "gamma",
    "saturation_hue",
    "grayscale",
    "jpeg",
)

# Allowed closed range of each parameter, from the registry; non-finite values always raise.
_RANGES: dict[str, tuple[float, float]] = {p.name: (p.lo, p.hi) for p in registry.section("sensor")}

# Counter-based stream of the read + shot noise draw.
_NOISE_STREAM = "sensor.noise"
# Diagonal half field of view of the lens whose cos^4 law shapes the vignetting falloff (45 deg: tan^2 = 1).
_VIGNETTE_TAN2 = 1.0
# A Gaussian defocus kernel is truncated at this many sigmas, per sample.
_DEFOCUS_TRUNCATE = 3.0


def apply_sensor(image: torch.Tensor, params: Mapping[str, torch.Tensor | float], keys: torch.Tensor,
                 supports: Mapping[str, tuple[float, float]] | None = None) -> torch.Tensor:
    """Apply the sensor model to a batch of linear-intensity images, with per-sample parameters.

    Order of operations (see ``docs/sensor.md``): exposure -> white balance -> motion blur -> defocus ->
    vignetting -> shot + read noise -> clamp to [0, 1] -> gamma -> saturation, hue -> grayscale -> JPEG.

    Args:
        image: RGB images with linear intensities in [0, 1], floating point.
        params: per-sample parameters ``name -> tensor [B]`` (a Python number or 0-d tensor is broadcast).
            Missing ``sensor.*`` names take :data:`SENSOR_DEFAULTS`; keys that do not start with
            ``sensor.`` are ignored, so the full scenario parameter dict can be passed.
        keys: per-sample int64 random keys (:func:`synth_torch.spec.random.sample_keys`).
        supports: optional ``name -> (lo, hi)``, the values each parameter can take in any batch (e.g. the
            scenario's supports; ``SynthDataset`` passes them). They fix the blur kernel sizes and skip effects
            that are neutral over the whole support, so a CUDA batch never waits for the host. Values outside
            them raise on the CPU (where the check costs nothing).

    Returns:
        the images in [0, 1], same dtype and device as ``image``. Differentiable w.r.t. ``image``.
        The input is never modified in place.

    Raises:
        ValueError: unknown ``sensor.*`` names, non-finite or out-of-range values, bad shapes.
        TypeError: non-floating image or non-integer keys.

    Shape:
        - image: :math:`(B, 3, H, W)`
        - params values: :math:`(B)`
        - keys: :math:`(B)`
        - output: :math:`(B, 3, H, W)`

    Example:
        >>> from synth_torch.spec.random import sample_keys
        >>> img = torch.full((2, 3, 16, 16), 0.25)
        >>> keys = sample_keys(7, torch.arange(2))
        >>> out = apply_sensor(img, {"sensor.exposure_ev": torch.tensor([0.0, 1.0])}, keys)
        >>> out[:, 0, 0, 0]
        tensor([0.2500, 0.5000])
    """
    _check_image_and_keys(image, keys)
    if not image.shape[0]:
        return image.clone()
    p = _resolve_params(params, image.shape[0], image.device, image.dtype)
    supports = dict(supports or {})
    unknown = sorted(set(supports) - set(SENSOR_DEFAULTS))
    if unknown:
        raise ValueError(f"supports: unknown sensor parameter(s) {unknown}")
    if image.device.type == "cpu":
        for name, (lo, hi) in supports.items():
            if bool(((p[name] < lo) | (p[name] > hi)).any()):
                raise ValueError(f"{name} leaves its declared support [{lo}, {hi}]: {p[name].tolist()}")
    if image.device.type == "cpu" and image.dtype == torch.float32 and image.shape[0] \
            and not (torch.is_grad_enabled() and image.requires_grad) and os.environ.get("SYNTH_TORCH_SENSOR") != "torch":
        return _apply_compiled(image, p, keys)
    return _apply_torch(image, p, keys, supports)


def _apply_torch(image: torch.Tensor, p: dict[str, torch.Tensor], keys: torch.Tensor,
                 supports: Mapping[str, tuple[float, float]] | None = None) -> torch.Tensor:
    """The reference: torch and kornia, differentiable, any device (resolved parameters)."""
    supports = supports or {}

    def _on(names: tuple[str, ...], active: torch.Tensor, fn) -> torch.Tensor:
        """``_on_active`` unless the declared supports of ``names`` hold only their neutral values."""
        if all(supports.get(n) == (SENSOR_DEFAULTS[n], SENSOR_DEFAULTS[n]) for n in names):
            return x
        return _on_active(x, active, fn)

    x = image

    # Exposure and white balance: one per-channel gain, 2**ev * (wb_red, 1, wb_blue).
    ev, wr, wb = p["sensor.exposure_ev"], p["sensor.wb_red"], p["sensor.wb_blue"]
    gain_active = (ev != 0) | (wr != 1) | (wb != 1)

    def _gain(xs: torch.Tensor, idx: slice | torch.Tensor) -> torch.Tensor:
        e = torch.exp2(ev[idx])
        gains = torch.stack([e * wr[idx], e, e * wb[idx]], dim=1)
        return xs * gains[:, :, None, None]

    x = _on(("sensor.exposure_ev", "sensor.wb_red", "sensor.wb_blue"), gain_active, _gain)

    # Motion blur: anti-aliased line segment kernel.
    length, angle = p["sensor.motion_blur_px"], p["sensor.motion_blur_angle_deg"]
    size = None if "sensor.motion_blur_px" not in supports else 2 * math.ceil(supports["sensor.motion_blur_px"][1] / 2 + 1) + 1
    x = _on(("sensor.motion_blur_px",), length > 0,
            lambda xs, i: _filter(xs, _as(motion_blur_kernel(length[i].double(), angle[i].double(), size), xs)))

    # Defocus: Gaussian with per-sample sigma, truncated per sample.
    sigma = p["sensor.defocus_px"]
    bound = supports["sensor.defocus_px"][1] if "sensor.defocus_px" in supports else None
    x = _on(("sensor.defocus_px",), sigma > 0, lambda xs, i: _defocus(xs, sigma[i], bound))

    # Vignetting: cos^4-shaped radial falloff reaching 1 - strength at the corner pixel centres.
    strength = p["sensor.vignetting"]
    x = _on(("sensor.vignetting",), strength > 0,
            lambda xs, i: xs * _vignette_gain(strength[i], xs.shape[-2], xs.shape[-1]))

    # Shot + read noise: Gaussian with variance noise_sigma^2 + shot_noise * I, one draw per pixel.
    read, shot = p["sensor.noise_sigma"], p["sensor.shot_noise"]

    def _noise(xs: torch.Tensor, idx: slice | torch.Tensor) -> torch.Tensor:
        z = _standard_normal(keys[idx], _NOISE_STREAM, tuple(xs.shape[1:])).to(xs.dtype)
        var = read[idx, None, None, None] ** 2 + shot[idx, None, None, None] * xs.clamp_min(0.0)
        # clamp_min keeps the gradient of sqrt finite (zero) where the variance is exactly 0.
        return xs + var.clamp_min(1e-20).sqrt() * z

    x = _on(("sensor.noise_sigma", "sensor.shot_noise"), (read > 0) | (shot > 0), _noise)

    x = x.clamp(0.0, 1.0)

    # Gamma encoding: out = I ** (1 / gamma); gamma = 2.2 brightens mid-tones like an sRGB-ish camera curve.
    g = p["sensor.gamma"]
    x = _on(("sensor.gamma",), g != 1, lambda xs, i: _gamma_encode(xs, g[i]))

    # Saturation (blend with Rec.601 luma, as torchvision / PIL) then hue rotation in HSV.
    sat = p["sensor.saturation"]
    x = _on(("sensor.saturation",), sat != 1, lambda xs, i: adjust_saturation_with_gray_subtraction(xs, sat[i]))
    hue = torch.remainder(p["sensor.hue_shift_deg"], 360.0)
    x = _on(("sensor.hue_shift_deg",), hue != 0, lambda xs, i: adjust_hue(xs, torch.deg2rad(hue[i])).clamp(0.0, 1.0))

    # Grayscale: blend weight toward Rec.601 luma (0 = colour, 1 = fully gray).
    gray = p["sensor.grayscale"]

    def _gray(xs: torch.Tensor, idx: slice | torch.Tensor) -> torch.Tensor:
        w = gray[idx, None, None, None]
        return (1 - w) * xs + w * rgb_to_grayscale(xs).expand_as(xs)

    x = _on(("sensor.grayscale",), gray > 0, _gray)

    # JPEG compression (differentiable codec, per-sample quality); 100 means off.
    q = p["sensor.jpeg_quality"]
    x = _on(("sensor.jpeg_quality",), q < 100, lambda xs, i: jpeg_codec_differentiable(xs, q[i]).clamp(0.0, 1.0))
    return x


def _apply_compiled(image: torch.Tensor, p: dict[str, torch.Tensor], keys: torch.Tensor) -> torch.Tensor:
    """Compiled forward for the samples without hue shift or JPEG; the others take :func:`_apply_torch`, so each
    sample always takes the same path whatever its batch-mates."""
    from synth_torch.sensor import _kernels

    cpu.use_torch_threads()
    B, _, H, W = image.shape
    hue, jpeg = torch.remainder(p["sensor.hue_shift_deg"], 360.0) != 0, p["sensor.jpeg_quality"] < 100
    compiled = ~(hue | jpeg)
    x = image.detach().contiguous()
    out = cpu.empty((B, 3, H, W), torch.float32)
    length, angle = p["sensor.motion_blur_px"].double(), p["sensor.motion_blur_angle_deg"].double()
    motion = motion_blur_kernel(length, angle).to(torch.float32) if bool((length > 0).any()) else torch.ones(B, 1, 1)
    sigma = p["sensor.defocus_px"].double()
    radius = torch.ceil(_DEFOCUS_TRUNCATE * sigma)
    R = max(int(radius.max()) if radius.numel() else 0, 1)
    taps = torch.arange(-R, R + 1, dtype=torch.float64)
    gauss = torch.exp(-taps**2 / (2 * sigma.clamp_min(1e-12)[:, None] ** 2)) * (taps.abs() <= radius[:, None])
    defocus = torch.where((sigma > 0)[:, None], gauss / gauss.sum(1, keepdim=True), 0.0).to(torch.float32)

    def f64(name: str):
        return p[name].double().contiguous().numpy()

    _kernels.sensor_images(x.numpy(), compiled.numpy(), f64("sensor.exposure_ev"), f64("sensor.wb_red"),
                           f64("sensor.wb_blue"), f64("sensor.motion_blur_px"), motion.contiguous().numpy(), defocus.contiguous().numpy(),
                           f64("sensor.vignetting"), f64("sensor.noise_sigma"), f64("sensor.shot_noise"),
                           f64("sensor.gamma"), f64("sensor.saturation"), f64("sensor.grayscale"),
                           stable_hash(_NOISE_STREAM + "/radius"), stable_hash(_NOISE_STREAM + "/phase"),
                           keys.contiguous().numpy(), out.numpy())
    if not bool(compiled.all()):
        rest = (~compiled).nonzero().squeeze(1)
        sub = {k: v[rest] for k, v in p.items()}
        out[rest] = _apply_torch(x[rest], sub, keys[rest])
    return out


def motion_blur_kernel(length: torch.Tensor, angle_deg: torch.Tensor, kernel_size: int | None = None) -> torch.Tensor:
    """Anti-aliased linear motion-blur kernels, one per sample, normalised to sum 1.

    The kernel is a segment of ``length`` pixels through the kernel centre, at ``angle_deg`` counter-clockwise
    (as displayed) from the +x axis, convolved with a unit tent (linear interpolation) both along and across
    the segment. In the segment frame (``t`` along, ``d`` across) a tap weighs
    ``tent(d) * integral_{-L/2}^{L/2} tent(t - s) ds``, evaluated in closed form; as ``L -> 0`` this tends to
    ``tent(t) * tent(d)``, so length 0 gives the delta kernel and sub-pixel lengths vary smoothly.
    The support of a sample's kernel depends only on its own length, so a larger shared ``kernel_size``
    only adds zero taps.

    Args:
        length: blur lengths in pixels, >= 0.
        angle_deg: angles in degrees.
        kernel_size: odd size; default ``2 * ceil(max(length) / 2 + 1) + 1``, enough for the longest blur.

    Shape:
        - length, angle_deg: :math:`(B)`
        - output: :math:`(B, K, K)`

    Example:
        >>> k = motion_blur_kernel(torch.tensor([2.0]), torch.tensor([0.0]))
        >>> k.shape, k[0, 2]
        (torch.Size([1, 5, 5]), tensor([0.0000, 0.2500, 0.5000, 0.2500, 0.0000]))
    """
    if length.ndim != 1 or angle_deg.shape != length.shape:
        raise ValueError(
            f"length and angle_deg must both have shape [B], got {list(length.shape)} and {list(angle_deg.shape)}"
        )
    if length.device.type == "cpu" and (bool((length < 0).any()) or not bool(torch.isfinite(length).all())):
        raise ValueError(f"length must be finite and >= 0, got {length.tolist()}")
    if kernel_size is None:
        lmax = float(length.max()) if length.numel() else 0.0
        kernel_size = 2 * math.ceil(lmax / 2 + 1) + 1
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    dtype = length.dtype if length.is_floating_point() else torch.float32
    r = (kernel_size - 1) // 2
    offs = torch.arange(-r, r + 1, device=length.device, dtype=dtype)
    ys, xs = offs[:, None], offs[None, :]  # row (down) and column (right) offsets
    theta = torch.deg2rad(angle_deg.to(dtype))[:, None, None]
    c, s = torch.cos(theta), torch.sin(theta)
    # Direction as displayed (counter-clockwise, y up) is (cos, sin); rows grow downwards, hence -sin.
    t = xs * c - ys * s
    d = xs * s + ys * c
    half = (length.to(dtype) / 2)[:, None, None]
    along = _tent_cdf(t + half) - _tent_cdf(t - half)
    tiny = half < 1e-6
    along = torch.where(tiny, _tent(t), along)
    k = _tent(d) * along
    return k / k.sum(dim=(-2, -1), keepdim=True)


def _as(kernel: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return kernel.to(dtype=x.dtype, device=x.device)


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate each sample of x [n, C, H, W] with its own kernel [n, Kh, Kw] (odd sizes, replicate borders).

    Written as a sum of shifted images in a fixed tap order instead of a grouped convolution: every output
    then depends only on its own sample's kernel, never on batch size or on the taps other samples use
    (all-zero taps are skipped, and a zero weight adds exactly nothing), so samples reproduce bit-exactly
    in any batch.
    """
    n, kh, kw = kernel.shape
    rh, rw = kh // 2, kw // 2
    H, W = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (rw, rw, rh, rh), mode="replicate")
    out = torch.zeros_like(x)
    taps = ([(i, j) for i in range(kh) for j in range(kw)] if x.is_cuda
            else (kernel != 0).any(0).nonzero().tolist())
    for i, j in taps:
        out = out + kernel[:, i, j, None, None, None] * padded[..., i:i + H, j:j + W]
    return out


def _standard_normal(keys: torch.Tensor, stream: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Counter-based standard normals [B, *shape] using both Box-Muller outputs (half the hashing of ``normal``).

    Pixel ``j`` of a sample takes the cosine branch of pair ``j`` for ``j < m`` and the sine branch of pair
    ``j - m`` otherwise (``m = ceil(n / 2)``), so every value is a pure function of (key, stream, pixel index).
    """
    n = math.prod(shape)
    m = (n + 1) // 2
    u1 = uniform(keys, stream + "/radius", (m,)).clamp_min(1.0 / (1 << 24))
    u2 = uniform(keys, stream + "/phase", (m,))
    radius = torch.sqrt(-2.0 * torch.log(u1))
    phase = (2.0 * math.pi) * u2
    z = torch.cat([radius * torch.cos(phase), radius * torch.sin(phase)], dim=1)[:, :n]
    return z.reshape(keys.shape[0], *shape)


def _tent(u: torch.Tensor) -> torch.Tensor:
    return (1 - u.abs()).clamp_min(0.0)


def _tent_cdf(u: torch.Tensor) -> torch.Tensor:
    """Integral of the unit tent from -inf to u."""
    u = u.clamp(-1.0, 1.0)
    return torch.where(u < 0, 0.5 * (u + 1) ** 2, 1 - 0.5 * (1 - u) ** 2)


def _defocus(x: torch.Tensor, sigma: torch.Tensor, bound: float | None = None) -> torch.Tensor:
    """Separable Gaussian blur, each sample's kernel truncated at its own ``3 sigma`` and renormalised
    (weights in float64, so the renormalisation does not depend on the shared window size, which is
    ``bound``'s when given)."""
    sigma = sigma.double()
    radius = torch.ceil(_DEFOCUS_TRUNCATE * sigma)
    r = max(math.ceil(_DEFOCUS_TRUNCATE * bound) if bound is not None else int(radius.max()) if radius.numel() else 0, 1)
    k = get_gaussian_kernel1d(2 * r + 1, sigma[:, None])
    offs = torch.arange(-r, r + 1, device=x.device, dtype=k.dtype).abs()
    k = torch.where(offs[None, :] <= radius[:, None], k, torch.zeros_like(k))
    k = _as(k / k.sum(dim=1, keepdim=True), x)
    return _filter(_filter(x, k[:, None, :]), k[:, :, None])


def _vignette_gain(strength: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Gain [B,1,H,W]: ``1 - strength * (1 - c(rho)) / (1 - c(1))`` with the cos^4 law ``c``.

    ``rho`` is the distance from the image centre normalised to 1 at the corner pixel centres, and
    ``c(rho) = cos^4(atan(rho * tan(45 deg))) = (1 + rho^2)^-2``.
    """
    dtype, device = strength.dtype, strength.device
    ys = torch.arange(h, device=device, dtype=dtype) - (h - 1) / 2
    xs = torch.arange(w, device=device, dtype=dtype) - (w - 1) / 2
    corner2 = max(((h - 1) / 2) ** 2 + ((w - 1) / 2) ** 2, 1e-12)
    rho2 = (ys[:, None] ** 2 + xs[None, :] ** 2) / corner2
    cos4 = (1 + _VIGNETTE_TAN2 * rho2) ** -2
    falloff = (1 - cos4) / (1 - (1 + _VIGNETTE_TAN2) ** -2)
    return 1 - strength[:, None, None, None] * falloff[None, None]


def _gamma_encode(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``x ** (1 / gamma)`` with a finite (zero) gradient at black pixels."""
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))
    return torch.where(positive, adjust_gamma(safe, 1.0 / gamma), torch.zeros_like(x))


def _on_active(
    x: torch.Tensor,
    active: torch.Tensor,
    fn: Callable[[torch.Tensor, slice | torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Apply ``fn(x[idx], idx)`` to the active samples only; the others pass through bit-exactly. On CUDA every
    sample is computed and the inactive ones are replaced by their input, so nothing waits for the host."""
    if x.is_cuda:
        return torch.where(active[:, None, None, None], fn(x, slice(None)), x)
    n_active = int(active.sum())
    if n_active == 0:
        return x
    if n_active == x.shape[0]:
        return fn(x, slice(None))
    idx = active.nonzero().squeeze(1)
    return x.index_copy(0, idx, fn(x.index_select(0, idx), idx))


def _check_image_and_keys(image: torch.Tensor, keys: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must have shape [B, 3, H, W], got {list(image.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be floating point in [0, 1], got dtype {image.dtype}")
    if not isinstance(keys, torch.Tensor):
        raise TypeError(f"keys must be a torch.Tensor of int64, got {type(keys).__name__}")
    if keys.dtype != torch.int64:
        raise TypeError(f"keys must be int64, got dtype {keys.dtype}")
    if keys.shape != (image.shape[0],):
        raise ValueError(f"keys must have shape [B] = [{image.shape[0]}], got {list(keys.shape)}")


def _resolve_params(
    params: Mapping[str, torch.Tensor | float], batch: int, device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Every sensor parameter as a [B] tensor on ``device``; validated where the values live (one check for all)."""
    unknown = sorted(k for k in params if isinstance(k, str) and k.startswith("sensor.") and k not in SENSOR_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown sensor parameter(s) {unknown}; expected names from {sorted(SENSOR_DEFAULTS)}")
    values: dict[str, torch.Tensor] = {}
    for name, default in SENSOR_DEFAULTS.items():
        value = params.get(name, default)
        if isinstance(value, torch.Tensor):
            if value.ndim == 0:
                value = value.expand(batch)
            elif value.shape != (batch,):
                raise ValueError(f"{name} must have shape [B] = [{batch}], got {list(value.shape)}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = torch.full((batch,), float(value), dtype=dtype)
        else:
            raise ValueError(f"{name} must be a tensor [B] or a number, got {type(value).__name__}")
        values[name] = value
    by_device: dict[torch.device, list[str]] = {}
    for name, value in values.items():
        by_device.setdefault(value.device, []).append(name)
    for names in by_device.values():
        table = torch.stack([values[n].to(torch.float64) for n in names])
        lo = torch.tensor([_RANGES[n][0] for n in names], dtype=torch.float64, device=table.device)[:, None]
        hi = torch.tensor([_RANGES[n][1] for n in names], dtype=torch.float64, device=table.device)[:, None]
        if bool((~torch.isfinite(table) | (table < lo) | (table > hi)).any()):
            for name in names:
                value = values[name]
                bad = ~torch.isfinite(value)
                if bool(bad.any()):
                    raise ValueError(f"{name} must be finite; samples {_first(bad)} hold {value[bad][:8].tolist()}")
                lo_n, hi_n = _RANGES[name]
                bad = (value < lo_n) | (value > hi_n)
                if bool(bad.any()):
                    raise ValueError(f"{name} must lie in [{lo_n}, {hi_n}]; samples {_first(bad)} hold "
                                     f"{value[bad][:8].tolist()}")
    return {n: v.to(device=device, dtype=dtype) for n, v in values.items()}


def _first(mask: torch.Tensor, n: int = 8) -> list[int]:
    return mask.nonzero().squeeze(1)[:n].tolist()
