"""texture: exact nearest/bilinear values on a small known texture, boundary modes, mip pyramids."""

from __future__ import annotations

import pytest
import torch

import synth_torch.render as dr

F64 = torch.float64
# 2 rows x 4 columns, one channel: texel (i, j) = tex[0, j, i] = 10 j + i, centred at uv ((i + .5)/4, (j + .5)/2)
TEX = torch.tensor([[[[0.0], [1.0], [2.0], [3.0]], [[10.0], [11.0], [12.0], [13.0]]]], dtype=F64)


def sample(uv, device="cpu", **kwargs):
    uv = torch.tensor(uv, dtype=F64, device=device).reshape(1, 1, -1, 2)
    out = dr.texture(TEX.to(device), uv, **kwargs)
    assert out.device == uv.device and out.dtype == F64
    return out[0, 0, :, 0].cpu()


def test_nearest_returns_the_texel_containing_uv(reference_device):
    uv = [[(i + f) / 4, (j + g) / 2] for j in range(2) for i in range(4) for f, g in ((0.5, 0.5), (0.01, 0.99))]
    expected = torch.tensor([10.0 * j + i for j in range(2) for i in range(4) for _ in range(2)], dtype=F64)
    torch.testing.assert_close(sample(uv, reference_device, filter_mode="nearest"), expected, atol=0, rtol=0)


def test_linear_is_exact_at_texel_centres_and_averages_between_them(reference_device):
    centres = [[(i + 0.5) / 4, (j + 0.5) / 2] for j in range(2) for i in range(4)]
    torch.testing.assert_close(sample(centres, reference_device, filter_mode="linear"), TEX.reshape(-1), atol=1e-12,
                               rtol=0)
    # halfway between texels (1, 0) and (2, 0); between rows 0 and 1 at column 3; the 2x2 centre
    got = sample([[0.5, 0.25], [0.875, 0.5], [0.5, 0.5]], reference_device, filter_mode="linear")
    torch.testing.assert_close(got, torch.tensor([1.5, 8.0, 6.5], dtype=F64), atol=1e-12, rtol=0)
    # a quarter of the way from column 1 to 2, three quarters from row 0 to 1: 0.25 * 1.25 + 0.75 * 11.25
    got = sample([[(1.5 + 0.25) / 4, (0.5 + 0.75) / 2]], reference_device, filter_mode="linear")
    torch.testing.assert_close(got, torch.tensor([8.75], dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_wrap_repeats_the_texture(mode, reference_device):
    uv = [[0.3, 0.2], [0.9, 0.7]]
    shifted = [[u + 1.0, v - 2.0] for u, v in uv]
    torch.testing.assert_close(sample(shifted, reference_device, filter_mode=mode, boundary_mode="wrap"),
                               sample(uv, reference_device, filter_mode=mode, boundary_mode="wrap"), atol=1e-12, rtol=0)


def test_boundary_modes_at_the_left_edge(reference_device):
    # u = 0 lies halfway between texel column 3 (wrapped) / column 0 (clamped) / nothing (zero) and column 0
    v = 0.25  # row 0 centre
    for boundary, expected in (("wrap", 1.5), ("clamp", 0.0)):
        got = sample([[0.0, v]], reference_device, filter_mode="linear", boundary_mode=boundary).item()
        assert got == pytest.approx(expected), boundary
    row1 = 0.75
    for boundary, expected in (("clamp", 10.0), ("zero", 5.0), ("wrap", 11.5)):
        got = sample([[0.0, row1]], reference_device, filter_mode="linear", boundary_mode=boundary).item()
        assert got == pytest.approx(expected), boundary


def test_clamp_and_zero_far_outside(reference_device):
    far = [[3.0, 0.25], [-2.0, 0.75], [0.625, 9.0]]
    torch.testing.assert_close(sample(far, reference_device, filter_mode="linear", boundary_mode="clamp"),
                               torch.tensor([3.0, 10.0, 12.0], dtype=F64))
    torch.testing.assert_close(sample(far, reference_device, filter_mode="nearest", boundary_mode="clamp"),
                               torch.tensor([3.0, 10.0, 12.0], dtype=F64))
    assert (sample(far, reference_device, filter_mode="linear", boundary_mode="zero") == 0).all()
    assert (sample(far, reference_device, filter_mode="nearest", boundary_mode="zero") == 0).all()


def test_mip_pyramid_of_a_constant_texture_is_constant():
    tex = torch.full((1, 16, 8, 3), 0.7, dtype=F64)
    mip = dr.texture_construct_mip(tex)
    assert [tuple(t.shape[1:3]) for t in mip.levels] == [(16, 8), (8, 4), (4, 2), (2, 1), (1, 1)]
    for level in mip.levels:
        torch.testing.assert_close(level, torch.full_like(level, 0.7))
    uv = torch.rand(1, 5, 6, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for scale in (0.01, 0.3, 5.0):
        uv_da = torch.full((1, 5, 6, 4), scale, dtype=F64)
        out = dr.texture(tex, uv, uv_da, mip=mip, filter_mode="linear-mipmap-linear")
        torch.testing.assert_close(out, torch.full_like(out, 0.7))


def test_mip_levels_are_box_filtered_and_odd_sizes_raise():
    tex = torch.arange(16, dtype=F64).reshape(1, 4, 4, 1)
    mip = dr.texture_construct_mip(tex, max_mip_level=1)
    assert len(mip.levels) == 2
    torch.testing.assert_close(mip.levels[1][0, :, :, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]], dtype=F64))
    with pytest.raises(ValueError, match="odd side"):
        dr.texture_construct_mip(torch.zeros(1, 6, 4, 1))


def test_distant_checkerboard_mipmaps_to_its_mean():
    n = 64
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    tex = ((ii + jj) % 2).to(F64)[None, :, :, None]  # 1-texel checkerboard, mean 0.5
    g = torch.Generator().manual_seed(1)
    uv = torch.rand(1, 8, 8, 2, generator=g, dtype=F64)
    far = torch.tensor([0.25, 0.0, 0.0, 0.25], dtype=F64).expand(1, 8, 8, 4)  # 16 texels per pixel
    out = dr.texture(tex, uv, far, filter_mode="linear-mipmap-linear")
    torch.testing.assert_close(out, torch.full_like(out, 0.5), atol=1e-6, rtol=0)
    aliased = dr.texture(tex, uv, filter_mode="nearest")
    assert set(aliased.unique().tolist()) == {0.0, 1.0}
    near = torch.tensor([1e-3, 0.0, 0.0, 1e-3], dtype=F64).expand(1, 8, 8, 4)  # magnified: level 0
    torch.testing.assert_close(dr.texture(tex, uv, near, filter_mode="linear-mipmap-linear"),
                               dr.texture(tex, uv, filter_mode="linear"))


def test_mip_level_bias_alone_selects_the_level():
    tex = (torch.arange(16, dtype=F64) ** 2).reshape(1, 4, 4, 1)  # not linear: levels differ
    uv = torch.full((1, 1, 1, 2), 0.3, dtype=F64)
    level0 = dr.texture(tex, uv, filter_mode="linear")
    level1 = dr.texture(dr.texture_construct_mip(tex).levels[1], uv, filter_mode="linear")
    assert not torch.allclose(level0, level1)
    for bias, expected in ((0.0, level0), (1.0, level1), (0.5, 0.5 * (level0 + level1)), (7.0, None)):
        out = dr.texture(tex, uv, mip_level_bias=torch.full((1, 1, 1), bias, dtype=F64),
                         filter_mode="linear-mipmap-linear")
        if expected is None:  # clamped to the last level (1x1): the mean
            expected = tex.mean().reshape(1, 1, 1, 1)
        torch.testing.assert_close(out, expected)


def test_batched_textures_and_validation():
    tex = torch.stack((TEX[0], 2 * TEX[0]))
    uv = torch.full((2, 1, 1, 2), 0.3, dtype=F64)
    out = dr.texture(tex, uv, filter_mode="linear")
    torch.testing.assert_close(out[1], 2 * out[0])
    with pytest.raises(ValueError, match="filter_mode must be one of"):
        dr.texture(TEX, uv[:1], filter_mode="cubic")
    with pytest.raises(ValueError, match="boundary_mode must be one of"):
        dr.texture(TEX, uv[:1], boundary_mode="mirror")
    with pytest.raises(ValueError, match="needs uv_da or mip_level_bias"):
        dr.texture(TEX, uv[:1], filter_mode="linear-mipmap-linear")
    with pytest.raises(ValueError, match="matches neither 1 nor uv's batch"):
        dr.texture(torch.cat((tex, tex)), uv)


@pytest.mark.parametrize("name", ["tex", "uv", "uv_da", "mip_level_bias"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_name_the_argument(name, bad):
    args = {"tex": TEX.clone(), "uv": torch.full((1, 2, 2, 2), 0.3, dtype=F64),
            "uv_da": torch.full((1, 2, 2, 4), 0.1, dtype=F64), "mip_level_bias": torch.zeros(1, 2, 2, dtype=F64)}
    args[name].view(-1)[1] = bad
    with pytest.raises(ValueError, match=f"texture: {name} contains NaN or infinite values"):
        dr.texture(args["tex"], args["uv"], args["uv_da"], args["mip_level_bias"], filter_mode="linear-mipmap-linear")


def test_inputs_on_different_devices_are_named():
    uv = torch.full((1, 1, 1, 2), 0.3, dtype=F64)
    with pytest.raises(ValueError, match=r"texture: inputs on different devices \(tex on cpu, uv on meta\)"):
        dr.texture(TEX, uv.to("meta"))
