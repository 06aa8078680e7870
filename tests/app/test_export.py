"""Pruned models export to ONNX (checked with onnxruntime), torch.export and TorchScript."""

import copy
import logging
import re
import shutil
import sys

import pytest
import torch

from lightning_ssr.app.export import (
    export_onnx,
    export_program,
    export_torchscript,
    exported_max_abs_diff,
    onnx_max_abs_diff,
    optimize_for_cpu_inference,
    output_tensors,
)
from lightning_ssr.app.models import build_model
from lightning_ssr.methods.oneshot import prune_oneshot
from tests.numerics import implementations_tolerance, max_relative_diff

CASES = [("lenet5", (1, 28), [0.5, 0.5]), ("resnet20", (3, 32), [0.0, 0.5, 0.0, 0.7] + [0.0] * 15)]  # 19 convs


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def pruned(request):
    name, (c, s), rates = request.param
    torch.manual_seed(0)
    model = build_model(name, in_channels=c, num_classes=10, input_size=s)
    x = torch.randn(2, c, s, s)
    prune_oneshot(model, x, rates)
    return model.eval(), x


def test_onnx_matches_pytorch_with_onnxruntime(pruned, tmp_path, caplog):
    pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency (pip install '.[dev]')")
    model, x = pruned
    caplog.set_level(logging.INFO)  # a job's logging level: the exporter's passes say nothing at it
    written = export_onnx(model, x, tmp_path / "export" / "model.onnx")
    assert not [r for r in caplog.records if r.name.startswith(("onnx_ir", "onnxscript"))]
    # one self-contained file: it runs where it is copied alone (the weights were in model.onnx.data)
    assert sorted(p.name for p in written.parent.iterdir()) == ["model.onnx"]
    path = shutil.copy(written, tmp_path / "model.onnx")
    # a different batch size: the batch dimension is dynamic
    fresh = torch.randn(5, *x.shape[1:])
    with torch.no_grad():
        scale = max(1.0, float(model(fresh).abs().max()))
    assert onnx_max_abs_diff(model, path, fresh) <= implementations_tolerance(model) * scale


def test_torchscript_and_torch_export_match_pytorch(pruned, tmp_path):
    model, x = pruned
    with torch.no_grad():
        expected = model(x)
        scripted = torch.jit.load(str(export_torchscript(model, x, tmp_path / "model.ts")))
        assert max_relative_diff(expected, scripted(x)) <= implementations_tolerance(model)
        export_program(model, x, tmp_path / "model.pt2")
        program = torch.export.load(str(tmp_path / "model.pt2"))
        assert max_relative_diff(expected, program.module()(x)) <= implementations_tolerance(model)
        # the command's check of the files: the same figures
        scale = max(1.0, float(expected.abs().max()))
        for name in ("model.ts", "model.pt2"):
            assert exported_max_abs_diff(model, tmp_path / name, x) <= implementations_tolerance(model) * scale
        one = export_program(model, x[:1])  # (the command's example is one row)
        for batch in (1, 5):  # any batch, as the ONNX export: not only the example's
            other = torch.randn(batch, *x.shape[1:])
            for exported in (program, one):
                assert max_relative_diff(model(other), exported.module()(other)) <= implementations_tolerance(model)


def test_optimize_for_cpu_inference_keeps_the_outputs(pruned):
    from lightning_ssr.app.export import optimize_for_cpu_inference

    model, x = pruned
    fast = optimize_for_cpu_inference(model)
    with torch.no_grad():  # folded BatchNorm: a few round-offs per weight, within the layers' n * u
        got = fast(x.contiguous(memory_format=torch.channels_last))
        assert max_relative_diff(model(x), got) <= implementations_tolerance(model)


def test_onnx_of_a_channels_last_model_from_a_batch_one_example(pruned, tmp_path):
    """optimize_for_cpu_inference's channels_last model, exported from a batch-1 example, failed
    in the exporter ("Invalid ranges [2:1]") where a batch-2 example worked (probe)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency (pip install '.[dev]')")
    model, x = pruned
    fast = optimize_for_cpu_inference(model)
    path = export_onnx(fast, x[:1], tmp_path / "fast.onnx")
    fresh = torch.randn(3, *x.shape[1:])
    with torch.no_grad():
        scale = max(1.0, float(model(fresh).abs().max()))
    assert onnx_max_abs_diff(fast, path, fresh) <= implementations_tolerance(model) * scale


def test_export_gives_the_model_back_in_its_training_mode(pruned, tmp_path):
    model, x = pruned
    model.train()
    export_torchscript(model, x, tmp_path / "model.ts")
    export_program(model, x)
    assert model.training


def test_compiled_inference_copy_keeps_the_outputs():
    from lightning_ssr.app.export import compile_for_cpu_inference

    torch.manual_seed(0)
    model = build_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    prune_oneshot(model, x, [0.5, 0.5])
    model.eval()
    fast = compile_for_cpu_inference(model)
    with torch.no_grad():
        assert max_relative_diff(model(x), fast(x)) <= implementations_tolerance(model)


def test_export_refuses_what_it_cannot_write_naming_what_to_give(tmp_path, monkeypatch):
    """A NumPy example failed with "'numpy.ndarray' object has no attribute 'detach'", a folder as
    the path deep inside onnx, a missing onnxscript with a bare ModuleNotFoundError."""
    model = build_model("lenet5", in_channels=1, num_classes=10, input_size=28)
    x = torch.randn(2, 1, 28, 28)
    for export, name in ((export_onnx, "m.onnx"), (export_torchscript, "m.ts"), (export_program, "m.pt2")):
        with pytest.raises(TypeError, match=r"example_input must be a torch.Tensor.*numpy.ndarray.*torch.from_numpy"):
            export(model, x.numpy(), tmp_path / name)
        with pytest.raises(IsADirectoryError, match="is a folder; give the path of the file to write"):
            export(model, x, tmp_path)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"needs onnxscript, which is not installed: pip install 'lightning_ssr\[export\]'"):
        export_onnx(model, x, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists() and model.training  # (nothing written, the mode as it was)


def test_an_example_the_model_does_not_take_is_refused_with_the_shape_it_was_pruned_on(pruned, tmp_path):
    """A 32x32 example for the 28x28 LeNet-5 failed inside the exporter, after some forty lines of
    its log, naming no shape (probe); so does one of other channels for either network."""
    model, x = pruned
    wrong = torch.randn(1, x.shape[1] + 1, x.shape[2], x.shape[3])  # (another number of channels)
    said = (r"the model's forward\(\) fails on example_input of shape \(1, \d+, \d+, \d+\), before the export; it "
            rf"was pruned on inputs of shape \(\d+, {x.shape[1]}, {x.shape[2]}, {x.shape[3]}\): give a batch of that "
            rf"shape, e.g. torch.randn\(1, {x.shape[1]}, {x.shape[2]}, {x.shape[3]}\)$")
    for export, name in ((export_onnx, "m.onnx"), (export_torchscript, "m.ts"), (export_program, "m.pt2")):
        with pytest.raises(RuntimeError) as raised:  # (torch's own error, its type as it was, with a note)
            export(model, wrong, tmp_path / name)
        assert re.match(rf"^{export.__name__}: " + said, raised.value.__notes__[-1]), raised.value.__notes__
        assert not (tmp_path / name).exists() and not model.training
    # an error of another cause is not put down to the shape (a float64 model, a float32 batch: review);
    # the dtype is named, with what to give (the note named the shape alone: probe)
    with pytest.raises(RuntimeError) as raised:
        export_torchscript(copy.deepcopy(model).double(), x, tmp_path / "m.ts")
    assert raised.value.__notes__[-1].endswith(
        f"example_input of shape {tuple(x.shape)} and dtype torch.float32, before the export; the model's weights "
        "are torch.float64: give example_input.to(torch.float64)"), raised.value.__notes__


def test_an_example_of_no_sample_is_refused_before_the_exporter():
    """A batch of 0 ran through the model's check and failed deep in torch.export ("Constraints
    violated (batch)!"), or exported a TorchScript file without a word (probe)."""
    model = build_model("lenet5", in_channels=1, num_classes=10, input_size=28)
    for export in (export_onnx, export_torchscript, export_program):
        with pytest.raises(ValueError, match=rf"^{export.__name__}: example_input of shape \(0, 1, 28, 28\) holds no "
                                             "sample; give a batch of at least one"):
            export(model, torch.randn(0, 1, 28, 28), "m.out")


def _bound(model, x) -> float:
    """Two implementations' largest difference on ``x``: their float32 bound (relative, to the largest
    float output, at least 1); a boolean output must be equal (its differences count 1)."""
    with torch.no_grad():
        floats = [t for t in output_tensors(model(x)) if t.is_floating_point()]
    return implementations_tolerance(model) * max([1.0] + [float(t.abs().max()) for t in floats])


class TwoHeads(torch.nn.Module):
    """Logits and a per-pixel map, as a tuple or as a dict."""

    def __init__(self, as_dict: bool):
        super().__init__()
        self.as_dict = as_dict
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.mask = torch.nn.Conv2d(8, 1, 1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        logits, mask = self.fc(h.mean((2, 3))), self.mask(h)
        return {"logits": logits, "mask": mask} if self.as_dict else (logits, mask)


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_a_model_of_several_outputs_exports_and_checks_every_one(tmp_path, as_dict):
    """The exporters wrote such a model, but the checks against PyTorch failed on it (too many
    values to unpack; 'tuple' - 'tuple'), its ONNX outputs were 'output' and a node's name, and
    TorchScript refused the dict, advising a strict=False the function did not take (probe)."""
    torch.manual_seed(0)
    model = TwoHeads(as_dict)
    x = torch.randn(2, 3, 8, 8)
    prune_oneshot(model, x, {"macs": 0.5})
    fresh = torch.randn(3, 3, 8, 8)
    for export, name in ((export_torchscript, "m.ts"), (export_program, "m.pt2")):
        export(model, x, tmp_path / name)
        assert exported_max_abs_diff(model, tmp_path / name, fresh) <= _bound(model, fresh)
    # a wrong structure is said, not compared in part
    with pytest.raises(ValueError, match="gives 2 output tensor"):
        exported_max_abs_diff(torch.nn.Sequential(torch.nn.Flatten()), tmp_path / "m.pt2", fresh)
    pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency (pip install '.[dev]')")
    pytest.importorskip("onnxscript", reason="the ONNX export needs onnxscript (pip install 'lightning_ssr[export]')")
    export_onnx(model, x, tmp_path / "m.onnx")
    import onnxruntime as ort

    names = [o.name for o in ort.InferenceSession(str(tmp_path / "m.onnx")).get_outputs()]
    assert names == (["logits", "mask"] if as_dict else ["output_0", "output_1"])
    assert onnx_max_abs_diff(model, tmp_path / "m.onnx", fresh) <= _bound(model, fresh)


class MaskAndNone(TwoHeads):
    """Logits, a None and a boolean mask."""

    def __init__(self, as_dict: bool = False):
        super().__init__(as_dict=False)
        self.keyed = as_dict
        self.pruning = True  # (the channel tracer follows tensors only: pruned as TwoHeads)

    def forward(self, x):
        logits, mask = super().forward(x)
        if self.pruning:
            return logits, mask
        return {"logits": logits, "aux": None, "mask": mask > 0} if self.keyed else (logits, None, mask > 0)


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple", "dict"])
def test_an_output_holding_none_or_a_boolean_mask_exports_and_is_checked(tmp_path, as_dict):
    """A None in the output (which the exporters leave out) made export_onnx fail where it had
    worked, and a boolean mask failed the checks' subtraction; a dict with a None lost its keys as
    the ONNX outputs' names (review)."""
    torch.manual_seed(0)
    model = MaskAndNone(as_dict)
    x = torch.randn(2, 3, 8, 8)
    prune_oneshot(model, x, {"macs": 0.5})
    model.pruning = False
    export_program(model, x, tmp_path / "m.pt2")
    fresh = torch.randn(3, 3, 8, 8)
    assert exported_max_abs_diff(model, tmp_path / "m.pt2", fresh) <= _bound(model, fresh)
    pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency (pip install '.[dev]')")
    pytest.importorskip("onnxscript", reason="the ONNX export needs onnxscript (pip install 'lightning_ssr[export]')")
    export_onnx(model, x, tmp_path / "m.onnx")
    import onnxruntime as ort

    assert [o.name for o in ort.InferenceSession(str(tmp_path / "m.onnx")).get_outputs()] == (
        ["logits", "mask"] if as_dict else ["output_0", "output_1"])
    assert onnx_max_abs_diff(model, tmp_path / "m.onnx", fresh) <= _bound(model, fresh)
