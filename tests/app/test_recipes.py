"""Transfer learning and domain adaptation, compressed (lightning_ssr.app.recipes.transfer, lightning_ssr.app.recipes.adaptation):
tiny end-to-end runs on the real datasets, the pieces on bare modules, and the bad inputs."""

import pytest
import torch
from torch import nn

from lightning_ssr.app.cli import compose_config, run
from lightning_ssr.app.models import build_model
from lightning_ssr.app.recipes.adaptation import DANN, DomainAdaptationData, reverse_gradient
from lightning_ssr.app.recipes.transfer import freeze, new_head

TINY = ["dense.epochs=1", "schedule.sparsify_epochs=1", "schedule.finetune_epochs=1", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "latency.batch_sizes=[]", "verbose=false"]


def test_new_head_replaces_the_last_linear_with_a_fresh_one():
    net = build_model("lenet5")
    old = net.fc2.weight.detach().clone()
    assert new_head(net, 7) == "fc2"
    assert net.fc2.out_features == 7 and net.fc2.in_features == 500
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    assert not torch.equal(net.fc2.weight[:7].detach(), old[:7])


def test_freeze_stops_gradients_and_names_what_is_missing():
    net = build_model("lenet5")
    freeze(net, ["conv1"])
    assert not any(p.requires_grad for p in net.conv1.parameters())
    assert all(p.requires_grad for p in net.conv2.parameters())
    with pytest.raises(ValueError, match=r"'convX'.*its layers"):
        freeze(build_model("lenet5"), ["convX"])


def test_transfer_experiment_end_to_end_reports_dense_and_compressed_fine_tunes(tmp_path):
    cfg = compose_config(["+experiment=transfer_fmnist_to_mnist", "transfer.source_epochs=1",
                          "transfer.source.batch_size=512", f"dense.cache_dir={tmp_path / 'dense'}", *TINY])
    result = run(cfg, tmp_path / "run")
    info = result.config["transfer"]
    assert result.status == "ok" and info["source"] == "FashionMNIST" and info["target"] == "MNISTDigits"
    assert 990 <= info["target_train_images"] <= 1000 and info["new_head"] == "fc2"
    assert 0.0 < info["source_test_accuracy"] <= 1.0
    for side in (result.dense, result.pruned):
        assert 0.0 <= side["accuracy"] <= 1.0 and side["macs"] > 0 and side["params"] > 0
    assert result.pruned["macs"] == pytest.approx(0.1 * result.dense["macs"], rel=0.02)
    assert (tmp_path / "run" / "result.json").is_file()


def test_frozen_layers_are_not_pruned_unless_asked(tmp_path):
    common = ["+experiment=transfer_fmnist_to_mnist", "transfer.source_epochs=1", "transfer.source.batch_size=512",
              f"dense.cache_dir={tmp_path / 'dense'}", "target.macs=0.3", "transfer.freeze=[conv1]", *TINY]
    kept = run(compose_config(common), tmp_path / "frozen")
    conv1 = next(layer for layer in kept.layers if layer["name"] == "model.conv1")
    assert conv1["after"] == conv1["before"] == 20 and kept.config["transfer"]["frozen"] == ["conv1"]
    pruned = run(compose_config([*common, "transfer.prune_frozen=true"]), tmp_path / "pruned")
    assert next(layer for layer in pruned.layers if layer["name"] == "model.conv1")["after"] < 20


@pytest.mark.parametrize(("override", "match"), [
    ("transfer.freeze=[convX]", "convX"),
    ("transfer.source_epochs=0", "source_epochs"),
])
def test_bad_transfer_settings_fail_before_training(tmp_path, override, match):
    cfg = compose_config(["+experiment=transfer_fmnist_to_mnist", f"dense.cache_dir={tmp_path / 'dense'}",
                          override, *TINY])
    with pytest.raises(ValueError, match=match):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "dense").exists()  # refused before the source model trains


def test_reverse_gradient_flips_and_scales_the_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    reverse_gradient(x, 0.3).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.3))


def test_dann_never_reads_target_labels_and_says_when_its_features_were_pruned():
    model = DANN(build_model("lenet5"))
    xs, ys = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    xt = torch.randn(3, 1, 28, 28)
    loss = model.training_step({"source": (xs, ys), "target": (xt,)}, 0)  # target batches hold no labels
    loss.backward()
    assert torch.isfinite(loss) and model.domain[0].weight.grad is not None
    model.model.fc1, model.model.fc2 = nn.Linear(800, 300), nn.Linear(300, 10)  # as if fc1's outputs were pruned
    with pytest.raises(RuntimeError, match="ignored_layers"):
        model.training_step({"source": (xs, ys), "target": (xt,)}, 0)


def test_domain_data_refuses_mismatched_domains():
    from lightning_ssr.app.data import FashionMNIST, UCIDigits

    class Color(UCIDigits):
        in_channels = 3
    with pytest.raises(ValueError, match="differ"):
        DomainAdaptationData(FashionMNIST(), Color())


def test_adaptation_experiment_end_to_end_reports_source_only_dense_and_compressed(tmp_path):
    cfg = compose_config(["+experiment=da_mnist_to_digits", f"dense.cache_dir={tmp_path / 'dense'}", *TINY])
    result = run(cfg, tmp_path / "run")
    info = result.config["adaptation"]
    assert result.status == "ok" and (info["source"], info["target"]) == ("MNISTDigits", "UCIDigits")
    assert 0.0 <= info["source_only_target_accuracy"] <= 1.0 and info["target_train_images_unlabeled"] > 1000
    assert 0.0 <= result.dense["accuracy"] <= 1.0 and 0.0 <= result.pruned["accuracy"] <= 1.0
    assert result.pruned["macs"] < 0.3 * result.dense["macs"]
    fc1 = next(layer for layer in result.layers if layer["name"] == "model.fc1")
    assert fc1["after"] == fc1["before"]  # the features the domain classifier reads keep their width
