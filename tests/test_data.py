import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganops.config import DataParams
from ganops.data import DataError, fit_square, load_prepared, manifest, prepare, save_prepared

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _png(path: Path, img: Image.Image, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def test_digits_source_scaled_with_labels():
    d = prepare(DataParams(source="digits", image_size=32))
    assert d.images.shape == (1797, 1, 32, 32) and d.images.dtype == torch.uint8
    assert d.labels.shape == (1797,) and set(d.labels.tolist()) == set(range(10))
    assert d.images.max() > 200 and d.images.min() == 0
    man = manifest(d)
    assert man["count"] == 1797 and man["channels"] == 1 and man["image_size"] == 32
    assert sum(man["per_class"].values()) == 1797 and man["per_class"]["0"] == 178


def test_digits_rgb_and_limit():
    d = prepare(DataParams(source="digits", image_size=16, channels=3, limit=50))
    assert d.images.shape == (50, 3, 16, 16)
    assert torch.equal(d.images[:, 0], d.images[:, 2])  # grey replicated


def test_content_hash_changes_with_pixels(tmp_path):
    d = prepare(DataParams(source="digits", image_size=16, limit=20))
    h1 = manifest(d)["content_hash"]
    d.images[0, 0, 0, 0] ^= 1
    assert manifest(d)["content_hash"] != h1


def _write_idx(raw: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    with gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x0803, n, h, w) + images.astype(np.uint8).tobytes())
    with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x0801, n) + labels.astype(np.uint8).tobytes())


def test_mnist_from_idx_files_test_split_only(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = np.arange(30) % 10
    _write_idx(tmp_path / "MNIST" / "raw", "t10k", imgs, labels)
    d = prepare(DataParams(source="mnist", root=str(tmp_path), split="test", image_size=32))
    assert d.images.shape == (30, 1, 32, 32)
    # the pixels are the file's, only resized
    assert torch.equal(d.images, fit_square(torch.from_numpy(imgs)[:, None], 32))
    assert d.labels.tolist() == labels.tolist()


def test_fashion_mnist_layout(tmp_path):
    _write_idx(tmp_path / "FashionMNIST" / "raw", "train", np.zeros((4, 28, 28)), np.array([0, 1, 9, 9]))
    d = prepare(DataParams(source="fashion-mnist", root=str(tmp_path), image_size=32))
    assert d.classes[9] == "Ankle boot" and manifest(d)["per_class"]["Ankle boot"] == 2


def test_mnist_missing_says_which_files_where(tmp_path):
    with pytest.raises(DataError) as e:
        prepare(DataParams(source="mnist", root=str(tmp_path), split="train"))
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg and "download: true" in msg


def test_cifar10_missing_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        prepare(DataParams(source="cifar10", root=str(tmp_path)))


@pytest.mark.skipif(not (SHARED_MNIST / "MNIST" / "raw").is_dir(), reason="shared MNIST test split absent")
def test_real_mnist_test_split():
    d = prepare(DataParams(source="mnist", root=str(SHARED_MNIST), split="test", image_size=32))
    assert d.images.shape == (10000, 1, 32, 32)
    assert manifest(d)["per_class"]["1"] == 1135  # the well-known count of 1s in MNIST's test split


def _make_messy_folder(root: Path) -> None:
    rng = np.random.default_rng(1)
    noise = lambda h, w, c=3: rng.integers(0, 256, (h, w, c), dtype=np.uint8)  # noqa: E731
    _png(root / "good.png", Image.fromarray(noise(40, 50)))
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (255, 0, 0, 255)  # left: opaque red; right: fully transparent
    _png(root / "rgba.png", Image.fromarray(rgba, "RGBA"))
    _png(root / "palette.gif", Image.fromarray(noise(32, 32)).convert("P"))
    pal = Image.fromarray(noise(32, 32)).convert("P")
    _png(root / "pal_transparent.png", pal, transparency=0)
    _png(root / "gray16.png", Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)))
    _png(root / "sub" / "gray.bmp", Image.fromarray(noise(20, 30, 1)[:, :, 0], "L"))
    frames = [Image.fromarray(np.full((24, 24, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    (root / "empty.png").write_bytes(b"")
    (root / "corrupt.png").write_bytes(b"\x89PNG not really" + bytes(100))
    buf = root / "full.jpg"
    Image.fromarray(noise(64, 64)).save(buf, quality=90)
    (root / "truncated.jpg").write_bytes(buf.read_bytes()[:300])
    buf.unlink()
    _png(root / "tiny.png", Image.fromarray(noise(8, 8)))
    (root / "notes.txt").write_text("not a picture")
    (root / ".DS_Store").write_bytes(b"\x00\x01")


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_folder_reports_every_bad_file_and_keeps_the_rest(tmp_path):
    root = tmp_path / "own"
    _make_messy_folder(root)
    before = _tree_digest(root)
    d = prepare(DataParams(source="folder", root=str(root), image_size=16, min_side=16))
    assert _tree_digest(root) == before  # the user's folder is never modified
    reasons = {row["file"]: row["reason"] for row in d.skipped}
    assert set(reasons) == {"empty.png", "corrupt.png", "truncated.jpg", "tiny.png", "notes.txt"}
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert reasons["corrupt.png"].startswith("not an image")
    assert reasons["notes.txt"].startswith("not an image")
    assert reasons["truncated.jpg"].startswith("corrupt or truncated")
    assert reasons["tiny.png"] == "too small (8x8; data.min_side is 16)"
    # 7 usable: good, rgba, palette, pal_transparent, gray16, anim, sub/gray
    assert d.images.shape == (7, 3, 16, 16) and d.images.dtype == torch.uint8
    # "sub" is a subfolder, so labels are per top-level folder: sub vs the root's own name
    assert d.classes == ["own", "sub"] and d.labels.tolist().count(1) == 1


def test_folder_conversions_are_deterministic(tmp_path):
    root = tmp_path / "imgs"
    _make_messy_folder(root)
    p = DataParams(source="folder", root=str(root), image_size=16)
    a, b = prepare(p), prepare(p)
    assert torch.equal(a.images, b.images)
    files = sorted(f.name for f in root.rglob("*") if f.is_file() and not f.name.startswith("."))
    usable = [
        f for f in files if f not in {"empty.png", "corrupt.png", "truncated.jpg", "tiny.png", "notes.txt"}
    ]
    idx = {name: i for i, name in enumerate(sorted(usable, key=lambda n: (n == "gray.bmp", n)))}
    rgba = a.images[idx["rgba.png"]]  # left half red, right half transparent -> white background
    assert rgba[:, :, :6].float().mean(dim=(1, 2)).tolist() == pytest.approx([255, 0, 0], abs=2)
    assert rgba[:, :, -6:].min() >= 250
    anim = a.images[idx["anim.gif"]]
    assert anim.float().mean() == pytest.approx(10, abs=2)  # the first frame, not the second
    g16 = a.images[idx["gray16.png"]]
    assert g16.max() > 100  # 16-bit range mapped to 8-bit, not clipped to black/white


def test_folder_exif_orientation_applied(tmp_path):
    root = tmp_path / "exif"
    rng = np.random.default_rng(2)
    img = Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8))  # 40 wide, 20 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    _png(root / "tagged.png", img, exif=exif)
    _png(tmp_path / "upright" / "rotated.png", img.transpose(Image.Transpose.ROTATE_270))
    tagged = prepare(DataParams(source="folder", root=str(root), image_size=16))
    upright = prepare(DataParams(source="folder", root=str(tmp_path / "upright"), image_size=16))
    assert torch.equal(tagged.images, upright.images)


def test_folder_subfolders_become_classes(tmp_path):
    for cls, n in (("cats", 3), ("dogs", 2)):
        for i in range(n):
            _png(tmp_path / "pets" / cls / f"{i}.png", Image.new("RGB", (20, 20), (i * 40, 0, 0)))
    d = prepare(DataParams(source="folder", root=str(tmp_path / "pets"), image_size=16, channels=1))
    assert d.classes == ["cats", "dogs"] and d.labels.tolist() == [0, 0, 0, 1, 1]
    assert d.images.shape == (5, 1, 16, 16)


def test_folder_without_usable_images_is_an_error(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no usable images"):
        prepare(DataParams(source="folder", root=str(tmp_path / "junk")))
    with pytest.raises(DataError, match="image folder not found"):
        prepare(DataParams(source="folder", root=str(tmp_path / "missing")))


def test_save_and_load_prepared(tmp_path):
    d = prepare(DataParams(source="digits", image_size=16, limit=40))
    man = save_prepared(d, tmp_path / "prepared")
    images, labels, man2 = load_prepared(tmp_path / "prepared")
    assert torch.equal(images, d.images) and torch.equal(labels, d.labels) and man == man2
    assert (tmp_path / "prepared" / "report.json").is_file()
    with pytest.raises(DataError, match="ganops prepare"):
        load_prepared(tmp_path / "nothing")


def test_pixels_and_content_hash_travel_together(tmp_path):
    # A kill between writing dataset.pt and manifest.json must not pair new pixels with the old hash.
    out = tmp_path / "prepared"
    old = save_prepared(prepare(DataParams(image_size=16, limit=20)), out)
    stale_manifest = (out / "manifest.json").read_text()
    new = save_prepared(prepare(DataParams(image_size=16, limit=30)), out)
    assert new["content_hash"] != old["content_hash"]
    (out / "manifest.json").write_text(stale_manifest)  # as if the writer died after dataset.pt
    (out / ".dataset.pt.dead.tmp").write_bytes(b"half")  # and a half-written temp of the next write
    images, _, man = load_prepared(out)
    assert len(images) == 30 and man["content_hash"] == new["content_hash"]
    save_prepared(prepare(DataParams(image_size=16, limit=30)), out)
    assert not (out / ".dataset.pt.dead.tmp").exists()


def test_folder_reads_webp_and_tiff_as_the_readme_says(tmp_path):
    root = tmp_path / "pics"
    red = Image.fromarray(np.full((20, 30, 3), (255, 0, 0), np.uint8))
    blue = Image.fromarray(np.full((30, 20, 3), (0, 0, 255), np.uint8))
    _png(root / "a.webp", red, lossless=True)
    _png(root / "b.tif", blue)
    _png(root / "c.tiff", red)
    d = prepare(DataParams(source="folder", root=str(root), image_size=16))
    assert len(d.images) == 3 and not d.skipped
    means = d.images.float().mean(dim=(2, 3))  # (3, C): file order a.webp, b.tif, c.tiff
    assert means[0, 0] > 250 and means[0, 2] < 5 and means[1, 2] > 250 and means[1, 0] < 5


def _wide_picture() -> np.ndarray:
    """96 x 32: a red left third, a blue right third, and a centre square of 4 vertical 8-px stripes
    (green, white, green, white). Resize-then-crop keeps exactly the 4 stripes, at 4 px each at 16 px;
    squashing would keep the red and blue, cropping without a resize would keep only 2 stripes."""
    a = np.zeros((32, 96, 3), np.uint8)
    a[:, :32] = (255, 0, 0)
    a[:, 64:] = (0, 0, 255)
    for i, colour in enumerate([(0, 255, 0), (255, 255, 255)] * 2):
        a[:, 32 + 8 * i : 40 + 8 * i] = colour
    return a


@pytest.mark.parametrize("tall", [False, True])
def test_folder_non_square_is_resized_on_its_shorter_side_and_centre_cropped(tmp_path, tall):
    a = _wide_picture()
    if tall:
        a = a.transpose(1, 0, 2).copy()  # 32 x 96: stripes become horizontal bands
    _png(tmp_path / "pics" / "x.png", Image.fromarray(a))
    d = prepare(DataParams(source="folder", root=str(tmp_path / "pics"), image_size=16))
    assert d.images.shape == (1, 3, 16, 16)
    img = d.images[0].permute(1, 2, 0).int()  # (16, 16, RGB)
    if tall:
        img = img.transpose(0, 1)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    assert not ((r > 128) & (g < 128)).any() and not ((b > 128) & (g < 128)).any()  # no red or blue edge
    for col, white in (
        (1, False),
        (2, False),
        (5, True),
        (6, True),
        (9, False),
        (10, False),
        (13, True),
        (14, True),
    ):
        px = img[:, col]
        assert (px[:, 1] > 240).all(), (col, px)
        assert ((px[:, 0] > 240) if white else (px[:, 0] < 15)).all(), (col, px)
