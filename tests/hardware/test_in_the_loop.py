"""In-the-loop gradients: the chip's activity forward, the ideal model's derivatives at it backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neuromorph.hardware.in_the_loop import (
    InTheLoopNetwork,
    SignDescent,
    clip_to_range_,
    in_the_loop_forward,
    recorded_layer,
)
from neuromorph.hardware.substrate import (
    Chip,
    ChipLayer,
    RateNetwork,
    SubstrateParams,
    deployment_scales,
    make_chip,
    substrate_forward,
)

F64 = torch.float64
IDEAL = SubstrateParams(0.0, 0.0, 0.0, 0.0, None)


def _tiny() -> tuple[RateNetwork, Chip, torch.Tensor]:
    """2-2-1 network; hidden neuron 0 has gain 3 on the chip (saturates), neuron 1 threshold 0.1."""
    net = RateNetwork((2, 2, 1)).double()
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[0.5, -0.5, 0.2], [0.3, 0.4, -0.1]], dtype=F64))
        net.layers[1].weight.copy_(torch.tensor([[1.0, -2.0, 0.5]], dtype=F64))
    chip = Chip(
        seed=0,
        params=IDEAL,
        layers=(
            ChipLayer(
                torch.ones(2, 3, dtype=F64),
                torch.tensor([3.0, 1.0], dtype=F64),
                torch.tensor([0.0, 0.1], dtype=F64),
            ),
            ChipLayer(torch.ones(1, 3, dtype=F64), torch.ones(1, dtype=F64), torch.zeros(1, dtype=F64)),
        ),
    )
    return net, chip, torch.tensor([[1.0, 0.5]], dtype=F64)


def test_gradient_uses_the_recorded_activity_by_hand():
    net, chip, x = _tiny()
    out = in_the_loop_forward(net, x, chip, weight_max=(1.0, 2.0))
    # Chip: u = W1 [x; 1] = [0.45, 0.4]; r1 = clamp(g (u - theta)) = [clamp(1.35), 0.3] = [1.0, 0.3]
    # out = W2 [r1; 1] = 1 - 0.6 + 0.5 = 0.9 (the ideal model would give 0.45 - 0.8 + 0.5 = 0.15).
    torch.testing.assert_close(out, torch.tensor([[0.9]], dtype=F64))
    (2.0 * out).sum().backward()  # dL/dout = 2
    # dL/dW2 = 2 [r1; 1]; delta1 = (W2[:, :2]^T 2) * f'(r1) = [2, -4] * [0 (saturated), 1] = [0, -4]
    torch.testing.assert_close(net.layers[1].weight.grad, torch.tensor([[2.0, 0.6, 2.0]], dtype=F64))
    torch.testing.assert_close(
        net.layers[0].weight.grad, torch.tensor([[0.0, 0.0, 0.0], [-4.0, -2.0, -4.0]], dtype=F64)
    )
    # The ideal model's own gradient is different: the chip's state, not the software's, was used.
    ideal = RateNetwork((2, 2, 1)).double()
    ideal.load_state_dict(net.state_dict())
    (2.0 * ideal(x)).sum().backward()
    assert not torch.allclose(ideal.layers[0].weight.grad, net.layers[0].weight.grad)
    torch.testing.assert_close(ideal.layers[1].weight.grad, torch.tensor([[0.9, 0.8, 2.0]], dtype=F64))


def test_on_an_ideal_chip_the_gradient_is_the_software_gradient():
    net = RateNetwork((6, 12, 3), torch.Generator().manual_seed(0)).double()
    x = torch.rand(40, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    y = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(2))
    chip = make_chip(net.shapes, IDEAL, 0, dtype=F64)
    F.cross_entropy(
        in_the_loop_forward(net, x, chip, weight_max=deployment_scales(net.weights())), y
    ).backward()
    ref = RateNetwork((6, 12, 3)).double()
    ref.load_state_dict(net.state_dict())
    F.cross_entropy(ref(x), y).backward()
    for a, b in zip(net.weights(), ref.weights(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_forward_value_is_the_chips_output_with_its_noise():
    net = RateNetwork((6, 12, 3), torch.Generator().manual_seed(0))
    x = torch.rand(10, 6, generator=torch.Generator().manual_seed(1))
    chip = make_chip(net.shapes, SubstrateParams(), 4)
    w_max = deployment_scales(net.weights())
    out = InTheLoopNetwork(net, chip, w_max)(x, torch.Generator().manual_seed(9))
    want = substrate_forward(
        x, net.weights(), chip, weight_max=w_max, generator=torch.Generator().manual_seed(9)
    )
    assert torch.equal(out.detach(), want[-1])
    assert out.requires_grad


def test_sign_descent_moves_every_weight_by_lr_against_its_gradient_sign():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0, -1.0]))
    opt = SignDescent([w], lr=0.25)
    w.grad = torch.tensor([0.5, -2.0, 0.0, 1e-9])
    opt.step()
    assert w.tolist() == [0.75, 2.25, 3.0, -1.25]


def test_sign_only_in_the_loop_training_repairs_a_chip():
    """A 4-bit, strongly mismatched chip: sign-only in-the-loop updates lower the chip's loss a lot."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 8, generator=gen)
    teacher = RateNetwork((8, 16, 3), torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = teacher(x).argmax(1)
    net = RateNetwork((8, 16, 3), torch.Generator().manual_seed(1))  # the software solution itself
    params = SubstrateParams(0.5, 0.3, 0.3, 0.0, 4)
    chip = make_chip(net.shapes, params, 3)
    w_max = deployment_scales(net.weights())
    model = InTheLoopNetwork(net, chip, w_max)
    opt = SignDescent(net.parameters(), lr=w_max[0] / 15 / 4)  # a quarter of a 4-bit step
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        clip_to_range_(net, w_max)
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    assert all(layer.weight.abs().max() <= m for layer, m in zip(net.layers, w_max, strict=True))


def test_bad_input():
    net, chip, x = _tiny()
    with pytest.raises(ValueError, match="lr must be positive"):
        SignDescent(net.parameters(), lr=0.0)
    with pytest.raises(ValueError, match="do not match the network"):
        in_the_loop_forward(RateNetwork((2, 3, 1)).double(), x, chip, weight_max=(1.0, 1.0))
    with pytest.raises(ValueError, match="net must be a RateNetwork"):
        in_the_loop_forward(torch.nn.Linear(2, 1), x, chip, weight_max=(1.0, 1.0))
    with pytest.raises(ValueError, match="shapes do not fit"):
        recorded_layer(torch.ones(4, 3), torch.ones(2, 3), torch.ones(4, 5), rectified=True)
    with pytest.raises(ValueError, match=r"weight_max\[1\]"):
        InTheLoopNetwork(net, chip, (1.0, -1.0))
    with pytest.raises(ValueError, match="weight_max needs 2 entries"):
        clip_to_range_(net, (1.0,))
