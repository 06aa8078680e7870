"""The ADMM gradient term is added once per optimizer step, to unscaled gradients: under
bf16 autocast, under fp16 with a GradScaler, and under gradient accumulation."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision

from lightning_ssr import PruningSchedule, SSRPruning
from tests.lit import TinyClassifier, loader, trainer

LR = 0.1


class ZeroTaskLoss(TinyClassifier):
    """The task loss has zero gradient, so plain SGD must move W by exactly -lr * rho * (W - V + U)."""

    def training_step(self, batch, batch_idx):
        return (self(batch[0]) * 0.0).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


class StepProbe(Callback):
    """Compares each optimizer step's actual parameter update with the expected ADMM term."""

    def __init__(self, ssr):
        self.ssr = ssr
        self.errors = []
        self.steps = 0
        self.pending = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        aulm = self.ssr.method.aulm
        self.pending = {n: (p.detach().clone(), aulm.rho * (p.detach() - aulm.V[n] + aulm.U[n]))
                        for n, p in aulm.params.items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.pending is None:
            return
        self.steps += 1
        for name, p in self.ssr.method.aulm.params.items():
            before, term = self.pending[name]
            moved = (before - p.detach()) / LR
            self.errors.append(float((moved - term).abs().max() / term.abs().max().clamp_min(1e-12)))
        self.pending = None


PRECISIONS = {
    "fp32": {},
    "bf16-mixed": {"precision": "bf16-mixed"},
    "fp16-gradscaler": {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**12))]},
}


# (a sparsify epoch of steps that a small lam never zeroes a group in: the prune keeps every filter, as warned)
@pytest.mark.filterwarnings("ignore:pruning method 'ssr_l21' kept every filter")
@pytest.mark.parametrize("precision", sorted(PRECISIONS))
@pytest.mark.parametrize("accumulate", [1, 4])
def test_admm_term_is_added_once_to_unscaled_gradients(tmp_path, precision, accumulate):
    pl.seed_everything(0)
    ssr = SSRPruning(regularizer="l21", lam=0.1, rho=0.7,
                     schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=0, update_every_n_steps=1))
    probe = StepProbe(ssr)
    fit = trainer(tmp_path, [ssr, probe], 1, accumulate_grad_batches=accumulate, **PRECISIONS[precision])
    fit.fit(ZeroTaskLoss(), loader(n=64))
    assert probe.steps == 64 // 16 // accumulate
    # float32 round-off of (W_before - W_after) / lr is ~1e-4 relative; the term scaled by the
    # GradScaler (1/4096) or added per micro-batch (4x) would be off by O(1)
    assert max(probe.errors) < 1e-2
