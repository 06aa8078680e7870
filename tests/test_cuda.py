"""The callback end to end on CUDA, and rebuild equivalence there (skipped without a GPU)."""

import copy

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_ssr import Pruning, PruningSchedule
from lightning_ssr.app.models import build_model
from lightning_ssr.structure import find_channel_groups, prune_channels
from lightning_ssr.structure.surgery import _outputs, check_outputs, mask_channels
from tests.numerics import assert_same_function, unit_roundoff

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none is visible to torch)")]

MODELS = [("lenet5", 1, 28), ("resnet20", 3, 32), ("mobilenetv2", 3, 32)]


class Lit(pl.LightningModule):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name, channels, size", MODELS, ids=[m[0] for m in MODELS])
def test_callback_end_to_end_on_cuda(tmp_path, name, channels, size, precision):
    torch.manual_seed(0)
    model = Lit(build_model(name, in_channels=channels, num_classes=10, input_size=size))
    data = DataLoader(TensorDataset(torch.randn(64, channels, size, size), torch.randint(0, 10, (64,))),
                      batch_size=16)
    callback = Pruning("ssr_l20", target={"macs": 0.5}, method_kwargs={"rho": 0.5}, verbose=False,
                       schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=2))
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision=precision, max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(model, data)
    assert callback.result.pruned["macs"] <= 0.5 * callback.result.dense["macs"] * 1.001
    assert all(p.is_cuda and torch.isfinite(p).all() for p in model.parameters())
    opt = trainer.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name, channels, size", MODELS, ids=[m[0] for m in MODELS])
def test_masked_equals_rebuilt_on_cuda(name, channels, size, dtype):
    """The rebuild check passes on the GPU (TF32 on, as by default), and the rebuilt model is as
    close to the exact (float64) outputs as the masked model is, in float32 (TF32) and under
    autocast: both carry the same kind of rounding, the rebuilt one over fewer terms."""
    torch.manual_seed(0)
    net = build_model(name, in_channels=channels, num_classes=10, input_size=size).cuda().eval()
    example = torch.randn(2, channels, size, size, device="cuda")
    groups = find_channel_groups(net, example)
    kept = {g.name: list(range(0, g.size, 2)) for g in groups}
    masks = {}
    for g in groups:
        m = torch.zeros(g.size, dtype=torch.bool)
        m[kept[g.name]] = True
        masks[g.name] = m
    masked = copy.deepcopy(net)
    mask_channels(dict(masked.named_parameters()), groups, masks)
    prune_channels(net, example, kept)  # checks masked == rebuilt itself (in float64)
    x = torch.randn(8, channels, size, size, device="cuda")
    assert_same_function(masked, net, x)
    exact = check_outputs(masked, x, "float64")[0][0]
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        ref, out = _outputs(masked, x)[0].double(), _outputs(net, x)[0].double()
    scale = max(1.0, float(exact.abs().max()))
    masked_error, rebuilt_error = float((ref - exact).abs().max()), float((out - exact).abs().max())
    # a wrong mapping moves outputs by O(scale); rounding of the same kind stays within a few times
    # the masked model's own error (floor: 16 unit round-offs of the autocast dtype)
    assert rebuilt_error <= 4 * masked_error + 16 * unit_roundoff(dtype) * scale


def test_a_method_that_makes_its_tensors_on_the_gpu_is_rehearsed_there_before_training():
    """The command's checks run before its dense model trains, on a CPU copy: a method of one's own
    that makes its tensors on the GPU the fit trains on was refused there, though the fit would run."""
    from lightning_ssr.methods import PruningMethod, top_k_masks

    class OnTheGpu(PruningMethod):
        name = "on_the_gpu"

        def setup(self, context):
            super().setup(context)
            self.scale = torch.ones(1, device="cuda")

        def select(self, keep):
            params = dict(self.context.model.named_parameters())
            scores = {g.name: (params[g.name + ".weight"].detach().flatten(1).norm(dim=1) * self.scale).cpu()
                      for g in self.context.groups}
            return top_k_masks(scores, keep)

    torch.manual_seed(0)
    model = build_model("lenet5", in_channels=1, num_classes=10, input_size=28)
    example = torch.randn(2, 1, 28, 28)
    engine = Pruning(OnTheGpu(), target={"macs": 0.5}).engine
    with pytest.raises(RuntimeError, match="failed in select"):
        engine.check_method(model, example, device="cpu")
    engine.check_method(model, example, device="cuda")
    assert next(model.parameters()).device.type == "cpu"  # (the copies went, not the model)
