"""A small SSRPruning fit, run as a script so that Lightning's DDP launcher can start it.

    python tests/ddp_job.py OUT_DIR DEVICES {residual,lenet,latency,method_latency,fails_on_rank_1} [--spawn]

Each rank writes OUT_DIR/rank<r>.pt with its final state dict, plan and loss history.
Used by tests/test_ddp.py; 64 samples, global batch 16 whatever DEVICES is. "residual" has
BatchNorm, whose batch statistics are per rank (SyncBatchNorm needs GPUs), so only "lenet"
(no BN) can match a single-process run step for step. "lenet" trains in float64
(precision="64-true"): the two runs then differ only by float64 rounding in the order of the
gradient sums, far below any real difference (see tests/test_ddp.py). "latency" prunes with L1 to
a latency target; "fails_on_rank_1" with a method whose after_rebuild fails on rank 1 only.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_ssr import Pruning, PruningSchedule, SSRPruning
from lightning_ssr.app.models import build_model
from tests.lit import TinyClassifier


class _DataModule(pl.LightningDataModule):
    def __init__(self, data, batch_size):
        super().__init__()
        self.data, self.batch_size = data, batch_size

    def train_dataloader(self):
        # called once the process group exists: each rank takes every other sample, in order
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        sampler = DistributedSampler(self.data, shuffle=False) if distributed else None
        return DataLoader(self.data, batch_size=self.batch_size, sampler=sampler, shuffle=False)


def _fails_on_rank_1():
    """L1, whose after_rebuild fails on rank 1 only (after the set-up's rehearsal on a copy)."""
    from lightning_ssr.methods.oneshot import L1

    class FailsOnRank1(L1):
        calls = 0

        def after_rebuild(self, model, plan):
            FailsOnRank1.calls += 1
            if FailsOnRank1.calls > 1 and torch.distributed.get_rank() == 1:
                raise RuntimeError("a failure on rank 1 only")
            return super().after_rebuild(model, plan)

    return FailsOnRank1()


def main(out_dir: str, devices: int, kind: str, spawn: bool = False, by_name: bool = False) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    gen = torch.Generator().manual_seed(0)
    shape = (1, 28, 28) if kind == "lenet" else (3, 16, 16)
    data = TensorDataset(torch.randn(64, *shape, generator=gen), torch.randint(0, 5, (64,), generator=gen))
    model = TinyClassifier()
    if kind == "lenet":
        model.backbone = build_model("lenet5", in_channels=1, num_classes=5, input_size=28)
    schedule = PruningSchedule(warmup_epochs=1, sparsify_epochs=2, finetune_epochs=2, update_every_n_steps=2,
                               stop_early=False)
    ssr = (Pruning("ssr_l20", method_kwargs={"rho": 0.5}, target={"macs": 0.4}, schedule=schedule) if by_name else
           SSRPruning(regularizer="l20", flops_budget=0.4, rho=0.5, schedule=schedule))
    if kind in ("latency", "fails_on_rank_1"):  # (a target the dense model meets: the prune times it all the same)
        one_shot = PruningSchedule(warmup_epochs=1, sparsify_epochs=0, finetune_epochs=1)
        ssr = (Pruning("l1", target={"latency": 1000.0, "batch_size": 8}, schedule=one_shot) if kind == "latency"
               else Pruning(_fails_on_rank_1(), target={"macs": 0.5}, schedule=one_shot))
    if kind == "method_latency":  # (the structure the method learns, steered by a latency table)
        ssr = Pruning("ssr_l20", method_kwargs={"rho": 0.5}, target={"latency": 1000.0, "batch_size": 8},
                      schedule=schedule)
    strategy = "auto" if devices == 1 else DDPStrategy(start_method="spawn" if spawn else "popen")
    trainer = pl.Trainer(max_epochs=ssr.schedule.total_epochs, accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                         precision="64-true" if kind == "lenet" else "32-true",
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         deterministic=True, use_distributed_sampler=False, callbacks=[ssr])
    trainer.fit(model, datamodule=_DataModule(data, 16 // devices))
    torch.save({"state_dict": model.state_dict(), "plan": ssr.plan.to_dict(), "events": ssr.events,
                "losses": model.losses, "table_dense_ms": getattr(ssr.engine._latency_table, "dense_ms", None),
                "world_size": trainer.world_size},
               Path(out_dir) / f"rank{trainer.global_rank}.pt")
    if torch.distributed.is_initialized():  # gloo's threads left running aborted the exit now and then, under load
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], "--spawn" in sys.argv, "--by-name" in sys.argv)
