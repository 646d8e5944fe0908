"""Overlapping-patch sampler (WeatherDiff, Özdenizci & Legenstein 2023): grid coverage, the smoothed
noise estimate against hand computation, exact reduction to DDIM, batched == one-patch-at-a-time."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuromorph.diffusion.model import TINY, UNetConfig, build_model
from neuromorph.diffusion.sampler import (
    blend_window,
    gather_patches,
    grid_positions,
    overlap_count,
    overlap_weight,
    pad_to_patch,
    patch_corners,
    patch_grid,
    patches_per_batch,
    restore,
    restore_patch_loop,
    smoothed_eps,
)
from neuromorph.diffusion.schedule import make_scheduler, weatherdiff_schedule


def _fixed_eps(value: torch.Tensor):
    calls = []

    def eps_fn(cond, x, t):
        calls.append(int(t))
        return value.expand_as(x).clone()

    return eps_fn, calls


def _hand_ddim(x: torch.Tensor, eps: torch.Tensor, steps: int) -> torch.Tensor:
    """WeatherDiff's generalized_steps with eta = 0 written out: tau = 0, T/S, ..., abar_{-1} = 1."""
    abar = weatherdiff_schedule().alphas_cumprod
    skip = 1000 // steps
    seq = list(range(0, 1000, skip))[:steps]
    for i, t in enumerate(reversed(seq)):
        prev = seq[len(seq) - 2 - i] if i < len(seq) - 1 else None
        a_t = abar[t]
        a_prev = abar[prev] if prev is not None else torch.tensor(1.0)
        x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x.clamp(-1, 1)


@pytest.mark.parametrize("steps", [1, 3, 10, 25])
def test_stride_equal_patch_on_a_patch_sized_image_is_exactly_ddim(steps):
    p = 8
    gen = torch.Generator().manual_seed(1)
    eps = 0.3 * torch.randn(1, 3, p, p, generator=gen)
    cond = torch.rand(1, 3, p, p, generator=gen) * 2 - 1
    eps_fn, calls = _fixed_eps(eps)
    out = restore(eps_fn, cond, patch=p, stride=p, steps=steps, generator=torch.Generator().manual_seed(7))
    x_T = torch.randn(1, 3, p, p, generator=torch.Generator().manual_seed(7))
    ref = _hand_ddim(x_T, eps, steps)
    assert torch.allclose(out, ref, rtol=0, atol=1e-6), (out - ref).abs().max()
    assert calls == [int(t) for t in make_scheduler("ddim", steps).timesteps]
    if steps == 25:
        assert calls[:3] == [960, 920, 880] and calls[-1] == 0


def test_smoothed_estimate_is_the_per_pixel_mean_of_the_patch_estimates():
    # A network whose answer depends on the patch content and position: the mean must be taken per pixel.
    h, w, p, r = 11, 14, 6, 3
    gen = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 3, h, w, generator=gen)
    x = torch.randn(2, 3, h, w, generator=gen)

    def eps_fn(c, xt, t):
        return torch.sin(3 * c + xt * 0.5 + t) + c.mean(dim=(1, 2, 3), keepdim=True)

    grid = patch_grid(h, w, p, r)
    got = smoothed_eps(eps_fn, cond, x, 5, grid, batch_patches=3)
    total = torch.zeros_like(x)
    count = torch.zeros(h, w)
    for top in grid.tops:
        for left in grid.lefts:
            sl = (..., slice(top, top + p), slice(left, left + p))
            for b in range(2):  # one patch of one image at a time, by hand
                total[b][sl] += eps_fn(cond[b : b + 1][sl], x[b : b + 1][sl], 5)[0]
            count[sl] += 1
    assert torch.allclose(got, total / count, atol=1e-6)
    # pixel (0, 0) is covered by exactly one patch: its estimate is that patch's own estimate
    first = eps_fn(cond[..., :p, :p], x[..., :p, :p], 5)
    assert torch.allclose(got[..., 0, 0], first[..., 0, 0], atol=1e-7)


def test_a_constant_estimate_stays_constant_after_averaging():
    grid = patch_grid(20, 9, 5, 2)
    x = torch.zeros(1, 3, 20, 9)
    eps_fn, _ = _fixed_eps(torch.full((1, 3, 5, 5), 0.25))
    assert torch.allclose(smoothed_eps(eps_fn, x, x, 0, grid), torch.full_like(x, 0.25))


def test_hann_window_by_hand():
    w = blend_window(4, "hann")
    # 1e-3 + sin^2(pi (i + 1/2) / 4): sin^2(pi/8) = 0.1464466, sin^2(3 pi/8) = 0.8535534
    assert torch.allclose(w, torch.tensor([0.1474466, 0.8545534, 0.8545534, 0.1474466]), atol=1e-6)
    assert blend_window(4, "uniform") is None


def test_hann_blend_is_the_window_weighted_mean_of_the_patch_estimates():
    # eps_hat = sum_d P_d^T (w * eps_d) / sum_d P_d^T w, written out with explicit windows
    p, r = 6, 2
    grid = patch_grid(11, 8, p, r)
    g = torch.Generator().manual_seed(5)
    x, cond = torch.randn(1, 2, 11, 8, generator=g), torch.randn(1, 2, 11, 8, generator=g)

    def eps_fn(c, xt, t):  # a different, position-dependent estimate per patch
        return torch.sin(3 * c) + 0.1 * xt * xt.mean(dim=(1, 2, 3), keepdim=True)

    got = smoothed_eps(eps_fn, cond, x, 7, grid, batch_patches=3, blend="hann")
    w1 = blend_window(p, "hann")
    win = w1[:, None] * w1[None, :]
    num, den = torch.zeros_like(x), torch.zeros(11, 8)
    for top in grid.tops:
        for left in grid.lefts:
            sl = (..., slice(top, top + p), slice(left, left + p))
            num[sl] += win * eps_fn(cond[sl], x[sl], 7)
            den[sl] += win
    assert torch.allclose(overlap_weight(grid, "hann"), den, atol=1e-6)
    assert torch.allclose(got, num / den, atol=1e-6)
    # the window changes the result where patches overlap (it is not the plain mean)
    assert not torch.allclose(got, smoothed_eps(eps_fn, cond, x, 7, grid, blend="uniform"), atol=1e-3)


@pytest.mark.parametrize("shape, p, r", [((20, 9), 5, 2), ((16, 16), 16, 3), ((7, 30), 7, 1)])
def test_hann_blend_keeps_a_constant_estimate_and_equals_uniform_without_overlap(shape, p, r):
    x = torch.zeros(1, 3, *shape)
    eps_fn, _ = _fixed_eps(torch.full((1, 3, p, p), -0.7))
    assert torch.allclose(smoothed_eps(eps_fn, x, x, 0, patch_grid(*shape, p, r), blend="hann"),
                          torch.full_like(x, -0.7), atol=1e-6)  # fmt: skip
    # r = p on a p x p image: one patch, the window cancels: the standard sampler, as with uniform
    model = build_model(TINY, seed=1).eval()

    @torch.no_grad()
    def net(c, xt, t):
        return model(c, xt, t)

    cond = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    kw = dict(patch=16, stride=16, steps=3)
    a = restore(net, cond, generator=torch.Generator().manual_seed(3), blend="hann", **kw)
    b = restore(net, cond, generator=torch.Generator().manual_seed(3), blend="uniform", **kw)
    assert (a - b).abs().max() < 1e-5


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 70),
    w=st.integers(1, 70),
    p=st.integers(1, 16),
    r_frac=st.floats(0.01, 1.0),
)
def test_every_pixel_is_covered_for_any_size(h, w, p, r_frac):
    r = max(1, min(p, math.ceil(r_frac * p)))
    x = pad_to_patch(torch.zeros(1, 1, h, w), p)[0]
    grid = patch_grid(x.shape[-2], x.shape[-1], p, r)
    count = overlap_count(grid)
    assert count.min() >= 1
    assert grid.tops[0] == 0 and grid.tops[-1] == x.shape[-2] - p
    assert grid.lefts[-1] == x.shape[-1] - p
    assert all(b - a <= r for a, b in zip(grid.tops, grid.tops[1:], strict=False))
    assert count.sum() == grid.count * p * p
    brute = torch.zeros_like(count)
    for top in grid.tops:
        for left in grid.lefts:
            brute[top : top + p, left : left + p] += 1
    assert torch.equal(count, brute)


def test_grid_positions_by_hand():
    assert grid_positions(64, 64, 64) == (0,)
    assert grid_positions(64, 32, 16) == (0, 16, 32)
    assert grid_positions(70, 32, 16) == (0, 16, 32, 38)  # last row moved in so nothing is left over
    assert grid_positions(5, 5, 1) == (0,)
    with pytest.raises(ValueError, match="stride"):
        grid_positions(64, 32, 33)
    with pytest.raises(ValueError, match="pad"):
        grid_positions(10, 32, 8)
    with pytest.raises(ValueError, match="stride"):
        grid_positions(64, 32, 0)


def test_gather_crops_the_right_pixels():
    x = torch.arange(2 * 3 * 7 * 9, dtype=torch.float32).view(2, 3, 7, 9)
    grid = patch_grid(7, 9, 4, 3)
    corners = patch_corners(grid)
    patches = gather_patches(x, grid, corners)
    assert patches.shape == (2 * grid.count, 3, 4, 4)
    for k, (top, left) in enumerate(corners.tolist()):
        assert torch.equal(patches[k], x[0, :, top : top + 4, left : left + 4])
        assert torch.equal(patches[grid.count + k], x[1, :, top : top + 4, left : left + 4])


@pytest.mark.parametrize("size", [(1, 1), (1, 17), (5, 3), (16, 16), (23, 37)])
def test_any_image_size_is_restored_to_its_own_size(size):
    cond = torch.rand(1, 3, *size) * 2 - 1
    eps_fn, _ = _fixed_eps(torch.zeros(1, 3, 16, 16))
    out = restore(eps_fn, cond, patch=16, stride=8, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == cond.shape and torch.isfinite(out).all()


def test_overlap_count_of_the_largest_allowed_image_is_cheap():
    # 4096 x 4096 (the CLI's limit) at the quick run's p = 32, r = 8: 259k patches, whose per-pixel index
    # would take 2 GB; the count is built from two 1-D counts.
    grid = patch_grid(4096, 4096, 32, 8)
    count = overlap_count(grid)
    assert count.shape == (4096, 4096) and count.min() == 1 and count.max() == 16
    assert count.sum() == grid.count * 32 * 32


@pytest.mark.slow
def test_the_largest_allowed_image_is_restored():
    side, p, r = 4096, 64, 32
    cond = torch.zeros(1, 3, side, side)
    eps_fn, calls = _fixed_eps(torch.full((1, 3, p, p), 0.5))
    grid = patch_grid(side, side, p, r)
    eps = smoothed_eps(eps_fn, cond, cond, 0, grid, batch_patches=4096)
    assert eps.shape == cond.shape and bool((eps == 0.5).all())
    assert len(calls) == -(-grid.count // 4096)


@pytest.mark.parametrize("blend", ["uniform", "hann"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
@pytest.mark.parametrize("size, stride", [((16, 16), 16), ((29, 21), 5), ((9, 40), 16)])
def test_batched_sampler_equals_one_patch_at_a_time_loop(sampler, size, stride, dtype, tol, blend):
    # float64: the two algorithms agree far below the 1e-5 bar. float32 with an untrained network (large,
    # erratic eps; x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) multiplies eps rounding by up to 160 at
    # t = 999) differs by ~1e-5 from batched vs single-patch convolutions; the trained model's float32
    # figure is measured in benchmarks/diffusion.py.
    model = build_model(TINY, seed=3).to(dtype).eval()

    @torch.no_grad()
    def eps_fn(c, x, t):
        return model(c, x, t)

    cond = (torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(4)) * 2 - 1).to(dtype)
    kw = dict(patch=16, stride=stride, steps=4, sampler=sampler, blend=blend)
    batched = restore(eps_fn, cond, generator=torch.Generator().manual_seed(9), batch_patches=64, **kw)
    looped = restore_patch_loop(eps_fn, cond, generator=torch.Generator().manual_seed(9), **kw)
    assert (batched - looped).abs().max() < tol


def test_deterministic_given_the_generator_and_different_noise_gives_other_output():
    model = build_model(TINY, seed=0).eval()

    @torch.no_grad()
    def eps_fn(c, x, t):
        return model(c, x, t)

    cond = torch.rand(1, 3, 20, 20) * 2 - 1
    a = restore(eps_fn, cond, patch=16, stride=4, steps=3, generator=torch.Generator().manual_seed(1))
    b = restore(eps_fn, cond, patch=16, stride=4, steps=3, generator=torch.Generator().manual_seed(1))
    c = restore(eps_fn, cond, patch=16, stride=4, steps=3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(stride=17), "stride"),
        (dict(steps=0), "steps"),
        (dict(steps=1001), "steps"),
        (dict(sampler="euler"), "sampler"),
        (dict(batch_patches=0), "batch_patches"),
        (dict(generator=None), "generator"),
        (dict(blend="gauss"), "blend"),
    ],
)
def test_bad_arguments_are_named(kwargs, needle):
    eps_fn, _ = _fixed_eps(torch.zeros(1, 3, 16, 16))
    args = dict(patch=16, stride=8, steps=2, generator=torch.Generator())
    args.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        restore(eps_fn, torch.zeros(1, 3, 16, 16), **args)


def test_bad_images_are_refused_before_any_compute():
    eps_fn, calls = _fixed_eps(torch.zeros(1, 3, 16, 16))
    for bad in (torch.zeros(3, 16, 16), torch.full((1, 3, 16, 16), float("nan")), torch.zeros(1, 3, 0, 4)):
        with pytest.raises(ValueError, match="cond"):
            restore(eps_fn, bad, patch=16, stride=8, steps=2, generator=torch.Generator())
    assert calls == []


def test_patches_per_batch_respects_the_budget():
    assert patches_per_batch(1000, 64_000) == 64
    assert patches_per_batch(10**9, 1) == 1
    with pytest.raises(ValueError, match="budget_bytes"):
        patches_per_batch(10, 0)


def test_model_config_is_validated():
    with pytest.raises(ValueError, match="patch"):
        UNetConfig(patch=30, channel_mult=(1, 2, 2)).validate()
    with pytest.raises(ValueError, match="norm_groups"):
        UNetConfig(channels=12, norm_groups=8, channel_mult=(1,)).validate()
