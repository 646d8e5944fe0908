"""PCM device model: equations against hand computation, the aihwkit reference statistics over 10^6
devices (reference/hardware.md section 1.8), every effect switchable off, seeds, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuromorph.hardware import pcm
from neuromorph.hardware.pcm import IDEAL, PCMParameters

DEFAULT = PCMParameters()


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- equations ------------------------------------------------------------------------------------------


def test_mapping_is_the_single_pair_converter():
    w = torch.tensor([0.5, -1.0, 0.0, 0.25])
    scale = pcm.conductance_scale(w, DEFAULT)
    assert float(scale) == 25.0  # g_max / max|W|
    g_pos, g_neg = pcm.weights_to_conductances(w, scale, 25.0)
    assert g_pos.tolist() == [12.5, 0.0, 0.0, 6.25]
    assert g_neg.tolist() == [0.0, 25.0, 0.0, 0.0]
    fixed = PCMParameters(w_max=2.0)
    assert float(pcm.conductance_scale(w, fixed)) == 12.5


def test_programming_noise_std_is_the_polynomial():
    g_t = torch.full((200_000,), 10.0, dtype=torch.float64)
    g_p = pcm.programming_noise(g_t, DEFAULT, _g())
    r = 10.0 / 25.0
    sigma = 0.26348 + 1.9650 * r - 1.1731 * r * r
    assert abs(float(g_p.std()) / sigma - 1) < 0.01
    assert abs(float(g_p.mean()) - 10.0) < 0.01
    zero = pcm.programming_noise(torch.zeros(10_000, dtype=torch.float64), DEFAULT, _g())
    assert float(zero.min()) == 0.0  # clamped at 0 conductance
    assert abs(float(zero.mean()) - 0.26348 / math.sqrt(2 * math.pi)) < 0.005  # half-normal mean


@pytest.mark.parametrize("g_r", [1.0, 0.3, 0.05, 1e-9])
def test_drift_exponent_statistics(g_r):
    g_t = torch.full((200_000,), 25.0 * g_r, dtype=torch.float64)
    nu = pcm.drift_exponents(g_t, DEFAULT, _g(1))
    lg = math.log(max(g_r, 1e-7))
    mu = min(max(-0.0155 * lg + 0.0244, 0.049), 0.1)
    sd = min(max(-0.0125 * lg - 0.0059, 0.008), 0.045)
    # nu = |N(mu, sd)|: the folded normal's mean and standard deviation
    phi = 0.5 * (1 + math.erf(-mu / (sd * math.sqrt(2))))
    mean = sd * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * sd**2)) + mu * (1 - 2 * phi)
    std = math.sqrt(mu**2 + sd**2 - mean**2)
    assert abs(float(nu.mean()) / mean - 1) < 0.005
    assert abs(float(nu.std()) / std - 1) < 0.02
    assert float(nu.min()) >= 0.0


def test_drift_and_read_noise_by_hand():
    g_p = torch.tensor([10.0, 1.0], dtype=torch.float64)
    nu = torch.tensor([0.05, 0.1], dtype=torch.float64)
    t_e = torch.tensor([3600.0, 3600.0], dtype=torch.float64)
    g_d = pcm.drift(g_p, nu, t_e, DEFAULT)
    want = [10.0 * (3620.0 / 20.0) ** -0.05, 1.0 * (3620.0 / 20.0) ** -0.1]
    assert torch.allclose(g_d, torch.tensor(want, dtype=torch.float64), rtol=1e-12)
    std = pcm.read_noise_std(g_p, g_d, t_e, DEFAULT)
    q = [min(0.0088 / (10 / 25) ** 0.65, 0.2), min(0.0088 / (1 / 25) ** 0.65, 0.2)]
    s_t = math.sqrt(math.log((3620.0 + 250e-9) / (2 * 250e-9)))
    assert torch.allclose(
        std, torch.tensor([w * qq * s_t for w, qq in zip(want, q, strict=True)], dtype=torch.float64)
    )


def test_time_zero_is_handled():
    """aihwkit's apply_noise(W, t_inference=0) raises; here t_e = 0 means no drift and finite read noise."""
    w = torch.linspace(-1, 1, 101)
    state = pcm.program(w, DEFAULT, _g())
    mean, std = pcm.weight_moments(state, 0.0, DEFAULT._replace(drift_compensation=False))
    assert torch.equal(mean, pcm.drifted_weights(state, 0.0, DEFAULT))
    assert torch.equal(
        pcm.drifted_weights(state, 0.0, DEFAULT), pcm._weights_from(state, state.g_pos, state.g_neg, DEFAULT)
    )
    assert bool(torch.isfinite(std).all()) and float(std.max()) > 0
    assert bool(torch.isfinite(pcm.read_weights(state, 0.0, DEFAULT, _g())).all())


def test_quantise_nearest_and_stochastic():
    step = pcm.quantisation_step(1.0, 2)  # 4 levels per device: 0, 1/3, 2/3, 1
    assert step == pytest.approx(1 / 3)
    w = torch.tensor([0.1, 0.2, -0.5, 0.9])
    q = pcm.quantise(w, step)
    assert torch.allclose(q, torch.tensor([0.0, 1 / 3, -2 / 3, 1.0]))  # -0.5/step = -1.5 rounds to even
    x = torch.full((100_000,), 0.25)
    s = pcm.quantise(x, step, stochastic=True, generator=_g())
    assert torch.unique(s).tolist() == pytest.approx([0.0, 1 / 3])
    assert abs(float(s.mean()) - 0.25) < 0.003  # unbiased


def test_programmed_targets_are_clipped_and_quantised():
    p = PCMParameters(w_max=1.0, weight_bits=4, prog_noise_scale=0.0, drift_scale=0.0, read_noise_scale=0.0)
    w = torch.tensor([2.0, -3.0, 0.51, 0.0])
    state = pcm.program(w, p, _g())
    step = 1 / 15
    assert torch.allclose(state.target, torch.tensor([1.0, -1.0, round(0.51 / step) * step, 0.0]))


# -- the reference statistics (aihwkit 1.1.0, section 1.8) ---------------------------------------------

REFERENCE = {1: (0.975, 0.094), 3600: (0.750, 0.154), 86400: (0.639, 0.210), 365 * 86400: (0.478, 0.299)}


@pytest.fixture(scope="module")
def million():
    g = _g(2024)
    w = torch.empty(1_000_000).uniform_(0.001, 1.0, generator=g)
    p = DEFAULT._replace(drift_compensation=False, read_sampler="exact")
    return w, p, pcm.program(w, p, g), g


@pytest.mark.parametrize("t", sorted(REFERENCE))
def test_mean_drifted_weight_matches_aihwkit_within_2_percent(million, t):
    w, p, state, g = million
    w_read = pcm.read_weights(state, float(t), p, g)
    ratio = float((w_read / w).mean())
    mean_ref, std_ref = REFERENCE[t]
    assert abs(ratio / mean_ref - 1) < 0.02, (t, ratio)
    spread = float((w_read - w).std() / w.abs().mean())
    assert abs(spread / std_ref - 1) < 0.05, (t, spread)  # 1 s: 0.092 vs 0.094 (docs/hardware.md)


def test_mean_drift_exponent_matches_aihwkit_within_2_percent(million):
    _, _, state, _ = million
    assert abs(float(state.nu_pos.mean()) / 0.052 - 1) < 0.02


# -- switches, exactness, seeds -------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=1, max_size=40),
    t=st.floats(0, 1e8),
    w_max=st.one_of(st.none(), st.floats(0.1, 10)),
)
def test_every_noise_off_reads_the_weights_exactly(values, t, w_max):
    w = torch.tensor(values, dtype=torch.float32)
    p = IDEAL._replace(w_max=w_max)
    state = pcm.program(w, p, _g())
    expected = w.clamp(-w_max, w_max) if w_max is not None else w
    assert torch.equal(state.target, expected)
    assert torch.equal(pcm.read_weights(state, t, p, _g()), expected)
    mean, std = pcm.weight_moments(state, t, p._replace(drift_compensation=True))
    assert torch.equal(mean, expected) and not bool(std.any())


def test_each_effect_switches_off_alone():
    w = torch.linspace(-1, 1, 1001)
    no_prog = pcm.program(w, DEFAULT._replace(prog_noise_scale=0.0), _g())
    gt_pos, gt_neg = pcm.weights_to_conductances(no_prog.target, no_prog.scale, 25.0)
    assert torch.equal(no_prog.g_pos, gt_pos) and torch.equal(no_prog.g_neg, gt_neg)
    no_drift = DEFAULT._replace(drift_scale=0.0)
    state = pcm.program(w, no_drift, _g())
    assert not bool(state.nu_pos.any())
    assert torch.equal(pcm.drifted_weights(state, 3e7, no_drift), pcm.drifted_weights(state, 0.0, no_drift))
    assert float(pcm.compensation_factor(state, 3e7, no_drift)) == 1.0
    quiet = DEFAULT._replace(read_noise_scale=0.0)
    state = pcm.program(w, quiet, _g())
    assert torch.equal(
        pcm.read_weights(state, 100.0, quiet, _g(1)), pcm.read_weights(state, 100.0, quiet, _g(2))
    )
    off = DEFAULT._replace(drift_compensation=False)
    assert float(pcm.compensation_factor(state, 3e7, off)) == 1.0


def test_compensation_restores_the_mean_absolute_weight():
    w = torch.randn(500, 500, generator=_g(3)) * 0.1
    p = DEFAULT._replace(read_noise_scale=0.0)
    state = pcm.program(w, p, _g())
    programmed = pcm.drifted_weights(state, 0.0, p).abs().mean()
    year = pcm.read_weights(state, 3.15e7, p, None)
    uncompensated = pcm.read_weights(state, 3.15e7, p._replace(drift_compensation=False), None)
    assert float(uncompensated.abs().mean()) < 0.7 * float(programmed)
    assert float(year.abs().mean()) == pytest.approx(float(programmed), rel=1e-5)


def test_seed_reproduces_and_different_seeds_differ():
    w = torch.randn(64, 32, generator=_g(5))
    a, b, c = (pcm.program(w, DEFAULT, _g(s)) for s in (7, 7, 8))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a.g_pos, c.g_pos)
    ra, rb = pcm.read_weights(a, 60.0, DEFAULT, _g(1)), pcm.read_weights(b, 60.0, DEFAULT, _g(1))
    assert torch.equal(ra, rb)


# -- on-chip re-programming -----------------------------------------------------------------------------


def test_reprogram_touches_only_changed_devices():
    w = torch.tensor([1.0, 0.5, -0.5, 0.0, 0.2])
    state = pcm.program(w, DEFAULT, _g())
    new = torch.tensor([1.0, 0.75, 0.25, 0.0, 0.2])  # w1: G+ only; w2: G+ and G-; others unchanged
    new_state, writes = pcm.reprogram(state, new, DEFAULT, _g(1), t=100.0)
    assert writes == 3
    changed_pos = torch.tensor([False, True, True, False, False])
    changed_neg = torch.tensor([False, False, True, False, False])
    for side, mask in (("pos", changed_pos), ("neg", changed_neg)):
        for f in ("g", "nu", "t"):
            old, cur = getattr(state, f"{f}_{side}"), getattr(new_state, f"{f}_{side}")
            assert torch.equal(old[~mask], cur[~mask]), (f, side)
        assert (getattr(new_state, f"t_{side}")[mask] == 100.0).all()
    assert torch.equal(new_state.target, new)


# -- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"g_max": 0.0}, "g_max"),
        ({"g_max": -25.0}, "g_max"),
        ({"g_max": float("nan")}, "g_max"),
        ({"weight_bits": 0}, "weight_bits"),
        ({"weight_bits": 17}, "weight_bits"),
        ({"weight_bits": True}, "weight_bits"),
        ({"w_max": 0.0}, "w_max"),
        ({"prog_noise_scale": -1.0}, "prog_noise_scale"),
        ({"read_sampler": "fast"}, "read_sampler"),
        ({"t_0": 0.0}, "t_0"),
        ({"prog_coeff": (1.0, 2.0)}, "prog_coeff"),
    ],
)
def test_bad_parameters_are_clear_errors(change, needle):
    with pytest.raises(ValueError, match=needle):
        pcm.program(torch.ones(3), DEFAULT._replace(**change), _g())


def test_times_before_programming_and_bad_weights_raise():
    state = pcm.program(torch.ones(3), DEFAULT, _g(), t=50.0)
    with pytest.raises(ValueError, match="before the devices were programmed"):
        pcm.read_weights(state, 10.0, DEFAULT, _g())
    with pytest.raises(ValueError, match="t"):
        pcm.drifted_weights(state, float("inf"), DEFAULT)
    with pytest.raises(ValueError, match="NaN"):
        pcm.program(torch.tensor([1.0, float("nan")]), DEFAULT, _g())
    with pytest.raises(ValueError, match="bits"):
        pcm.quantisation_step(1.0, 17)
