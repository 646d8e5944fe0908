"""Meta-reinforcement learning in an LSNN: navigation to a hidden goal, explore first, then exploit.

Bellec, Salaj, Subramoney, Legenstein, Maass (NeurIPS 2018), "Long short-term memory and
learning-to-learn in networks of spiking neurons", meta-RL experiment: an LSNN policy is meta-trained
across trials of a 2-D navigation task (:mod:`neuromorph.tasks.navigation`: the goal is hidden, fixed
within a trial of ``n_episodes`` episodes and new in every trial). With frozen weights it should search in
episode 1 and go straight to the remembered goal in the later episodes: the memory is the network state,
kept across the episodes of a trial (reset only at a new trial).

Agent: a recurrent LIF + ALIF layer (the neuron model of ``neurons/alif.py``, weights of a
``RecurrentSpikingLayer``) runs ``step_ms`` ms per environment step on the observation (place cells,
last reward, done flag) as input current ``input_scale * obs``; a leaky readout of the spikes (times
``readout_scale``, which brings filtered spikes of ~0.02 per ms to O(1)) gives 4 action logits and a
value ``V`` (the readout at the last ms of the step). Actions are sampled from
``softmax(logits)``.

Outer loop (A2C with an entropy bonus, BPTT through the whole trial, across its episodes): with the
discounted return over the trial ``G_t = r_t + gamma G_{t+1}`` (rewards of later episodes count, which
is what makes exploration in episode 1 pay) and the mask ``m_t`` of steps in which the agent still acts,

    L = sum_t m_t [ -log pi(a_t) (G_t - V_t)  +  c_v (G_t - V_t)^2  -  c_H H(pi_t) ] / sum_t m_t
        + firing-rate regulariser,

(the advantage is not differentiated), Adam. Results: ``steps_to_goal_by_episode`` (mean over
``test_trials`` new trials, frozen weights, episode 1, 2, ...) and ``random_steps_to_goal_by_episode``
(uniformly random actions on the same trials). The paper's sizes and its outer-loop algorithm are
unverified (the reference notes a PPO-style policy gradient); this is A2C.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..distributed import all_reduce_mean
from ..layers import LeakyReadout, RecurrentSpikingLayer
from ..learning import firing_rate_loss
from ..neurons.alif import ALIFState, alif_initial_state, alif_step
from ..report import build_report, plot_bars, plot_curves
from ..runs import atomic_write_bytes
from ..spikes import Triangle
from ..tasks import navigation as nav
from ._common import (
    Context,
    TrainingCheckpoints,
    module_tensors,
    progress_bar,
    seeded_generator,
)

NAME = "l2l-navigation"
PAPER = "Bellec et al. 2018, Long short-term memory and learning-to-learn in networks of spiking neurons"
SUMMARY = "LSNN policy meta-trained by A2C explores a hidden goal in episode 1, then goes straight to it"
TRAIN_ROLE, TEST_ROLE, PLOT_ROLE = 0, 100, 200


@dataclass(frozen=True)
class Config:
    """Defaults (ours; the paper's are unverified): 100 LIF + 100 ALIF, trials of 4 episodes of at
    most 30 steps, 2 ms of network time per step. ``--quick``: 40 + 40 neurons, 3 episodes of 20 steps."""

    seed: int = 0
    arena: float = 1.0
    goal_radius: float = 0.3
    step_size: float = 0.25
    max_steps: int = 30
    n_episodes: int = 4
    goal_min_distance: float = 0.5
    random_start: bool = False
    place_cells: int = 5
    place_width: float = 0.35
    step_ms: int = 2
    input_scale: float = 0.1
    readout_scale: float = 20.0
    n_lif: int = 100
    n_alif: int = 100
    beta: float = 1.7
    tau_adapt: float = 300.0
    tau_mem: float = 20.0
    tau_out: float = 3.0
    threshold: float = 0.01
    n_refractory: int = 2
    gamma_pseudo: float = 0.3
    batch_size: int = 128
    iterations: int = 3000
    lr: float = 3e-3
    discount: float = 0.9
    value_coef: float = 0.5
    entropy_coef: float = 0.02
    entropy_decay_every: int = 1000
    reg: float = 0.1
    reg_rate_hz: float = 20.0
    grad_clip: float = 1.0
    test_trials: int = 512
    checkpoint_every: int = 25

    def validate(self) -> None:
        self.env_params()
        for name in ("step_ms", "batch_size", "iterations", "test_trials", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.entropy_decay_every < 1:
            raise ValueError(f"entropy_decay_every must be >= 1, got {self.entropy_decay_every}")
        if self.n_lif < 0 or self.n_alif < 0 or self.n_lif + self.n_alif < 1:
            raise ValueError(f"n_lif + n_alif must be >= 1 (each >= 0), got {self.n_lif} + {self.n_alif}")
        positive = ("input_scale", "readout_scale", "lr", "tau_adapt", "tau_mem", "tau_out", "threshold")
        for name in (*positive, "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("beta", "value_coef", "entropy_coef", "reg", "reg_rate_hz"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.discount <= 1:
            raise ValueError(f"discount must be in [0, 1], got {self.discount}")
        if self.n_refractory < 0:
            raise ValueError(f"n_refractory must be >= 0, got {self.n_refractory}")

    def env_params(self) -> nav.NavigationParams:
        return nav.navigation_params(
            arena=self.arena,
            goal_radius=self.goal_radius,
            step_size=self.step_size,
            max_steps=self.max_steps,
            n_episodes=self.n_episodes,
            goal_min_distance=self.goal_min_distance,
            random_start=self.random_start,
            place_cells=self.place_cells,
            place_width=self.place_width,
        )


def quick(cfg: Config) -> Config:
    """CPU-minutes version: 40 LIF + 40 ALIF, 3 episodes of at most 20 steps, batch 64."""
    return replace(
        cfg, n_lif=40, n_alif=40, max_steps=20, n_episodes=3, batch_size=64, iterations=900, test_trials=256
    )


def check(cfg: Config) -> None:
    """Field ranges, the environment's and the layers' own checks, before anything is written."""
    cfg.validate()
    NavigationAgent(cfg, torch.Generator())


class NavigationAgent(nn.Module):
    """LSNN + leaky readout to 4 action logits and a value.

    ``forward(obs, state) -> (logits [B, 4], value [B], z [step_ms, B, N], state)`` runs ``step_ms``
    ms on one observation. Unlike ``RecurrentSpikingLayer.forward`` (which detaches the state it
    returns) the state stays differentiable, so that BPTT runs through every step of a trial."""

    def __init__(self, cfg: Config, generator: torch.Generator) -> None:
        super().__init__()
        n_obs = nav.observation_size(cfg.env_params())
        self.rsnn = RecurrentSpikingLayer(
            n_obs,
            cfg.n_lif,
            cfg.n_alif,
            tau_mem=cfg.tau_mem,
            tau_adapt=cfg.tau_adapt,
            beta=cfg.beta,
            threshold=cfg.threshold,
            n_refractory=cfg.n_refractory,
            n_delay=1,
            surrogate=Triangle(gamma=cfg.gamma_pseudo),
            generator=generator,
        )
        self.readout = LeakyReadout(
            cfg.n_lif + cfg.n_alif, nav.N_ACTIONS + 1, tau_out=cfg.tau_out, bias=True, generator=generator
        )
        with torch.no_grad():  # a small policy head: the untrained policy is near uniform (it explores)
            self.readout.weight.mul_(0.05)
        self.step_ms, self.input_scale, self.readout_scale = cfg.step_ms, cfg.input_scale, cfg.readout_scale

    def initial_state(self, batch: int, device) -> tuple[ALIFState, torch.Tensor]:
        return alif_initial_state(batch, self.rsnn.n, device=device), torch.zeros(
            batch, self.rsnn.n, device=device
        )

    def forward(self, obs: torch.Tensor, state: tuple[ALIFState, torch.Tensor]):
        neurons, y = state
        params = self.rsnn.parameters_for_neurons()
        w_rec = self.rsnn.effective_w_rec()
        drive = (self.input_scale * obs) @ self.rsnn.w_in  # n_delay = 1: I(t) = W_in x(t) + W_rec z(t-1)
        kappa = torch.exp(-self.readout.dt / self.readout.tau_out)
        zs = []
        for _ in range(self.step_ms):
            z, neurons = alif_step(drive + neurons.z @ w_rec, neurons, params)
            y = kappa * y + (1 - kappa) * z * self.readout_scale  # the LeakyReadout filter, step by step
            zs.append(z)
        out = y @ self.readout.weight + self.readout.bias
        return out[:, : nav.N_ACTIONS], out[:, nav.N_ACTIONS], torch.stack(zs), (neurons, y)


def rollout(
    agent: NavigationAgent | None,
    cfg: Config,
    generator: torch.Generator,
    batch: int,
    device,
    *,
    record=False,
) -> dict:
    """Run ``batch`` new trials. ``agent=None`` acts uniformly at random. Returns the per-step
    ``logp``, ``entropy``, ``value``, ``reward``, ``active`` ``[S, B]``, the spikes ``z`` (list),
    ``steps [B, n_episodes]`` and, with ``record``, the positions before and after every step
    (``start``, ``end``, ``[S, B, 2]``) and the goals."""
    params = cfg.env_params()
    obs, env = nav.reset(params, batch, generator, device)
    state = agent.initial_state(batch, device) if agent is not None else None
    logps, ents, values, rewards, actives, zs, starts, ends = [], [], [], [], [], [], [], []
    over = False
    while not over:
        if agent is None:
            action = torch.randint(nav.N_ACTIONS, (batch,), generator=generator).to(device)
        else:
            logits, value, z, state = agent(obs, state)
            logp_all = torch.log_softmax(logits, -1)
            u = torch.rand(batch, 1, generator=generator).to(device)  # inverse-CDF sampling, explicit draw
            cdf = logp_all.detach().exp().cumsum(-1)
            action = (u > cdf).sum(-1).clamp(max=nav.N_ACTIONS - 1)
            logps.append(logp_all.gather(1, action[:, None])[:, 0])
            ents.append(-(logp_all.exp() * logp_all).sum(-1))
            values.append(value)
            zs.append(z)
        res = nav.step(params, env, action, generator)
        if record:
            starts.append(env.position)
            ends.append(res.moved_to)
        rewards.append(res.reward)
        actives.append(res.active.to(res.reward.dtype))
        obs, env, over = res.obs, res.state, res.trial_over
    out = {
        "reward": torch.stack(rewards),
        "active": torch.stack(actives),
        "steps": env.steps,
    }
    if agent is not None:
        out.update(logp=torch.stack(logps), entropy=torch.stack(ents), value=torch.stack(values), z=zs)
    if record:
        out.update(start=torch.stack(starts), end=torch.stack(ends), goal=env.goal)
    return out


def discounted_returns(reward: torch.Tensor, discount: float) -> torch.Tensor:
    """``G_t = r_t + discount * G_{t+1}`` over the whole trial (``reward [S, B]``)."""
    returns = torch.zeros_like(reward)
    running = torch.zeros_like(reward[0])
    for t in range(reward.shape[0] - 1, -1, -1):
        running = reward[t] + discount * running
        returns[t] = running
    return returns


def a2c_loss(roll: dict, cfg: Config, entropy_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The masked A2C loss of the module docstring (without the rate regulariser) and its parts."""
    mask = roll["active"]
    n = mask.sum().clamp(min=1.0)
    returns = discounted_returns(roll["reward"], cfg.discount)
    advantage = returns - roll["value"]
    policy = -(roll["logp"] * advantage.detach() * mask).sum() / n
    value = (advantage**2 * mask).sum() / n
    entropy = (roll["entropy"] * mask).sum() / n
    loss = policy + cfg.value_coef * value - entropy_coef * entropy
    return loss, {"policy": policy.detach(), "value": value.detach(), "entropy": entropy.detach()}


def _average_gradients(agent: nn.Module, ctx: Context) -> None:
    """DDP by hand: the rollout calls the module once per step, so gradients are averaged after
    backward (equal per-rank batches make this the single-process gradient of the whole batch)."""
    if ctx.dist.world_size <= 1:
        return
    import torch.distributed as dist

    for p in agent.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= ctx.dist.world_size


def _generator(cfg: Config, role: int, iteration: int, rank: int) -> torch.Generator:
    # Every draw is a function of (seed, role, iteration, rank): a resumed run sees the same trials.
    return seeded_generator(cfg.seed, role, iteration, rank)


def _entropy_coef(cfg: Config, iteration: int) -> float:
    return cfg.entropy_coef * 0.5 ** (iteration // cfg.entropy_decay_every)


@torch.no_grad()
def evaluate(agent: NavigationAgent | None, cfg: Config, ctx: Context, local_trials: int) -> list[float]:
    """Mean steps to the goal per episode over new trials (same trials for the agent and random)."""
    roll = rollout(agent, cfg, _generator(cfg, TEST_ROLE, 0, ctx.dist.rank), local_trials, ctx.device)
    per_episode = roll["steps"].float().mean(0)
    return [all_reduce_mean(float(v), ctx.dist) for v in per_episode]


def run(cfg: Config, ctx: Context) -> dict:
    cfg.validate()
    world = ctx.dist.world_size
    for name in ("batch_size", "test_trials"):
        if getattr(cfg, name) % world:
            raise ValueError(
                f"{name} ({getattr(cfg, name)}) must be divisible by the number of processes ({world})"
            )
    local_batch = cfg.batch_size // world
    agent = NavigationAgent(cfg, seeded_generator(cfg.seed, 1)).to(ctx.device)
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.lr)
    ckpt = TrainingCheckpoints(ctx, agent, opt)
    start, step, elapsed, checkpoint = ckpt.start, ckpt.step, ckpt.elapsed, ckpt.save

    bar = progress_bar(ctx, total=cfg.iterations, initial=start, desc="meta-RL")
    it = start
    while it < cfg.iterations:
        roll = rollout(agent, cfg, _generator(cfg, TRAIN_ROLE, it, ctx.dist.rank), local_batch, ctx.device)
        z = torch.cat(roll["z"])
        loss, parts = a2c_loss(roll, cfg, _entropy_coef(cfg, it))
        loss = loss + firing_rate_loss(z, target_hz=cfg.reg_rate_hz, coefficient=cfg.reg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _average_gradients(agent, ctx)
        torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.grad_clip)
        opt.step()
        steps = roll["steps"].float().mean(0)
        logged = {f"train/steps_ep{k + 1}": all_reduce_mean(float(v), ctx.dist) for k, v in enumerate(steps)}
        logged["train/entropy"] = all_reduce_mean(parts["entropy"], ctx.dist)
        logged["train/value_loss"] = all_reduce_mean(parts["value"], ctx.dist)
        logged["train/rate_hz"] = all_reduce_mean(z.detach().mean() * 1000.0, ctx.dist)
        it += 1
        step += 1
        ctx.run.log(step, **logged, iteration=it)
        bar.update(1)
        bar.set_postfix(
            ep1=f"{logged['train/steps_ep1']:.1f}", last=f"{logged[f'train/steps_ep{cfg.n_episodes}']:.1f}"
        )
        if ctx.stop.requested:
            checkpoint(it)
            bar.close()
            return {"stopped": True, "step": step}
        if it % cfg.checkpoint_every == 0:
            checkpoint(it)
    bar.close()

    local_trials = cfg.test_trials // world
    agent_steps = evaluate(agent, cfg, ctx, local_trials)
    random_steps = evaluate(None, cfg, ctx, local_trials)
    later = float(np.mean(agent_steps[1:])) if cfg.n_episodes > 1 else float("nan")
    results = {
        "steps_to_goal_by_episode": agent_steps,
        "random_steps_to_goal_by_episode": random_steps,
        "later_episodes_mean_steps": later,
        "first_episode_steps": agent_steps[0],
        "random_mean_steps": float(np.mean(random_steps)),
        "max_steps": cfg.max_steps,
        "test_trials": cfg.test_trials,
        "iterations": cfg.iterations,
        "seconds": elapsed(),
        "seed": cfg.seed,
        "processes": world,
        "device": str(ctx.device),
    }
    if cfg.n_episodes > 1:
        results["claim_holds"] = bool(
            later < 0.75 * agent_steps[0] and later < 0.5 * results["random_mean_steps"]
        )
    if ctx.dist.is_main:
        from safetensors.torch import save

        atomic_write_bytes(ctx.run.path("agent.safetensors"), save(module_tensors("", agent)))
        ctx.run.write_results(results)
        _plots(cfg, ctx, agent, results)
        build_report(ctx.run.dir)
    return results


def _plots(cfg: Config, ctx: Context, agent: NavigationAgent, results: dict) -> None:
    metrics = ctx.run.metrics()
    keys = [f"train/steps_ep{k + 1}" for k in range(cfg.n_episodes)]
    curves = [{"step": m["iteration"], **{k: m[k] for k in keys if k in m}} for m in metrics]
    plot_curves(
        curves,
        keys,
        ctx.run.path("meta_training_curve.png"),
        title="Meta-training: steps to goal",
        xlabel="iteration",
    )
    by_episode = [
        {"step": k + 1, "LSNN (frozen)": a, "random policy": r}
        for k, (a, r) in enumerate(
            zip(results["steps_to_goal_by_episode"], results["random_steps_to_goal_by_episode"], strict=True)
        )
    ]
    plot_curves(
        by_episode,
        ["LSNN (frozen)", "random policy"],
        ctx.run.path("steps_by_episode.png"),
        title=f"Test trials: mean steps to goal (cap {cfg.max_steps})",
        xlabel="episode within a trial",
    )
    plot_bars(
        {f"episode {k + 1}": v for k, v in enumerate(results["steps_to_goal_by_episode"])}
        | {"random": results["random_mean_steps"]},
        ctx.run.path("steps_bars.png"),
        ylabel="mean steps to goal",
        title="Frozen LSNN per episode vs random policy",
    )
    with torch.no_grad():
        roll = rollout(agent, cfg, _generator(cfg, PLOT_ROLE, 0, 0), 4, ctx.device, record=True)
    plot_trajectories(roll, cfg, ctx.run.path("trajectories.png"))


def plot_trajectories(roll: dict, cfg: Config, path) -> None:
    """One panel per trial: the path of every episode (colour = episode) and the hidden goal."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, Rectangle

    start, end, goal = roll["start"].cpu().numpy(), roll["end"].cpu().numpy(), roll["goal"].cpu().numpy()
    n_trials = start.shape[1]
    fig = Figure(figsize=(3.0 * n_trials, 3.3))
    axes = fig.subplots(1, n_trials, squeeze=False)[0]
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for b, ax in enumerate(axes):
        ax.add_patch(Rectangle((-cfg.arena, -cfg.arena), 2 * cfg.arena, 2 * cfg.arena, fill=False, color="k"))
        ax.add_patch(Circle(tuple(goal[b]), cfg.goal_radius, color="gold", alpha=0.5))
        for e in range(cfg.n_episodes):
            lo = e * cfg.max_steps
            n = int(roll["steps"][b, e])
            seg = np.concatenate([start[lo : lo + 1, b], end[lo : lo + n, b]])
            jitter = 0.02 * (e - cfg.n_episodes / 2)  # keep overlapping paths apart
            ax.plot(seg[:, 0] + jitter, seg[:, 1] + jitter, color=colours[e % len(colours)], lw=1.2,
                    label=f"ep {e + 1}: {n} steps")  # fmt: skip
        ax.set_xlim(-cfg.arena * 1.05, cfg.arena * 1.05)
        ax.set_ylim(-cfg.arena * 1.05, cfg.arena * 1.05)
        ax.set_aspect("equal")
        ax.axis("off")  # the rectangle is the arena's wall
        ax.legend(fontsize="x-small", loc="lower left")
    fig.suptitle("Test trials (frozen weights): paths per episode, hidden goal in gold")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
