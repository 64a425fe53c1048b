"""Tests of synth_torch.sensor: each effect against an independent expectation, plus harness checks."""

from __future__ import annotations

import math

import pytest
import torch

import synth_torch.sensor as sensor
from synth_torch.spec.random import sample_keys
from synth_torch.sensor import SENSOR_DEFAULTS, apply_sensor, motion_blur_kernel

NAMES = {
    "sensor.exposure_ev": 0.0,
    "sensor.wb_red": 1.0,
    "sensor.wb_blue": 1.0,
    "sensor.motion_blur_px": 0.0,
    "sensor.motion_blur_angle_deg": 0.0,
    "sensor.defocus_px": 0.0,
    "sensor.vignetting": 0.0,
    "sensor.noise_sigma": 0.0,
    "sensor.shot_noise": 0.0,
    "sensor.gamma": 1.0,
    "sensor.saturation": 1.0,
    "sensor.hue_shift_deg": 0.0,
    "sensor.grayscale": 0.0,
    "sensor.jpeg_quality": 100.0,
}


def _keys(b: int, base: int = 11) -> torch.Tensor:
    return sample_keys(base, torch.arange(b))


def _rand_image(b: int, h: int = 32, w: int = 32, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g, dtype=dtype)


def _all_on(b: int) -> dict[str, torch.Tensor]:
    """Every effect active, with values differing across samples."""
    t = torch.linspace(0, 1, b)
    return {
        "sensor.exposure_ev": -0.5 + t,
        "sensor.wb_red": 0.9 + 0.2 * t,
        "sensor.wb_blue": 1.1 - 0.2 * t,
        "sensor.motion_blur_px": 0.5 + 6 * t,
        "sensor.motion_blur_angle_deg": 10 + 150 * t,
        "sensor.defocus_px": 0.4 + 1.5 * t,
        "sensor.vignetting": 0.1 + 0.4 * t,
        "sensor.noise_sigma": 0.01 + 0.02 * t,
        "sensor.shot_noise": 0.002 + 0.005 * t,
        "sensor.gamma": 1.8 + 0.6 * t,
        "sensor.saturation": 0.6 + 0.8 * t,
        "sensor.hue_shift_deg": -15 + 30 * t,
        "sensor.grayscale": (t > 0.7).float(),
        "sensor.jpeg_quality": 40 + 50 * t,
    }


# --- API ---------------------------------------------------------------------------------------------------------


def test_public_api_snapshot():
    assert sorted(sensor.__all__) == ["SENSOR_DEFAULTS", "SENSOR_ORDER", "apply_sensor", "motion_blur_kernel"]
    assert SENSOR_DEFAULTS == NAMES
    assert sensor.SENSOR_ORDER == (
        "exposure", "white_balance", "motion_blur", "defocus", "vignetting", "noise", "clamp",
        "gamma", "saturation_hue", "grayscale", "jpeg",
    )  # fmt: skip


# --- neutrality --------------------------------------------------------------------------------------------------


def test_neutral_params_return_input_exactly(device):
    img = _rand_image(4).to(device)
    keys = _keys(4).to(device)
    assert torch.equal(apply_sensor(img, {}, keys), img)
    explicit = {k: torch.full((4,), v) for k, v in SENSOR_DEFAULTS.items()}
    assert torch.equal(apply_sensor(img, explicit, keys), img)


def test_neutral_sample_exact_in_a_batch_with_every_effect_on(device):
    img = _rand_image(3).to(device)
    params = _all_on(3)
    for name, value in SENSOR_DEFAULTS.items():
        params[name][1] = value
    out = apply_sensor(img, params, _keys(3).to(device))
    assert out.device == img.device
    assert torch.equal(out[1], img[1])
    assert not torch.allclose(out[0], img[0], atol=1e-2)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "sensor.motion_blur_angle_deg"])
def test_each_effect_neutral_sample_is_exact(name):
    img = _rand_image(2, 24, 24)
    active = {
        "sensor.exposure_ev": 0.7, "sensor.wb_red": 1.3, "sensor.wb_blue": 0.7, "sensor.motion_blur_px": 3.0,
        "sensor.defocus_px": 1.0, "sensor.vignetting": 0.5, "sensor.noise_sigma": 0.05, "sensor.shot_noise": 0.01,
        "sensor.gamma": 2.2, "sensor.saturation": 1.5, "sensor.hue_shift_deg": 30.0, "sensor.grayscale": 1.0,
        "sensor.jpeg_quality": 20.0,
    }[name]  # fmt: skip
    out = apply_sensor(img, {name: torch.tensor([active, NAMES[name]])}, _keys(2))
    assert torch.equal(out[1], img[1])
    assert (out[0] - img[0]).abs().max() > 1e-3


# --- exposure and white balance ----------------------------------------------------------------------------------


def test_exposure_plus_one_ev_doubles_below_saturation():
    img = _rand_image(2) * 0.5  # below saturation after doubling
    out = apply_sensor(img, {"sensor.exposure_ev": torch.tensor([1.0, -1.0])}, _keys(2))
    torch.testing.assert_close(out[0], 2 * img[0], rtol=0, atol=1e-7)
    torch.testing.assert_close(out[1], 0.5 * img[1], rtol=0, atol=1e-7)


def test_exposure_saturates_at_one():
    img = torch.full((1, 3, 8, 8), 0.75)
    out = apply_sensor(img, {"sensor.exposure_ev": torch.tensor([1.0])}, _keys(1))
    assert torch.equal(out, torch.ones_like(img))


def test_white_balance_gains_per_channel():
    img = _rand_image(1) * 0.6
    out = apply_sensor(img, {"sensor.wb_red": torch.tensor([1.5]), "sensor.wb_blue": torch.tensor([0.5])}, _keys(1))
    torch.testing.assert_close(out[0, 0], 1.5 * img[0, 0])
    assert torch.equal(out[0, 1], img[0, 1])
    torch.testing.assert_close(out[0, 2], 0.5 * img[0, 2])


# --- motion blur -------------------------------------------------------------------------------------------------


def _dot(size: int = 41, value: float = 1.0) -> torch.Tensor:
    img = torch.zeros(1, 3, size, size)
    img[:, :, size // 2, size // 2] = value
    return img


@pytest.mark.parametrize("length", [7.0, 2.5])
def test_motion_blur_horizontal_spreads_over_length(length):
    img = _dot()
    out = apply_sensor(img, {"sensor.motion_blur_px": torch.tensor([length])}, _keys(1))[0, 0]
    c = img.shape[-1] // 2
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)  # energy preserved
    assert out[c].sum().item() == pytest.approx(1.0, abs=1e-6)  # all in the centre row
    x = torch.arange(out.shape[-1], dtype=torch.float32) - c
    mean = (out[c] * x).sum()
    var = (out[c] * x**2).sum() - mean**2
    assert abs(mean.item()) < 1e-5
    # a box of length L convolved with the unit tent: variance L^2 / 12 + 1 / 6
    assert var.item() == pytest.approx(length**2 / 12 + 1 / 6, rel=0.03)


def test_motion_blur_extent_counts_l_pixels():
    out = apply_sensor(_dot(), {"sensor.motion_blur_px": torch.tensor([7.0])}, _keys(1))[0, 0]
    row = out[out.shape[0] // 2]
    assert int((row >= 0.5 / 7).sum()) == 7  # seven pixels at (about) the box height 1/7
    assert int((row > 0).sum()) <= 9


def test_motion_blur_vertical_at_90_degrees():
    img = _dot()
    params = {"sensor.motion_blur_px": torch.tensor([7.0]), "sensor.motion_blur_angle_deg": torch.tensor([90.0])}
    out = apply_sensor(img, params, _keys(1))[0, 0]
    c = img.shape[-1] // 2
    assert out[:, c].sum().item() == pytest.approx(1.0, abs=1e-5)
    horizontal = apply_sensor(img, {"sensor.motion_blur_px": torch.tensor([7.0])}, _keys(1))[0, 0]
    torch.testing.assert_close(out, horizontal.T, atol=1e-6, rtol=0)


def test_motion_blur_45_degrees_runs_bottom_left_to_top_right():
    k = motion_blur_kernel(torch.tensor([6.0]), torch.tensor([45.0]))[0]
    c = k.shape[-1] // 2
    # rows grow downwards: up-right is (row - 2, col + 2)
    assert k[c - 2, c + 2] > 0.05
    assert k[c - 2, c - 2] == 0


def test_motion_blur_subpixel_is_smooth_and_normalised():
    lengths = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.5])
    k = motion_blur_kernel(lengths, torch.zeros(5), kernel_size=7)
    torch.testing.assert_close(k.sum(dim=(-2, -1)), torch.ones(5))
    centre = k[:, 3, 3]
    assert centre[0] == 1.0  # length 0 is the delta kernel
    assert bool((centre[1:] < centre[:-1]).all())  # more blur, lower peak
    assert bool(torch.equal(k[:, 3, 2], k[:, 3, 4]))  # symmetric


def test_motion_blur_kernel_matches_numeric_integral():
    """Slow reference: integrate tent(across) * tent(along - s) over the segment with a fine midpoint rule."""
    length, angle = 3.3, 27.0
    k = motion_blur_kernel(torch.tensor([length], dtype=torch.float64), torch.tensor([angle], dtype=torch.float64))[0]
    r = k.shape[-1] // 2
    th = math.radians(angle)
    ref = torch.zeros_like(k)
    n = 2000
    for row in range(-r, r + 1):
        for col in range(-r, r + 1):
            t = col * math.cos(th) - row * math.sin(th)
            d = col * math.sin(th) + row * math.cos(th)
            acc = sum(max(0.0, 1 - abs(t - (-length / 2 + (i + 0.5) * length / n))) for i in range(n))
            ref[row + r, col + r] = max(0.0, 1 - abs(d)) * acc
    ref /= ref.sum()
    torch.testing.assert_close(k, ref, atol=1e-6, rtol=0)


def test_exposure_is_applied_before_blur_and_clamp():
    """An over-exposed dot keeps its HDR energy through the blur: 0.9 * 2^2 = 3.6 spread over ~4 px."""
    img = _dot(value=0.9)
    params = {"sensor.exposure_ev": torch.tensor([2.0]), "sensor.motion_blur_px": torch.tensor([4.0])}
    out = apply_sensor(img, params, _keys(1))[0, 0]
    assert out.max().item() < 1.0
    assert out.sum().item() == pytest.approx(3.6, rel=1e-5)


# --- defocus -----------------------------------------------------------------------------------------------------


def test_defocus_preserves_mean_of_padded_image():
    img = torch.zeros(2, 3, 64, 64)
    img[:, :, 20:44, 20:44] = _rand_image(2, 24, 24)
    out = apply_sensor(img, {"sensor.defocus_px": torch.tensor([1.0, 2.5])}, _keys(2))
    torch.testing.assert_close(out.mean(dim=(-2, -1)), img.mean(dim=(-2, -1)), rtol=1e-5, atol=1e-7)


def test_defocus_reduces_checkerboard_contrast():
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    board = ((yy // 2 + xx // 2) % 2).float().expand(2, 3, 32, 32)
    out = apply_sensor(board, {"sensor.defocus_px": torch.tensor([0.7, 2.0])}, _keys(2))
    inner = out[:, :, 8:-8, 8:-8]  # away from the replicated border
    contrast = inner.amax(dim=(1, 2, 3)) - inner.amin(dim=(1, 2, 3))
    assert 0.1 < contrast[0] < 0.8
    assert contrast[1] < 0.05


def test_defocus_kernel_is_truncated_per_sample():
    """A small sigma's footprint does not grow because another sample in the batch has a larger one."""
    img = _dot().expand(2, 3, 41, 41)
    out = apply_sensor(img, {"sensor.defocus_px": torch.tensor([1.0, 4.0])}, _keys(2))
    c = 20
    assert out[0, 0, c, c + 3] > 0
    assert out[0, 0, c, c + 4] == 0  # truncated at 3 sigma
    alone = apply_sensor(img[:1], {"sensor.defocus_px": torch.tensor([1.0])}, _keys(1))
    torch.testing.assert_close(out[:1], alone, atol=1e-7, rtol=0)


# --- vignetting --------------------------------------------------------------------------------------------------


def test_vignetting_corners_darker_by_strength():
    img = torch.full((2, 3, 33, 49), 0.8)
    out = apply_sensor(img, {"sensor.vignetting": torch.tensor([0.4, 1.0])}, _keys(2))
    torch.testing.assert_close(out[:, :, 16, 24], img[:, :, 16, 24])  # exact image centre
    for r, c in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        torch.testing.assert_close(out[0, :, r, c], torch.full((3,), 0.8 * 0.6))
        assert out[1, :, r, c].abs().max() < 1e-6
    row = out[0, 0, 16, 24:]
    assert bool((row[1:] < row[:-1]).all())  # monotone radial falloff


# --- noise -------------------------------------------------------------------------------------------------------


def test_read_noise_std_matches_sigma():
    img = torch.full((2, 3, 128, 128), 0.5)
    out = apply_sensor(img, {"sensor.noise_sigma": torch.tensor([0.05, 0.02])}, _keys(2))
    diff = out - img
    torch.testing.assert_close(diff.std(dim=(1, 2, 3)), torch.tensor([0.05, 0.02]), rtol=0.02, atol=0)
    assert diff.mean(dim=(1, 2, 3)).abs().max() < 0.002
    within = ((diff[0].abs() < 0.05).float().mean()).item()
    assert within == pytest.approx(0.6827, abs=0.01)  # Gaussian


def test_shot_noise_std_scales_with_sqrt_intensity():
    img = torch.cat([torch.full((1, 3, 128, 128), 0.1), torch.full((1, 3, 128, 128), 0.4)])
    out = apply_sensor(img, {"sensor.shot_noise": torch.tensor([0.01, 0.01])}, _keys(2))
    std = (out - img).std(dim=(1, 2, 3))
    torch.testing.assert_close(std, torch.sqrt(0.01 * torch.tensor([0.1, 0.4])), rtol=0.03, atol=0)
    assert (std[1] / std[0]).item() == pytest.approx(2.0, rel=0.04)


# --- determinism -------------------------------------------------------------------------------------------------


def test_same_keys_same_noise_different_keys_different_noise(device):
    img = torch.full((3, 3, 32, 32), 0.5, device=device)
    p = {"sensor.noise_sigma": torch.full((3,), 0.05)}
    a = apply_sensor(img, p, _keys(3).to(device))
    b = apply_sensor(img, p, _keys(3).to(device))
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    c = apply_sensor(img, p, _keys(3, base=12).to(device))
    assert not torch.equal(a, c)


def test_sub_batch_matches_full_batch(device):
    img = _rand_image(4).to(device)
    keys = _keys(4).to(device)
    params = _all_on(4)
    full = apply_sensor(img, params, keys)
    sub = apply_sensor(img[1:3], {k: v[1:3] for k, v in params.items()}, keys[1:3])
    # only the shared blur-kernel size differs (extra zero taps): float rounding at most
    torch.testing.assert_close(sub, full[1:3], atol=2e-6, rtol=0)
    noise_only = {"sensor.noise_sigma": params["sensor.noise_sigma"], "sensor.shot_noise": params["sensor.shot_noise"]}
    full = apply_sensor(img, noise_only, keys)
    sub = apply_sensor(img[1:3], {k: v[1:3] for k, v in noise_only.items()}, keys[1:3])
    assert torch.equal(sub, full[1:3])


def test_batched_matches_unbatched(device):
    img = _rand_image(3).to(device)
    keys = _keys(3).to(device)
    params = _all_on(3)
    full = apply_sensor(img, params, keys)
    for i in range(3):
        one = apply_sensor(img[i : i + 1], {k: v[i : i + 1] for k, v in params.items()}, keys[i : i + 1])
        torch.testing.assert_close(one, full[i : i + 1], atol=2e-6, rtol=0)


# --- gamma, colour -----------------------------------------------------------------------------------------------


def test_gamma_encodes_with_inverse_exponent():
    img = _rand_image(1)
    out = apply_sensor(img, {"sensor.gamma": torch.tensor([2.2])}, _keys(1))
    torch.testing.assert_close(out, img ** (1 / 2.2))


def test_saturation_zero_and_grayscale_give_equal_channels():
    img = _rand_image(2)
    luma = 0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]
    out = apply_sensor(img, {"sensor.grayscale": torch.tensor([1.0, 0.0])}, _keys(2))
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 1], out[0, 2])
    torch.testing.assert_close(out[0, 0], luma[0])
    assert torch.equal(out[1], img[1])
    desat = apply_sensor(img, {"sensor.saturation": torch.tensor([0.0, 0.0])}, _keys(2))
    torch.testing.assert_close(desat[:, 0], luma)
    torch.testing.assert_close(desat[:, 2], luma)


def test_hue_shift_rotates_primaries():
    img = torch.zeros(2, 3, 4, 4)
    img[:, 0] = 1.0  # pure red
    out = apply_sensor(img, {"sensor.hue_shift_deg": torch.tensor([120.0, -120.0])}, _keys(2))
    green, blue = torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)
    green[1] = 1.0
    blue[2] = 1.0
    torch.testing.assert_close(out[0], green, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], blue, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"sensor.hue_shift_deg must lie in \[-180.0, 180.0\]"):
        apply_sensor(img, {"sensor.hue_shift_deg": torch.tensor([120.0, -240.0])}, _keys(2))


# --- JPEG --------------------------------------------------------------------------------------------------------


def test_jpeg_low_quality_changes_image_100_does_not():
    img = _rand_image(2, 40, 48)
    out = apply_sensor(img, {"sensor.jpeg_quality": torch.tensor([10.0, 100.0])}, _keys(2))
    assert (out[0] - img[0]).abs().mean() > 0.05
    assert torch.equal(out[1], img[1])
    assert out.min() >= 0 and out.max() <= 1


def test_jpeg_error_decreases_with_quality():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    smooth = torch.stack([xx, yy, (xx + yy) / 2]).expand(3, 3, 32, 32) * 0.8 + 0.1
    smooth = smooth + 0.1 * _rand_image(1, 32, 32) - 0.05
    out = apply_sensor(smooth, {"sensor.jpeg_quality": torch.tensor([5.0, 50.0, 95.0])}, _keys(3))
    err = (out - smooth).abs().mean(dim=(1, 2, 3))
    assert err[0] > err[1] > err[2]


# --- validation --------------------------------------------------------------------------------------------------


def test_unknown_sensor_key_raises_naming_it():
    img = _rand_image(1, 8, 8)
    with pytest.raises(ValueError, match="sensor.exposure"):
        apply_sensor(img, {"sensor.exposure": torch.tensor([1.0])}, _keys(1))
    # other namespaces are ignored: the whole scenario dict may be passed
    assert torch.equal(apply_sensor(img, {"light.intensity": torch.tensor([3.0])}, _keys(1)), img)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sensor.exposure_ev", float("nan")),
        ("sensor.defocus_px", float("inf")),
        ("sensor.motion_blur_px", -1.0),
        ("sensor.vignetting", 1.5),
        ("sensor.noise_sigma", -0.1),
        ("sensor.gamma", 0.0),
        ("sensor.grayscale", 2.0),
        ("sensor.jpeg_quality", 0.0),
        ("sensor.jpeg_quality", 101.0),
    ],
)
def test_bad_values_raise_naming_the_parameter(name, value):
    with pytest.raises(ValueError, match=name):
        apply_sensor(_rand_image(2, 8, 8), {name: torch.tensor([NAMES[name], value])}, _keys(2))


def test_bad_shapes_and_types_raise():
    img = _rand_image(2, 8, 8)
    with pytest.raises(ValueError, match=r"sensor.gamma.*\[2\]"):
        apply_sensor(img, {"sensor.gamma": torch.ones(3)}, _keys(2))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        apply_sensor(img[:, :1], {}, _keys(2))
    with pytest.raises(ValueError, match="keys"):
        apply_sensor(img, {}, _keys(3))
    with pytest.raises(TypeError, match="int64"):
        apply_sensor(img, {}, _keys(2).float())
    with pytest.raises(TypeError, match="floating"):
        apply_sensor((img * 255).to(torch.uint8), {}, _keys(2))


# --- harness: in-place, dtype, empty batch, gradients ------------------------------------------------------------


def test_input_not_modified_dtype_and_device_preserved_range(device, dtype):
    img = _rand_image(3, 24, 24, dtype=dtype).to(device)
    params = _all_on(3)
    versions = (img._version, *(v._version for v in params.values()))
    before = img.clone()
    out = apply_sensor(img, params, _keys(3).to(device))
    assert (img._version, *(v._version for v in params.values())) == versions
    assert torch.equal(img, before)
    assert out.dtype == dtype and out.device == img.device and out.shape == img.shape
    assert out.min() >= 0 and out.max() <= 1


def test_empty_batch(device):
    img = torch.zeros(0, 3, 16, 16, device=device)
    out = apply_sensor(img, {k: torch.zeros(0) for k in SENSOR_DEFAULTS}, torch.zeros(0, dtype=torch.int64,
                                                                                       device=device))
    assert out.shape == (0, 3, 16, 16) and out.device == img.device


def test_scalar_params_broadcast():
    img = _rand_image(2) * 0.4
    out = apply_sensor(img, {"sensor.exposure_ev": 1.0, "sensor.wb_red": torch.tensor(1.0)}, _keys(2))
    torch.testing.assert_close(out, 2 * img)


def test_gradcheck_float64_every_effect_but_jpeg():
    img = (0.3 + 0.3 * _rand_image(2, 7, 7, dtype=torch.float64)).requires_grad_(True)
    params = {k: v.double() for k, v in _all_on(2).items() if k != "sensor.jpeg_quality"}
    params["sensor.exposure_ev"] = torch.tensor([-0.5, 0.2], dtype=torch.float64)  # stay clear of the clamp
    params["sensor.noise_sigma"] = torch.tensor([0.005, 0.01], dtype=torch.float64)
    keys = _keys(2)
    fn = lambda x: apply_sensor(x, params, keys)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (img,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradient_through_jpeg_and_black_pixels_is_finite():
    img = _rand_image(2, 16, 16).requires_grad_(True)
    with torch.no_grad():
        img[:, :, :4] = 0.0  # black pixels: gamma's x ** (1/g) has an infinite slope there
    apply_sensor(img, _all_on(2), _keys(2)).sum().backward()
    assert torch.isfinite(img.grad).all()
    assert img.grad.abs().sum() > 0


def test_compiled_forward_matches_the_torch_reference(monkeypatch):
    """Float32 CPU images take the compiled kernel (hue and JPEG samples excepted); the reference is the torch path."""
    img = _rand_image(6, 20, 28)
    params = _all_on(6)
    params["sensor.hue_shift_deg"] = torch.tensor([0.0, 0.0, 0.0, 30.0, 0.0, 0.0])
    params["sensor.jpeg_quality"] = torch.tensor([100.0, 100.0, 100.0, 100.0, 60.0, 100.0])
    keys = _keys(6)
    fast = apply_sensor(img, params, keys)
    monkeypatch.setenv("SYNTH_TORCH_SENSOR", "torch")
    ref = apply_sensor(img, params, keys)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=0)
    # and a sample's result does not depend on its batch-mates
    monkeypatch.delenv("SYNTH_TORCH_SENSOR")
    alone = apply_sensor(img[2:3], {k: v[2:3] for k, v in params.items()}, keys[2:3])
    assert torch.equal(alone[0], fast[2])


def test_zero_length_motion_blur_is_untouched_next_to_a_blurred_sample():
    """A zero-length blur at an oblique angle is no blur at all, also when its batch-mate is blurred (the kernel
    of length 0 at 5.9 degrees is not a delta on the pixel grid, so it must not be applied)."""
    img = _rand_image(2, 16, 20)
    params = {"sensor.motion_blur_px": torch.tensor([6.0, 0.0]), "sensor.motion_blur_angle_deg": torch.tensor([30.0, 5.9]),
              "sensor.defocus_px": torch.tensor([0.0, 0.7])}
    both = apply_sensor(img, params, _keys(2))
    alone = apply_sensor(img[1:], {k: v[1:] for k, v in params.items()}, _keys(2)[1:])
    assert torch.equal(both[1], alone[0])


@pytest.mark.gpu
def test_cuda_matches_the_cpu_reference():
    """Every effect on CUDA against the CPU torch reference (float32 both): identical counter-based noise and the
    same kernels, so the images agree to 1e-4 (different conv and transcendental rounding); JPEG samples go through
    kornia's differentiable codec on both devices and agree to 2e-3 on average."""
    img = _rand_image(6, 40, 48)
    params, keys = _all_on(6), _keys(6)
    params["sensor.jpeg_quality"] = torch.tensor([100.0, 100.0, 100.0, 100.0, 100.0, 50.0])
    with pytest.MonkeyPatch.context() as m:
        m.setenv("SYNTH_TORCH_SENSOR", "torch")
        ref = apply_sensor(img, params, keys)
    out = apply_sensor(img.cuda(), params, keys.cuda()).cpu()
    torch.testing.assert_close(out[:5], ref[:5], atol=1e-4, rtol=0)
    assert float((out[5] - ref[5]).abs().mean()) < 2e-3
