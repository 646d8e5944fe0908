"""MAML / FOMAML / ANIL / Reptile against finite differences and hand-derived cases (float64)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from neuromorph.meta import (
    FewShotTask,
    InnerLoop,
    adapt,
    anil_query,
    find_readout,
    maml_query,
    meta_batch,
    params_of,
    readout_features,
    reptile_update,
    stack_tasks,
)


def mse(out, y):
    return ((out.squeeze(-1) - y) ** 2).mean()


def _task(g, n_s=4, n_q=3, d=3, classes=None):
    if classes:
        return FewShotTask(
            torch.randn(n_s, d, generator=g, dtype=torch.float64),
            torch.randint(0, classes, (n_s,), generator=g),
            torch.randn(n_q, d, generator=g, dtype=torch.float64),
            torch.randint(0, classes, (n_q,), generator=g),
        )
    return FewShotTask(*(torch.randn(n, *s, generator=g, dtype=torch.float64) for n, s in
                         ((n_s, (d,)), (n_s, ()), (n_q, (d,)), (n_q, ()))))  # fmt: skip


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _flat_fd(fn, params, eps=1e-6):
    """Central finite differences of the scalar fn(params) for every parameter entry."""
    grads = {}
    for name, p in params.items():
        g = torch.zeros_like(p)
        for i in range(p.numel()):
            plus = {k: v.detach().clone() for k, v in params.items()}
            minus = {k: v.detach().clone() for k, v in params.items()}
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            g.view(-1)[i] = (fn(plus) - fn(minus)) / (2 * eps)
        grads[name] = g
    return grads


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_maml_matches_finite_differences(steps):
    net = _tiny_net()
    task = _task(torch.Generator().manual_seed(1), classes=2)
    inner = InnerLoop(steps, 0.5)
    params = params_of(net)

    def meta_loss(p):
        return maml_query(net, p, task, F.cross_entropy, inner).loss

    auto = torch.autograd.grad(meta_loss(params), list(params.values()))
    with torch.no_grad():
        fd = _flat_fd(lambda p: float(meta_loss(p)), params)
    for (name, _), a in zip(params.items(), auto, strict=True):
        torch.testing.assert_close(a, fd[name], rtol=1e-6, atol=1e-8, msg=name)
    # the first-order gradient differs: the check above really tests the second-order terms
    fo = torch.autograd.grad(
        maml_query(net, params, task, F.cross_entropy, inner._replace(first_order=True)).loss,
        list(params.values()),
    )
    assert max(float((a - b).abs().max()) for a, b in zip(auto, fo, strict=True)) > 1e-4


def _scalar_linear():
    net = nn.Sequential(nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.fill_(0.7)
    return net


def test_one_step_maml_and_fomaml_match_hand_derivation():
    # f(x) = w x, L = mean((w x - y)^2): w' = w - 2a mean(x (w x - y));
    # dLq/dw' = 2 mean(xq (w' xq - yq)); MAML multiplies by dw'/dw = 1 - 2a mean(x^2), FOMAML does not.
    net, a = _scalar_linear(), 0.1
    g = torch.Generator().manual_seed(3)
    xs, ys, xq, yq = (torch.randn(n, generator=g, dtype=torch.float64) for n in (5, 5, 4, 4))
    task = FewShotTask(xs[:, None], ys, xq[:, None], yq)
    w = 0.7
    w1 = w - 2 * a * float((xs * (w * xs - ys)).mean())
    dq = 2 * float((xq * (w1 * xq - yq)).mean())
    for first_order, expected in ((False, dq * (1 - 2 * a * float((xs**2).mean()))), (True, dq)):
        params = params_of(net)
        loss = maml_query(net, params, task, mse, InnerLoop(1, a, first_order)).loss
        (grad,) = torch.autograd.grad(loss, [params["0.weight"]])
        assert float(grad) == pytest.approx(expected, rel=1e-12)
        assert float(loss.detach()) == pytest.approx(float(((w1 * xq - yq) ** 2).mean()), rel=1e-12)


def _body_readout(b=0.8, w=-0.6):
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.fill_(b)
        net[1].weight.fill_(w)
    return net


def test_anil_matches_hand_derivation():
    # f(x) = w b x; ANIL adapts w only: w' = w - 2a (w b^2 m2 - b mxy), m2 = mean(x^2), mxy = mean(x y).
    # dLq/db = mean(2 r (dw'/db b xq + w' xq)), r = w' b xq - yq; dw'/db = -2a (2 w b m2 - mxy) (second order)
    # or 0 (first order); dLq/dw = mean(2 r b xq) * dw'/dw, dw'/dw = 1 - 2a b^2 m2 (second) or 1 (first).
    b, w, a = 0.8, -0.6, 0.3
    g = torch.Generator().manual_seed(4)
    xs, ys, xq, yq = (torch.randn(n, generator=g, dtype=torch.float64) for n in (6, 6, 5, 5))
    task = FewShotTask(xs[:, None], ys, xq[:, None], yq)
    m2, mxy = float((xs**2).mean()), float((xs * ys).mean())
    w1 = w - 2 * a * (w * b * b * m2 - b * mxy)
    r = w1 * b * xq - yq
    for first_order in (False, True):
        dw1_db = 0.0 if first_order else -2 * a * (2 * w * b * m2 - mxy)
        dw1_dw = 1.0 if first_order else 1 - 2 * a * b * b * m2
        exp_db = float((2 * r * (dw1_db * b * xq + w1 * xq)).mean())
        exp_dw = float((2 * r * b * xq).mean()) * dw1_dw
        net = _body_readout(b, w)
        assert find_readout(net) == "1"
        params = params_of(net)
        loss = anil_query(net, params, task, mse, InnerLoop(1, a, first_order), readout="1").loss
        gb, gw = torch.autograd.grad(loss, [params["0.weight"], params["1.weight"]])
        assert float(gb) == pytest.approx(exp_db, rel=1e-12)
        assert float(gw) == pytest.approx(exp_dw, rel=1e-12)


def test_anil_equals_maml_restricted_to_the_readout():
    net = _tiny_net()
    task = _task(torch.Generator().manual_seed(5), classes=2)
    params = params_of(net)
    inner = InnerLoop(3, 0.4)
    r_anil = anil_query(net, params, task, F.cross_entropy, inner, readout=find_readout(net))
    fast = adapt(
        net, params, task.support_x, task.support_y, F.cross_entropy, inner, names=["2.weight", "2.bias"]
    )
    out = functional_call(net, fast, (task.query_x,))
    torch.testing.assert_close(r_anil.output, out, rtol=1e-12, atol=1e-12)
    assert torch.equal(fast["0.weight"], params["0.weight"])  # the body does not move


def test_zero_steps_is_the_initialisation():
    net = _tiny_net()
    task = _task(torch.Generator().manual_seed(6), classes=2)
    r = maml_query(net, params_of(net), task, F.cross_entropy, InnerLoop(0, 0.4))
    torch.testing.assert_close(r.output, net(task.query_x))


def test_vmap_over_tasks_equals_a_loop():
    net = _tiny_net()
    g = torch.Generator().manual_seed(7)
    tasks = stack_tasks([_task(g, classes=2) for _ in range(3)])
    params = params_of(net)
    for fn, kw in ((maml_query, {}), (anil_query, {"readout": "2"})):
        a = meta_batch(fn, net, params, tasks, F.cross_entropy, InnerLoop(2, 0.3), **kw)
        b = meta_batch(fn, net, params, tasks, F.cross_entropy, InnerLoop(2, 0.3), batched=False, **kw)
        torch.testing.assert_close(a.loss, b.loss)
        ga = torch.autograd.grad(a.loss.mean(), list(params.values()))
        gb = torch.autograd.grad(b.loss.mean(), list(params.values()))
        for x, y in zip(ga, gb, strict=True):
            torch.testing.assert_close(x, y)


def test_reptile_matches_hand_derivation():
    # one SGD step on all of a task's data: phi = w - 2a mean(x (w x - y)); theta' = w + eps mean(phi - w)
    net, a, eps = _scalar_linear(), 0.2, 0.5
    g = torch.Generator().manual_seed(8)
    tasks = stack_tasks([_task(g, 3, 2, d=1) for _ in range(2)])
    moves = []
    for b in range(2):
        x = torch.cat([tasks.support_x[b, :, 0], tasks.query_x[b, :, 0]])
        y = torch.cat([tasks.support_y[b], tasks.query_y[b]])
        moves.append(-2 * a * float((x * (0.7 * x - y)).mean()))
    new = reptile_update(net, params_of(net), tasks, mse, InnerLoop(1, a), epsilon=eps)
    assert float(new["0.weight"]) == pytest.approx(0.7 + eps * sum(moves) / 2, rel=1e-12)
    assert float(net[0].weight.detach()) == 0.7  # the model itself is not changed


def test_works_for_a_spiking_network():
    from neuromorph.layers import FeedForwardSpikingLayer

    class Spiking(nn.Module):
        def __init__(self):
            super().__init__()
            self.lif = FeedForwardSpikingLayer(
                3, 6, impl="reference", generator=torch.Generator().manual_seed(0)
            )
            self.readout = nn.Linear(6, 2)

        def forward(self, x):  # x [B, 3] -> 5 time steps of constant current, rate readout
            z, _ = self.lif(x.unsqueeze(0).expand(5, -1, -1) * 3.0)
            return self.readout(z.mean(0))

    net = Spiking()
    g = torch.Generator().manual_seed(9)
    tasks = stack_tasks([_task(g, classes=2) for _ in range(2)])
    tasks = tasks._replace(support_x=tasks.support_x.float(), query_x=tasks.query_x.float())
    r = meta_batch(maml_query, net, params_of(net), tasks, F.cross_entropy, InnerLoop(2, 0.5), batched=False)
    r.loss.mean().backward()  # second order through the surrogate gradient of the spikes
    grad = net.lif.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


# -- bad input --------------------------------------------------------------------------------------------


def test_negative_inner_steps_and_bad_lr_raise():
    net = _tiny_net()
    task = _task(torch.Generator().manual_seed(1), classes=2)
    with pytest.raises(ValueError, match=r"inner.steps must be an int >= 0.*-1"):
        maml_query(net, params_of(net), task, F.cross_entropy, InnerLoop(-1, 0.1))
    with pytest.raises(ValueError, match="inner.lr"):
        maml_query(net, params_of(net), task, F.cross_entropy, InnerLoop(1, float("nan")))


def test_empty_query_set_raises():
    net = _tiny_net()
    g = torch.Generator().manual_seed(1)
    tasks = stack_tasks([_task(g, n_q=0, classes=2)])
    with pytest.raises(ValueError, match="query set is empty"):
        meta_batch(maml_query, net, params_of(net), tasks, F.cross_entropy, InnerLoop(1, 0.1))
    with pytest.raises(ValueError, match="query set is empty"):
        reptile_update(net, params_of(net), tasks, F.cross_entropy, InnerLoop(1, 0.1), epsilon=0.1)


def test_anil_readout_not_found_raises():
    no_linear = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    with pytest.raises(ValueError, match="no nn.Linear"):
        find_readout(no_linear)
    net = _tiny_net()
    with pytest.raises(ValueError, match="no module named 'head'"):
        find_readout(net, "head")
    with pytest.raises(ValueError, match="no parameters"):
        find_readout(net, "1")

    class NotLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return 2 * self.fc(x)

    model = NotLast().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="not the model's last layer"):
        readout_features(model, params_of(model), x, find_readout(model))
    task = _task(torch.Generator().manual_seed(2), classes=2)
    with pytest.raises(ValueError, match="not the model's last layer"):
        anil_query(model, params_of(model), task, F.cross_entropy, InnerLoop(1, 0.1), readout="fc")


def test_adapt_unknown_names_raise():
    net = _tiny_net()
    task = _task(torch.Generator().manual_seed(1), classes=2)
    with pytest.raises(ValueError, match="no parameter 'head.weight'"):
        adapt(net, params_of(net), task.support_x, task.support_y, F.cross_entropy, InnerLoop(1, 0.1),
              names=["head.weight"])  # fmt: skip
