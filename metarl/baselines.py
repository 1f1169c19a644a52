"""The linear feature baseline of Duan et al. (2016), used by MAML-RL for its advantages."""

from __future__ import annotations

import torch
from torch import Tensor


def linear_features(observations: Tensor, mask: Tensor) -> Tensor:
    """Features ``[o, o², t, t², t³, 1]`` with ``t = step / 100``, zero on masked steps.

    Args:
        observations: ``[..., T, obs_dim]``.
        mask: ``[..., T]``.
    Returns:
        ``[..., T, 2 * obs_dim + 4]``.
    """
    steps = torch.arange(observations.shape[-2], dtype=observations.dtype, device=observations.device)
    t = (steps / 100.0).expand(*observations.shape[:-1]).unsqueeze(-1)
    features = torch.cat([observations, observations**2, t, t**2, t**3, torch.ones_like(t)], dim=-1)
    return features * mask.unsqueeze(-1)


def fit_linear_baseline(
    observations: Tensor, returns: Tensor, mask: Tensor, batch_dims: int = 1, ridge: float = 1e-5
) -> Tensor:
    """Fit one linear value function per leading batch entry (per task) and return its predictions.

    Solves the ridge-regularised normal equations ``(XᵀX + λI) w = Xᵀy`` with
    ``torch.linalg.lstsq`` (QR) over all steps of all episodes of a task.

    Args:
        observations: ``[*batch, E, T, obs_dim]`` with ``batch_dims`` leading batch dimensions.
        returns: ``[*batch, E, T]`` discounted returns, the regression targets.
        mask: ``[*batch, E, T]``.
    Returns:
        Predicted values, shaped like `returns` and zero on masked steps.
    """
    features = linear_features(observations, mask)
    if not (torch.isfinite(features).all() and torch.isfinite(returns).all()):
        raise FloatingPointError("linear baseline: non-finite observations or returns in the episodes")
    batch_shape = features.shape[:batch_dims]
    x = features.reshape(*batch_shape, -1, features.shape[-1]).double()
    y = (returns * mask).reshape(*batch_shape, -1, 1).double()
    xtx = x.transpose(-1, -2) @ x
    eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype, device=xtx.device)
    # QR ("gels"): the same bits in every process. The CPU default ("gelsy") depends on memory
    # alignment, so identical runs drifted apart where the fit is ill-conditioned (AntVel).
    weights = torch.linalg.lstsq(xtx + ridge * eye, x.transpose(-1, -2) @ y, driver="gels").solution
    if not torch.isfinite(weights).all():
        raise FloatingPointError("linear baseline: the least-squares fit produced non-finite weights")
    values = (x @ weights).reshape(returns.shape)
    return values.to(returns.dtype) * mask
