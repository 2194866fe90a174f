"""Which layers' outputs can be removed, and what else shrinks with them (torch.fx trace + shapes).

A *group* is a producer layer (Linear / Conv with groups=1) whose output reaches, only through ops that act
on each channel separately, a set of consumer layers (Linear / Conv with groups=1) reading it as their input,
and on the way possibly channel-aligned *followers* (BatchNorm, depthwise conv) that shrink with it. Removing
output channel c of the producer then removes entry c of every follower and input channel c of every
consumer; after a flatten, channel c is a block of ``block`` consecutive consumer input columns.

Anything else on the way (an add to another tensor as in a residual, concat, LayerNorm, the model output, an
opaque module) makes the producer unprunable; the reason is recorded.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ._batches import eval_mode

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Dropout,
    nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_ELEMENTWISE_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.tanhshrink, torch.sigmoid, torch.tanh, F.sigmoid,
    F.tanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.clamp, torch.abs}
_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                   F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
                   F.adaptive_max_pool2d, F.adaptive_max_pool3d}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "abs", "clamp", "contiguous", "clone"}
_SCALAR_OPS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
               torch.div}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax}
_IGNORED_METHODS = {"size", "dim"}  # read the shape only


@dataclass
class Linked:
    """A follower or consumer of a group: ``block`` input columns (or entries) per producer channel."""
    name: str
    module: nn.Module
    block: int


@dataclass
class Group:
    producer: str
    module: nn.Module
    channels: int
    followers: list[Linked] = field(default_factory=list)
    consumers: list[Linked] = field(default_factory=list)


def is_producer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, _CONVS) and module.groups == 1)


def _is_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, _CONVS) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


class _Tracer(fx.Tracer):
    # Modules without children (e.g. sparsecomp's compressed layers) stay opaque instead of being traced into.
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return super().is_leaf_module(m, qualname) or next(iter(m.children()), None) is None


def trace(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """The model's fx graph with tensor shapes from running ``example_inputs`` (eval mode, no grad)."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:
        raise ValueError(f"structured pruning needs a model torch.fx can trace (no data-dependent control flow): "
                         f"{type(err).__name__}: {err}") from err
    gm = fx.GraphModule(tracer.root, graph)
    gm.graph.eliminate_dead_code()
    with eval_mode(model), torch.no_grad():
        ShapeProp(gm).propagate(*example_inputs)
    return gm


def _shape(node) -> tuple | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _dims_arg(node: fx.Node):
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if isinstance(dims, int):
        return (dims,)
    if isinstance(dims, (tuple, list)) and all(isinstance(d, int) for d in dims):
        return tuple(dims)
    return None


def _flattened_size_ok(node: fx.Node) -> bool:
    """view/reshape must say (batch, -1): a hard-coded feature count would break once channels are removed."""
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    return len(sizes) == 2 and sizes[1] == -1


class _Walker:
    def __init__(self, gm: fx.GraphModule, calls: dict[str, int]):
        self.gm, self.calls = gm, calls
        self.modules = dict(gm.named_modules())

    def _module(self, node):
        return self.modules[node.target] if node.op == "call_module" else None

    def walk(self, node: fx.Node, cdim: int, block: int, group: Group) -> str | None:
        """Follows every use of ``node`` (channel dim ``cdim``); returns why the group is unprunable, or None."""
        shape = _shape(node)
        if shape is None:
            return f"no shape known for {node.name}"
        channels = group.channels * block
        for user in node.users:
            why = self._visit(user, node, shape, cdim, block, channels, group)
            if why:
                return why
        return None

    def _visit(self, user, node, shape, cdim, block, channels, group) -> str | None:
        ndim = len(shape)
        module = self._module(user)
        target = getattr(user.target, "__name__", user.target) if user.op == "call_function" else user.target
        where = f"{user.op} {target}"
        if user.op == "output":
            return "its output is a model output"
        if user.op == "call_method" and user.target in _IGNORED_METHODS:
            return None
        if user.op == "call_function" and user.target is getattr and user.args[1] in ("shape", "dtype", "device"):
            return None
        if module is not None and self.calls.get(user.target, 0) > 1:
            return f"{user.target} is called more than once"
        if not user.args or user.args[0] is not node or any(
                a is node for a in list(user.args[1:]) + list(user.kwargs.values())):
            if not (user.op == "call_function" and user.target in _SCALAR_OPS):
                return f"used as a non-first argument of {where}"
        # consumers: the layers whose input columns shrink
        if module is not None and is_producer(module):
            if isinstance(module, nn.Linear):
                if cdim != ndim - 1 or shape[-1] != module.in_features or module.in_features != channels:
                    return f"{user.target} does not read the channels as its features"
            elif cdim != 1 or block != 1 or module.in_channels != channels:
                return f"{user.target} does not read the channels as its input channels"
            group.consumers.append(Linked(user.target, module, block))
            return None
        # followers: channel-aligned modules shrinking with the producer
        if module is not None and (isinstance(module, _BNS) or _is_depthwise(module)):
            size = module.num_features if isinstance(module, _BNS) else module.in_channels
            if cdim != 1 or ndim < 2 or shape[1] != size or size != channels:
                return f"{user.target} is not aligned with the channels"
            group.followers.append(Linked(user.target, module, block))
            return self.walk(user, cdim, block, group)
        # per-channel ops
        elementwise = ((module is not None and isinstance(module, _ELEMENTWISE_MODULES))
                       or (module is not None and isinstance(module, nn.PReLU) and module.num_parameters == 1)
                       or (user.op == "call_function" and user.target in _ELEMENTWISE_FUNCTIONS)
                       or (user.op == "call_method" and user.target in _ELEMENTWISE_METHODS))
        if user.op == "call_function" and user.target in _SCALAR_OPS:
            others = [a for a in list(user.args) + list(user.kwargs.values()) if a is not node]
            if not all(isinstance(a, (int, float)) for a in others):
                return f"combined with another tensor by {where} (residual/branch merge)"
            elementwise = True
        if elementwise:
            return self.walk(user, cdim, block, group) if _shape(user) == shape else f"{where} changes the shape"
        pool = ((module is not None and isinstance(module, _POOL_MODULES))
                or (user.op == "call_function" and user.target in _POOL_FUNCTIONS))
        if pool:
            out = _shape(user)
            if cdim != 1 or ndim < 3 or out is None or out[:2] != shape[:2]:
                return f"{where} does not pool each channel separately"
            return self.walk(user, cdim, block, group)
        if ((user.op == "call_method" and user.target in _REDUCE_METHODS)
                or (user.op == "call_function" and user.target in _REDUCE_FUNCTIONS)):
            dims = _dims_arg(user)
            out = _shape(user)
            if dims is None or out is None or cdim != 1 or any(d % ndim in (0, 1) for d in dims):
                return f"{where} reduces over the channels"
            if len(out) < 2 or out[:2] != shape[:2]:
                return f"{where} changes the layout"
            return self.walk(user, 1, block, group)
        reshape = ((module is not None and isinstance(module, nn.Flatten))
                   or (user.op == "call_function" and user.target is torch.flatten)
                   or (user.op == "call_method" and user.target in ("flatten", "view", "reshape")))
        if reshape:
            out = _shape(user)
            if out == shape:
                return self.walk(user, cdim, block, group)
            if user.op == "call_method" and user.target in ("view", "reshape") and not _flattened_size_ok(user):
                return f"{where} hard-codes the flattened size"
            if cdim != 1 or out is None or len(out) != 2 or out[0] != shape[0] or out[1] != math.prod(shape[1:]):
                return f"{where} is not a flatten to [batch, features]"
            return self.walk(user, 1, block * math.prod(shape[2:]), group)
        return f"reaches {where}, which mixes channels or is not understood"


def find_groups(model: nn.Module, example_inputs: tuple) -> tuple[dict[str, Group], dict[str, str]]:
    """({producer name: Group} of prunable producers, {layer name: reason} of the others)."""
    gm = trace(model, example_inputs)
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    walker = _Walker(gm, calls)
    groups, reasons = {}, {}
    for node in gm.graph.nodes:
        module = walker._module(node)
        if module is None or not is_producer(module) or node.target in groups or node.target in reasons:
            continue
        if calls[node.target] > 1:
            reasons[node.target] = "called more than once (shared layer)"
            continue
        shape = _shape(node)
        channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        cdim = (len(shape) - 1) if isinstance(module, nn.Linear) and shape else 1
        group = Group(node.target, module, channels)
        why = walker.walk(node, cdim, 1, group)
        if why is None and not group.consumers:
            why = "no layer consumes its output"
        if why is None:
            groups[node.target] = group
        else:
            reasons[node.target] = why
    return groups, reasons
