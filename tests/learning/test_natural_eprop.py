"""Natural e-prop: the inner update is e-prop's formula, the meta-gradient is the true gradient (float64,
finite differences on smooth spikes), and bad input is refused."""

import numpy as np
import pytest
import torch

from neuromorph.learning.eprop import eprop_with_signals
from neuromorph.learning.natural_eprop import (
    LearningSignalGenerator,
    Trainee,
    meta_loss,
    natural_eprop_update,
    quantise_straight_through,
    trainee_run,
)
from neuromorph.tasks.arm import PlanarArm, brownian_trajectories, clock_input, encode_positions

D = torch.float64


def _trainee(n_refractory=2, seed=1, n_in=4, n=7):
    g = torch.Generator().manual_seed(seed)
    return Trainee(n_in, n, 2, n_refractory=n_refractory, in_scale=3.0, generator=g).double()


def test_run_equals_the_layer_and_update_equals_eprop_formula():
    tr = _trainee()
    x = clock_input(80, 4, every=1, dtype=D).unsqueeze(1)
    run = trainee_run(tr, x)
    assert run.z.sum() > 5  # the neurons do fire, so the comparison means something
    z_layer, _ = tr.rsnn(x)
    assert torch.equal(run.z, z_layer)
    signals = torch.randn(80, 3, 7, dtype=D, generator=torch.Generator().manual_seed(0))
    dw_in, dw_rec = natural_eprop_update(run, signals, 0.3, n_in=4)
    assert dw_in.shape == (3, 4, 7) and dw_rec.shape == (3, 7, 7)
    for b in range(3):  # e-prop of learning/eprop.py with the signals of task b
        ref = eprop_with_signals(tr.rsnn, x, signals[:, b : b + 1])
        torch.testing.assert_close(dw_in[b], -0.3 * ref.grads["w_in"], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(dw_rec[b], -0.3 * ref.grads["w_rec_effective"], rtol=1e-12, atol=1e-14)


def test_update_by_hand_one_neuron():
    # one input spiking every step into one LIF neuron (no recurrence to itself): psi and xbar by hand
    tr = Trainee(1, 1, 1, n_refractory=0, threshold=0.6).double()
    with torch.no_grad():
        tr.rsnn.w_in.fill_(1.0)
    x = torch.ones(6, 1, 1, dtype=D)
    run = trainee_run(tr, x)
    a = float(np.exp(-1 / 20))
    thr = float(tr.rsnn.threshold[0])  # 0.6 as stored (a float32 buffer made float64)
    v, xbar, want = 0.0, 0.0, 0.0
    signals = torch.arange(1.0, 7.0, dtype=D).view(6, 1, 1)
    for t in range(6):
        s = (v - thr) / thr
        psi = 0.3 * max(0.0, 1 - abs(s)) / thr
        want += float(signals[t]) * psi * xbar
        v = a * v + (1 - a) * 1.0  # never reaches 0.6 within 6 steps: no spike, no reset
        xbar = a * xbar + (1 - a) * 1.0
    assert run.z.sum() == 0
    dw_in, _ = natural_eprop_update(run, signals, 2.0, n_in=1)
    assert float(dw_in.detach()) == pytest.approx(-2.0 * want, rel=1e-12)


def _meta_case():
    arm = PlanarArm()
    g = torch.Generator().manual_seed(3)
    tr = Trainee(3, 5, 2, n_refractory=0, in_scale=3.0, out_scale=10.0, generator=g).double()
    lsg = LearningSignalGenerator(3 + 2 * 4, 4, 2, 5, threshold=0.3, generator=g).double()
    clock = clock_input(30, 3, every=1, dtype=D)
    target = brownian_trajectories(arm, 2, 30, np.random.default_rng(0), window=10, dtype=D)
    lsg_in = torch.cat([clock.unsqueeze(1).expand(-1, 2, -1), encode_positions(target.positions, 4)], -1)
    return arm, tr, lsg, clock, target, lsg_in


def test_meta_gradient_matches_finite_differences():
    arm, tr, lsg, clock, target, lsg_in = _meta_case()

    def loss():
        return meta_loss(tr, lsg, clock, lsg_in, target, arm, eta=2.0, smooth=0.1).loss

    value = loss()
    params = {
        "trainee.w_in": tr.rsnn.w_in,
        "trainee.w_rec": tr.rsnn.w_rec,
        "trainee.readout": tr.readout.weight,
        "lsg.readout.weight": lsg.readout.weight,  # reaches the loss only through the inner update
        "lsg.readout.bias": lsg.readout.bias,
    }
    grads = torch.autograd.grad(value, list(params.values()))
    rng = np.random.default_rng(0)
    eps = 1e-6
    checked = 0
    for (name, p), g in zip(params.items(), grads, strict=True):
        flat = p.data.view(-1)
        for idx in rng.choice(flat.numel(), size=min(4, flat.numel()), replace=False):
            if name == "trainee.w_rec" and idx % (tr.rsnn.n + 1) == 0:
                continue  # autapse: masked
            old = float(flat[idx])
            with torch.no_grad():
                flat[idx] = old + eps
                up = float(loss())
                flat[idx] = old - eps
                down = float(loss())
                flat[idx] = old
            fd = (up - down) / (2 * eps)
            assert float(g.view(-1)[idx]) == pytest.approx(fd, rel=1e-5, abs=1e-9), (name, int(idx))
            checked += 1
    assert checked >= 15
    assert grads[3].abs().sum() > 0  # the learning signals do shape the update


def test_meta_loss_reaches_the_lsg_and_falls_when_updates_help():
    arm, tr, lsg, clock, target, lsg_in = _meta_case()
    res = meta_loss(
        tr,
        lsg,
        clock,
        lsg_in,
        target,
        arm,
        eta=2.0,
        update_step=1 / 16,
        reg_trainee=0.1,
        reg_lsg=0.1,
        w_max=0.5,
    )
    res.loss.backward()
    assert lsg.rsnn.w_in.grad is not None and lsg.rsnn.w_in.grad.abs().sum() > 0
    assert res.dw_in.shape == (2, 3, 5)
    assert torch.equal(res.dw_in, torch.round(res.dw_in * 16) / 16)  # on the device grid
    # the second run used the updated weights clipped to [-0.5, 0.5]
    w_in = (tr.rsnn.w_in + res.dw_in).clamp(-0.5, 0.5).detach()
    w_rec = ((tr.rsnn.w_rec + res.dw_rec).clamp(-0.5, 0.5) * tr.rsnn.rec_mask).detach()
    with torch.no_grad():
        assert torch.equal(trainee_run(tr, clock.unsqueeze(1), w_in, w_rec).outputs, res.after.outputs)


def test_quantise_straight_through():
    x = torch.tensor([0.02, 0.04, -0.1, 0.3], dtype=D, requires_grad=True)
    y = quantise_straight_through(x, 0.0625)
    assert y.tolist() == [0.0, 0.0625, -0.125, 0.3125]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_bad_input_errors():
    tr = _trainee()
    x = clock_input(10, 4, dtype=D).unsqueeze(1)
    run = trainee_run(tr, x)
    with pytest.raises(ValueError, match=r"learning signals must have shape \[T=10, B, N=7\]"):
        natural_eprop_update(run, torch.zeros(10, 1, 6, dtype=D), 0.1, n_in=4)
    with pytest.raises(ValueError, match="learning signals must have shape"):
        natural_eprop_update(run, torch.zeros(9, 1, 7, dtype=D), 0.1, n_in=4)
    with pytest.raises(ValueError, match="learning signals"):
        natural_eprop_update(run, torch.full((10, 1, 7), float("nan"), dtype=D), 0.1, n_in=4)
    with pytest.raises(ValueError, match="eta"):
        natural_eprop_update(run, torch.zeros(10, 1, 7, dtype=D), -1.0, n_in=4)
    with pytest.raises(ValueError, match=r"w_in must have shape \(4, 7\)"):
        trainee_run(tr, x, w_in=torch.zeros(3, 7, dtype=D))
    with pytest.raises(ValueError, match="x"):
        trainee_run(tr, torch.zeros(10, 1, 5, dtype=D))
    with pytest.raises(ValueError, match="batch sizes disagree"):
        trainee_run(tr, x.expand(-1, 3, -1), w_in=torch.zeros(2, 4, 7, dtype=D))
    with pytest.raises(ValueError, match="smooth spikes need a trainee without refractoriness"):
        trainee_run(tr, x, smooth=0.1)
    with pytest.raises(ValueError, match="in_scale"):
        Trainee(4, 7, 2, in_scale=0.0)
    with pytest.raises(ValueError, match="step"):
        quantise_straight_through(torch.zeros(3), 0.0)
