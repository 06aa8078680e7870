"""Export a (pruned) model for deployment: ONNX, torch.export and TorchScript.

The rebuilt model is an ordinary ``nn.Module`` with smaller layers, so the standard
exporters apply as they are; these helpers export it in eval mode (and hand it back in the
mode it was in), check the ONNX file against PyTorch, and return what they wrote.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..modes import eval_mode
from ..structure.plan import applied_plan

EXPORT_FORMATS = ("onnx", "torchscript", "torch_export")
#: what each export format needs beyond torch (``pip install 'lightning_ssr[export]'``); the
#: check of an ONNX file against PyTorch needs onnxruntime too, and is skipped, said, without it
EXPORT_MODULES = {"onnx": ("onnx", "onnxscript")}


def check_export_available(export: str, setting: str = "export") -> None:
    """Raise an ImportError naming the missing modules and the extra that installs them where
    the ``export`` format cannot run here: the command checks it before training."""
    missing = []
    for module in EXPORT_MODULES.get(export, ()):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(f"{setting}={export} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                          "not installed: pip install 'lightning_ssr[export]'")


def _checked(model: nn.Module, example_input, path: str | Path | None, what: str) -> tuple[torch.Tensor, Path | None]:
    """The example as a tensor and the file to write, or an error that says what to give. The
    model runs once on the example first: an example of another shape failed inside the exporter,
    after some forty lines of its log and with no word of the shape the model takes (probe)."""
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"{what}: example_input must be a torch.Tensor, a batch of inputs such as the model takes; "
                        f"got {type(example_input).__module__}.{type(example_input).__name__}"
                        + (" (torch.from_numpy(x) turns a NumPy array into one)"
                           if type(example_input).__module__ == "numpy" else ""))
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{what}: {str(path)!r} is a folder; give the path of the file to write "
                                    f"(e.g. {str(path / 'model')!r} with the format's suffix)")
    example = example_input.detach()
    if example.dim() == 0 or example.shape[0] == 0:
        raise ValueError(f"{what}: example_input of shape {tuple(example.shape)} holds no sample; give a batch of at "
                         "least one, such as the model takes (the export traces the model on it)")
    try:
        with eval_mode(model), torch.no_grad():
            model(example)
    except Exception as err:  # (the model's own error, told where it happened: its type as it was: review)
        plan = applied_plan(model)
        shape = tuple(plan.input_shape) if plan is not None and plan.input_shape else None
        other = shape is not None and tuple(example.shape[1:]) != shape[1:]  # (the advice where it is the cause)
        weights = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        dtype = example.is_floating_point() and weights is not None and example.dtype != weights
        err.add_note(f"{what}: the model's forward() fails on example_input of shape {tuple(example.shape)}"
                     + (f" and dtype {example.dtype}" if dtype else "") + ", before the export"
                     + (f"; it was pruned on inputs of shape {shape}: give a batch of that shape, e.g. "
                        f"torch.randn(1, {', '.join(str(d) for d in shape[1:])})" if other else "")
                     + (f"; the model's weights are {weights}: give example_input.to({weights})" if dtype else ""))
        raise
    return example, path


def optimize_for_cpu_inference(model: nn.Module, report: dict | None = None) -> nn.Module:
    """A copy of ``model`` for CPU inference: eval mode, BatchNorm folded into the preceding
    convolutions (``torch.fx``), channels_last memory layout. oneDNN's convolutions run the
    odd channel counts of pruned layers far better in channels_last, and folding removes the
    BN passes over activations, which pruning does not shrink where channels are unprunable.
    Models that ``torch.fx`` cannot trace are returned unfused (still eval + channels_last),
    with a warning; ``report`` (a dict) receives ``bn_folded`` (bool) and, if not, why."""
    import copy

    from torch.fx.experimental.optimization import fuse

    model = copy.deepcopy(model).eval()
    try:
        model = fuse(model)
        folded = {"bn_folded": True}
    except Exception as err:  # noqa: BLE001 - torch.fx cannot trace every model: it runs unfused, and says so
        folded = {"bn_folded": False, "bn_fold_error": f"{type(err).__name__}: {err}"}
        warnings.warn(f"BatchNorm folding skipped: torch.fx could not trace the model ({err})", stacklevel=2)
    if report is not None:
        report.update(folded)
    return model.to(memory_format=torch.channels_last)


class _FrozenCompiled(nn.Module):
    """Runs a ``torch.compile``'d module with inductor's freezing on (BN folding, prepacked
    oneDNN weights), without autograd. Compilation happens on the first call of each input
    shape, inside the freezing context."""

    def __init__(self, compiled: nn.Module):
        super().__init__()
        self.compiled = compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True), torch.no_grad():
            return self.compiled(x.contiguous(memory_format=torch.channels_last))


def compile_for_cpu_inference(model: nn.Module) -> nn.Module:
    """An inference-only copy of ``model``: eval mode, channels_last, ``torch.compile``
    (inductor) with freezing. This is where a pruned network's FLOPs reduction turns into
    CPU speed when unprunable parts (residual streams) keep their element-wise passes: the pruned
    ResNet-56 at the FSM rates ran fastest this way at batch 64 (53.4 ms, against 57.9 ms with BN
    folded in eager mode: ``benchmarks/results/speedup.json``). Needs a C++ compiler; the first
    call of each input shape compiles (seconds)."""
    import copy

    model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    return _FrozenCompiled(torch.compile(model, dynamic=False))


@contextlib.contextmanager
def _quiet_onnx_registry():
    """The ONNX exporter logs a warning per torchvision operator it cannot register when
    torchvision is absent (none matters to a model that does not use them), and torch's own
    pytree code warns about its deprecated ``LeafSpec`` while tracing."""
    # and the graph optimizer's passes log at INFO (a line per pass), which a job's logging shows
    levels = {"torch.onnx._internal.exporter._registration": logging.ERROR, "onnxscript": logging.WARNING,
              "onnx_ir": logging.WARNING}
    loggers = {logging.getLogger(name): level for name, level in levels.items()}
    before = {logger: logger.level for logger in loggers}
    for logger, level in loggers.items():
        logger.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        for logger, level in before.items():
            logger.setLevel(level)


def output_tensors(output) -> list[torch.Tensor]:
    """The tensors a model's output holds, in the order the exporters flatten it: a tensor, or
    tuples, lists and dicts (in their order) of them; ``None`` holds none (the exporters leave it
    out). Anything else is refused: the checks compare tensors."""
    if output is None:
        return []
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for v in output.values() for t in output_tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in output_tensors(v)]
    raise TypeError(f"the model's output holds a {type(output).__name__}: the check against PyTorch compares the "
                    "output tensors (alone, or in tuples, lists and dicts, None left out)")


def _output_names(model: nn.Module, example: torch.Tensor) -> list[str] | None:
    """Names of the ONNX outputs: ``output`` for one tensor, a dict's keys, else ``output_<i>``;
    ``None`` (the exporter's own names) for an output that holds other values than tensors."""
    with eval_mode(model), torch.no_grad():
        out = model(example)
    if isinstance(out, torch.Tensor):
        return ["output"]
    try:
        count = len(output_tensors(out))
    except TypeError:
        return None
    names = [str(k) for k, v in out.items() if v is not None] if isinstance(out, Mapping) and all(
        v is None or isinstance(v, torch.Tensor) for v in out.values()) else []  # (a None: left out, as exported)
    return names if len(set(names)) == count else [f"output_{i}" for i in range(count)]


def _largest_difference(ours, reference) -> float:
    """The largest absolute difference between two outputs of the same structure (checked); a
    boolean or integer output's differences count in its values (1 where a mask differs)."""
    ours, reference = output_tensors(ours), output_tensors(reference)
    if not reference:
        raise ValueError("the model's output holds no tensor: nothing to compare")
    if len(ours) != len(reference):
        raise ValueError(f"the exported model gives {len(ours)} output tensor(s), the model {len(reference)}: the "
                         "file is not an export of this model")
    return max(float((torch.as_tensor(a).cpu().double() - b.detach().cpu().double()).abs().max())
               for a, b in zip(ours, reference))


#: weights up to this size (bytes) are written inside the ONNX file; beyond it, next to it
#: (protobuf's 2 GiB limit, with room for the graph)
ONNX_INLINE_LIMIT = 1 << 30


def _unspecialized(example: torch.Tensor, dynamic_batch: bool) -> torch.Tensor:
    """The example an export with a dynamic batch traces: one of batch 1 repeated to 2 (traced at
    batch 1, the program is specialized to it, and a channels_last model's strides make the export
    fail), in its memory format."""
    if not dynamic_batch or example.shape[0] != 1:
        return example
    twice = example.repeat(2, *[1] * (example.dim() - 1))
    return twice.contiguous(memory_format=torch.channels_last) if (
        example.dim() == 4 and not example.is_contiguous() and example.is_contiguous(
            memory_format=torch.channels_last)) else twice


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path, opset: int = 18,
                dynamic_batch: bool = True) -> Path:
    """Write ``model`` (in eval mode) as ONNX to ``path``, with a dynamic batch dimension: one
    self-contained file, its weights inside, up to :data:`ONNX_INLINE_LIMIT` (1 GiB) of them; a
    larger model keeps them in ``<path>.data`` beside it, which must travel with it (protobuf
    holds 2 GiB). Its input is named ``input``, its output ``output`` (outputs of a model that
    gives several: a dict's keys, those of its tensors, where they are distinct as text, else
    ``output_0``, ``output_1``, ... in order; a ``None`` is left out; an output holding other
    values keeps the exporter's own names)."""
    example_input, path = _checked(model, example_input, path, "export_onnx")
    names = _output_names(model, example_input)
    check_export_available("onnx", "export_onnx: the format")
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{path}.data").unlink(missing_ok=True)  # an earlier export's weights, which this file does not use
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    example_input = _unspecialized(example_input, dynamic_batch)
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    with eval_mode(model), _quiet_onnx_registry():
        torch.onnx.export(model, (example_input,), str(path), input_names=["input"],
                          output_names=names, opset_version=opset, dynamo=True,
                          dynamic_shapes=dynamic_shapes, verbose=False, external_data=weights >= ONNX_INLINE_LIMIT)
    return path


def export_torchscript(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> Path:
    """Trace ``model`` (in eval mode) with TorchScript and save it to ``path``. A model whose
    output is a list or dict of tensors is traced with ``strict=False``: its structure is taken as
    fixed (TorchScript's tracer infers no type for containers nested in them:
    :func:`export_program` exports those)."""
    example_input, path = _checked(model, example_input, path, "export_torchscript")
    path.parent.mkdir(parents=True, exist_ok=True)
    with eval_mode(model), torch.no_grad():
        mutable = _holds_containers(model(example_input))
        traced = torch.jit.trace(model, example_input, strict=not mutable)
    traced.save(str(path))
    return path


def _holds_containers(output) -> bool:
    """Whether ``output`` holds a list or a dict (TorchScript's tracer refuses them when strict)."""
    if isinstance(output, (list, Mapping)):
        return True
    return isinstance(output, tuple) and any(_holds_containers(v) for v in output)


def export_program(model: nn.Module, example_input: torch.Tensor, path: str | Path | None = None,
                   dynamic_batch: bool = True):
    """``torch.export`` the model (in eval mode), with a dynamic batch dimension as the ONNX
    export has (without it, the program takes only ``example_input``'s batch size); saved to
    ``path`` (``.pt2``) when given."""
    (example, path), dynamic_shapes = _checked(model, example_input, path, "export_program"), None
    if dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},)
        example = _unspecialized(example, dynamic_batch)
    with eval_mode(model):
        program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(path))
    return program


def exported_max_abs_diff(model: nn.Module, path: str | Path, example_input: torch.Tensor) -> float:
    """Largest absolute difference between the model exported to ``path`` (a TorchScript ``.ts`` or
    a ``torch.export`` ``.pt2``), loaded back as a user would, and PyTorch."""
    path = Path(path)
    loaders = [lambda: torch.export.load(str(path)).module(), lambda: torch.jit.load(str(path))]
    if path.suffix != ".pt2":
        loaders.reverse()
    with torch.no_grad():
        try:
            loaded = loaders[0]()
        except Exception as err:  # noqa: BLE001 - a file of the other kind, named otherwise: the other loader
            try:
                loaded = loaders[1]()
            except Exception:  # noqa: BLE001 - neither: the error of the one its name asks for
                raise err from None
        ours = loaded(example_input)
        with eval_mode(model):
            reference = model(example_input)
    return _largest_difference(ours, reference)


def onnx_max_abs_diff(model: nn.Module, path: str | Path, example_input: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime on ``path`` and PyTorch."""
    import onnxruntime as ort  # optional dependency: pip install onnxruntime

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: example_input.detach().cpu().numpy()})
    with eval_mode(model), torch.no_grad():
        reference = model(example_input)
    return _largest_difference([torch.from_numpy(o) for o in ours], reference)
