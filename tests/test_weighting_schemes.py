"""Each weighting scheme's maths on cases small enough to work out by hand (a pack of one group)."""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np
import pytest
import torch

from mtl_search.weighting import (
    DWA,
    IMTL,
    RLW,
    CAGrad,
    GradNorm,
    NashMTL,
    PCGrad,
    SharedGradients,
    Static,
    Uncertainty,
    make_weighting,
)

TASKS = ["a", "b", "c"]


class Grads(NamedTuple):
    """One group's task gradients ``flat`` (``[T, P]``): the pack of one group these tests weigh."""

    flat: torch.Tensor
    last_layer: slice


def shared(g: Grads) -> SharedGradients:
    """As the trainer hands them to a scheme: a pack of one steered group."""
    return SharedGradients(g.flat[None], torch.tensor([0]), g.last_layer)


def grads(*rows: list[float], last_layer: slice | None = None) -> Grads:
    flat = torch.tensor(rows, dtype=torch.float64)
    return Grads(flat, last_layer or slice(0, flat.shape[1]))


def random_grads(seed: int, tasks: int = 3, size: int = 6) -> Grads:
    flat = torch.randn(tasks, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    flat[1] = -0.8 * flat[0] + 0.5 * flat[1]  # a conflict
    return Grads(flat, slice(0, size))


# --------------------------------------------------------------------------- loss-level schemes


def test_equal_is_the_sum():
    assert make_weighting("equal", TASKS).combine(torch.tensor([[1.0, 2.0, 3.0]])).item() == 6.0


def test_static_weights_are_normalised_to_sum_to_the_number_of_tasks():
    scheme = Static(TASKS, weight=(1.0, 2.0, 5.0))
    assert scheme.weights()[0].tolist() == pytest.approx([0.375, 0.75, 1.875])
    assert scheme.weights()[0].sum().item() == pytest.approx(3.0)
    assert scheme.combine(torch.tensor([[1.0, 1.0, 2.0]])).item() == pytest.approx(0.375 + 0.75 + 3.75)
    # Only the ratios matter; all equal is `equal`.
    assert torch.allclose(Static(TASKS, weight=(10.0, 20.0, 50.0)).weights()[0], scheme.weights()[0])
    assert Static(TASKS).weights()[0].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="one weight per task"):
        Static(TASKS, weight=(1.0, 2.0))
    with pytest.raises(ValueError, match="must be a number > 0"):
        Static(TASKS, weight=(1.0, 0.0, 1.0))


def test_uncertainty_matches_the_closed_form():
    scheme = Uncertainty(TASKS)
    log_vars = [0.0, math.log(2.0), -1.0]
    with torch.no_grad():
        scheme.log_vars.copy_(torch.tensor(log_vars))
    expected = sum(0.5 * math.exp(-s) * loss + 0.5 * s for s, loss in zip(log_vars, [1, 2, 3], strict=True))
    assert scheme.combine(torch.tensor([[1.0, 2.0, 3.0]])).item() == pytest.approx(expected)
    assert scheme.weights()[0].tolist() == pytest.approx([0.5, 0.25, 0.5 * math.e])


def test_uncertainty_learns_smaller_weight_for_larger_loss():
    scheme = Uncertainty(["small", "large"])
    optimiser = torch.optim.SGD(scheme.parameters(), lr=0.1)
    for _ in range(200):
        optimiser.zero_grad()
        scheme.combine(torch.tensor([[0.1, 10.0]])).backward()
        optimiser.step()
    small, large = scheme.weights()[0].tolist()
    # The optimum is s_i = log L_i, i.e. weight 0.5 / L_i.
    assert small == pytest.approx(0.5 / 0.1, rel=0.05) and large == pytest.approx(0.5 / 10.0, rel=0.05)


def test_dwa_follows_the_formula_from_stored_loss_ratios():
    scheme = DWA(TASKS, temperature=2.0)
    assert scheme.weights()[0].tolist() == [1.0, 1.0, 1.0]
    scheme.end_epoch(torch.tensor([[1.0, 1.0, 1.0]]))
    assert scheme.weights()[0].tolist() == [1.0, 1.0, 1.0]  # still the first two epochs
    scheme.end_epoch(torch.tensor([[0.5, 1.0, 2.0]]))
    ratios = torch.tensor([0.5, 1.0, 2.0])
    expected = 3 * torch.exp(ratios / 2) / torch.exp(ratios / 2).sum()
    assert scheme.weights()[0].tolist() == pytest.approx(expected.tolist())
    assert scheme.weights()[0].sum().item() == pytest.approx(3.0)
    assert scheme.combine(torch.tensor([[1.0, 1.0, 1.0]])).item() == pytest.approx(3.0)
    scheme.end_epoch(torch.tensor([[0.5, 0.5, 2.0]]))  # ratios now use the last two epochs only
    ratios = torch.tensor([1.0, 0.5, 1.0])
    expected = 3 * torch.exp(ratios / 2) / torch.exp(ratios / 2).sum()
    assert scheme.weights()[0].tolist() == pytest.approx(expected.tolist())


def test_dwa_temperature_flattens_the_weights():
    sharp, flat = DWA(TASKS, temperature=0.5), DWA(TASKS, temperature=50.0)
    for scheme in (sharp, flat):
        scheme.end_epoch(torch.tensor([[1.0, 1.0, 1.0]]))
        scheme.end_epoch(torch.tensor([[0.5, 1.0, 2.0]]))
    assert sharp.weights()[0].max() > flat.weights()[0].max() > 1.0
    assert flat.weights()[0].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=0.05)


def test_rlw_weights_are_positive_sum_to_t_vary_and_are_seeded():
    def draws(seed: int) -> list[list[float]]:
        scheme = RLW(TASKS, seed=seed)
        out = []
        for _ in range(5):
            losses = torch.tensor([1.0, 2.0, 3.0])
            total = scheme.combine(losses)
            weights = scheme.weights()[0]
            assert torch.all(weights > 0) and weights.sum().item() == pytest.approx(3.0)
            assert total.item() == pytest.approx(float(weights @ losses))
            out.append(weights.tolist())
        return out

    first = draws(0)
    assert len({tuple(w) for w in first}) == 5  # a fresh draw every step
    assert draws(0) == first and draws(1) != first


def test_rlw_draws_are_a_softmax_of_standard_normals():
    scheme = RLW(["a", "b"], seed=0)
    weights = torch.stack([scheme.sample() for _ in range(4000)])
    # w_a / 2 = sigmoid(z_a - z_b) with z_a - z_b ~ N(0, 2): mean 1/2 by symmetry.
    assert weights[:, 0].mean().item() == pytest.approx(1.0, abs=0.03)
    assert weights.min() > 0 and weights.max() < 2


# --------------------------------------------------------------------------- PCGrad


def test_pcgrad_projects_a_conflicting_gradient_onto_the_normal_plane():
    scheme = PCGrad(["a", "b"])
    g = grads([1.0, 0.0], [-1.0, 1.0])  # g_a . g_b = -1 < 0
    coefficients = scheme.projections(0, g.flat @ g.flat.T)
    projected = coefficients @ g.flat
    # g_a' = g_a - (g_a . g_b / |g_b|^2) g_b = (0.5, 0.5); g_b' = g_b - (g_b . g_a / |g_a|^2) g_a = (0, 1)
    assert projected.tolist() == [[0.5, 0.5], [0.0, 1.0]]
    assert float(projected[0] @ g.flat[1]) == pytest.approx(0.0) and float(projected[1] @ g.flat[0]) == 0.0
    direction = scheme.shared_gradient(torch.ones(1, 2), shared(g))[0]
    assert direction.tolist() == pytest.approx([0.5, 1.5])
    assert scheme.weights()[0].tolist() == pytest.approx([2.0, 1.5])  # d = 2 g_a + 1.5 g_b


def test_pcgrad_leaves_non_conflicting_gradients_alone():
    scheme = PCGrad(TASKS)
    g = grads([1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0])  # pairwise dot products >= 0
    direction = scheme.shared_gradient(torch.ones(1, 3), shared(g))[0]
    assert direction.tolist() == [2.0, 1.0, 2.0]
    assert scheme.weights()[0].tolist() == [1.0, 1.0, 1.0]


def test_pcgrad_random_order_is_seeded():
    g = random_grads(0, tasks=4)
    # The order matters once three gradients conflict; the seed fixes it.
    flat = g.flat.clone()
    flat[2] = -0.5 * flat[0] - 0.5 * flat[1] + 0.2 * flat[2]
    g = Grads(flat, g.last_layer)
    runs = {seed: PCGrad(list("abcd"), seed=seed).shared_gradient(torch.ones(1, 4), shared(g))[0]
            for seed in range(6)}
    assert torch.equal(runs[0], PCGrad(list("abcd"), seed=0).shared_gradient(torch.ones(1, 4), shared(g))[0])
    assert len({tuple(d.tolist()) for d in runs.values()}) > 1


# --------------------------------------------------------------------------- GradNorm


def test_gradnorm_moves_weight_toward_the_slower_task():
    scheme = GradNorm(["slow", "fast"], alpha=1.5, lr=0.05)
    g = grads([1.0, 0.0, 5.0], [0.0, 1.0, -3.0], last_layer=slice(0, 2))  # equal norms on the last layer
    first = scheme.shared_gradient(torch.tensor([[1.0, 1.0]]), shared(g))[0]  # L(0)
    assert first.tolist() == pytest.approx((g.flat[0] + g.flat[1]).tolist())  # step 1 trains with w = 1
    assert scheme.weights()[0].tolist() == [1.0, 1.0]
    for _ in range(5):
        scheme.shared_gradient(torch.tensor([[1.0, 0.5]]), shared(g))  # "fast" halved its loss, "slow" did not
    slow, fast = scheme.weights()[0].tolist()
    assert slow > 1.0 > fast and slow + fast == pytest.approx(2.0)
    # The network's loss uses this step's weights.
    assert scheme.combine(torch.tensor([[1.0, 2.0]])).item() == pytest.approx(slow + 2 * fast)


def test_gradnorm_uses_only_the_last_shared_layer():
    # Equal training rates and alpha = 0: the weights balance G_i = w_i |grad_W L_i|, W = the last layer.
    scheme = GradNorm(["a", "b"], alpha=0.0, lr=0.01)
    g = grads([2.0, 0.0, 100.0], [0.0, 1.0, 0.0], last_layer=slice(0, 2))  # |grad_W|: 2 and 1
    for _ in range(400):
        scheme.shared_gradient(torch.tensor([[1.0, 1.0]]), shared(g))
    # Balance: 2 w_a = w_b with w_a + w_b = 2. Plain sign steps oscillate within about lr.
    assert scheme.weights()[0].tolist() == pytest.approx([2 / 3, 4 / 3], abs=0.03)


def test_gradnorm_weights_are_not_trained_by_the_task_loss():
    scheme = GradNorm(TASKS)
    assert list(scheme.parameters()) == []


# --------------------------------------------------------------------------- CAGrad


def test_cagrad_with_c_zero_is_the_average_gradient():
    g = random_grads(1)
    direction = CAGrad(TASKS, c=0.0).shared_gradient(torch.ones(1, 3), shared(g))[0]
    # On the scale of `equal`: T times the average, i.e. the sum.
    assert torch.allclose(direction, 3 * g.flat.mean(dim=0))


@pytest.mark.parametrize("seed", range(5))
def test_cagrad_is_no_worse_than_the_average_for_the_worst_task_and_stays_in_the_ball(seed: int):
    c = 0.5
    g = random_grads(seed)
    scheme = CAGrad(TASKS, c=c)
    d = scheme.shared_gradient(torch.ones(1, 3), shared(g))[0] / 3  # back to the paper's scale
    average = g.flat.mean(dim=0)
    worst_average = (g.flat @ average).min().item()
    worst = (g.flat @ d).min().item()
    assert worst >= worst_average - 1e-9
    assert (d - average).norm().item() == pytest.approx(c * average.norm().item(), rel=1e-6)
    # The dual optimum: no point of a fine grid on the simplex does better.
    dots = (g.flat @ g.flat.T).numpy()
    mean_dots = dots.mean(axis=1)
    radius = c * math.sqrt(mean_dots.mean())

    def dual(w: np.ndarray) -> float:
        return float(w @ mean_dots) + radius * math.sqrt(max(float(w @ dots @ w), 0.0))

    found = scheme._dual[0].numpy()
    grid = [np.array([i, j, 100 - i - j]) / 100 for i, j in itertools.product(range(101), repeat=2) if i + j <= 100]
    assert dual(found) <= min(dual(w) for w in grid) + 1e-9
    # ... and the primal: the worst task's improvement equals the dual's value (strong duality).
    assert worst == pytest.approx(dual(found), rel=1e-5, abs=1e-9)


def test_cagrad_weights_are_the_coefficients_of_the_update():
    g = random_grads(2)
    scheme = CAGrad(TASKS, c=0.4)
    direction = scheme.shared_gradient(torch.ones(1, 3), shared(g))[0]
    weights = scheme.weights()[0].double()
    assert torch.allclose(direction, weights @ g.flat, atol=1e-5)
    assert torch.all(weights >= 1.0)  # 1 + T * lambda * w*, w* on the simplex


# --------------------------------------------------------------------------- IMTL-G


@pytest.mark.parametrize("seed", range(5))
def test_imtl_aggregate_has_equal_projections_on_every_unit_gradient(seed: int):
    g = random_grads(seed, tasks=3, size=8)
    g.flat[2] *= 30.0  # very different sizes
    scheme = IMTL(TASKS)
    d = scheme.shared_gradient(torch.ones(1, 3), shared(g))[0]
    units = g.flat / g.flat.norm(dim=1, keepdim=True)
    projections = units @ d
    assert torch.allclose(projections, projections.mean().expand(3), rtol=1e-6)
    assert projections.mean() > 0
    assert scheme.weights()[0].sum().item() == pytest.approx(3.0, rel=1e-6)


def test_imtl_balances_two_orthogonal_gradients_of_different_size():
    scheme = IMTL(["a", "b"])
    d = scheme.shared_gradient(torch.ones(1, 2), shared(grads([4.0, 0.0], [0.0, 1.0])))[0]
    # Equal projections on (1,0) and (0,1): d = (x, x); alpha = (1/5, 4/5) * 2 on the sum scale.
    assert d.tolist() == pytest.approx([1.6, 1.6])
    assert scheme.weights()[0].tolist() == pytest.approx([0.4, 1.6])


def test_imtl_gives_a_zero_gradient_no_weight():
    scheme = IMTL(TASKS)
    scheme.shared_gradient(torch.ones(1, 3), shared(grads([1.0, 0.0], [0.0, 0.0], [0.0, 2.0])))
    a, b, c = scheme.weights()[0].tolist()
    assert b == 0.0 and a == pytest.approx(2 * c) and a + c == pytest.approx(3.0)


# --------------------------------------------------------------------------- Nash-MTL


@pytest.mark.parametrize("seed", range(5))
def test_nash_weights_solve_the_bargaining_equation(seed: int):
    g = random_grads(seed, size=8)
    scheme = NashMTL(TASKS)
    d = scheme.shared_gradient(torch.ones(1, 3), shared(g))[0]
    alpha = scheme.weights()[0].double()
    dots = g.flat @ g.flat.T
    dots = dots / dots.norm()
    assert torch.all(alpha > 0)
    assert torch.allclose(dots @ alpha, 1 / alpha, rtol=1e-5)
    assert torch.allclose(d, alpha @ g.flat, rtol=1e-5)
    # Every task improves along the bargaining direction: g_i . d = alpha_i^-1 * scale > 0.
    assert torch.all(g.flat @ d > 0)


def test_nash_weights_for_orthogonal_gradients_and_scale_invariance():
    scheme = NashMTL(TASKS)
    scheme.shared_gradient(torch.ones(1, 3), shared(grads([2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0])))
    assert scheme.weights()[0].tolist() == pytest.approx([3 ** 0.25] * 3, rel=1e-6)
    g = random_grads(3)
    small, large = NashMTL(TASKS), NashMTL(TASKS)
    small.shared_gradient(torch.ones(1, 3), shared(g))
    large.shared_gradient(torch.ones(1, 3), shared(Grads(g.flat * 1000, g.last_layer)))
    assert torch.allclose(small.weights()[0], large.weights()[0], rtol=1e-5)


def test_nash_keeps_its_weights_when_no_bargaining_solution_exists():
    scheme = NashMTL(["a", "b"])
    scheme.shared_gradient(torch.ones(1, 2), shared(grads([1.0, 0.0], [0.0, 3.0])))
    before = scheme.weights()[0]
    scheme.shared_gradient(torch.ones(1, 2), shared(grads([1.0, 0.0], [-1.0, 0.0])))  # exactly opposite
    assert torch.equal(scheme.weights()[0], before)
