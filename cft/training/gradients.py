"""Reading and writing a parameter's full gradient (and reading its full value), with or without
DeepSpeed ZeRO.

Strategies that reshape gradients (CoFiTune's soft masks, LF_H2's per-head freezing) run in
`on_before_optimizer_step`, after backward and before the optimizer step. Without DeepSpeed the
gradient is `param.grad`. Under ZeRO-1/2/3 it lives in DeepSpeed's partitioned fp32 buffers
(`param.grad` is None or stale), so we go through DeepSpeed's `safe_get_full_grad` /
`safe_set_full_grad`, which gather and scatter the partitions.
"""

from __future__ import annotations

import torch


def is_deepspeed_managed(param) -> bool:
    """True for a parameter whose gradient DeepSpeed ZeRO keeps (stage 3: `ds_id`; 1/2: `_hp_mapping`)."""
    return hasattr(param, "ds_id") or getattr(param, "_hp_mapping", None) is not None


def full_shape(param) -> torch.Size:
    """The unpartitioned shape (ZeRO-3 replaces `param.data` by an empty partition)."""
    return torch.Size(getattr(param, "ds_shape", None) or param.shape)


def full_value(param) -> torch.Tensor:
    """A detached copy of the parameter's full value; ZeRO-3 partitions are gathered for the moment
    (a collective: every rank must ask for the same parameters in the same order)."""
    if hasattr(param, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([param]):
            return param.detach().clone()
    return param.detach()


def numel(param) -> int:
    """The full number of elements (ZeRO-3 keeps only a partition in `param`)."""
    return int(getattr(param, "ds_numel", None) or param.numel())


def get_grad(param) -> torch.Tensor | None:
    """The full gradient of `param` in its full shape, or None when it has none (frozen or unused)."""
    if is_deepspeed_managed(param):
        from deepspeed.utils import safe_get_full_grad

        grad = safe_get_full_grad(param)
    else:
        grad = param.grad
    if grad is None:
        return None
    return grad.view(full_shape(param))


def set_grad(param, grad: torch.Tensor) -> None:
    """Replace the full gradient of `param` (which must have one) by `grad`."""
    if is_deepspeed_managed(param):
        from deepspeed.utils import safe_get_full_grad, safe_set_full_grad

        current = safe_get_full_grad(param)
        safe_set_full_grad(param, grad.reshape(current.shape).to(current.dtype))
    elif param.grad is not None:
        param.grad.copy_(grad.reshape(param.grad.shape))


def scale_grad(param, scale: torch.Tensor, dim: int) -> bool:
    """Multiply the gradient of `param` by `scale` along dimension `dim` (rows: 0, columns: 1).

    Returns False when the parameter has no gradient (nothing to scale)."""
    in_place = not is_deepspeed_managed(param)  # a plain .grad: no copy (this runs on every optimizer step)
    grad = param.grad if in_place else get_grad(param)
    if grad is None:
        return False
    shape = [1] * grad.dim()
    shape[dim] = -1
    scale = scale.to(device=grad.device, dtype=grad.dtype).view(shape)
    if in_place:
        grad.mul_(scale)
    else:
        set_grad(param, grad * scale)  # ZeRO keeps the gradient in its own partitions
    return True
