"""The quadrature rules of integrated gradients: points and weights on [0, 1] for each rule of
`IG_RULES`."""

from __future__ import annotations

import numpy as np
import torch

IG_RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def quadrature(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points alpha in [0, 1] and weights w with sum_k w_k f(alpha_k) ~ integral_0^1 f."""
    m = steps
    if rule == "riemann_left":
        alphas, weights = torch.arange(m) / m, torch.full((m,), 1 / m)
    elif rule == "riemann_right":
        alphas, weights = torch.arange(1, m + 1) / m, torch.full((m,), 1 / m)
    elif rule == "riemann_middle":
        alphas, weights = (torch.arange(m) + 0.5) / m, torch.full((m,), 1 / m)
    elif rule == "riemann_trapezoid":
        if m < 2:
            raise ValueError("riemann_trapezoid needs at least 2 steps")
        alphas, weights = torch.linspace(0, 1, m), torch.full((m,), 1 / (m - 1))
        weights[[0, -1]] /= 2
    elif rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(m)
        alphas, weights = torch.from_numpy((x + 1) / 2), torch.from_numpy(w / 2)
    else:
        raise ValueError(f"unknown IG rule {rule!r}; expected one of {', '.join(IG_RULES)}")
    return alphas.double(), weights.double()
