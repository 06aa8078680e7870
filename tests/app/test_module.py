"""The CLI's ImageClassifier: distillation from the dense network while compressing."""

import copy
import re

import pytest
import torch
import torch.nn.functional as F

from lightning_ssr.app.cli import compose_config, run
from lightning_ssr.app.models import build_model
from lightning_ssr.app.module import TEACHER_CHECKPOINT_KEY, ImageClassifier
from lightning_ssr.app.stages import dense_cache_path
from lightning_ssr.checkpoint import read_checkpoint


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"distill": 1.5}, ValueError, r"module: distill .* must be in \[0.0, 1.0\], got 1.5"),
    ({"distill": -0.1}, ValueError, "module: distill"), ({"distill": float("nan")}, ValueError, "module: distill"),
    ({"temperature": 0.0}, ValueError, r"module: temperature must be in \(0.0, inf\)"),
    ({"lr": 0.0}, ValueError, "module: lr"),
    # (module.lr=fast on the command line: a TypeError of a comparison, naming nothing)
    ({"lr": "fast"}, TypeError, "module: lr must be a number, got str 'fast'"),
    ({"temperature": "4"}, TypeError, "module: temperature must be a number"),
])
def test_bad_settings_are_refused_naming_the_key(kwargs, error, match):
    with pytest.raises(error, match=match):
        ImageClassifier(build_model("lenet5"), **kwargs)


def test_the_distillation_loss_pulls_towards_the_teacher_and_trains_only_the_student():
    torch.manual_seed(0)
    teacher = build_model("lenet5")
    student = ImageClassifier(copy.deepcopy(teacher), distill=0.7, temperature=3.0)
    with torch.no_grad():
        for p in student.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student.set_teacher(teacher)
    assert "_teacher" not in dict(student.named_modules()) and not any(
        k.startswith("_teacher") for k in student.state_dict())
    assert len(list(student.parameters())) == len(list(teacher.parameters()))
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    student.log = lambda *a, **k: None
    loss = student.training_step((x, y), 0)
    logits = student(x)
    kd = F.kl_div(F.log_softmax(logits / 3, 1), F.log_softmax(teacher(x) / 3, 1), reduction="batchmean",
                  log_target=True) * 9
    assert kd > 0 and loss.item() == pytest.approx((0.3 * F.cross_entropy(logits, y) + 0.7 * kd).item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert all(p.grad is not None for p in student.model.parameters())


def test_distillation_without_a_teacher_is_refused_at_fit_start():
    lm = ImageClassifier(build_model("lenet5"), distill=0.5)
    with pytest.raises(ValueError, match="set_teacher"):
        lm.on_fit_start()


def test_the_cli_distils_from_the_dense_model_which_it_shares_with_runs_without(tmp_path, monkeypatch):
    common = ["data=uci_digits", f"dense.cache_dir={tmp_path / 'dense'}", "dense.epochs=1",
              "schedule.sparsify_epochs=1", "schedule.finetune_epochs=1", "schedule.update_every_n_steps=2",
              "trainer.limit_train_batches=4",
              "target.macs=0.3", "latency.batch_sizes=[]", "trainer.enable_progress_bar=false", "verbose=false"]
    plain, distilled = compose_config(common), compose_config([*common, "module.distill=0.5"])
    assert dense_cache_path(plain) == dense_cache_path(distilled)  # one dense model for both
    teachers, calls = [], []
    real = ImageClassifier.set_teacher

    def recording(self, teacher, **kwargs):
        teachers.append({k: v.clone() for k, v in teacher.state_dict().items()})
        teacher.register_forward_hook(lambda *args: calls.append(1))  # each use of the teacher
        real(self, teacher, **kwargs)

    monkeypatch.setattr(ImageClassifier, "set_teacher", recording)
    result = run(distilled, tmp_path / "run")
    assert result.status == "ok" and result.macs_reduction > 2.5
    assert result.config["cli"]["module"]["distill"] == 0.5
    # the teacher is the cached dense network, and the training asked it for every step's targets
    dense = read_checkpoint(dense_cache_path(distilled))["state_dict"]
    assert len(teachers) == 1 and all(torch.equal(teachers[0][k], dense[k]) for k in dense)
    assert len(calls) == 2 * 4  # 2 epochs of 4 batches
    # the dense teacher is cached and named by the checkpoints: not written into each of them (review)
    saved = min((tmp_path / "run").glob("logs/version_0/checkpoints/*.ckpt"))
    assert TEACHER_CHECKPOINT_KEY not in read_checkpoint(saved)


def test_a_cli_resume_that_fine_tunes_longer_trains_its_added_epochs(tmp_path):
    """The checkpoint's cosine ended with the first run (rate 0): an added epoch changed nothing,
    bitwise, before the module made the cosine end at the new max_epochs."""
    fast = ["data=uci_digits", "dense.epochs=1", "schedule.sparsify_epochs=1", "schedule.finetune_epochs=1",
            "schedule.update_every_n_steps=5", "trainer.limit_train_batches=8", "target.macs=0.2",
            "latency.repeats=3", "latency.batch_sizes=[1]", "trainer.enable_progress_bar=false",
            f"dense.cache_dir={tmp_path / 'cache'}"]
    first = run(compose_config(fast), tmp_path / "first")
    saved = tmp_path / "first" / "logs" / "version_0" / "checkpoints" / "epoch=1-step=16.ckpt"
    assert first.status == "ok" and saved.is_file()
    longer = run(compose_config([o for o in fast if "finetune" not in o]
                                + ["schedule.finetune_epochs=2", f"ckpt_path={saved}"]), tmp_path / "longer")
    assert longer.status == "ok" and longer.plan == first.plan
    weights = [read_checkpoint(tmp_path / name / "pruned.pt")["state_dict"] for name in ("first", "longer")]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _distilled_fit(tmp_path, teacher, max_epochs, ckpt_path=None):
    """A distilled ImageClassifier fitted on 8 random digits (2 batches an epoch), checkpointed in
    ``tmp_path``; the teacher's outputs each step are recorded on the module (``seen``)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    lm = ImageClassifier(build_model("lenet5"), distill=0.5, cosine=False)
    lm.set_teacher(teacher)
    lm.seen = []
    distillation = lm.distillation

    def recording(x, logits):
        lm.seen.append(lm.__dict__["_teacher"](x).detach())
        return distillation(x, logits)

    lm.distillation = recording
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))), batch_size=4)
    trainer = pl.Trainer(max_epochs=max_epochs, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
                         enable_checkpointing=False)
    trainer.fit(lm, loader, loader, ckpt_path=ckpt_path)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    return lm, trainer


def test_a_resume_distills_from_the_teacher_its_checkpoint_holds(tmp_path):
    """A recipe's teacher (its dense fine-tune) is trained again by a resume, for the resumed
    schedule's length: a resume with a longer fine-tune distilled from another teacher than the
    one its run started with, silently. The checkpoint holds the teacher; a resume goes on from it,
    and says so where the one given differs (kept in result.json's warnings)."""
    torch.manual_seed(1)
    first_teacher, other_teacher = build_model("lenet5"), build_model("lenet5")
    other_before = copy.deepcopy(other_teacher.state_dict())
    first, _ = _distilled_fit(tmp_path / "first", first_teacher, 1)
    saved = str(tmp_path / "first" / "last.ckpt")
    kept = read_checkpoint(saved)[TEACHER_CHECKPOINT_KEY]  # (read with weights_only=True)
    assert all(torch.equal(kept[k], v) for k, v in first_teacher.state_dict().items())
    assert first.teacher_restored is None

    resumed, _ = _distilled_fit(tmp_path / "resumed", other_teacher, 2, ckpt_path=saved)
    assert all(torch.equal(resumed.__dict__["_teacher"].state_dict()[k], v) for k, v in kept.items())
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(resumed.__dict__["_teacher"](x), first_teacher.eval()(x))
    assert all(torch.equal(other_teacher.state_dict()[k], v) for k, v in other_before.items())  # (left as given)
    assert len(resumed.seen) == 2 and resumed.teacher_restored.startswith("the resumed run distills from the teacher")

    same, _ = _distilled_fit(tmp_path / "same", copy.deepcopy(first_teacher), 2, ckpt_path=saved)
    assert same.teacher_restored is None and len(same.seen) == 2


def test_a_resume_given_a_teacher_of_other_layers_is_refused_naming_the_checkpoint(tmp_path):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_ssr.checkpoint import CheckpointReadError

    _distilled_fit(tmp_path / "first", build_model("lenet5"), 1)
    saved = str(tmp_path / "first" / "last.ckpt")
    other = build_model("lenet5")
    other.fc1, other.fc2 = torch.nn.Linear(800, 300), torch.nn.Linear(300, 10)
    lm = ImageClassifier(build_model("lenet5"), distill=0.5, cosine=False)
    lm.set_teacher(other)
    before = copy.deepcopy(lm.state_dict())
    trainer = pl.Trainer(max_epochs=2, default_root_dir=tmp_path / "other", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))), batch_size=4)
    with pytest.raises(CheckpointReadError, match=rf"ckpt_path={re.escape(saved)} holds the teacher of a distilled "
                                                  r"run whose layers differ .*set_teacher \(LeNet5; of other shapes "
                                                  r"\(checkpoint's vs given\): fc1.bias \(500,\) vs \(300,\), "
                                                  r"fc1.weight \(500, 800\) vs \(300, 800\)"):
        trainer.fit(lm, loader, loader, ckpt_path=saved)
    assert trainer.global_step == 0 and all(torch.equal(lm.state_dict()[k], v) for k, v in before.items())
    # test and validate use no teacher: neither refused nor swapped (review)
    lm = ImageClassifier(build_model("lenet5"), distill=0.5, cosine=False)
    lm.set_teacher(other)
    evaluating = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    evaluating.validate(lm, loader, ckpt_path=saved, verbose=False)
    evaluating.test(lm, loader, ckpt_path=saved, verbose=False)
    assert lm.__dict__["_teacher"] is other and lm.teacher_restored is None


def test_a_refused_teacher_leaves_a_pruned_checkpoints_module_unbuilt(tmp_path):
    """The plan rebuilt the module before the teacher was checked: refused, it was left pruned (review)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_ssr import Pruning, PruningSchedule
    from lightning_ssr.checkpoint import CheckpointReadError

    torch.manual_seed(0)
    lm = ImageClassifier(build_model("lenet5"), distill=0.5, cosine=False)
    lm.set_teacher(build_model("lenet5"))
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))), batch_size=4)
    pruning = Pruning("l1", target={"macs": 0.5}, schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1),
                      verbose=False)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, callbacks=[pruning])
    trainer.fit(lm, loader, loader)
    trainer.save_checkpoint(tmp_path / "pruned.ckpt")
    other = build_model("lenet5")
    other.fc1, other.fc2 = torch.nn.Linear(800, 300), torch.nn.Linear(300, 10)
    fresh = ImageClassifier(build_model("lenet5"), distill=0.5, cosine=False)
    fresh.set_teacher(other)
    resumed = pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0,
                         callbacks=[Pruning("l1", target={"macs": 0.5}, verbose=False,
                                            schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1))])
    with pytest.raises(CheckpointReadError, match="holds the teacher of a distilled run"):
        resumed.fit(fresh, loader, loader, ckpt_path=tmp_path / "pruned.ckpt")
    assert fresh.model.conv1.weight.shape == (20, 1, 5, 5)  # (as built: the plan did not rebuild it)


def test_trainer_predict_gives_the_logits_of_the_data_modules_batches():
    """Lightning's default predict_step passed the whole (images, labels) batch to forward: a
    TypeError of conv2d (probe)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    lm = ImageClassifier(build_model("lenet5")).eval()
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    predicted = trainer.predict(lm, DataLoader(TensorDataset(x, y), batch_size=4))
    with torch.no_grad():  # (batch by batch, as predicted: another batch size may round otherwise)
        assert [p.shape for p in predicted] == [(4, 10), (2, 10)]
        assert torch.equal(predicted[0], lm(x[:4])) and torch.equal(predicted[1], lm(x[4:]))
        assert torch.equal(lm.predict_step(x, 0), lm(x))  # (images alone)
    # from a data module of the app: its test split's logits (it had no predict_dataloader: review)
    from torch import nn

    from lightning_ssr.app.data import UCIDigits

    dm = UCIDigits()
    digits = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))).eval()  # (its 28x28 images)
    predicted = trainer.predict(digits, datamodule=dm)
    assert sum(len(p) for p in predicted) == len(dm.splits["test"]) and predicted[0].shape[1] == 10
