"""Linf adversarial examples for *training* (PGD-AT, TRADES, MART, RFGSM-KL finetuning).

Kept beside the trainers so that conversion/ does not import robustness/ (the evaluation attacks,
which refuse training-mode models, live there). The model is switched to eval mode while the example
is built (batch norm uses its running statistics, as in the TRADES and MART reference code) and put
back afterwards.

    x_{k+1} = clip_[0,1]( clip_{x +- eps}( x_k + alpha sign(grad_x L(x_k)) ) )
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STARTS = ("uniform", "normal", "sign")


def kl_to_clean(
    adv_logits: torch.Tensor, clean_logits: torch.Tensor, reduction: str = "batchmean"
) -> torch.Tensor:
    """``KL(p(x) || p(x'))`` (the TRADES term), computed as ``kl_div(log p(x'), p(x))``."""
    return F.kl_div(F.log_softmax(adv_logits, 1), F.softmax(clean_logits, 1), reduction=reduction)


def perturb(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    loss: str,
    start: str,
    start_size: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``steps`` signed-gradient steps of ``loss`` ("ce" or "kl" to the clean prediction) from a random
    start: "uniform" in the ball, "normal" (``x + start_size N(0, 1)``, TRADES 0.001) or "sign"
    (``x + start_size sign(N(0, 1))``, RFGSM). Returns a detached point of the eps ball in [0, 1]."""
    was_training = model.training
    model.eval()
    try:
        x = x.detach()
        shape_noise = torch.rand if start == "uniform" else torch.randn
        noise = shape_noise(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        if start == "uniform":
            x_adv = x + eps * (2 * noise - 1)
        elif start == "normal":
            x_adv = x + start_size * noise
        else:
            x_adv = x + start_size * noise.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
        clean = None
        if loss == "kl":
            with torch.no_grad():
                clean = model(x)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                out = model(x_adv)
                value = (
                    F.cross_entropy(out, y, reduction="sum")
                    if loss == "ce"
                    else kl_to_clean(out, clean, "sum")
                )
                (g,) = torch.autograd.grad(value, x_adv)
            x_adv = x_adv.detach() + alpha * g.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
        return x_adv.detach()
    finally:
        model.train(was_training)
