"""PSNR / SSIM on the BT.601 Y channel as WeatherDiff reports them (SwinIR's functions), by hand."""

import math

import numpy as np
import pytest

from neuromorph.diffusion.metrics import gaussian_window, psnr_y, rgb_to_y, seam_score, ssim_y
from neuromorph.diffusion.sampler import patch_grid


def test_y_channel_of_pure_colours_by_hand():
    img = np.zeros((1, 5, 3))
    img[0, 1] = [1, 0, 0]
    img[0, 2] = [0, 1, 0]
    img[0, 3] = [0, 0, 1]
    img[0, 4] = [1, 1, 1]
    y = rgb_to_y(img)[0]
    assert np.allclose(y, [16.0, 16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0])
    assert np.allclose(rgb_to_y(np.full((2, 2), 0.5)), 127.5)  # grey is used as it is


def test_psnr_by_hand():
    a = np.zeros((4, 4, 3))
    b = np.zeros((4, 4, 3))
    b[0, 0] = [10 / 255, 10 / 255, 10 / 255]  # Y differs by 10 * (65.481 + 128.553 + 24.966) / 255
    dy = 10 * 219.0 / 255
    mse = dy**2 / 16
    assert psnr_y(a, b) == pytest.approx(20 * math.log10(255 / math.sqrt(mse)), abs=1e-9)
    assert psnr_y(a, a) == math.inf


def test_psnr_quantises_to_8_bits_like_saved_pngs():
    a = np.full((3, 3), 0.5)
    b = np.full((3, 3), 0.5 + 0.4 / 255)  # rounds to the same 8-bit value
    assert psnr_y(a, b) == math.inf
    assert psnr_y(a, b, quantize=False) < math.inf


def test_ssim_by_hand_on_a_window_sized_image():
    # On an 11 x 11 image the valid region is one pixel: SSIM = the formula with Gaussian-weighted stats.
    rng = np.random.default_rng(0)
    a = rng.random((11, 11))
    b = np.clip(a + 0.1 * rng.standard_normal((11, 11)), 0, 1)
    ya, yb = np.round(a * 255), np.round(b * 255)
    w = gaussian_window()
    mu_a, mu_b = (w * ya).sum(), (w * yb).sum()
    var_a = (w * ya * ya).sum() - mu_a**2
    var_b = (w * yb * yb).sum() - mu_b**2
    cov = (w * ya * yb).sum() - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    assert ssim_y(a, b) == pytest.approx(expected, abs=1e-12)
    assert ssim_y(a, a) == pytest.approx(1.0)


def test_gaussian_window_is_opencvs():
    cv2 = pytest.importorskip("cv2")
    k = cv2.getGaussianKernel(11, 1.5)
    assert np.allclose(gaussian_window(), k @ k.T, atol=1e-12)


def test_ssim_matches_scikit_image_with_the_same_settings():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.random((40, 33, 3))
    b = np.clip(a + 0.05 * rng.standard_normal(a.shape), 0, 1)
    ya, yb = rgb_to_y(np.round(a * 255) / 255), rgb_to_y(np.round(b * 255) / 255)
    ref = metrics.structural_similarity(
        ya, yb, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim_y(a, b) == pytest.approx(ref, abs=1e-9)


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="same shape"):
        psnr_y(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="11 x 11"):
        ssim_y(np.zeros((10, 30)), np.zeros((10, 30)))
    with pytest.raises(ValueError, match="shape"):
        psnr_y(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="finite"):
        psnr_y(np.full((4, 4), np.nan), np.zeros((4, 4)))


def test_seam_score_sees_a_grid_and_not_a_smooth_image():
    h = w = 32
    grid = patch_grid(h, w, 8, 8)
    ramp = np.tile(np.linspace(0, 1, w), (h, 1))  # constant gradient everywhere: no seam
    assert seam_score(ramp, grid) == pytest.approx(1.0, rel=1e-6)
    blocks = ramp.copy()
    for top in grid.tops:
        for left in grid.lefts:
            blocks[top : top + 8, left : left + 8] += 0.05 * ((top + left) // 8 % 2)  # checkerboard offsets
    blocks = np.clip(blocks, 0, 1)
    assert seam_score(blocks, grid) > 3
    assert seam_score(blocks, grid, clean=ramp) > 3  # relative to the ground truth
    assert seam_score(blocks, grid, clean=blocks) == pytest.approx(1.0)
    assert seam_score(blocks, grid, clean=ramp, shift=4) < 1  # between the edges: no seam
    assert math.isnan(seam_score(np.zeros((8, 8)), patch_grid(8, 8, 8, 8)))  # one patch: no edge


def test_seam_score_by_hand():
    # 1 x 4 image, patches of 2 at stride 2: one vertical edge between columns 1 and 2
    img = np.array([[0.0, 0.1, 0.4, 0.5]])
    grid = patch_grid(1, 4, 1, 1)._replace(patch=2, stride=2, lefts=(0, 2))
    # differences 0.1, 0.3, 0.1 (x 255 for grey); edge: 0.3; elsewhere: mean(0.1, 0.1)
    assert seam_score(img, grid) == pytest.approx(3.0)
    assert seam_score(img, grid, shift=1) == pytest.approx(0.1 / 0.2)  # the edge moved to columns 2|3
