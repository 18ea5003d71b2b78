"""Augmentations: exact geometry (flips, quarter turns, shifts, zoom and shear of known points),
bilinear warps against scipy's reference, resize against PyTorch, and the random transforms'
reproducibility and DataLoader use."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minicnn import augment as A


def _batch(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _dot(h, w, r, c, batch=True):
    x = np.zeros((1, 1, h, w) if batch else (1, h, w), np.float32)
    x[..., r, c] = 1.0
    return x


# -- flips ---------------------------------------------------------------------------------------

@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7), seed=st.integers(0, 99))
def test_flip_twice_is_identity(n, c, h, w, seed):
    x = _batch((n, c, h, w), seed)
    assert np.array_equal(A.hflip(A.hflip(x)), x)
    assert np.array_equal(A.vflip(A.vflip(x)), x)
    assert np.array_equal(A.hflip(x), x[..., ::-1])
    assert np.array_equal(A.vflip(x)[:, :, 0], x[:, :, -1])


def test_random_flip_p1_and_p0():
    x = _batch((4, 2, 3, 5))
    assert np.array_equal(A.RandomHorizontalFlip(p=1.0)(x), x[..., ::-1])
    assert np.array_equal(A.RandomVerticalFlip(p=1.0)(x), x[..., ::-1, :])
    assert np.array_equal(A.RandomHorizontalFlip(p=0.0)(x), x)


def test_random_flip_is_per_sample():
    x = np.repeat(_batch((1, 1, 4, 4)), 64, axis=0)
    y = A.RandomHorizontalFlip(p=0.5, rng=1)(x)
    flipped = np.array([np.array_equal(s, x[0][..., ::-1]) for s in y])
    kept = np.array([np.array_equal(s, x[0]) for s in y])
    assert np.all(flipped | kept)
    assert 10 < flipped.sum() < 54


# -- rotations ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 4, 5, 8])
def test_rotate_quarter_turns_equal_rot90(size):
    x = _batch((2, 3, size, size))
    for k in (1, 2, 3, -1):
        assert np.array_equal(A.rotate(x, 90 * k), np.rot90(x, k, axes=(-2, -1))), k
    assert np.array_equal(A.rotate(x, 360), x)
    assert np.array_equal(A.rotate(x[0], 90), np.rot90(x[0], 1, axes=(-2, -1)))  # a single CHW image


def test_rotate_half_turn_of_non_square_is_double_flip():
    x = _batch((1, 2, 5, 8))
    assert np.array_equal(A.rotate(x, 180), x[..., ::-1, ::-1])


def test_rotate_moves_a_point_counter_clockwise():
    # centre (3, 3); a point 2 rows above the centre goes to 2 columns left of it after +90 degrees
    y = A.rotate(_dot(7, 7, 1, 3), 90)
    assert np.argwhere(y[0, 0] > 0.5).tolist() == [[3, 1]]


# -- shifts ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dy,dx", [(2, 1), (-3, 0), (0, -2), (4, 4), (-1, 3)])
def test_shift_moves_a_bright_pixel(dy, dx):
    x = _dot(8, 9, 3, 4)
    y = A.shift(x, dy, dx)
    assert np.argwhere(y[0, 0] == 1.0).tolist() == [[3 + dy, 4 + dx]]
    assert y.sum() == 1.0
    # the interpolating path (affine with a translation) agrees exactly on whole pixels
    assert np.array_equal(A.affine(x, translate=(float(dy), float(dx))), y)


def test_shift_out_of_frame_and_fill():
    x = _dot(4, 4, 0, 0)
    assert not A.shift(x, -1, 0).any()
    y = A.shift(np.ones((1, 1, 4, 4), np.float32), 1, 0, fill=-1.0)
    assert np.array_equal(y[0, 0, 0], -np.ones(4)) and np.array_equal(y[0, 0, 1:], np.ones((3, 4)))


def test_fractional_shift_splits_the_pixel():
    y = A.shift(_dot(5, 5, 2, 2), 0, 0.5)
    assert np.allclose(y[0, 0, 2, 2:4], [0.5, 0.5]) and np.isclose(y.sum(), 1.0)


@given(dy=st.integers(-3, 3), dx=st.integers(-3, 3), seed=st.integers(0, 99))
def test_shift_there_and_back_restores_the_interior(dy, dx, seed):
    x = _batch((1, 2, 7, 7), seed)
    y = A.shift(A.shift(x, dy, dx), -dy, -dx)
    inner = (slice(None), slice(None), slice(max(0, -dy), 7 - max(0, dy)), slice(max(0, -dx), 7 - max(0, dx)))
    assert np.array_equal(y[inner], x[inner])


# -- zoom, shear, the general warp ----------------------------------------------------------------

@pytest.mark.parametrize("v", [(1, 1), (-2, 1), (0, -2), (2, 0)])
def test_zoom_maps_known_points(v):
    c = 4  # centre of a 9x9 image
    y = A.zoom(_dot(9, 9, c + v[0], c + v[1]), 2.0)
    # the point c + v lands on c + 2v: the output samples the input at c + (p - c) / 2 there
    assert y[0, 0, c + 2 * v[0], c + 2 * v[1]] == 1.0
    assert np.array_equal(A.zoom(_dot(9, 9, 2, 5), 1.0), _dot(9, 9, 2, 5))


def test_zoom_out_shrinks_the_content():
    x = np.ones((1, 1, 9, 9), np.float32)
    y = A.zoom(x, 0.5)
    assert y[0, 0, 4, 4] == 1.0 and y[0, 0, 0, 0] == 0.0 and y[0, 0, 0, 4] == 0.0


@pytest.mark.parametrize("r,c", [(1, 4), (6, 4), (4, 4), (2, 7)])
def test_shear_maps_known_points(r, c):
    # tan(45 deg) = 1: the point at row offset dr from the centre slides dr columns right
    y = A.shear(_dot(9, 9, r, c), 45.0)
    cc = c + (r - 4)
    if 0 <= cc < 9:
        assert np.isclose(y[0, 0, r, cc], 1.0, atol=1e-6)
        assert np.isclose(y.sum(), 1.0, atol=1e-6)
    else:
        assert np.allclose(y, 0.0, atol=1e-6)


def test_warp_matches_scipy_affine_transform():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(3).random((2, 3, 9, 7))
    m = A.affine_matrix(x.shape, angle=23.0, translate=(1.3, -0.7), scale=1.2, shear=10.0)
    y = A.warp(x, m, fill=0.25)
    for n in range(2):
        for c in range(3):
            ref = ndimage.affine_transform(x[n, c], m[:, :2], offset=m[:, 2], order=1, mode="grid-constant", cval=0.25)
            np.testing.assert_allclose(y[n, c], ref, atol=1e-12)


def test_warp_identity_and_per_sample_matrices():
    x = _batch((3, 2, 6, 5))
    eye = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    assert np.array_equal(A.warp(x, eye), x)
    ms = A.affine_matrix(x.shape, angle=[0.0, 90.0, 180.0])
    assert ms.shape == (3, 2, 3)
    y = A.warp(x, ms)
    assert np.array_equal(y[0], x[0]) and np.array_equal(y[2], x[2][..., ::-1, ::-1])
    with pytest.raises(ValueError, match=r"matrix must have shape \(2, 3\) or \(3, 2, 3\), got \(2, 2\)"):
        A.warp(x, np.eye(2))


def test_dtypes_are_kept():
    x8 = (np.arange(25, dtype=np.uint8) * 10).reshape(1, 5, 5)
    assert A.rotate(x8, 90).dtype == np.uint8
    assert np.array_equal(A.rotate(x8, 90), np.rot90(x8, 1, axes=(-2, -1)))
    assert A.zoom(_batch((1, 1, 4, 4)), 1.3).dtype == np.float32
    assert A.zoom(_batch((1, 1, 4, 4), dtype=np.float64), 1.3).dtype == np.float64


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        A.rotate(np.zeros(5), 10)
    with pytest.raises(ValueError, match="scale must be positive"):
        A.zoom(np.zeros((3, 3)), 0.0)
    with pytest.raises(ValueError, match=r"crop size \(9, 9\) is larger than the padded image \(6, 6\)"):
        A.RandomCrop(9, padding=1)(np.zeros((1, 1, 4, 4)))


# -- resize ------------------------------------------------------------------------------------

def test_resize_constant_and_identity():
    x = np.full((2, 3, 5, 7), 0.7, np.float32)
    assert np.allclose(A.resize(x, (11, 3)), 0.7)
    y = _batch((1, 2, 5, 7))
    assert np.array_equal(A.resize(y, (5, 7)), y)
    assert A.resize(y[0], 10).shape == (2, 10, 10)


@pytest.mark.torch
@pytest.mark.parametrize("size", [(3, 5), (14, 22), (20, 4), (1, 1)])
def test_resize_matches_torch_bilinear(size):
    torch = pytest.importorskip("torch")
    x = _batch((2, 3, 7, 11), 5)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(A.resize(x, size), ref.numpy(), rtol=1e-5, atol=1e-6)


# -- random transforms ------------------------------------------------------------------------

def test_random_crop_windows_come_from_the_padded_image():
    x = _batch((16, 2, 6, 6), 7)
    y = A.RandomCrop(6, padding=2, rng=0)(x)
    assert y.shape == x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    offsets = set()
    for n in range(16):
        hits = [(t, l) for t in range(5) for l in range(5) if np.array_equal(xp[n, :, t:t + 6, l:l + 6], y[n])]
        assert hits, n
        offsets.add(hits[0])
    assert len(offsets) > 3  # offsets are drawn per sample


def test_random_transforms_are_reproducible_and_per_sample():
    x = np.repeat(_batch((1, 1, 8, 8), 2), 6, axis=0)
    t = A.Compose([A.RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10),
                   A.RandomHorizontalFlip()])
    a = t(x, rng=np.random.default_rng(4))
    b = t(x, rng=np.random.default_rng(4))
    c = t(x, rng=np.random.default_rng(5))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])
    # a seed given at construction is used when the call passes none
    assert np.array_equal(A.RandomRotation(30, rng=3)(x), A.RandomRotation(30, rng=3)(x))


def test_random_shift_integer_moves_whole_pixels():
    x = np.repeat(_dot(9, 9, 4, 4), 20, axis=0)
    y = A.RandomShift(2, rng=0)(x)
    for s in y:
        (r, c), = np.argwhere(s[0] == 1.0).tolist()
        assert abs(r - 4) <= 2 and abs(c - 4) <= 2 and s.sum() == 1.0


def _ramps(n, size=17):
    """n copies of a horizontal ramp x[r, c] = c - centre (bilinear warps reproduce linear images exactly)."""
    c = size // 2
    return np.tile(np.arange(size, dtype=np.float64) - c, (size, 1))[None, None].repeat(n, 0), c


def test_random_zoom_scales_each_sample_by_a_factor_from_its_range():
    x, c = _ramps(12)
    y = A.RandomZoom((0.8, 1.2), rng=0)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    # zooming by s samples the input at c + (p - c) / s, so the ramp's slope becomes 1 / s
    inner = np.r_[c - 6:c, c + 1:c + 7]
    factors = x[:, 0][:, inner][:, :, inner] / y[:, 0][:, inner][:, :, inner]
    s = factors[:, 0, 0]
    np.testing.assert_allclose(factors, s[:, None, None] * np.ones_like(factors), rtol=1e-9)
    assert np.all((0.8 <= s) & (s <= 1.2))
    assert s.max() - s.min() > 0.15  # drawn per sample, and over the range
    assert len(np.unique(np.round(s, 9))) == len(s)
    np.testing.assert_array_equal(A.RandomZoom((1.0, 1.0), rng=0)(x), x)  # factor 1 is the identity


def test_random_shear_slides_each_row_by_its_offset_times_tan_angle():
    x, c = _ramps(12)
    y = A.RandomShear(15, rng=0)(x)
    # a horizontal shear by angle a moves row r by tan(a) * (r - c) columns: out = ramp - tan(a) * (r - c)
    rows = np.arange(c - 3, c + 4)
    cols = slice(2, -2)
    d = y[:, 0, rows, cols] - x[:, 0, rows, cols]
    t = -d[:, 0, 0] / (rows[0] - c)
    np.testing.assert_allclose(d, -t[:, None, None] * (rows - c)[None, :, None] * np.ones_like(d), atol=1e-9)
    angles = np.degrees(np.arctan(t))
    assert np.all(np.abs(angles) <= 15 + 1e-9) and angles.min() < -5 and angles.max() > 5
    # a vertical ramp does not change under a horizontal shear (away from the borders)
    v = np.swapaxes(x, 2, 3)
    np.testing.assert_allclose(A.RandomShear(15, rng=0)(v)[:, :, rows, cols], v[:, :, rows, cols], atol=1e-9)


def test_gaussian_noise_adds_zero_mean_noise_of_the_given_std():
    x = _batch((6, 3, 32, 32))  # drawn from default_rng(0): the noise must come from another stream
    y = A.GaussianNoise(0.1, rng=1)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    noise = (y.astype(np.float64) - x)
    # 18432 draws: the sample std is within 2% of 0.1 and the mean within 4 standard errors of 0
    assert abs(noise.std() - 0.1) < 0.002 and abs(noise.mean()) < 4 * 0.1 / np.sqrt(noise.size)
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.05  # fresh noise per sample
    assert abs(np.corrcoef(noise.ravel(), x.ravel())[0, 1]) < 0.05  # independent of the image
    np.testing.assert_array_equal(A.GaussianNoise(0.0, rng=0)(x), x)
    with pytest.raises(TypeError, match="needs floating input"):
        A.GaussianNoise(0.1, rng=0)(np.zeros((1, 1, 2, 2), np.uint8))


def test_compose_works_as_a_dataloader_transform():
    from minicnn.train import DataLoader

    X = _batch((10, 1, 8, 8))
    y = np.arange(10)
    aug = A.Compose([A.RandomCrop(8, padding=1), A.RandomHorizontalFlip()])
    batches1 = [xb for xb, _ in DataLoader(X, y, batch_size=4, seed=11, transform=aug)]
    batches2 = [xb for xb, _ in DataLoader(X, y, batch_size=4, seed=11, transform=aug)]
    assert [b.shape for b in batches1] == [(4, 1, 8, 8), (4, 1, 8, 8), (2, 1, 8, 8)]
    assert all(np.array_equal(a, b) for a, b in zip(batches1, batches2))
    assert not all(np.array_equal(a, X[i * 4:i * 4 + len(a)]) for i, a in enumerate(batches1))
