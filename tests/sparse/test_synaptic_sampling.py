"""Synaptic sampling (Kappel et al. 2015): one step against hand computation, the stationary law
N(mu + sigma^2 g, sigma^2 T) by a Kolmogorov-Smirnov test, the retraction map, state round trips, and
bad input."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from neuromorph.sparse.synaptic_sampling import (
    SamplingParams,
    SynapticSampling,
    WeightMap,
    discrete_variance_factor,
    langevin_step,
    retracted_probability,
    stationary_normal,
    theta_to_weight,
)


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- one step by hand ---------------------------------------------------------------------------------


def test_identity_step_matches_hand_computation():
    theta0 = [0.5, -0.2, 1.0]
    grad = [0.1, -0.3, 0.0]
    lr, temp, mu, prec, lam = 0.1, 0.5, 0.2, 2.0, 3.0
    p = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    opt = SynapticSampling(
        [p],
        lr=lr,
        temperature=temp,
        prior_mean=mu,
        prior_precision=prec,
        likelihood_scale=lam,
        generator=_gen(),
    )
    p.grad = torch.tensor(grad, dtype=torch.float64)
    opt.step()
    nu = torch.randn(3, generator=_gen(), dtype=torch.float64).tolist()
    for i in range(3):
        # theta + eta [c_p (mu - theta) - lambda dL/dtheta] + sqrt(2 eta T) nu
        expected = (
            theta0[i] + lr * (prec * (mu - theta0[i]) - lam * grad[i]) + math.sqrt(2 * lr * temp) * nu[i]
        )
        assert p[i].item() == pytest.approx(expected, abs=1e-14)


def test_exp_map_step_matches_hand_computation():
    # w0 = 1, theta0 = 3: theta = 3 + log|w|; 3 + log 0.02 < 0, so that synapse is retracted
    w = torch.tensor([0.5, -0.02, -0.3], dtype=torch.float64, requires_grad=True)
    lr, temp, mu, prec = 0.05, 0.2, 0.0, 1.0
    opt = SynapticSampling(
        [w], lr=lr, temperature=temp, prior_mean=mu, prior_precision=prec, weight_map="exp", generator=_gen(3)
    )
    theta = [3 + math.log(0.5), 3 + math.log(0.02), 3 + math.log(0.3)]
    assert opt.theta(w).tolist() == pytest.approx(theta, abs=1e-14)
    assert w.tolist() == pytest.approx([0.5, 0.0, -0.3], abs=1e-14)  # retracted synapse written as 0
    gw = [0.4, 1.0, -0.2]
    w.grad = torch.tensor(gw, dtype=torch.float64)
    opt.step()
    nu = torch.randn(3, generator=_gen(3), dtype=torch.float64).tolist()
    weights_before, signs = [0.5, 0.0, -0.3], [1.0, -1.0, -1.0]
    for i in range(3):
        g_theta = gw[i] * weights_before[i]  # dw/dtheta = w; 0 for the retracted synapse
        new = theta[i] + lr * (prec * (mu - theta[i]) - g_theta) + math.sqrt(2 * lr * temp) * nu[i]
        assert opt.theta(w)[i].item() == pytest.approx(new, abs=1e-14)
        w_new = signs[i] * math.exp(new - 3.0) if new > 0 else 0.0
        assert w[i].item() == pytest.approx(w_new, abs=1e-14)


def test_linear_map_gradient_and_retraction():
    w = torch.tensor([0.5, -0.25, 0.0], dtype=torch.float64, requires_grad=True)
    opt = SynapticSampling(
        [w], lr=0.1, temperature=0.0, prior_precision=1.0, weight_map="linear", generator=_gen()
    )
    assert opt.theta(w).tolist() == [0.5, 0.25, 0.0]
    w.grad = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    opt.step()
    # T = 0: theta + 0.1 (-theta - s g) where active; the zero weight (theta = 0) is retracted
    assert opt.theta(w).tolist() == pytest.approx([0.5 + 0.1 * (-0.5 - 1.0), 0.25 + 0.1 * (-0.25 + 1.0), 0.0])
    assert w.tolist() == pytest.approx([0.35, -0.325, 0.0])


def test_pure_step_and_map_functions():
    theta = torch.tensor([1.0, -1.0])
    out = langevin_step(
        theta, torch.tensor([0.5, 0.5]), SamplingParams(0.1, 2.0, 1.0, 4.0, 2.0), torch.ones(2)
    )
    assert out.tolist() == pytest.approx(
        [1.0 + 0.1 * (0.0 - 1.0) + math.sqrt(0.4), -1.0 + 0.1 * (8.0 - 1.0) + math.sqrt(0.4)]
    )
    w = theta_to_weight(
        torch.tensor([0.0, 3.0, 4.0, -2.0]), torch.tensor([1.0, -1.0, 1.0, 1.0]), WeightMap("exp", 2.0, 3.0)
    )
    assert w.tolist() == pytest.approx([0.0, -2.0, 2.0 * math.e, 0.0])


def test_analytic_stationary_law():
    mean, std = stationary_normal(0.3, 2.0, 0.5, 0.25)
    assert (mean, std) == pytest.approx((0.3 + 4.0 * 0.5, 1.0))
    assert retracted_probability(0.3, 2.0, 0.5, 0.25) == pytest.approx(
        stats.norm.cdf(0.0, loc=2.3, scale=1.0)
    )
    assert discrete_variance_factor(0.1, 2.0) == pytest.approx(1 / 0.9)


# -- stationary law -----------------------------------------------------------------------------------


def _chains(temperature: float, *, n: int = 5000, steps: int = 400, lr: float = 0.05, seed: int = 0):
    mu, std, g = 0.0, 1.0, 0.5
    theta = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    opt = SynapticSampling(
        [theta], lr=lr, temperature=temperature, prior_mean=mu, prior_std=std, generator=_gen(seed)
    )
    for _ in range(steps):  # (1 - lr)^400 ~ 1e-9 of the start is left
        theta.grad = torch.full_like(theta, -g)  # d log p_N / d theta = g
        opt.step()
    return (
        theta.detach().numpy(),
        stationary_normal(mu, std, g, temperature),
        retracted_probability(mu, std, g, temperature),
    )


@pytest.mark.parametrize("temperature", [0.1, 1.0, 2.0])
def test_stationary_law_is_the_tempered_posterior(temperature):
    x, (mean, std), p_retracted = _chains(temperature, seed=int(temperature * 10))
    assert stats.kstest(x, "norm", args=(mean, std)).pvalue > 1e-3
    # The test has power: half the temperature (a missing factor 2 in the noise) is rejected outright.
    assert stats.kstest(x, "norm", args=(mean, std / math.sqrt(2))).pvalue < 1e-6
    assert abs((x <= 0).mean() - p_retracted) < 4 * math.sqrt(p_retracted * (1 - p_retracted) / len(x))


def test_synapses_keep_turning_over_at_stationarity():
    theta = torch.zeros(2000, dtype=torch.float64, requires_grad=True)
    opt = SynapticSampling([theta], lr=0.05, temperature=1.0, generator=_gen())
    for _ in range(200):
        opt.step()  # no gradient: samples the prior N(0, 1)
    before = theta.detach() > 0
    for _ in range(20):
        opt.step()
    changed = ((theta.detach() > 0) != before).float().mean().item()
    assert 0.05 < changed < 0.95
    assert 0.4 < opt.retracted_fraction() < 0.6


# -- invariants ---------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    kind=st.sampled_from(["exp", "linear"]),
    temperature=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_weights_equal_the_map_of_theta_and_signs_never_flip(rows, cols, kind, temperature, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(rows, cols, generator=gen))
    sign = torch.where(w.detach() < 0, -1.0, 1.0)
    opt = SynapticSampling(
        [w], lr=0.05, temperature=temperature, weight_map=kind, theta_init="prior", generator=gen
    )
    for _ in range(5):
        w.grad = torch.randn(rows, cols, generator=gen)
        opt.step()
        theta = opt.theta(w)
        assert torch.equal(w.detach(), theta_to_weight(theta, sign, WeightMap(kind, 1.0, 3.0)))
        assert bool((w.detach() * sign >= 0).all())
        assert torch.equal(w.detach() == 0, theta <= 0)


def test_state_dict_round_trip_continues_bit_for_bit():
    def make():
        w = torch.nn.Parameter(torch.tensor([[0.3, -0.4], [0.05, 0.2]]))
        b = torch.nn.Parameter(torch.tensor([0.1, -0.1]))
        opt = SynapticSampling(
            [{"params": [w], "weight_map": "exp", "w0": 0.5}, {"params": [b], "prior_std": 0.5}],
            lr=0.02,
            temperature=1.0,
            generator=torch.Generator().manual_seed(11),
        )
        return w, b, opt

    def steps(w, b, opt, n):
        for _ in range(n):
            w.grad, b.grad = torch.ones_like(w), -torch.ones_like(b)
            opt.step()

    w1, b1, o1 = make()
    steps(w1, b1, o1, 3)
    saved, b_saved = copy.deepcopy(o1.state_dict()), b1.detach().clone()  # state_dict holds references
    assert "generator_state" in saved and saved["param_groups"][1]["prior_precision"] == pytest.approx(4.0)
    steps(w1, b1, o1, 4)

    w2, b2, o2 = make()  # a fresh process: model tensors + optimizer state from the checkpoint
    with torch.no_grad():
        b2.copy_(b_saved)  # identity-map parameters are the model's own tensors
    o2.load_state_dict(saved)  # theta, signs, generator; rewrites the mapped weights
    steps(w2, b2, o2, 4)
    assert torch.equal(w1, w2) and torch.equal(b1, b2)
    assert torch.equal(o1.theta(w1), o2.theta(w2))


def test_set_theta_lesions_synapses():
    w = torch.nn.Parameter(torch.full((4,), 0.5))
    opt = SynapticSampling([w], lr=0.01, weight_map="exp", generator=_gen())
    theta = opt.theta(w).clone()
    theta[:2] = -1.0
    opt.set_theta(w, theta)
    assert w.detach().tolist()[:2] == [0.0, 0.0] and opt.retracted_fraction() == 0.5
    with pytest.raises(ValueError, match="shape"):
        opt.set_theta(w, torch.zeros(3))
    with pytest.raises(ValueError, match="not a parameter"):
        opt.theta(torch.zeros(4))


def test_trains_a_model_as_an_optimizer():
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(64, 3, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    opt = SynapticSampling(
        model.parameters(), lr=0.01, temperature=0.0, prior_std=10.0, likelihood_scale=10.0, generator=gen
    )
    first = None
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


# -- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"temperature": -0.5}, "temperature must be non-negative, got -0.5"),
        ({"temperature": math.nan}, "temperature"),
        ({"prior_precision": 0.0}, "prior_precision must be positive, got 0.0"),
        ({"prior_precision": -1.0}, "prior_precision must be positive, got -1.0"),
        ({"prior_std": 0.0}, "prior_std must be positive, got 0.0"),
        ({"prior_std": 1.0, "prior_precision": 1.0}, "not both"),
        ({"lr": 0.0}, "lr must be positive, got 0.0"),
        ({"lr": -0.1}, "lr must be positive, got -0.1"),
        ({"lr": 3.0}, "lr * prior_precision must be < 2"),
        ({"likelihood_scale": -1.0}, "likelihood_scale"),
        ({"weight_map": "log"}, "weight_map must be one of"),
        ({"theta_init": "zeros"}, "theta_init must be one of"),
        ({"w0": 0.0}, "w0 must be positive"),
        ({"theta_min": 1.0, "theta_max": 0.0}, "theta_min must be < theta_max"),
        ({"generator": None}, "generator must be a torch.Generator"),
    ],
)
def test_bad_arguments_raise_naming_argument_and_value(kwargs, needle):
    args = {"lr": 0.1, "generator": _gen(), **kwargs}
    with pytest.raises(ValueError, match=needle.replace("*", r"\*").replace("(", r"\(")):
        SynapticSampling([torch.nn.Parameter(torch.zeros(2))], **args)


def test_bad_group_and_parameter_twice():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="temperature must be non-negative, got -1"):
        SynapticSampling([{"params": [p], "temperature": -1}], lr=0.1, generator=_gen())
    with pytest.raises(ValueError, match="appears twice"):
        SynapticSampling([p, p], lr=0.1, generator=_gen())
    with pytest.raises(ValueError, match="floating point"):
        SynapticSampling([torch.zeros(2, dtype=torch.long)], lr=0.1, generator=_gen())
    with pytest.raises(ValueError, match="temperature must be positive"):
        stationary_normal(0.0, 1.0, 0.5, -1.0)
