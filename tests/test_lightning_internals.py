"""Lightning's private attributes, reached through one module: present in the installed version,
and a clear error naming the attribute and the version when one moves."""

import lightning
import pytest
import torch

from lightning_ssr import Pruning, PruningSchedule
from lightning_ssr import lightning_internals as internals
from tests.lit import TinyClassifier, loader, trainer


def test_the_installed_lightning_is_a_tested_version_and_has_every_attribute(tmp_path):
    assert ".".join(lightning.__version__.split(".")[:2]) in internals.TESTED
    fit = trainer(tmp_path, [], 1)
    internals.check(fit, TinyClassifier())


@pytest.mark.parametrize("owner,attr,named", [
    ("val_loop", "setup_data", "fit_loop.epoch_loop.val_loop.setup_data"),
    ("connector", "_loaded_checkpoint", "_CheckpointConnector._loaded_checkpoint"),
])
def test_a_missing_private_attribute_stops_the_fit_at_setup_naming_it_and_the_version(tmp_path, monkeypatch, owner,
                                                                                        attr, named):
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    callback = Pruning("ssr_l20", target={"macs": 0.5}, verbose=False,
                       schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=1))
    fit = trainer(tmp_path, [callback], 2)
    if owner == "val_loop":
        monkeypatch.delattr(type(fit.fit_loop.epoch_loop.val_loop), attr)
    else:
        monkeypatch.delattr(fit._checkpoint_connector, attr)
    with pytest.raises(internals.LightningInternalsError, match=named) as err:
        fit.fit(model, loader())
    assert lightning.__version__ in str(err.value) and "2.6" in str(err.value)
    assert fit.global_step == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_early_stopping_stopped_reads_the_reason_and_the_stopped_epoch():
    from lightning.pytorch.callbacks import EarlyStopping

    early = EarlyStopping(monitor="score", patience=3)
    assert not internals.early_stopping_stopped(early)
    early.stopped_epoch = 5  # under DDP, a rank that did not decide: its reason is unset, its stopped epoch set
    assert early.stopping_reason.name == "NOT_STOPPED" and internals.early_stopping_stopped(early)
    early.stopped_epoch = 0
    early.stopping_reason = type(early.stopping_reason)["STOPPING_THRESHOLD"]  # a stop in epoch 0
    assert internals.early_stopping_stopped(early)
