"""The basic layers: ODEBlock, the time-conditioned layers, and ANODE augmentation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neuralode import SolveStats
from neuralode.nn import (
    Augment,
    ConcatConv2d,
    ConcatLinear,
    ConcatSquashLinear,
    DropAugmented,
    ODEBlock,
    augment,
    drop_augmented,
)

GRADIENTS = ("direct", "adjoint", "adjoint-seminorm", "checkpoint")


class Decay(nn.Module):
    """dz/dt = -k z, exact solution z0 exp(-k t); k is a parameter."""

    def __init__(self, k: float = 0.7):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k, dtype=torch.float64))

    def forward(self, t, z):
        return -self.k * z


class MLP(nn.Module):
    def __init__(self, dim: int = 3, hidden: int = 16):
        super().__init__()
        self.l1 = ConcatLinear(dim, hidden)
        self.l2 = ConcatLinear(hidden, dim)

    def forward(self, t, z):
        return self.l2(t, torch.tanh(self.l1(t, z)))


# ----------------------------------------------------------------------------- ODEBlock


def test_block_maps_z0_to_the_final_state_with_the_input_shape():
    block = ODEBlock(MLP(3), gradient="direct")
    z0 = torch.randn(5, 3)
    assert block(z0).shape == (5, 3)


def test_block_solves_the_field_accurately_enough_for_its_tolerance():
    block = ODEBlock(Decay(0.7), t=(0.0, 2.0), rtol=1e-8, atol=1e-10, gradient="direct")
    z0 = torch.linspace(-1, 1, 7, dtype=torch.float64).reshape(7, 1)
    torch.testing.assert_close(block(z0), z0 * math.exp(-1.4), rtol=1e-6, atol=1e-8)


def test_block_returns_the_trajectory_at_given_times_with_a_leading_time_dim():
    block = ODEBlock(Decay(0.5), rtol=1e-8, atol=1e-10, gradient="direct")
    z0 = torch.ones(4, 2, dtype=torch.float64)
    times = torch.tensor([0.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    traj = block(z0, t=times)
    assert traj.shape == (4, 4, 2)
    torch.testing.assert_close(traj[0], z0)  # starts at z0
    torch.testing.assert_close(traj[:, 0, 0], torch.exp(-0.5 * times), rtol=1e-6, atol=1e-8)


def test_block_with_image_shaped_state_and_conv_field():
    field = ConcatConv2d(4, 4)
    block = ODEBlock(lambda_module(field), gradient="direct")
    z0 = torch.randn(2, 4, 6, 6)
    assert block(z0).shape == (2, 4, 6, 6)


def lambda_module(layer: nn.Module) -> nn.Module:
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, t, z):
            return torch.tanh(self.layer(t, z))

    return Wrap()


def test_block_exposes_the_last_calls_statistics_and_nfe():
    block = ODEBlock(MLP(3), gradient="direct")
    assert block.stats is None and block.nfe == 0 and block.nfe_backward == 0
    block(torch.randn(8, 3))
    assert isinstance(block.stats, SolveStats)
    assert block.nfe == block.stats.nfe > 0
    assert block.stats.n_accepted >= 1
    # dopri5 is FSAL: 6 new evaluations per step, plus the initial evaluation(s)
    assert block.nfe >= 6 * (block.stats.n_accepted + block.stats.n_rejected)


def test_tighter_tolerance_costs_more_evaluations():
    torch.manual_seed(1)
    func = MLP(3)
    z0 = torch.randn(8, 3)
    loose = ODEBlock(func, t=(0.0, 5.0), rtol=1e-3, atol=1e-3, gradient="direct")
    tight = ODEBlock(func, t=(0.0, 5.0), rtol=1e-7, atol=1e-7, gradient="direct")
    loose(z0)
    tight(z0)
    assert tight.nfe > loose.nfe


def test_block_t_is_validated():
    with pytest.raises(ValueError, match="at least a start and an end"):
        ODEBlock(MLP(3), t=(1.0,))


def test_block_t_is_a_buffer_that_moves_with_the_module():
    block = ODEBlock(MLP(3), t=(0.0, 2.0)).double()
    assert block.t.dtype == torch.float64 and "t" not in block.state_dict()


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_each_gradient_mode_is_accepted_and_gives_the_direct_gradient(gradient):
    torch.manual_seed(0)
    func = MLP(3).double()
    z0 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def grads(mode):
        block = ODEBlock(func, t=(0.0, 1.0), rtol=1e-9, atol=1e-9, gradient=mode)
        func.zero_grad()
        z0.grad = None
        out = block(z0)
        (out**2).sum().backward()
        return out.detach(), z0.grad.clone(), [p.grad.clone() for p in func.parameters()], block

    out_ref, gz_ref, gp_ref, _ = grads("direct")
    out, gz, gp, block = grads(gradient)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(gz, gz_ref, rtol=1e-5, atol=1e-7)
    for a, b in zip(gp, gp_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert block.nfe > 0
    if gradient.startswith("adjoint"):  # the backward solve is counted once backward has run
        assert block.nfe_backward > 0


def test_unknown_gradient_is_rejected_with_the_valid_names():
    block = ODEBlock(MLP(3), gradient="backsolve")
    with pytest.raises(ValueError, match="unknown gradient 'backsolve'.*direct"):
        block(torch.randn(2, 3))


def test_block_parameters_are_the_fields():
    func = MLP(3)
    block = ODEBlock(func)
    assert {id(p) for p in block.parameters()} == {id(p) for p in func.parameters()}


# ----------------------------------------------------------------------------- time-conditioned layers


@pytest.mark.parametrize("layer_cls", [ConcatLinear, ConcatSquashLinear])
def test_linear_layers_map_features_and_keep_batch_dims(layer_cls):
    layer = layer_cls(3, 5)
    assert layer(torch.tensor(0.3), torch.randn(7, 3)).shape == (7, 5)
    assert layer(0.3, torch.randn(7, 3)).shape == (7, 5)  # a plain number works too


@pytest.mark.parametrize("layer_cls", [ConcatLinear, ConcatSquashLinear])
def test_linear_layers_depend_on_time(layer_cls):
    torch.manual_seed(0)
    layer = layer_cls(3, 5)
    x = torch.randn(7, 3)
    a, b = layer(torch.tensor(0.0), x), layer(torch.tensor(1.0), x)
    assert not torch.allclose(a, b)
    # ... through a gradient that reaches t
    t = torch.tensor(0.4, requires_grad=True)
    layer(t, x).sum().backward()
    assert t.grad is not None and t.grad != 0


def test_concat_linear_is_a_linear_map_of_t_and_x():
    layer = ConcatLinear(2, 3)
    x = torch.randn(4, 2)
    t = 0.7
    expected = x @ layer.linear.weight[:, 1:].T + t * layer.linear.weight[:, 0] + layer.linear.bias
    torch.testing.assert_close(layer(t, x), expected)


def test_concat_squash_linear_at_fixed_t_is_an_affine_map_of_x():
    layer = ConcatSquashLinear(2, 3)
    t = torch.tensor(0.25)
    x, y = torch.randn(4, 2), torch.randn(4, 2)
    zero = layer(t, torch.zeros(1, 2))
    # f(x + y) - f(0) = (f(x) - f(0)) + (f(y) - f(0))
    torch.testing.assert_close(layer(t, x + y) - zero, (layer(t, x) - zero) + (layer(t, y) - zero))


def test_concat_conv2d_shapes_stride_and_time_dependence():
    torch.manual_seed(0)
    layer = ConcatConv2d(3, 8)
    x = torch.randn(2, 3, 10, 10)
    assert layer(torch.tensor(0.0), x).shape == (2, 8, 10, 10)
    assert ConcatConv2d(3, 8, ksize=4, stride=2, padding=1)(0.0, x).shape == (2, 8, 5, 5)
    assert ConcatConv2d(3, 8, ksize=4, stride=2, padding=1, transpose=True)(0.0, x).shape == (2, 8, 20, 20)
    assert not torch.allclose(layer(0.0, x), layer(1.0, x))
    # the time is one constant extra input channel
    assert layer.conv.weight.shape[1] == 4


def test_time_conditioned_layers_follow_dtype():
    layer = ConcatSquashLinear(3, 2).double()
    assert layer(torch.tensor(0.5, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)).dtype == torch.float64


# ----------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("shape", [(5, 2), (3, 4, 6, 6)])
@pytest.mark.parametrize("augment_dim", [0, 1, 5])
def test_augment_then_drop_returns_the_input(shape, augment_dim):
    x = torch.randn(*shape)
    torch.testing.assert_close(drop_augmented(augment(x, augment_dim), augment_dim), x)
    torch.testing.assert_close(DropAugmented(augment_dim)(Augment(augment_dim)(x)), x)


@pytest.mark.parametrize("shape", [(5, 2), (3, 4, 6, 6)])
def test_augment_pads_the_feature_dimension_with_zeros(shape):
    x = torch.randn(*shape)
    z = augment(x, 3)
    assert z.shape == (shape[0], shape[1] + 3, *shape[2:])
    torch.testing.assert_close(z[:, : shape[1]], x)
    assert torch.equal(z[:, shape[1]:], torch.zeros_like(z[:, shape[1]:]))
    assert z.dtype == x.dtype


def test_augment_passes_gradients_to_the_input_only():
    x = torch.randn(4, 2, requires_grad=True)
    augment(x, 3).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


def test_negative_augment_dim_is_rejected():
    with pytest.raises(ValueError, match="augment_dim must be >= 0"):
        augment(torch.randn(2, 2), -1)
    with pytest.raises(ValueError, match="augment_dim must be >= 0"):
        Augment(-2)


def test_anode_solves_in_the_augmented_space_and_reads_back_the_data_dims():
    torch.manual_seed(0)
    model = nn.Sequential(Augment(3), ODEBlock(MLP(5), gradient="direct"), DropAugmented(3))
    x = torch.randn(6, 2)
    out = model(x)
    assert out.shape == (6, 2)
    # the augmented coordinates moved away from zero, i.e. the field used them
    full = model[1](augment(x, 3))
    assert full[:, 2:].abs().max() > 0
