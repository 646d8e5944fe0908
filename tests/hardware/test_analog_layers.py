"""Analog layers: deploy/age, exactness with every effect off, read samplers, on-chip updates (untouched
devices bit-identical, write count), hardware-aware training helpers, bad input."""

import copy

import pytest
import torch
from torch import nn

from neuromorph.hardware import (
    IDEAL,
    AnalogConv2d,
    AnalogLinear,
    HWAParameters,
    PCMArray,
    PCMParameters,
    age,
    analog_arrays,
    clip_weights,
    configure,
    deploy,
    hardware_weights,
    inject_weight_noise,
    pcm,
    program_update,
)
from neuromorph.layers import FeedForwardSpikingLayer, LeakyReadout, RecurrentSpikingLayer


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class SpikingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = _g(0)
        self.rsnn = RecurrentSpikingLayer(6, 4, 4, n_delay=2, generator=g)
        self.ff = FeedForwardSpikingLayer(8, 5, generator=g)
        self.readout = LeakyReadout(5, 3, generator=g)

    def forward(self, x):
        z, _ = self.rsnn(x)
        z2, _ = self.ff(z)
        out, _ = self.readout(z2)
        return out


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 4)
    ).eval()


# -- exactness with every effect off --------------------------------------------------------------------


def test_ideal_deployment_equals_the_digital_model_exactly():
    model = _cnn()
    x = torch.randn(5, 1, 6, 6)
    hw = deploy(model, IDEAL)
    assert isinstance(hw[0], AnalogConv2d) and isinstance(hw[4], AnalogLinear)
    assert torch.equal(hw(x), model(x))
    age(hw, 3.15e7)
    assert torch.equal(hw(x), model(x))
    # gradients too: straight through the device model to the digital weights
    hw.train(), model.train()
    xg = x.clone().requires_grad_(True)
    xh = x.clone().requires_grad_(True)
    model(xg).square().sum().backward()
    hw(xh).square().sum().backward()
    assert torch.equal(xg.grad, xh.grad)
    assert torch.equal(model[4].weight.grad, hw[4].weight.grad)
    assert torch.equal(model[0].weight.grad, hw[0].weight.grad)


def test_ideal_spiking_layers_equal_their_digital_layers_exactly():
    net = SpikingNet()
    x = (torch.rand(30, 2, 6, generator=_g(1)) < 0.3).float()
    hw = deploy(net, IDEAL)
    assert sorted(analog_arrays(hw)) == ["ff.weight", "readout.weight", "rsnn.w_in", "rsnn.w_rec"]
    assert torch.equal(hw(x), net(x))


def test_deploy_leaves_the_original_and_is_seeded():
    model = _cnn()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(3, 1, 6, 6)
    a, b, c = deploy(model, seed=4), deploy(model, seed=4), deploy(model, seed=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for t in (1.0, 86400.0):
        age(a, t), age(b, t), age(c, t)
        ya, yb = a(x), b(x)
        assert torch.equal(ya, yb)
        assert not torch.equal(ya, c(x))


def test_layers_argument_selects_what_is_deployed():
    model = _cnn()
    hw = deploy(model, layers=["4"])
    assert isinstance(hw[0], nn.Conv2d) and isinstance(hw[4], AnalogLinear)
    assert list(analog_arrays(hw)) == ["4.weight"]


# -- aging, compensation, samplers ----------------------------------------------------------------------


def test_age_moves_the_clock_and_drift_shrinks_uncompensated_weights():
    model = nn.Sequential(nn.Linear(200, 100))
    p = PCMParameters(read_noise_scale=0.0, drift_compensation=False)
    hw = deploy(model, p)
    array = analog_arrays(hw)["0.weight"]
    m0 = float(array.read().abs().mean())
    age(hw, 86400.0)
    assert float(array.clock) == 86400.0
    m_day = float(array.read().abs().mean())
    assert m_day < 0.8 * m0
    configure(hw, drift_compensation=True)
    assert float(array.read().abs().mean()) == pytest.approx(m0, rel=1e-5)


@pytest.mark.parametrize("sampler", ["pool", "fresh", "exact"])
def test_read_samplers_have_the_device_moments(sampler):
    w = torch.linspace(-1, 1, 4001).view(1, -1).repeat(50, 1)
    p = PCMParameters(read_sampler=sampler)
    array = PCMArray(w, p, generator=_g(3))
    array.age(3600.0)
    reads = torch.stack([array.read() for _ in range(40)])
    mean, std = pcm.weight_moments(array.state(), 3600.0, p)
    assert torch.allclose(reads.mean(0).mean(0), mean.mean(0), atol=0.02)
    ratio = float(reads.std(0).mean() / std.mean())
    # "exact" clamps conductances at 0, which narrows the spread of the smallest weights a little
    assert 0.9 < ratio < 1.05, ratio
    assert not torch.equal(reads[0], reads[1])  # fresh noise at every read


def test_spiking_layer_reads_once_per_call(monkeypatch):
    net = SpikingNet()
    hw = deploy(net, PCMParameters(), seed=1)
    calls = []
    original_read = PCMArray.read

    def counting_read(self):
        calls.append(self.label)
        return original_read(self)

    monkeypatch.setattr(PCMArray, "read", counting_read)
    x = (torch.rand(10, 2, 6, generator=_g(1)) < 0.3).float()
    hw(x)
    # the layers access their weights several times per call (checks, products): one read each
    assert sorted(calls) == ["ff.weight", "readout.weight", "rsnn.w_in", "rsnn.w_rec"]
    assert not torch.equal(hw.ff.weight, hw.ff.weight)  # outside a call each access is a new read


# -- on-chip updates ------------------------------------------------------------------------------------


def _quantised_tile(bits: int = 4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30))
    hw = deploy(model, PCMParameters(weight_bits=bits, w_max=0.2), seed=2)
    age(hw, 600.0)
    return hw, analog_arrays(hw)["0.weight"]


def test_on_chip_update_leaves_untouched_devices_bit_identical_and_counts_writes():
    hw, array = _quantised_tile()
    before = array.state()
    step = pcm.quantisation_step(array.w_max, 4)
    delta = torch.zeros(30, 40)
    delta[:5] = 1.4 * step  # rounds to one step up (nearest)
    delta[5, :3] = -0.3 * step  # rounds to zero: no write
    writes = program_update(hw, {"0.weight": delta}, rounding="nearest")["0.weight"]
    after = array.state()
    old_pos, old_neg = pcm.weights_to_conductances(before.target, before.scale, 25.0)
    new_pos, new_neg = pcm.weights_to_conductances(after.target, after.scale, 25.0)
    changed_pos, changed_neg = new_pos != old_pos, new_neg != old_neg
    assert writes == int(changed_pos.sum() + changed_neg.sum()) > 0
    assert int(array.writes) == writes
    assert not bool(changed_pos[5:].any() or changed_neg[5:].any())
    for side, mask in (("pos", changed_pos), ("neg", changed_neg)):
        for f in ("g", "nu", "t"):
            old, new = getattr(before, f"{f}_{side}"), getattr(after, f"{f}_{side}")
            assert torch.equal(old[~mask], new[~mask]), (f, side)
        assert bool((getattr(after, f"t_{side}")[mask] == 600.0).all())
    assert torch.equal(after.target[5:], before.target[5:])
    assert torch.equal(hw[0].weight, after.target)  # the digital weights follow the devices
    assert program_update(hw, {"0.weight": torch.zeros(30, 40)})["0.weight"] == 0


def test_stochastic_update_rounding_is_unbiased_and_seeded():
    hw, array = _quantised_tile(bits=3)
    step = pcm.quantisation_step(array.w_max, 3)
    start = array.target.clone()
    inner = start.abs() < array.w_max - 2 * step  # away from the clipping range
    program_update(hw, {"0.weight": torch.full((30, 40), 0.25 * step)}, generator=_g(9))
    moved = (array.target - start)[inner] / step
    assert set(torch.round(moved).unique().tolist()) <= {0.0, 1.0}
    assert 0.15 < float(moved.mean()) < 0.35
    hw2, array2 = _quantised_tile(bits=3)
    program_update(hw2, {"0.weight": torch.full((30, 40), 0.25 * step)}, generator=_g(9))
    assert torch.equal(array.target, array2.target) and torch.equal(array.g_pos, array2.g_pos)


def test_updates_are_clipped_to_the_range_and_analog_devices_take_updates_as_is():
    hw, array = _quantised_tile()
    program_update(hw, {"0.weight": torch.full((30, 40), 10.0)}, rounding="nearest")
    assert float(array.target.max()) == pytest.approx(array.w_max)
    assert float(array.target.min()) == pytest.approx(array.w_max)
    # devices already at the top of the range are not written again
    assert program_update(hw, {"0.weight": torch.full((30, 40), 10.0)}, rounding="nearest")["0.weight"] == 0
    analog = deploy(nn.Sequential(nn.Linear(4, 3)), seed=1)
    tile = analog_arrays(analog)["0.weight"]
    delta = torch.zeros(3, 4)
    delta[0, 0] = 1e-3
    before = tile.target.clone()
    assert program_update(analog, {"0.weight": delta})["0.weight"] >= 1
    assert float(tile.target[0, 0] - before[0, 0]) == pytest.approx(1e-3, abs=1e-6)


def test_state_dict_round_trip_restores_reads():
    hw, array = _quantised_tile()
    program_update(hw, {"0.weight": torch.randn(30, 40, generator=_g(1)) * 0.05})
    other = deploy(nn.Sequential(nn.Linear(40, 30)), PCMParameters(weight_bits=4, w_max=0.2), seed=99)
    other.load_state_dict(hw.state_dict())
    tile = analog_arrays(other)["0.weight"]
    assert torch.equal(tile.w_mean, array.w_mean) and int(tile.writes) == int(array.writes)


# -- hardware-aware training ----------------------------------------------------------------------------


def test_noise_injection_restores_clean_weights_and_gradients_see_the_noise():
    model = nn.Sequential(nn.Linear(8, 4))
    clean = model[0].weight.detach().clone()
    x = torch.randn(16, 8)
    for noise in ("additive", "pcm"):
        with inject_weight_noise(model, HWAParameters(noise=noise), _g(1)):
            noisy = model[0].weight.detach().clone()
            model.zero_grad()
            model(x).sum().backward()
        assert torch.equal(model[0].weight, clean)
        assert not torch.equal(noisy, clean)
    with inject_weight_noise(model, HWAParameters(noise="none"), _g(1)):
        assert torch.equal(model[0].weight, clean)


def test_clipping_bounds_every_hardware_weight():
    net = SpikingNet()
    with torch.no_grad():
        net.ff.weight[0, 0] = 100.0
    bounds = {name: 2.0 * float(w.detach().std()) for name, w in hardware_weights(net)}
    clip_weights(net, HWAParameters(clip_sigma=2.0))
    for name, w in hardware_weights(net):
        assert float(w.detach().abs().max()) <= bounds[name] * (1 + 1e-6)
    assert float(net.ff.weight[0, 0].detach()) == pytest.approx(bounds["ff.weight"])


# -- bad input ------------------------------------------------------------------------------------------


def test_times_before_programming_name_the_layer():
    hw, array = _quantised_tile()
    age(hw, 10.0)  # before the clock but after the programming at 0 s: allowed
    age(hw, 600.0)
    program_update(hw, {"0.weight": torch.full((30, 40), 0.1)}, rounding="nearest")
    with pytest.raises(ValueError, match=r"0\.weight.*before the devices were programmed"):
        age(hw, 10.0)  # some devices were re-programmed at 600 s
    assert float(array.clock) == 600.0
    with pytest.raises(ValueError, match="before"):
        age(deploy(nn.Sequential(nn.Linear(2, 2))), -1.0)
    with pytest.raises(ValueError, match="t must be"):
        age(hw, float("nan"))


@pytest.mark.parametrize(
    "params, needle",
    [
        (PCMParameters(g_max=0.0), "g_max"),
        (PCMParameters(g_max=-1.0), "g_max"),
        (PCMParameters(weight_bits=0), "weight_bits"),
        (PCMParameters(weight_bits=17), "weight_bits"),
    ],
)
def test_bad_device_model_is_a_clear_error(params, needle):
    with pytest.raises(ValueError, match=needle):
        deploy(_cnn(), params)


def test_unsupported_layers_are_named():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 4)
            self.attention = nn.MultiheadAttention(4, 2)
            self.conv1d = nn.Conv1d(2, 2, 3)
            self.fc = nn.Linear(4, 2)

    for name, kind in (
        ("lstm", "LSTM"),
        ("conv1d", "Conv1d"),
        ("attention.out_proj", "NonDynamicallyQuantizableLinear"),
    ):
        with pytest.raises(ValueError, match=rf"layer '{name}' \({kind}\) cannot be held"):
            deploy(Mixed(), layers=[name])
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        deploy(Mixed(), layers=["nope"])
    assert list(analog_arrays(deploy(Mixed()))) == ["fc.weight"]  # the default leaves the rest digital
    with pytest.raises(ValueError, match="padding_mode"):
        deploy(nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular")))


def test_bad_updates_inputs_and_settings():
    hw, _ = _quantised_tile()
    with pytest.raises(ValueError, match="shape"):
        program_update(hw, {"0.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="no deployed weight"):
        program_update(hw, {"1.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="rounding"):
        program_update(hw, {"0.weight": torch.zeros(30, 40)}, rounding="up")
    with pytest.raises(ValueError, match="NaN"):
        program_update(hw, {"0.weight": torch.full((30, 40), float("nan"))})
    with pytest.raises(ValueError, match="features"):
        hw(torch.randn(2, 7))
    with pytest.raises(ValueError, match="NaN"):
        hw(torch.full((2, 40), float("inf")))
    with pytest.raises(ValueError, match="g_max"):
        configure(hw, g_max=10.0)
    with pytest.raises(ValueError, match="deploy"):
        age(nn.Sequential(nn.Linear(2, 2)), 1.0)
