"""``torch.compile`` of a model built from the layers gives the eager results (graph breaks at the
whole-sequence autograd functions are allowed; compiling takes ~45 s on 2 cores, hence ``slow``)."""

import pytest
import torch

from neuromorph.layers import FeedForwardSpikingLayer, LeakyReadout, RecurrentSpikingLayer


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ff = FeedForwardSpikingLayer(5, 5, threshold=0.3, generator=torch.Generator().manual_seed(3))
        self.rsnn = RecurrentSpikingLayer(
            5, 3, 3, n_delay=2, n_refractory=1, generator=torch.Generator().manual_seed(0)
        )
        self.readout = LeakyReadout(6, 2, generator=torch.Generator().manual_seed(1))

    def forward(self, x):
        h, _ = self.ff(x)
        z, _ = self.rsnn(h + x)
        out, _ = self.readout(z)
        return out


@pytest.mark.slow
def test_torch_compile_matches_eager():
    net = _Net()
    x = (torch.rand(30, 4, 5, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    ref = net(x)
    ref.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    out = torch.compile(net)(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, ref)
    for p, g in zip(net.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g)
