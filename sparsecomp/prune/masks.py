"""Pruning masks that keep pruned weights at exactly zero through any later training, until removed.

A masked parameter ``weight`` of a module gets
- a buffer ``weight_mask`` (1 = kept, 0 = pruned; the weight's dtype, so DDP can broadcast it; not in the
  state_dict, whose ``weight`` already holds the zeros and stays loadable into a plain model),
- a tensor hook on ``weight`` that multiplies its gradient by the mask (pruned gradients are exactly 0, before
  DDP's all-reduce and before any optimizer sees them),
- a global optimizer step post-hook re-zeroing the pruned weights after *every* ``torch.optim`` step: momentum
  and Adam moments accumulated before pruning would otherwise move them again,
- a forward pre-hook re-zeroing them if anything else wrote to the weight since (version counter check, so
  repeated forwards do not modify a weight autograd saved) and re-installing the gradient hook on copies
  (``copy.deepcopy`` and pickling drop tensor hooks but keep module hooks and buffers).

The weight stays an ordinary ``nn.Parameter`` named ``weight``: optimizers, state_dicts and DDP see no change.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

_STATE_ATTR = "_sparsecomp_masked"  # module attribute: {param name: weight._version after the last re-zeroing}

# id(param) -> (weakref to param, weakref to owning module, param name, gradient hook handle or None)
_REGISTRY: dict[int, tuple] = {}
_OPTIMIZER_HOOK = None


def _mask_buffer(name: str) -> str:
    return f"{name}_mask"


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The mask of ``module.<name>`` (1 kept, 0 pruned), or None if it is not masked."""
    if name not in getattr(module, _STATE_ATTR, {}):
        return None
    return module._buffers.get(_mask_buffer(name))


def masked_names(module: nn.Module) -> list[str]:
    return list(getattr(module, _STATE_ATTR, {}))


def _checked_mask(module: nn.Module, name: str, mask) -> torch.Tensor:
    param = getattr(module, name, None)
    if not isinstance(param, nn.Parameter):
        raise ValueError(f"{type(module).__name__} has no parameter named {name!r}")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(param.shape):
        raise ValueError(f"mask must have the shape of {name} {tuple(param.shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 (pruned) and 1 (kept)")
    return mask.detach().to(device=param.device, dtype=param.dtype).clone()


def apply_mask(module: nn.Module, mask: torch.Tensor, name: str = "weight") -> None:
    """Masks ``module.<name>`` with ``mask`` (replacing an existing mask) and zeroes the pruned entries now."""
    mask = _checked_mask(module, name, mask)
    state = getattr(module, _STATE_ATTR, None)
    if state is None:
        state = {}
        setattr(module, _STATE_ATTR, state)
        module.register_forward_pre_hook(_forward_pre_hook)
    if name in state:
        module._buffers[_mask_buffer(name)] = mask
    else:
        module.register_buffer(_mask_buffer(name), mask, persistent=False)
        state[name] = -1
    _ensure_optimizer_hook()
    _enforce(module, name)


def _enforce(module: nn.Module, name: str, only_if_written: bool = False) -> None:
    param = getattr(module, name)
    _install_grad_hook(param, module, name)
    state = getattr(module, _STATE_ATTR)
    if only_if_written and param._version == state.get(name):
        return
    with torch.no_grad():  # masked_fill, not mul: pruned weights become +0.0 (never -0.0 or NaN)
        param.masked_fill_(module._buffers[_mask_buffer(name)] == 0, 0.0)
    state[name] = param._version


def _forward_pre_hook(module: nn.Module, args) -> None:
    for name in getattr(module, _STATE_ATTR, {}):
        _enforce(module, name, only_if_written=True)


def _install_grad_hook(param: torch.Tensor, module: nn.Module, name: str) -> None:
    key = id(param)
    entry = _REGISTRY.get(key)
    if entry is not None and entry[0]() is param and entry[1]() is module and entry[2] == name:
        if entry[3] is not None or not param.requires_grad:
            return
    if entry is not None and entry[0]() is param and entry[3] is not None:
        entry[3].remove()  # the parameter moved to another module/name: one mask per parameter
    handle = None
    if param.requires_grad:
        module_ref = weakref.ref(module)

        def mask_grad(grad: torch.Tensor) -> torch.Tensor:
            owner = module_ref()
            mask = None if owner is None else get_mask(owner, name)
            return grad if mask is None else grad * mask

        handle = param.register_hook(mask_grad)

    def forget(ref, key=key):  # the parameter was freed: its id may be reused
        if _REGISTRY.get(key, (None,))[0] is ref:
            del _REGISTRY[key]

    _REGISTRY[key] = (weakref.ref(param, forget), weakref.ref(module), name, handle)


def _after_optimizer_step(optimizer, args, kwargs) -> None:
    if not _REGISTRY:
        return
    for group in optimizer.param_groups:
        for param in group["params"]:
            entry = _REGISTRY.get(id(param))
            if entry is None or entry[0]() is not param:
                continue
            module = entry[1]()
            if module is not None and get_mask(module, entry[2]) is not None and getattr(module, entry[2]) is param:
                _enforce(module, entry[2])


def _ensure_optimizer_hook() -> None:
    global _OPTIMIZER_HOOK
    if _OPTIMIZER_HOOK is None:
        _OPTIMIZER_HOOK = register_optimizer_step_post_hook(_after_optimizer_step)


def _drop(module: nn.Module, name: str) -> None:
    param = getattr(module, name)
    with torch.no_grad():
        param.masked_fill_(module._buffers[_mask_buffer(name)] == 0, 0.0)
    entry = _REGISTRY.get(id(param))
    if entry is not None and entry[0]() is param:
        if entry[3] is not None:
            entry[3].remove()
        del _REGISTRY[id(param)]
    del module._buffers[_mask_buffer(name)]
    module._non_persistent_buffers_set.discard(_mask_buffer(name))
    state = getattr(module, _STATE_ATTR)
    del state[name]
    if not state:
        delattr(module, _STATE_ATTR)
        # Remove by identity, not by handle: handles copied along with a module point at the original's dict.
        for key in [k for k, hook in module._forward_pre_hooks.items() if hook is _forward_pre_hook]:
            del module._forward_pre_hooks[key]
            module._forward_pre_hooks_with_kwargs.pop(key, None)


def remove(model: nn.Module) -> nn.Module:
    """Makes every mask in ``model`` permanent: pruned weights stay zero, masks and hooks are gone.

    What is left is a plain model (same parameters, zeros in place). Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    for module in model.modules():
        for name in masked_names(module):
            _drop(module, name)
    return model


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{qualified parameter name ("fc1.weight"): copy of its mask} for every masked parameter of ``model``."""
    out = {}
    for prefix, module in model.named_modules():
        for name in masked_names(module):
            out[f"{prefix}.{name}" if prefix else name] = get_mask(module, name).clone()
    return out


def set_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Replaces all masks of ``model`` by ``masks`` (as returned by :func:`get_masks`); others are removed
    without touching their weights' values beyond the re-zeroing the new masks do."""
    modules = dict(model.named_modules())
    targets = []
    for qualified, mask in masks.items():
        prefix, _, name = qualified.rpartition(".")
        module = modules.get(prefix)
        if module is None or not isinstance(getattr(module, name, None), nn.Parameter):
            raise KeyError(f"masks: {qualified!r} is not a parameter of the model")
        targets.append((module, name, mask))
    for module in model.modules():  # drop masks absent from ``masks`` (weights keep their current values)
        for name in masked_names(module):
            if not any(module is m and name == n for m, n, _ in targets):
                _drop_keep_values(module, name)
    for module, name, mask in targets:
        apply_mask(module, mask, name)
    return model


def _drop_keep_values(module: nn.Module, name: str) -> None:
    mask = module._buffers[_mask_buffer(name)]
    module._buffers[_mask_buffer(name)] = torch.ones_like(mask)  # so _drop's final multiply changes nothing
    _drop(module, name)


def freeze_zeros(model: nn.Module, skip=(), types=None) -> nn.Module:
    """Masks the current zeros of every prunable layer's weight (e.g. after loading a pruned checkpoint into a
    fresh model, so that fine-tuning keeps them zero)."""
    from .targets import prunable_layers

    for layer in prunable_layers(model, skip=skip, types=types).values():
        keep = layer.weight.detach() != 0
        old = get_mask(layer)
        apply_mask(layer, keep if old is None else keep & (old != 0))
    return model
