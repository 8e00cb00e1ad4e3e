"""ResNet / ODE-Net / RK-Net backbones (neuralode.nn.backbones) and Faster R-CNN around them."""
import pytest
import torch

from neuralode import SolverError
from neuralode.nn.backbones import BACKBONE_KINDS, Backbone, backbone_with_fpn, make_backbone, ode_stage
from neuralode.nn.detection import make_faster_rcnn
from neuralode.nn.image import ImageClassifier, count_parameters


def _resnet_body_params(w: int, k: int) -> int:
    # k ResBlocks: two bias-free 3x3 convs and two GroupNorms (weight + bias) each
    return k * (2 * 9 * w * w + 2 * 2 * w)


def _ode_body_params(w: int) -> int:
    # ODEFunc: two 3x3 ConcatConv2d (w + 1 -> w, with bias) and three GroupNorms
    return 2 * (9 * (w + 1) * w + w) + 3 * 2 * w


@pytest.mark.parametrize("kind", BACKBONE_KINDS)
@pytest.mark.parametrize("depth,stem_stride,stride", [("resnet18", 1, 8), ("resnet34", 2, 16), ("chen6", 1, 4)])
def test_backbone_output_has_out_channels_and_the_declared_stride(kind, depth, stem_stride, stride):
    torch.manual_seed(0)
    b = make_backbone(kind, depth, width=4, in_channels=3, stem_stride=stem_stride, rk_step=0.5, rtol=1e-2, atol=1e-2)
    y = b(torch.randn(2, 3, 32, 32))
    assert b.stride == stride
    assert y.shape == (2, b.out_channels, 32 // stride, 32 // stride)
    assert b.out_channels == (4 if depth == "chen6" else 32)


@pytest.mark.parametrize("depth", ["resnet18", "resnet34", "chen6"])
def test_stage_bodies_have_the_counted_parameters_and_ode_stages_fewer(depth):
    widths = {"resnet18": (8, 16, 32, 64), "resnet34": (8, 16, 32, 64), "chen6": (8,)}[depth]
    blocks = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "chen6": (6,)}[depth]
    res = make_backbone("resnet", depth, width=8)
    ode = make_backbone("odenet", depth, width=8)
    rk = make_backbone("rknet", depth, width=8)
    assert res.body_parameters() == sum(_resnet_body_params(w, k) for w, k in zip(widths, blocks))
    assert ode.body_parameters() == sum(_ode_body_params(w) for w in widths)
    assert count_parameters(rk) == count_parameters(ode)  # the RK-Net is the ODE-Net's twin
    # everything outside the bodies (stem, transitions, stage norms) is shared
    assert count_parameters(res) - res.body_parameters() == count_parameters(ode) - ode.body_parameters()
    assert count_parameters(ode) < count_parameters(res)


def test_chen6_odenet_backbone_is_the_mnist_classifier_without_its_linear_layer():
    b = make_backbone("odenet", "chen6", width=64, in_channels=1)
    clf = ImageClassifier("odenet", in_channels=1, n_classes=10)
    assert count_parameters(b) == count_parameters(clf) - (64 * 10 + 10) == 208_266 - 650


def _stage_gradient(x: torch.Tensor, **kwargs) -> torch.Tensor:
    torch.manual_seed(0)  # the same weights for every gradient method
    block = ode_stage(4, "odenet", **kwargs).double()
    xi = x.clone().requires_grad_(True)
    (block(xi) ** 2).sum().backward()
    return torch.cat([g.flatten() for g in [xi.grad] + [p.grad for p in block.parameters()]])


def test_ode_stage_adjoint_and_checkpoint_gradients_match_direct_backprop():
    # The field's ReLUs make the gradient only piecewise smooth, so solvers agree to ~1e-2
    # relative (not to the tolerance); the reference is direct backprop through 200 rk4 steps.
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = _stage_gradient(x, method="rk4", gradient="direct", options={"step_size": 0.005})
    direct = _stage_gradient(x, gradient="direct", rtol=1e-4, atol=1e-4)
    adjoint = _stage_gradient(x, gradient="adjoint", rtol=1e-4, atol=1e-4)
    checkpoint = _stage_gradient(x, gradient="checkpoint", rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(checkpoint, direct, rtol=1e-9, atol=1e-9)  # the same steps, replayed

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    assert rel(adjoint, ref) < 0.01 and rel(direct, ref) < 0.05 and rel(adjoint, direct) < 0.05


def test_rknet_stage_takes_fixed_steps_and_odenet_nfe_follows_the_tolerance():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    rk = make_backbone("rknet", "resnet18", width=4, n_stages=2, rk_step=0.25)
    rk(x)
    assert rk.nfe == 2 * 4 * 4  # two stages x four rk4 steps x four evaluations
    ode = make_backbone("odenet", "resnet18", width=4, n_stages=2)
    nfe = []
    for tol in (1e-1, 1e-6):
        ode.set_tolerance(tol)
        ode(x)
        nfe.append(ode.nfe)
    assert nfe[1] > nfe[0] > 0
    assert make_backbone("resnet", "resnet18", width=4).nfe == 0


def test_adjoint_backbone_reports_backward_nfe():
    torch.manual_seed(0)
    b = make_backbone("odenet", "chen6", width=4, in_channels=1)
    b(torch.randn(2, 1, 16, 16)).sum().backward()
    assert b.nfe > 0 and b.nfe_backward > 0


def test_fpn_variant_returns_one_map_per_stage_plus_pool():
    b = make_backbone("rknet", "resnet18", width=4, n_stages=3, rk_step=0.5)
    fpn = backbone_with_fpn(b, out_channels=8)
    out = fpn(torch.randn(1, 3, 32, 32))
    assert fpn.out_channels == 8
    assert list(out) == ["0", "1", "2", "pool"]
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert b.nfe == 3 * 2 * 4  # the ODE stages ran inside the pyramid and still report their NFE


def test_bad_arguments_are_named_in_the_error():
    with pytest.raises(ValueError, match="kind='vgg'"):
        make_backbone("vgg")
    with pytest.raises(ValueError, match="depth='resnet50'"):
        make_backbone("resnet", "resnet50")
    with pytest.raises(ValueError, match="n_stages=5"):
        make_backbone("resnet", "resnet18", n_stages=5)
    with pytest.raises(ValueError, match="rk_step=2"):
        ode_stage(8, "rknet", rk_step=2)
    with pytest.raises(ValueError, match="returned_layers"):
        backbone_with_fpn(make_backbone("resnet", "chen6", width=4), returned_layers=[2])
    with pytest.raises(TypeError, match="Backbone"):
        make_faster_rcnn(torch.nn.Conv2d(3, 3, 1), 3, image_size=32)
    with pytest.raises(ValueError, match="anchor_sizes"):
        make_faster_rcnn(make_backbone("resnet", "chen6", width=4), 3, image_size=32, fpn=True)


def _fixed_batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 48, 48, generator=g) for _ in range(2)]
    for img, (x0, y0, x1, y1) in zip(images, [(4, 6, 24, 28), (20, 18, 44, 40)]):
        img[:, y0:y1, x0:x1] += 1.0  # bright squares: something to find
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 24.0, 28.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 18.0, 44.0, 40.0]]), "labels": torch.tensor([2])}]
    return images, targets


@pytest.mark.slow
@pytest.mark.parametrize("fpn", [False, True], ids=["plain", "fpn"])
@pytest.mark.parametrize("kind", BACKBONE_KINDS)
def test_faster_rcnn_accepts_each_backbone_and_training_lowers_the_loss(kind, fpn):
    torch.manual_seed(0)
    b = make_backbone(kind, "resnet18", width=4, n_stages=2, in_channels=1, stem_stride=1 if fpn else 2,
                      rk_step=0.5, rtol=1e-2, atol=1e-2)
    assert isinstance(b, Backbone)
    model = make_faster_rcnn(b, 3, image_size=48, fpn=fpn, anchor_sizes=(12, 24, 48) if fpn else (16, 32),
                             representation_size=32)
    images, targets = _fixed_batch()

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same proposal sampling each time
        return sum(model(images, targets).values())

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = loss().item()
    for _ in range(6):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.8 * first
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[0]["boxes"].shape[-1] == 4


def test_make_backbone_passes_solver_options_to_every_ode_stage():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    rk = make_backbone("rknet", "resnet18", width=4, n_stages=2, rk_step=0.25, options={"step_size": 0.5})
    rk(x)
    assert rk.nfe == 2 * 2 * 4  # the options' step size wins over rk_step: two rk4 steps per stage
    capped = make_backbone("odenet", "resnet18", width=4, n_stages=2, rtol=1e-8, atol=1e-8,
                           options={"max_num_steps": 1})
    with pytest.raises(SolverError, match="max_num_steps"):
        capped(x)
