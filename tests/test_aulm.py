import math

import pytest
import torch
from torch import nn

from lightning_ssr.aulm import AULM
from lightning_ssr.groups import ChannelGroup, GroupSlice


def _row_groups(param_name: str, rows: int, lam: float) -> list[ChannelGroup]:
    return [ChannelGroup(name=param_name, size=rows, slices=[GroupSlice(param_name, 0, torch.arange(rows)[:, None])],
                         out_modules=[param_name], consumers=[], lam=lam)]


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(60, 24, generator=gen, dtype=torch.float64)
    x_true = torch.zeros(6, 4, dtype=torch.float64)
    x_true[1] = torch.tensor([1.0, -2.0, 0.5, 1.0])
    x_true[4] = torch.tensor([-1.0, 0.3, 0.7, 2.0])
    b = A @ x_true.flatten() + 0.05 * torch.randn(60, generator=gen, dtype=torch.float64)
    return A, b


def _proximal_gradient(A, b, lam, iters=20000):
    """Independent reference: ISTA on 0.5||Ax - b||^2 + lam * sum_g ||x_g||."""
    step = 1.0 / torch.linalg.matrix_norm(A, ord=2) ** 2
    x = torch.zeros(24, dtype=torch.float64)
    for _ in range(iters):
        z = (x - step * A.T @ (A @ x - b)).view(6, 4)
        norms = z.norm(dim=1, keepdim=True)
        x = (z * torch.clamp(1 - step * lam / torch.clamp(norms, min=1e-300), min=0)).flatten()
    return x.view(6, 4)


def test_aulm_solves_group_lasso_least_squares_like_proximal_gradient():
    A, b = _problem()
    lam = 8.0
    reference = _proximal_gradient(A, b, lam)
    assert int((reference.norm(dim=1) > 0).sum()) in range(1, 6)  # the problem is genuinely sparse

    x = nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
    aulm = AULM({"x": x}, _row_groups("x", 6, lam), regularizer="l21", rho=20.0, tol=1e-9)
    aulm.start()
    lr = 1.0 / (torch.linalg.matrix_norm(A, ord=2).item() ** 2 + aulm.rho)
    for _ in range(400):  # outer ADMM iterations
        for _ in range(50):  # W-step by gradient descent, through the AULM gradient term
            x.grad = (A.T @ (A @ x.detach().flatten() - b)).view(6, 4)
            aulm.add_penalty_gradient()
            with torch.no_grad():
                x -= lr * x.grad
        stats = aulm.update()
    assert stats.primal_residual < 1e-6
    assert torch.max(torch.abs(aulm.V["x"] - reference)) < 1e-4
    assert torch.equal(aulm.support()["x"], reference.norm(dim=1) > 0)


def test_rho_schedule_grows_geometrically_to_the_cap():
    x = nn.Parameter(torch.randn(3, 2))
    aulm = AULM({"x": x}, _row_groups("x", 3, 0.1), rho=1.0, rho_growth=2.0, rho_max=5.0)
    aulm.start()
    used = [aulm.update().rho for _ in range(5)]
    assert used == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert aulm.rho == 5.0


def test_budget_form_keeps_exactly_k_and_hard_projection_zeroes_the_rest():
    x = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.1, 0.1]]))
    aulm = AULM({"x": x}, _row_groups("x", 4, 0.0), regularizer="l20", keep={"x": 2})
    aulm.start()
    assert aulm.surviving() == {"x": 2}
    assert torch.equal(aulm.support()["x"], torch.tensor([False, True, True, False]))
    aulm.project_()
    assert torch.equal(x.detach(), torch.tensor([[0.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 0.0]]))


def test_penalty_gradient_and_u_step_follow_the_formulas():
    x = nn.Parameter(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
    aulm = AULM({"x": x}, _row_groups("x", 2, 0.1), regularizer="l21", rho=0.5)
    aulm.start()  # V = soft threshold of W at lam/rho = 0.2; U = 0
    assert torch.allclose(aulm.V["x"], torch.tensor([[3.0, 4.0], [0.3, 0.4]]) * torch.tensor([[0.96], [0.6]]))
    x.grad = torch.zeros_like(x)
    aulm.add_penalty_gradient()
    assert torch.allclose(x.grad, 0.5 * (x.detach() - aulm.V["x"]))
    V_before = aulm.V["x"].clone()
    aulm.update()  # T = W + 0; V unchanged; U = W - V
    assert torch.allclose(aulm.V["x"], V_before)
    assert torch.allclose(aulm.U["x"], x.detach() - V_before)


def test_state_dict_round_trip_and_mismatch_errors():
    x = nn.Parameter(torch.randn(4, 3))
    aulm = AULM({"x": x}, _row_groups("x", 4, 0.3), rho=0.7, rho_growth=1.5)
    aulm.start()
    aulm.update()
    state = aulm.state_dict()
    other = AULM({"x": x}, _row_groups("x", 4, 0.3), rho=0.1)
    other.load_state_dict(state)
    assert other.rho == pytest.approx(0.7 * 1.5)
    assert torch.equal(other.V["x"], aulm.V["x"]) and torch.equal(other.U["x"], aulm.U["x"])
    y = nn.Parameter(torch.randn(5, 3))
    wrong = AULM({"x": y}, _row_groups("x", 5, 0.3))
    with pytest.raises(ValueError, match="another model"):
        wrong.load_state_dict(state)


def test_non_finite_weights_raise_a_clear_error():
    x = nn.Parameter(torch.tensor([[1.0, math.nan]]))
    aulm = AULM({"x": x}, _row_groups("x", 1, 0.1))
    with pytest.raises(FloatingPointError, match="learning rate"):
        aulm.start()


def test_bad_arguments_are_refused():
    x = nn.Parameter(torch.randn(2, 2))
    groups = _row_groups("x", 2, 0.1)
    with pytest.raises(ValueError, match="regularizer"):
        AULM({"x": x}, groups, regularizer="l1")
    with pytest.raises(ValueError, match="rho"):
        AULM({"x": x}, groups, rho=0.0)
    with pytest.raises(ValueError, match="l20"):
        AULM({"x": x}, groups, regularizer="l21", keep={"x": 1})


def test_min_keep_protects_layers_from_being_emptied():
    x = nn.Parameter(torch.full((6, 2), 0.01))
    aulm = AULM({"x": x}, _row_groups("x", 6, 10.0), regularizer="l21", rho=1.0, min_keep={"x": 3})
    aulm.start()  # the threshold (10) is far above every norm, but 3 groups survive
    assert aulm.surviving() == {"x": 3}


def test_growing_rho_rescales_the_scaled_dual():
    x = nn.Parameter(torch.randn(4, 3))
    aulm = AULM({"x": x}, _row_groups("x", 4, 0.3), rho=0.5, rho_growth=2.0)
    aulm.start()
    with torch.no_grad():
        x.add_(0.1)  # a W-step, so that W - V != 0
    V_prev = aulm.V["x"].clone()
    T_expected = x.detach() + aulm.U["x"]
    aulm.update()
    # U after the step is (U + W - V) scaled by rho_old / rho_new, so rho * U carries over
    unscaled = (T_expected - aulm.V["x"]) * 0.5
    assert torch.allclose(aulm.rho * aulm.U["x"], unscaled)
    assert aulm.rho == 1.0
    assert not torch.equal(aulm.V["x"], V_prev)
