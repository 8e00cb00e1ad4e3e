"""ResNet-style backbones whose residual stages are k blocks, one ODE stage, or its RK-Net twin.

A vision backbone is a stem followed by stages; inside a stage every block keeps the width and
resolution, so the stack ``x -> x + f_1(x) -> ... -> x + f_k(x)`` is Euler's method for
``dz/dt = f(t, z)`` with unit steps (Chen et al. 2018, Sec. 3). :func:`make_backbone` builds the
same network three ways, stage by stage:

``"resnet"``  k pre-activation residual blocks (:class:`~neuralode.nn.image.ResBlock`);
``"odenet"``  one ODE stage: :class:`~neuralode.nn.ODEBlock` over
              :class:`~neuralode.nn.image.ODEFunc` on ``[0, 1]``, adaptive ``dopri5``
              (rtol = atol = 1e-3) with adjoint gradients (O(1) activation memory per stage;
              ``gradient="checkpoint"`` or ``"direct"`` are the alternatives);
``"rknet"``   the ODE stage's twin with a fixed-step ``rk4`` solver and direct backprop
              (Chen et al.'s RK-Net): same parameters, discrete depth.

Layout (widths ``w_1..w_S``, blocks ``k_1..k_S``)::

    stem      Conv3x3(c_in, w_1, stride s) , GroupNorm, ReLU       ("conv" stem, s = stem_stride)
              or Chen et al.'s MNIST downsampling: Conv3x3(c_in, w_1), [GN, ReLU, Conv4x4/2] x 2
    layer1    body(w_1, k_1)                                   , GroupNorm, ReLU
    layer i   Conv3x3(w_{i-1}, w_i, stride 2), body(w_i, k_i)  , GroupNorm, ReLU

The transitions are identical in the three kinds, so the comparison isolates the residual bodies.
Normalisation is GroupNorm everywhere: BatchNorm inside an ODE field would update its running
statistics once per function evaluation (the count changes with the solver and the tolerance)
and normalise differently in training and evaluation; GroupNorm is per sample and stateless.
The field's convolutions see the time as an extra channel (:class:`~neuralode.nn.ConcatConv2d`).

Depth presets (:data:`DEPTHS`): ``"resnet18"`` (2, 2, 2, 2) and ``"resnet34"`` (3, 4, 6, 3) blocks at
widths (w, 2w, 4w, 8w) with torchvision's ResNet-18/34 layout of four stages; ``"chen6"``: the
6-block MNIST network of Chen et al. (one stage of width w after the two stride-2 downsamplings).

A :class:`Backbone` has the ``out_channels`` attribute torchvision's detection models need and
runs its children in order, so :func:`backbone_with_fpn` can wrap it with torchvision's
``BackboneWithFPN`` (a feature pyramid over the stage outputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from torch import nn

from .image import ODEFunc, ResBlock, count_parameters, norm
from .odeblock import ODEBlock

__all__ = [
    "BACKBONE_KINDS",
    "DEPTHS",
    "Backbone",
    "backbone_with_fpn",
    "make_backbone",
    "ode_stage",
    "stage_body",
]

BACKBONE_KINDS = ("resnet", "odenet", "rknet")

#: preset -> (blocks per stage, width multipliers, stem)
DEPTHS: dict[str, tuple[tuple[int, ...], tuple[int, ...], str]] = {
    "resnet18": ((2, 2, 2, 2), (1, 2, 4, 8), "conv"),
    "resnet34": ((3, 4, 6, 3), (1, 2, 4, 8), "conv"),
    "chen6": ((6,), (1,), "chen"),
}


def ode_stage(width: int, kind: str = "odenet", *, method: str | None = None, rtol: float = 1e-3,
              atol: float = 1e-3, gradient: str | None = None, rk_step: float = 0.25,
              t_end: float = 1.0, options: dict[str, Any] | None = None) -> ODEBlock:
    """One ODE stage of ``width`` channels: ``z(0) -> z(t_end)`` under :class:`ODEFunc`.

    ``kind="odenet"``: adaptive ``method`` (default dopri5) with ``gradient`` (default adjoint).
    ``kind="rknet"``: fixed-step ``method`` (default rk4) with ``step_size=rk_step`` and
    ``gradient`` (default direct backprop). Parameters: two 3x3 ConcatConv2d and three GroupNorms.
    """
    if kind == "odenet":
        method, gradient = method or "dopri5", gradient or "adjoint"
    elif kind == "rknet":
        method, gradient = method or "rk4", gradient or "direct"
        if rk_step <= 0 or rk_step > t_end:
            raise ValueError(f"rk_step={rk_step!r}; expected a step in (0, t_end={t_end}]")
        options = {"step_size": rk_step, **(options or {})}
    else:
        raise ValueError(f"kind={kind!r}; an ODE stage is 'odenet' or 'rknet'")
    return ODEBlock(ODEFunc(width), t=(0.0, t_end), method=method, rtol=rtol, atol=atol,
                    options=options, gradient=gradient)


def stage_body(kind: str, width: int, blocks: int, **ode_kwargs: Any) -> nn.Module:
    """The residual body of one stage: ``blocks`` ResBlocks, or one ODE stage (``blocks`` unused)."""
    if kind not in BACKBONE_KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {BACKBONE_KINDS}")
    if not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks={blocks!r}; expected a positive int")
    if kind == "resnet":
        return nn.Sequential(*[ResBlock(width) for _ in range(blocks)])
    return ode_stage(width, kind, **ode_kwargs)


def _stem(kind: str, in_channels: int, width: int, stride: int) -> nn.Sequential:
    if kind == "chen":
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1),
                             norm(width), nn.ReLU(inplace=True), nn.Conv2d(width, width, 4, 2, 1),
                             norm(width), nn.ReLU(inplace=True), nn.Conv2d(width, width, 4, 2, 1))
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, stride, 1, bias=False),
                             norm(width), nn.ReLU(inplace=True))
    raise ValueError(f"stem={kind!r}; expected 'conv' or 'chen'")


class Backbone(nn.Sequential):
    """``stem, layer1, ..., layerS`` run in order; ``forward(x)`` returns the last stage's map.

    Attributes:
        kind: ``"resnet"``, ``"odenet"`` or ``"rknet"``.
        out_channels: channels of the output (torchvision's detection models read it).
        stage_channels: output channels of ``layer1..layerS`` (for a feature pyramid).
        stride: total downsampling factor of the output map.
        in_channels: image channels.
    """

    def __init__(self, kind: str, stem: nn.Module, layers: Sequence[nn.Module], widths: Sequence[int],
                 stride: int, in_channels: int = 3) -> None:
        super().__init__()
        self.add_module("stem", stem)
        for i, layer in enumerate(layers, 1):
            self.add_module(f"layer{i}", layer)
        self.kind = kind
        self.stage_channels = list(widths)
        self.out_channels = self.stage_channels[-1]
        self.stride = stride
        self.in_channels = in_channels

    def ode_blocks(self) -> list[ODEBlock]:
        """The ODE stages (empty for a ResNet)."""
        return [m for m in self.modules() if isinstance(m, ODEBlock)]

    @property
    def nfe(self) -> int:
        """Forward function evaluations of the last call, summed over the ODE stages."""
        return sum(b.nfe for b in self.ode_blocks())

    @property
    def nfe_backward(self) -> int:
        """Backward (adjoint) function evaluations of the last backward pass, summed over stages."""
        return sum(b.nfe_backward for b in self.ode_blocks())

    def set_tolerance(self, rtol: float, atol: float | None = None) -> None:
        """Change the ODE stages' solver tolerance (e.g. at test time, to trade accuracy for NFE)."""
        if rtol <= 0 or (atol is not None and atol <= 0):
            raise ValueError(f"rtol={rtol!r}, atol={atol!r}; expected positive tolerances")
        for b in self.ode_blocks():
            b.rtol, b.atol = rtol, rtol if atol is None else atol

    def body_parameters(self) -> int:
        """Trainable parameters of the residual bodies alone (what the three kinds differ in)."""
        total = 0
        for name, layer in self.named_children():
            if name.startswith("layer"):
                total += count_parameters(cast(nn.Module, layer.body))  # a submodule (torch types it Tensor | Module)
        return total


def make_backbone(kind: str, depth: str = "resnet18", *, width: int = 64, in_channels: int = 3,
                  n_stages: int | None = None, blocks: Sequence[int] | None = None,
                  widths: Sequence[int] | None = None, stem_stride: int = 1,
                  method: str | None = None, rtol: float = 1e-3, atol: float = 1e-3,
                  gradient: str | None = None, rk_step: float = 0.25, t_end: float = 1.0,
                  options: dict[str, Any] | None = None) -> Backbone:
    """A ResNet-style backbone whose stage bodies are of ``kind``.

    Args:
        kind: ``"resnet"`` (k residual blocks per stage), ``"odenet"`` or ``"rknet"`` (one ODE
            stage per stage; see :func:`ode_stage`).
        depth: preset of :data:`DEPTHS` (``"resnet18"``, ``"resnet34"``, ``"chen6"``).
        width: channels of the first stage; the preset's multipliers give the others.
        in_channels: image channels.
        n_stages: keep only the first ``n_stages`` stages (small images need fewer).
        blocks, widths: override the preset's blocks per stage / stage widths.
        stem_stride: stride of the ``"conv"`` stem (torchvision's ResNet downsamples by 4 there;
            small images want 1 or 2). The ``"chen"`` stem always downsamples by 4.
        method, rtol, atol, gradient, rk_step, t_end, options: the ODE stages' solver (see
            :func:`ode_stage`); ``options`` is passed to every stage's solve (e.g. ``max_num_steps``).
    """
    if depth not in DEPTHS:
        raise ValueError(f"depth={depth!r}; expected one of {sorted(DEPTHS)}")
    if kind not in BACKBONE_KINDS:
        raise ValueError(f"kind={kind!r}; expected one of {BACKBONE_KINDS}")
    preset_blocks, mults, stem_kind = DEPTHS[depth]
    blocks = tuple(blocks) if blocks is not None else preset_blocks
    widths = tuple(widths) if widths is not None else tuple(width * m for m in mults)
    if n_stages is not None:
        if not 1 <= n_stages <= len(blocks):
            raise ValueError(f"n_stages={n_stages!r}; expected 1..{len(blocks)} for depth={depth!r}")
        blocks, widths = blocks[:n_stages], widths[:n_stages]
    if len(blocks) != len(widths) or not widths:
        raise ValueError(f"blocks={blocks} and widths={widths} must be non-empty and of one length")
    if any(not isinstance(w, int) or w < 1 for w in widths):
        raise ValueError(f"widths={widths}; expected positive ints")
    if stem_stride not in (1, 2, 4):
        raise ValueError(f"stem_stride={stem_stride!r}; expected 1, 2 or 4")
    ode_kwargs = dict(method=method, rtol=rtol, atol=atol, gradient=gradient, rk_step=rk_step, t_end=t_end,
                      options=options)
    stride = 4 if stem_kind == "chen" else stem_stride
    stem = _stem(stem_kind, in_channels, widths[0], stem_stride)
    if stem_kind == "conv" and stem_stride == 4:
        stem = nn.Sequential(_stem("conv", in_channels, widths[0], 2), nn.MaxPool2d(3, 2, 1))
    layers = []
    for i, (w, k) in enumerate(zip(widths, blocks)):
        layer = nn.Sequential()
        if i > 0:
            layer.add_module("down", nn.Conv2d(widths[i - 1], w, 3, 2, 1, bias=False))
            stride *= 2
        layer.add_module("body", stage_body(kind, w, k, **ode_kwargs))
        layer.add_module("norm", norm(w))
        layer.add_module("relu", nn.ReLU(inplace=True))
        layers.append(layer)
    return Backbone(kind, stem, layers, widths, stride, in_channels)


def backbone_with_fpn(backbone: Backbone, out_channels: int = 64,
                      returned_layers: Sequence[int] | None = None) -> nn.Module:
    """torchvision's ``BackboneWithFPN`` over the outputs of ``layer{i}`` for i in ``returned_layers``.

    Returns a module mapping images to an ``OrderedDict`` of ``out_channels`` maps ``"0", "1", ...``
    (finest first) plus ``"pool"`` (a max-pooled coarsest level), with ``.out_channels`` set:
    pass it straight to ``torchvision.models.detection.FasterRCNN``. ``.body.backbone`` is not
    kept by torchvision, so NFE is read from the :class:`Backbone` passed in.
    """
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    n = len(backbone.stage_channels)
    returned = list(returned_layers) if returned_layers is not None else list(range(1, n + 1))
    if not returned or any(not 1 <= i <= n for i in returned) or sorted(set(returned)) != returned:
        raise ValueError(f"returned_layers={returned_layers!r}; expected increasing stage numbers in 1..{n}")
    return_layers = {f"layer{i}": str(j) for j, i in enumerate(returned)}
    in_list = [backbone.stage_channels[i - 1] for i in returned]
    return BackboneWithFPN(backbone, return_layers, in_list, out_channels)

