"""Datasets of image files (ImageFolder, ImageList) and the DataLoader over datasets: the labels,
the pixels, the order, the worker threads, the bounded prefetch and the errors, each checked
against values computed here."""
import os
import threading

import numpy as np
import pytest
from PIL import Image

from minicnn.data import ImageFolder, ImageList, image_transform
from minicnn.data.folder import Subset, split_indices
from minicnn.io.images import ImageReadError
from minicnn.train import DataLoader, default_collate


def _write(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def folder(tmp_path):
    """root/<class>/<n>.png: 3 classes (created out of order), 4 grey 6x6 images each, pixel value
    = 10 * class + image number, so every item says where it came from."""
    root = tmp_path / "imgs"
    for c in ("zebra", "ant", "moth"):
        for j in range(4):
            _write(str(root / c / f"{j}.png"), np.full((6, 6), 10 * "ant moth zebra".split().index(c) + j, np.uint8))
    (root / "moth" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    return root


def test_image_folder_classes_samples_and_pixels(folder):
    ds = ImageFolder(folder)
    assert ds.classes == ["ant", "moth", "zebra"]  # sorted, as torchvision; dot folders skipped
    assert ds.class_to_idx == {"ant": 0, "moth": 1, "zebra": 2}
    assert len(ds) == 12 and ds.targets == [0] * 4 + [1] * 4 + [2] * 4
    assert [os.path.relpath(p, folder) for p, _ in ds.samples[4:6]] == [os.path.join("moth", "0.png"),
                                                                         os.path.join("moth", "1.png")]
    for i in range(12):
        x, y = ds[i]
        assert x.dtype == np.float32 and x.shape == (3, 6, 6)
        np.testing.assert_array_equal(x, np.float32(10 * (i // 4) + i % 4) / np.float32(255))
        assert y == i // 4 and y.dtype == np.int64


def test_image_folder_is_lazy_and_names_unreadable_files(folder):
    ds = ImageFolder(folder)
    (folder / "ant" / "2.png").write_bytes(b"\x89PNG broken")
    ds[0]  # other files are fine
    with pytest.raises(ImageReadError, match=r"ant.2\.png"):
        ds[2]
    os.remove(folder / "zebra" / "3.png")
    with pytest.raises(ImageReadError, match=r"zebra.3\.png.*no such file"):
        ds[11]


def test_image_folder_errors(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    _write(str(tmp_path / "flat" / "a.png"), np.zeros((2, 2), np.uint8))
    with pytest.raises(FileNotFoundError, match="no class folders"):
        ImageFolder(tmp_path / "flat")
    (folder / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*holds no images"):
        ImageFolder(folder)


def test_image_transform_resizes_and_normalises(folder):
    ds = ImageFolder(folder, transform=image_transform(4, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
                     target_transform=lambda t: t + 100)
    x, y = ds[5]
    assert x.shape == (3, 4, 4) and y == 101
    np.testing.assert_allclose(x, (11 / 255 - 0.5) / 0.25, rtol=1e-6)
    g = image_transform(4, mean=None, grayscale=True)(Image.fromarray(np.full((5, 5, 3), [0, 30, 60], np.uint8)))
    assert g.shape == (1, 4, 4)
    np.testing.assert_allclose(g, 30 / 255, rtol=1e-6)


def test_image_list_single_multi_and_regression(folder):
    paths = [folder / "ant" / "0.png", folder / "moth" / "1.png", folder / "zebra" / "2.png"]
    single = ImageList(paths, ["cat", "ant", "cat"])
    assert single.kind == "single" and single.classes == ["ant", "cat"]
    assert [int(single[i][1]) for i in range(3)] == [1, 0, 1]
    np.testing.assert_array_equal(single[1][0], np.float32(11) / np.float32(255))
    multi = ImageList(list(zip(paths, [[0, 2], [], [1]])), num_classes=4)
    assert multi.kind == "multi" and multi.classes == [0, 1, 2, 3]
    np.testing.assert_array_equal(np.stack([multi[i][1] for i in range(3)]),
                                  [[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    reg = ImageList(paths, [0.5, 1.5, -2.0])
    assert reg.kind == "regression" and reg[2][1].dtype == np.float32 and float(reg[2][1]) == -2.0
    reg2 = ImageList(paths, [[0.5, 1.0], [1.5, 2.0], [0.0, 0.0]], kind="regression")
    np.testing.assert_array_equal(reg2[1][1], [1.5, 2.0])
    xb, yb = next(iter(DataLoader(multi, batch_size=3)))
    assert xb.shape == (3, 3, 6, 6) and yb.shape == (3, 4)
    with pytest.raises(ValueError, match="3 paths but 2 labels"):
        ImageList(paths, [0, 1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        ImageList(paths, [0, 1, 5], num_classes=2)


class Numbers:
    """Item i is (an array filled with i, i); counts reads and remembers the threads reading."""

    def __init__(self, n, shape=(2, 3)):
        self.n, self.shape, self.reads, self.threads = n, shape, 0, set()
        self.lock = threading.Lock()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        with self.lock:
            self.reads += 1
            self.threads.add(threading.get_ident())
        return np.full(self.shape, i, np.float32), np.int64(i)


def _add_noise(xb, rng):
    return xb + rng.standard_normal(xb.shape).astype(np.float32)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_dataset_batches_equal_the_array_loader_batches(workers):
    ds = Numbers(23)
    X = np.stack([ds[i][0] for i in range(23)])
    y = np.arange(23)
    ref = DataLoader(X, y, batch_size=5, shuffle=True, seed=4)
    got = DataLoader(ds, batch_size=5, shuffle=True, seed=4, num_workers=workers)
    assert len(got) == len(ref) == 5 and got.num_samples == 23
    for epoch in range(2):  # a new order every epoch, the same one as the array loader's
        for (xa, ya), (xb, yb) in zip(ref, got):
            np.testing.assert_array_equal(xb, xa)
            np.testing.assert_array_equal(yb, ya)
    dl = DataLoader(ds, batch_size=5, drop_last=True, num_workers=workers)
    assert [len(yb) for _, yb in dl] == [5, 5, 5, 5] and dl.num_samples == 20


def test_workers_give_the_same_augmented_batches_as_no_workers():
    runs = []
    for workers in (0, 4):
        ds = Numbers(40)
        dl = DataLoader(ds, batch_size=4, shuffle=True, seed=9, transform=_add_noise, num_workers=workers)
        runs.append([xb for xb, _ in dl])
        if workers:
            # read in the worker threads, never the caller's (how many workers took a share is up
            # to the scheduler: with items this cheap one worker may take them all)
            assert ds.threads and threading.get_ident() not in ds.threads
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(runs[0][0], np.round(runs[0][0]))  # the noise was applied


def test_prefetch_is_bounded():
    ds = Numbers(400)
    dl = DataLoader(ds, batch_size=4, num_workers=2, prefetch_factor=3)
    for b, (xb, yb) in enumerate(dl, start=1):
        # consumed b batches; at most 2 * 3 more may be loading or waiting
        assert ds.reads <= (b + 6) * 4
        if b == 10:
            break
    assert ds.reads <= 16 * 4


def test_collate_and_worker_errors(folder):
    ds = Numbers(6)

    def collate(samples):
        return default_collate(samples)[0].sum(axis=(1, 2)), [s[1] for s in samples]

    xb, yb = next(iter(DataLoader(ds, batch_size=3, collate=collate)))
    np.testing.assert_array_equal(xb, [0, 6, 12])
    assert yb == [0, 1, 2]
    (folder / "moth" / "3.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"moth.3\.png.*empty"):
        list(DataLoader(ImageFolder(folder), batch_size=4, num_workers=2))
    with pytest.raises(ValueError, match="num_workers must be a non-negative integer"):
        DataLoader(ds, num_workers=-1)
    with pytest.raises(ValueError, match="collate and num_workers apply to a dataset"):
        DataLoader(np.zeros((3, 1)), np.zeros(3), num_workers=2)


def test_stratified_split_and_subset():
    targets = [0] * 10 + [1] * 5 + [2] * 2
    tr, va = split_indices(targets, 0.2, seed=1)
    assert sorted(tr + va) == list(range(17)) and not set(tr) & set(va)
    assert [sum(targets[i] == c for i in va) for c in range(3)] == [2, 1, 1]
    assert split_indices(targets, 0.2, seed=1) == (tr, va)
    sub = Subset(Numbers(17), va)
    assert len(sub) == len(va) and [int(sub[i][1]) for i in range(len(sub))] == va
