import contextlib
import math

import pytest
import torch
from torch import nn

from lightning_ssr.app.models import build_model
from lightning_ssr.cost import channel_macs, count_cost
from lightning_ssr.methods import SSR, MethodContext, build_method
from lightning_ssr.methods.ssr import AULM, resolve_lam
from lightning_ssr.structure import ChannelGroup, GroupSlice, find_channel_groups
from lightning_ssr.structure.surgery import mask_channels


def _row_groups(param_name: str, rows: int) -> list[ChannelGroup]:
    return [ChannelGroup(name=param_name, size=rows, slices=[GroupSlice(param_name, 0, torch.arange(rows)[:, None])],
                         out_modules=[param_name], consumers=[])]


def _aulm(x, lam, name="x", **kwargs):
    """AULM over the rows of one parameter; ``lam`` is the group's regularization strength."""
    return AULM({name: x}, _row_groups(name, x.shape[0]), {name: lam}, **kwargs)


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
    aulm = _aulm(x, lam, regularizer="l21", rho=20.0, tol=1e-9)
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
    aulm = _aulm(x, 0.1, rho=1.0, rho_growth=2.0, rho_max=5.0)
    aulm.start()
    used = [aulm.update().rho for _ in range(5)]
    assert used == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert aulm.rho == 5.0


def test_budget_form_keeps_exactly_k_and_hard_projection_zeroes_the_rest():
    x = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.1, 0.1]]))
    aulm = _aulm(x, 0.0, regularizer="l20", keep={"x": 2})
    aulm.start()
    assert aulm.surviving() == {"x": 2}
    assert torch.equal(aulm.support()["x"], torch.tensor([False, True, True, False]))
    mask_channels({"x": x}, aulm.groups, aulm.support())  # the engine's masking before the rebuild
    assert torch.equal(x.detach(), torch.tensor([[0.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 0.0]]))


def test_penalty_gradient_and_u_step_follow_the_formulas():
    x = nn.Parameter(torch.tensor([[3.0, 4.0], [0.3, 0.4]]))
    aulm = _aulm(x, 0.1, regularizer="l21", rho=0.5)
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
    aulm = _aulm(x, 0.3, rho=0.7, rho_growth=1.5)
    aulm.start()
    aulm.update()
    state = aulm.state_dict()
    other = _aulm(x, 0.3, rho=0.1)
    other.load_state_dict(state)
    assert other.rho == pytest.approx(0.7 * 1.5)
    assert torch.equal(other.V["x"], aulm.V["x"]) and torch.equal(other.U["x"], aulm.U["x"])
    y = nn.Parameter(torch.randn(5, 3))
    wrong = _aulm(y, 0.3)
    with pytest.raises(ValueError, match="another model"):
        wrong.load_state_dict(state)


def test_non_finite_weights_raise_a_clear_error():
    x = nn.Parameter(torch.tensor([[1.0, math.nan]]))
    aulm = _aulm(x, 0.1)
    with pytest.raises(FloatingPointError, match="learning rate"):
        aulm.start()


def test_bad_arguments_are_refused():
    x = nn.Parameter(torch.randn(2, 2))
    groups, lam = _row_groups("x", 2), {"x": 0.1}
    with pytest.raises(ValueError, match="regularizer"):
        AULM({"x": x}, groups, lam, regularizer="l1")
    with pytest.raises(ValueError, match="rho"):
        AULM({"x": x}, groups, lam, rho=0.0)
    with pytest.raises(KeyError, match="not among the model's parameters"):
        AULM({"y": x}, groups, lam)


def test_l21_with_a_budget_soft_thresholds_the_kept_groups_and_zeroes_the_others():
    """The prox of lam * L2,1 plus "at most k groups": the k largest shrunk by lam / rho, the rest 0."""
    x = nn.Parameter(torch.tensor([[3.0, 4.0], [0.6, 0.8], [1.2, 1.6]]))
    aulm = AULM({"x": x}, _row_groups("x", 3), {"x": 0.5}, regularizer="l21", rho=1.0, keep={"x": 2})
    aulm.start()
    assert torch.allclose(aulm.V["x"], torch.tensor([[2.7, 3.6], [0.0, 0.0], [0.9, 1.2]]))
    assert aulm.surviving() == {"x": 2}


def test_min_keep_protects_layers_from_being_emptied():
    x = nn.Parameter(torch.full((6, 2), 0.01))
    aulm = _aulm(x, 10.0, regularizer="l21", rho=1.0, min_keep={"x": 3})
    aulm.start()  # the threshold (10) is far above every norm, but 3 groups survive
    assert aulm.surviving() == {"x": 3}


def test_growing_rho_rescales_the_scaled_dual():
    x = nn.Parameter(torch.randn(4, 3))
    aulm = _aulm(x, 0.3, rho=0.5, rho_growth=2.0)
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


def test_lam_is_per_group():
    x = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    y = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    groups = _row_groups("x", 2) + _row_groups("y", 2)
    aulm = AULM({"x": x, "y": y}, groups, {"x": 0.0, "y": 10.0}, regularizer="l21", rho=1.0)
    aulm.start()  # threshold lam/rho: 0 for x (kept whole), 10 for y (all but min_keep=1 zeroed)
    assert aulm.surviving() == {"x": 2, "y": 1}
    assert torch.equal(aulm.V["x"], x.detach())
    assert aulm.regularizer_value() == pytest.approx(0.0 * 2 + 10.0 * 2)  # sum_g lam_g ||W_g||


def _lenet():
    model = build_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    cost = count_cost(model, x)
    groups = find_channel_groups(model, x)
    return model, x, cost, groups


def test_lam_scaling():
    _, _, cost, groups = _lenet()
    flat = resolve_lam(groups, 0.1, "none")
    assert set(flat.values()) == {0.1}
    scaled = resolve_lam(groups, 0.1, "flops", channel_macs(groups, cost))
    assert scaled["conv1"] > scaled["conv2"] > scaled["fc1"]
    mean = sum(g.size * scaled[g.name] for g in groups) / sum(g.size for g in groups)
    assert mean == pytest.approx(0.1)
    per_channel = channel_macs(groups, cost)
    assert scaled["conv1"] / scaled["fc1"] == pytest.approx(per_channel["conv1"] / per_channel["fc1"])
    explicit = resolve_lam(groups, {"conv1": 0.4, "conv2": 0.15, "fc1": 0.02})
    assert explicit == {"conv1": 0.4, "conv2": 0.15, "fc1": 0.02}
    with pytest.raises(ValueError, match="missing"):
        resolve_lam(groups, {"conv1": 0.4})
    with pytest.raises(ValueError, match="unknown"):
        resolve_lam(groups, {"conv1": 0.4, "conv2": 0.15, "fc1": 0.02, "fc2": 1.0})
    with pytest.raises(ValueError, match="channel_macs"):
        resolve_lam(groups, 0.1, "flops")
    with pytest.raises(ValueError, match="lam_scaling"):
        resolve_lam(groups, 0.1, "params")


def _ssr_on_lenet(keep=None, **kwargs):
    model, _, cost, groups = _lenet()
    min_keep = {g.name: 1 for g in groups}
    method = SSR(**kwargs)
    method.setup(MethodContext(model=model, groups=groups, cost=cost, channel_macs=channel_macs(groups, cost),
                               keep=keep, min_keep=min_keep))
    return model, groups, method


def test_ssr_method_lifecycle_and_selection():
    keep = {"conv1": 5, "conv2": 10, "fc1": 50}
    # L2,0 with a target: the budget form, V keeps exactly the target's counts
    _, _, l20 = _ssr_on_lenet(keep=keep, regularizer="l20", rho=0.5)
    assert l20.aulm.keep == keep and l20.ready()[0] is False and l20.metrics() == {}
    assert l20.state_dict() == {}  # nothing to save before the sparsify phase
    l20.start()
    assert l20.aulm.started and l20.aulm.surviving() == keep
    stats = l20.update()
    assert set(stats) == {"primal_residual", "relative_primal_residual", "dual_residual", "rho"}
    masks = l20.select(keep)
    assert {k: int(m.sum()) for k, m in masks.items()} == keep
    assert set(l20.metrics()) == {"regularizer", "filters/conv1", "filters/conv2", "filters/fc1"}

    # L2,1 with a target: the top-k of V's group norms, whatever the threshold left
    _, groups, l21 = _ssr_on_lenet(keep=keep, regularizer="l21", lam=1e-6, rho=0.5)
    assert l21.aulm.keep is None
    l21.start()
    masks = l21.select(keep)
    for g in groups:
        norms = g.norms(l21.aulm.V)
        assert int(masks[g.name].sum()) == keep[g.name]
        assert norms[masks[g.name]].min() >= norms[~masks[g.name]].max()
    # L2,1 without a target: the method decides (V's support)
    assert all(torch.equal(m, l21.aulm.support()[n]) for n, m in l21.select(None).items())


def test_ssr_state_round_trips_through_the_method():
    _, _, method = _ssr_on_lenet(regularizer="l21", lam=1e-3, rho=0.5, rho_growth=2.0)
    method.start()
    method.update()
    state = method.state_dict()
    assert set(state) == {"aulm"} and state["aulm"]["rho"] == 1.0
    _, _, again = _ssr_on_lenet(regularizer="l21", lam=1e-3, rho=0.5, rho_growth=2.0)
    again.load_state_dict(state)
    assert again.aulm.started and again.aulm.rho == 1.0 and again.aulm.num_updates == 1
    assert all(torch.equal(again.aulm.V[n], v) for n, v in method.aulm.V.items())


def test_registered_names_build_ssr_with_their_regularizer():
    for name, reg in (("ssr_l21", "l21"), ("ssr_l20", "l20")):
        method = build_method(name, lam=0.01, rho=0.3)
        assert isinstance(method, SSR) and method.name == name and method.regularizer == reg
        assert method.sparsifies and not method.needs_target
        assert method.config()["rho"] == 0.3 and method.config()["regularizer"] == reg


class ThreeConvs(nn.Module):
    """c1 -> c2 -> c3 (16 filters each, ReLU between) -> mean -> fc; c1 may be frozen."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(i, 16, 3, padding=1) for i in (3, 16, 16))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("method", ["ssr_l20", "ssr_l21"])
def test_a_frozen_layer_is_allocated_by_its_loss_value_not_cut_first(tmp_path, method):
    """Its weights have no gradient, so its channels' loss values were zero and the learned
    allocation cut the frozen c1 to 2 of 16 where, trained, it keeps 12 or 13 (probe): the values
    now come from the consumers' weights that read it (c2's columns), which train."""
    import lightning.pytorch as pl

    from lightning_ssr import Pruning, PruningSchedule
    from tests.lit import NetClassifier, trainer

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, 16, 16, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    class FreezeC1(pl.Callback):  # frozen after the set-up, as BackboneFinetuning's schedule does (review)
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                pl_module.net.c1.requires_grad_(False)

    kept = {}
    for frozen in (False, True, "later"):
        pl.seed_everything(0)
        net = ThreeConvs()
        net.c1.requires_grad_(frozen is not True)
        schedule = PruningSchedule(sparsify_epochs=3, finetune_epochs=1, update_every_n_steps=1)
        callbacks = [Pruning(method, target={"macs": 0.5}, schedule=schedule, verbose=False)]
        said = {True: "frozen", "later": "net.c1 was frozen or trainable when the pruning set up"}.get(frozen)
        with pytest.warns(UserWarning, match=said) if said else contextlib.nullcontext():
            trainer(tmp_path, callbacks + [FreezeC1()] * (frozen == "later"), schedule.total_epochs).fit(
                NetClassifier(net), data)
        kept[frozen] = net.c1.out_channels
    assert kept[False] >= 8 and abs(kept[True] - kept[False]) <= 4 and abs(kept["later"] - kept[False]) <= 4, kept
