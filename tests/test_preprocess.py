"""cliprt.preprocess against the reference transform (open_clip / torchvision on PIL images).

Exact mode must match the reference tensor bit for bit: on synthetic images of awkward
sizes in every PIL mode a user may hand in, with each interpolation and resize mode, and on
the real photos of ../shared/data/imagenet-sample (a subset here; all 1000 in
benchmarks/preprocess_bench.py). Fast mode is checked for bounded deviation on photos of
>= 1024 px, made by upscaling the sample photos (PIL LANCZOS, JPEG quality 90). Bad input
must raise ImageError naming the item and the cause.

16-bit gray, "PA" and "La" images are compared with the reference applied to their 8-bit
rendition (`eight_bit`), and every mode Pillow decodes must work in both modes and agree.
Images whose whole-image resize exceeds the window bound are resized over the crop only:
they are checked against the full resize for the deviation the module notes state, and a
fresh interpreter must preprocess a 1 x 1,000,000 and a 1,000,000 x 1 PNG within 100 MB.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")
from PIL import ImageFile, ImageOps, features  # noqa: E402

from cliprt.models import ImageSpec  # noqa: E402
from cliprt.preprocess import (DEFAULT_MAX_PIXELS, ImageError, Preprocessor, _transposed_box,  # noqa: E402
                               crop_offset, describe_item, resized_size)

IMAGENET_SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                               "imagenet-sample")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

SIZES = [(1, 1), (3, 500), (500, 3), (224, 224), (225, 224), (1023, 767)]   # PIL (width, height)
MODES = ["RGB", "L", "P", "P+trns", "P+trns-bytes", "RGBA", "LA", "CMYK", "I;16", "1", "I", "F", "PA", "La"]


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread():
    """The reference runs tiny torch ops per image; on a busy machine torch's thread pool
    makes them slower, not faster."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def spec_of(resize_mode="shortest", size=(224, 224), resize_size=224, interpolation="bicubic",
            mean=OPENAI_MEAN, std=OPENAI_STD, channel_order="RGB") -> ImageSpec:
    return ImageSpec(size=size, resize_mode=resize_mode, resize_size=resize_size, interpolation=interpolation,
                     antialias=True, mean=mean, std=std, channel_order=channel_order)


# Specs the parity tests run, with the reference each is compared against.
CLIP_BICUBIC = spec_of()                                           # open_clip image_transform
CLIP_BILINEAR = spec_of(interpolation="bilinear")                  # open_clip image_transform
SQUASH = spec_of("squash", interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)  # SigLIP-style
TIMM = spec_of(resize_size=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))  # Resize(256)+Crop(224)
NEAREST = spec_of(interpolation="nearest")
SQUASH_BILINEAR = spec_of("squash", interpolation="bilinear")


def reference(spec: ImageSpec):
    """The reference transform for a spec: open_clip's own eval transform where open_clip can
    express the spec, else the same torchvision chain (Resize, CenterCrop, RGB, ToTensor,
    Normalize) it builds."""
    open_clip = pytest.importorskip("open_clip")
    from open_clip.transform import MaybeConvertMode, MaybeToTensor
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize

    h, w = spec.size
    if (spec.interpolation in ("bicubic", "bilinear") and h == w
            and (spec.resize_mode == "squash" or spec.resize_size == h)):
        t = open_clip.image_transform(h, is_train=False, mean=spec.mean, std=spec.std,
                                      resize_mode=spec.resize_mode, interpolation=spec.interpolation)
    else:
        interp = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                  "nearest": InterpolationMode.NEAREST}[spec.interpolation]
        steps = ([Resize((h, w), interpolation=interp)] if spec.resize_mode == "squash"
                 else [Resize(spec.resize_size, interpolation=interp), CenterCrop((h, w))])
        t = Compose(steps + [MaybeConvertMode(), MaybeToTensor(), Normalize(spec.mean, spec.std)])

    def run(im):
        out = t(im).numpy()
        return out[::-1] if spec.channel_order == "BGR" else out
    return run


def eight_bit(im: Image.Image) -> Image.Image:
    """The image exact mode applies the reference to (module notes): 16-bit gray keeps its
    high byte, PA becomes RGBA, La becomes LA; every other mode as it is."""
    if im.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(im).astype(np.uint32) // 256).astype(np.uint8))
    if im.mode in ("PA", "La"):
        return im.convert({"PA": "RGBA", "La": "LA"}[im.mode])
    return im


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape, what
    diff = np.abs(got - want)
    assert diff.max() == 0.0, f"{what}: max |diff| {diff.max():.3g} at {np.unravel_index(diff.argmax(), diff.shape)}"


def synthetic(mode: str, size, seed: int = 0) -> Image.Image:
    """A noise image of `size` (w, h) in `mode` (P+trns: palette with a transparent index;
    P+trns-bytes: per-entry palette alpha)."""
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-300, 600, (h, w), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.uniform(-50, 300, (h, w)).astype(np.float32))
    if mode in ("RGBA", "LA", "La"):
        a = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        return Image.fromarray(a).convert(mode)
    if mode == "PA":
        return synthetic("P", size, seed).convert("PA")
    if mode.startswith("P"):
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").convert("P")
        im.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        if mode == "P+trns":
            im.info["transparency"] = 7
        elif mode == "P+trns-bytes":
            im.info["transparency"] = rng.integers(0, 256, 256, dtype=np.uint8).tobytes()
        return im
    return rgb.convert(mode)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def sample_photos(step: int = 1):
    if not os.path.isdir(IMAGENET_SAMPLE):
        pytest.skip(f"real photos not found at {os.path.abspath(IMAGENET_SAMPLE)} (../shared is absent)")
    files = sorted(f for f in os.listdir(IMAGENET_SAMPLE) if f.endswith(".JPEG"))
    return [os.path.join(IMAGENET_SAMPLE, f) for f in files[::step]]


def upscaled(paths, folder, short: int = 1024):
    """The photos upscaled (LANCZOS) so the short side is `short`, re-encoded as JPEG q90."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
        k = short / min(im.size)
        big = im.resize((round(im.width * k), round(im.height * k)), Image.Resampling.LANCZOS)
        dst = os.path.join(folder, os.path.basename(p))
        big.save(dst, "JPEG", quality=90)
        out.append(dst)
    return out


# ---------------------------------------------------------------------------- geometry


def test_resized_size_and_crop_offset_follow_torchvision():
    tv = pytest.importorskip("torchvision.transforms.functional")
    for w, h in [(1, 1), (3, 500), (500, 3), (224, 224), (225, 224), (1023, 767), (767, 1023), (630, 626)]:
        for short in (1, 224, 256, 337):
            want_h, want_w = tv._compute_resized_output_size((h, w), [short])
            assert resized_size(w, h, short) == (want_w, want_h)
    assert crop_offset(225, 224) == 0 and crop_offset(227, 224) == 2 and crop_offset(226, 224) == 1


# ---------------------------------------------------------------------------- exact parity


def _parity_specs(size):
    if max(size) / min(size) > 10:       # 224 x 37333 intermediates: the slow cases, fewer specs
        return [CLIP_BICUBIC, SQUASH_BILINEAR]
    return [CLIP_BICUBIC, CLIP_BILINEAR, NEAREST, SQUASH, TIMM]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", MODES)
def test_exact_matches_reference_on_synthetic_images(mode, size):
    im = synthetic(mode, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about palette transparency as bytes
        for spec in _parity_specs(size):
            assert_same(Preprocessor(spec)(im), reference(spec)(eight_bit(im)), f"{mode} {size} {spec.resize_mode} "
                        f"{spec.resize_size}->{spec.size} {spec.interpolation}")


@pytest.mark.parametrize("mode,fmt", [("RGB", "PNG"), ("L", "PNG"), ("P+trns", "PNG"), ("RGBA", "PNG"),
                                      ("LA", "PNG"), ("I;16", "PNG"), ("1", "PNG"), ("CMYK", "JPEG"),
                                      ("CMYK", "TIFF"), ("RGB", "JPEG"), ("L", "JPEG"), ("RGB", "WEBP"),
                                      ("RGB", "BMP"), ("P", "GIF")])
def test_exact_matches_reference_on_encoded_images(mode, fmt, tmp_path):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    data = encode(synthetic(mode, (301, 217), seed=3), fmt)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    ref = reference(TIMM)
    with Image.open(io.BytesIO(data)) as im:
        want = ref(eight_bit(im))
    pre = Preprocessor(TIMM)
    for item in (str(path), path, data, bytearray(data), memoryview(data)):
        assert_same(pre(item), want, f"{mode} as {fmt}, item {type(item).__name__}")


@pytest.mark.parametrize("shape", [(37, 51), (37, 51, 1), (37, 51, 3), (37, 51, 4)])
def test_arrays_match_reference_of_fromarray(shape, rng):
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    im = Image.fromarray(a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a)
    assert_same(Preprocessor(CLIP_BICUBIC)(a), reference(CLIP_BICUBIC)(im), f"array {shape}")
    strided = np.asarray(a[::-1, ::2])  # a non-contiguous view
    im2 = Image.fromarray(np.ascontiguousarray(strided[:, :, 0] if strided.ndim == 3 and shape[-1] == 1
                                               else strided))
    assert_same(Preprocessor(SQUASH)(strided), reference(SQUASH)(im2), f"strided array {shape}")


@pytest.mark.parametrize("mode", ["RGB", "P", "LA"])
def test_crop_larger_than_resized_image_pads_like_torchvision(mode):
    # a non-square crop wider than the resized image: torchvision pads with 0 before cropping
    spec = spec_of(size=(224, 320), resize_size=224)
    for size in [(500, 375), (375, 500), (3, 40)]:
        im = synthetic(mode, size, seed=5)
        assert_same(Preprocessor(spec)(im), reference(spec)(im), f"{mode} {size} padded crop")


def test_bgr_channel_order_and_mean_std():
    spec = spec_of(resize_size=240, mean=(0.1, 0.2, 0.3), std=(0.9, 0.5, 0.25), channel_order="BGR")
    im = synthetic("RGB", (333, 250), seed=2)
    assert_same(Preprocessor(spec)(im), reference(spec)(im), "BGR")


def test_exact_matches_reference_on_real_photos():
    paths = sample_photos(step=40)
    for spec in (CLIP_BICUBIC, SQUASH, TIMM):
        pre, ref = Preprocessor(spec), reference(spec)
        for p in paths:
            with Image.open(p) as im:
                want = ref(im)
            assert_same(pre(p), want, f"{os.path.basename(p)} {spec.resize_mode} {spec.resize_size}")


def test_exif_orientation_ignored_by_default_applied_on_request():
    im = synthetic("RGB", (320, 200), seed=9)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(im, "JPEG", exif=exif.tobytes(), quality=95)
    ref = reference(TIMM)
    with Image.open(io.BytesIO(data)) as a:
        plain = ref(a)
    with Image.open(io.BytesIO(data)) as a:
        turned = ref(ImageOps.exif_transpose(a))
    assert_same(Preprocessor(TIMM)(data), plain, "exif ignored")
    assert_same(Preprocessor(TIMM, exif_transpose=True)(data), turned, "exif applied")


# ---------------------------------------------------------------------------- API


def test_into_writes_a_batch_slot_and_shapes():
    pre = Preprocessor(spec_of(size=(96, 128), resize_size=100))
    assert pre.shape == (3, 96, 128)
    batch = np.full((3,) + pre.shape, np.nan, dtype=np.float32)
    items = [synthetic("RGB", (200, 150), seed=i) for i in range(3)]
    pre.into(items[1], batch[1])
    assert np.isnan(batch[0]).all() and np.isnan(batch[2]).all()
    np.testing.assert_array_equal(batch[1], pre(items[1]))
    for bad in (np.zeros((3, 96, 128), np.float64), np.zeros((3, 128, 96), np.float32), [0.0]):
        with pytest.raises(ValueError, match="out must be a float32 array of shape"):
            pre.into(items[0], bad)
    ro = np.zeros(pre.shape, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        pre.into(items[0], ro)


def test_pixels_and_load():
    data = encode(synthetic("P+trns", (90, 70), seed=4), "PNG")
    pre = Preprocessor(spec_of(size=(32, 32), resize_size=40))
    im = pre.load(data)
    assert im.mode == "P" and im.size == (90, 70)
    np.asarray(im)  # usable after the source was closed
    px = pre.pixels(data)
    assert px.dtype == np.uint8 and px.shape == (32, 32, 3)
    want = (px.transpose(2, 0, 1).astype(np.float32) / np.float32(255) - pre._mean) / pre._std
    np.testing.assert_array_equal(pre(data), want)


def test_threads_give_the_serial_result():
    items = [synthetic(m, (257, 193), seed=i) for i, m in enumerate(["RGB", "L", "CMYK", "RGBA"] * 4)]
    items += [encode(synthetic("RGB", (640, 480), seed=i), "JPEG") for i in range(8)]
    for mode in ("exact", "fast"):
        pre = Preprocessor(TIMM, mode=mode)
        serial = np.stack([pre(x) for x in items])
        batch = np.empty_like(serial)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: pre.into(items[i], batch[i]), range(len(items))))
        np.testing.assert_array_equal(batch, serial)


def test_spec_options_checked():
    with pytest.raises(ValueError, match="antialias=False"):
        Preprocessor(ImageSpec(size=(224, 224), resize_mode="shortest", resize_size=224, interpolation="bicubic",
                               antialias=False, mean=OPENAI_MEAN, std=OPENAI_STD))
    with pytest.raises(ValueError, match="mode"):
        Preprocessor(CLIP_BICUBIC, mode="quick")
    with pytest.raises(ValueError, match="draft_margin"):
        Preprocessor(CLIP_BICUBIC, mode="fast", draft_margin=0.5)
    with pytest.raises(ValueError, match="max_pixels"):
        Preprocessor(CLIP_BICUBIC, max_pixels=0)


def test_describe_item():
    assert describe_item("/a/b.jpg") == "'/a/b.jpg'"
    assert describe_item("/a/b.jpg", 3) == "item 3 ('/a/b.jpg')"
    assert describe_item(b"x" * 1234, 17) == "item 17 (bytes, 1234 B)"
    assert describe_item(memoryview(b"abc")) == "bytes (3 B)"
    assert describe_item(Image.new("LA", (5, 4)), 0) == "item 0 (PIL image, LA 5x4)"
    assert describe_item(np.zeros((2, 3), np.float32)) == "array (float32 (2, 3))"
    assert describe_item(None, 1) == "item 1 (object, NoneType)"


# ---------------------------------------------------------------------------- bad input


def _png_claiming(w: int, h: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _bad_items(tmp_path):
    jpeg = encode(synthetic("RGB", (300, 200)), "JPEG", quality=90)
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    return [
        ("truncated JPEG", jpeg[: len(jpeg) // 2], "truncated"),
        ("JPEG header only", jpeg[:40], "cannot|truncated|format"),
        ("random bytes", np.random.default_rng(0).bytes(4096), "format PIL can read"),
        ("empty bytes", b"", "no data"),
        ("text file", str(text), "format PIL can read"),
        ("0x0 array", np.zeros((0, 0, 3), np.uint8), "empty"),
        ("0xN array", np.zeros((5, 0), np.uint8), "empty"),
        ("0-size PIL image", Image.new("RGB", (0, 3)), "empty"),
        ("PNG bomb 100k x 100k", _png_claiming(100_000, 100_000), "decompression bomb"),
        ("PNG over max_pixels", _png_claiming(10_000, 9_000), "max_pixels"),
        ("float array", np.zeros((8, 8, 3), np.float32), "dtype is float32"),
        ("bool array", np.zeros((8, 8), bool), "dtype is bool"),
        ("2-channel array", np.zeros((8, 8, 2), np.uint8), "shape"),
        ("4-d array", np.zeros((1, 8, 8, 3), np.uint8), "shape"),
        ("missing path", str(tmp_path / "missing.jpg"), "no such file"),
        ("directory", str(tmp_path), "directory"),
        ("FIFO named like an image", _fifo(tmp_path / "pipe.jpg"), "FIFO"),
        ("unsupported type", 3.5, "unsupported item type float"),
    ]


def _fifo(path) -> str:
    """A FIFO (no writer: opening it to read without O_NONBLOCK would block forever)."""
    if not os.path.exists(path):
        os.mkfifo(path)
    return str(path)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_bad_input_raises_image_error_naming_item_and_cause(mode, tmp_path):
    pre = Preprocessor(CLIP_BICUBIC, mode=mode)
    out = np.zeros(pre.shape, np.float32)
    for what, item, cause in _bad_items(tmp_path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with pytest.raises(ImageError, match=cause) as e:
                pre.into(item, out, index=17)
            assert str(e.value).startswith(describe_item(item, 17)), (what, str(e.value))
            with pytest.raises(ImageError, match="^photo-9: "):
                pre(item, "photo-9")
    assert isinstance(e.value, ValueError)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_max_pixels_is_configurable():
    data = encode(synthetic("RGB", (120, 100)), "PNG")
    with pytest.raises(ImageError, match="12000 pixels, more than max_pixels=11999"):
        Preprocessor(CLIP_BICUBIC, max_pixels=11_999)(data)
    Preprocessor(CLIP_BICUBIC, max_pixels=12_000)(data)
    assert DEFAULT_MAX_PIXELS == 89_478_485


# ---------------------------------------------------------------------------- fast mode


@pytest.mark.parametrize("method", list(range(7)))
def test_transposed_box_follows_pil_transpose(method):
    t = list(Image.Transpose)[method]
    size, box = (11, 7), (2, 1, 9, 5)
    mask = np.zeros((7, 11), np.uint8)
    mask[box[1]:box[3], box[0]:box[2]] = 255
    turned = np.asarray(Image.fromarray(mask).transpose(t))
    ys, xs = np.nonzero(turned)
    assert _transposed_box(box, size, t) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_fast_mode_deviation_on_large_photos(tmp_path):
    paths = upscaled(sample_photos(step=100), str(tmp_path))
    exact, fast = Preprocessor(CLIP_BICUBIC), Preprocessor(CLIP_BICUBIC, mode="fast")
    diffs = [np.abs(fast(p) - exact(p)) for p in paths]
    means = [float(d.mean()) for d in diffs]
    # all 1000 upscaled photos: mean 0.0050, worst photo 0.023 (benchmarks/results/preprocess.md)
    assert np.mean(means) < 0.012 and max(means) < 0.04, means


def test_fast_mode_keeps_geometry_with_exif_and_odd_sizes():
    rng = np.random.default_rng(11)
    smooth = Image.fromarray(rng.integers(0, 256, (12, 17, 3), dtype=np.uint8)).resize((1203, 901),
                                                                                      Image.Resampling.BICUBIC)
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = encode(smooth, "JPEG", exif=exif.tobytes(), quality=95)
        for spec in (CLIP_BICUBIC, spec_of("squash", size=(160, 224))):
            exact = Preprocessor(spec, exif_transpose=True)(data)
            fast = Preprocessor(spec, mode="fast", exif_transpose=True)(data)
            assert np.abs(fast - exact).mean() < 0.01, (orientation, spec.resize_mode)


def test_fast_mode_never_drafts_a_callers_image(tmp_path):
    path = tmp_path / "big.jpg"
    synthetic("RGB", (1600, 1200)).save(path, quality=90)
    with Image.open(path) as im:
        got = Preprocessor(CLIP_BICUBIC, mode="fast")(im)
        assert im.size == (1600, 1200)
        want = Preprocessor(CLIP_BICUBIC, mode="fast")(im.copy())
    np.testing.assert_array_equal(got, want)


def test_formats_outside_the_photo_formats_are_refused():
    """PDF / EPS would reach external interpreters (Ghostscript): refused like unknown data."""
    pre = Preprocessor(CLIP_BICUBIC)
    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, format="PDF")
    with pytest.raises(ImageError, match="not an image in a format"):
        pre(buf.getvalue())
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError):
        pre(eps)


# ---------------------------------------------------------------------------- bounded memory

THIN = [(3, 5000), (5000, 2), (1, 700)]          # resized images of 35-125 million pixels
BELOW = [(2, 360), (360, 2), (3, 540), (1, 180)]  # thin, but under WINDOW_PIXELS at 224 and 256 px


def reference_pixels(im: Image.Image, spec: ImageSpec) -> np.ndarray:
    """uint8 pixels of the reference chain (whole-image resize, centre crop, RGB), the part
    of the reference the window replaces."""
    interp = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
              "nearest": Image.Resampling.NEAREST}[spec.interpolation]
    nw, nh = resized_size(im.width, im.height, spec.resize_size)
    ch, cw = spec.size
    left, top = crop_offset(nw, cw), crop_offset(nh, ch)
    return np.asarray(im.resize((nw, nh), interp).crop((left, top, left + cw, top + ch)).convert("RGB"))


def window_deviation(got: np.ndarray, want: np.ndarray):
    d = np.abs(got.astype(np.int16) - want.astype(np.int16))
    return int(d.max()), float((d > 0).mean())


def assert_window_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """The window's measured deviation for a smooth filter (module notes): within 2 levels,
    in a small share of the values."""
    worst, share = window_deviation(got, want)
    assert worst <= 2 and share < 0.005, f"{what}: max |diff| {worst} levels, {share:.2%} of the values"


def assert_nearest_window_close(got: np.ndarray, im: Image.Image, spec: ImageSpec, what: str) -> None:
    """Nearest (and palette / bilevel images): most pixels equal the full resize, and every
    pixel is the source pixel the full resize picks or one next to it."""
    src = np.asarray(im.convert("RGB")).astype(np.int16)
    want = reference_pixels(im, spec).astype(np.int16)
    share = float((np.abs(got.astype(np.int16) - want) > 0).mean())
    assert share < 0.02, f"{what}: {share:.2%} of the values differ"
    nw, nh = resized_size(im.width, im.height, spec.resize_size)
    ch, cw = spec.size
    cols = np.floor((crop_offset(nw, cw) + np.arange(cw) + 0.5) * im.width / nw).astype(int)
    rows = np.floor((crop_offset(nh, ch) + np.arange(ch) + 0.5) * im.height / nh).astype(int)
    near = np.zeros(got.shape[:2], bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r = np.clip(rows + dr, 0, im.height - 1)[:, None]
            c = np.clip(cols + dc, 0, im.width - 1)[None, :]
            near |= (src[r, c] == got).all(axis=-1)
    assert near.all(), f"{what}: {int((~near).sum())} pixels are not a source pixel next to the reference's"


@pytest.mark.parametrize("size", BELOW, ids=lambda s: f"{s[0]}x{s[1]}")
def test_thin_images_under_the_window_bound_stay_bit_identical(size):
    for i, mode in enumerate(["RGB", "L", "RGBA", "P", "I;16", "F"]):
        im = synthetic(mode, size, seed=i)
        for spec in (CLIP_BICUBIC, CLIP_BILINEAR, NEAREST, TIMM):
            assert_same(Preprocessor(spec)(im), reference(spec)(eight_bit(im)), f"{mode} {size} {spec.interpolation} "
                        f"{spec.resize_size}")


@pytest.mark.parametrize("size", THIN, ids=lambda s: f"{s[0]}x{s[1]}")
def test_window_on_thin_images_is_close_to_the_reference(size):
    from cliprt.preprocess import _crop_span, resize_window

    modes = ["RGB", "L", "RGBA", "LA", "P", "1", "CMYK", "I;16", "I", "F"] if size == (1, 700) else ["RGB", "RGBA", "P"]
    for i, mode in enumerate(modes):
        im = eight_bit(synthetic(mode, size, seed=20 + i))
        for spec in (CLIP_BICUBIC, CLIP_BILINEAR, NEAREST, TIMM):
            what = f"{mode} {size} {spec.interpolation} {spec.resize_size}"
            pre = Preprocessor(spec)
            got = pre.pixels(im)
            if spec.interpolation == "nearest" or im.mode in ("P", "1"):
                assert_nearest_window_close(got, im, spec, what)
                continue
            nw, nh = resized_size(im.width, im.height, spec.resize_size)
            (x0, x1), (y0, y1) = _crop_span(nw, spec.size[1]), _crop_span(nh, spec.size[0])
            window = resize_window(im, (nw, nh), (x0, y0, x1, y1), pre._resample)
            # what the Preprocessor returned is this window in RGB
            np.testing.assert_array_equal(got, np.asarray(window.convert("RGB")))
            full = im.resize((nw, nh), pre._resample).crop((x0, y0, x1, y1))
            if im.mode in ("RGBA", "LA"):   # compared as Pillow resizes them: premultiplied
                window, full = window.convert(im.mode[:-1] + "a"), full.convert(im.mode[:-1] + "a")
            if im.mode in ("I", "F"):
                a, b = np.asarray(window, np.float64), np.asarray(full, np.float64)
                assert np.abs(a - b).max() <= 2 and (a != b).mean() < 0.005, what
            else:
                assert_window_close(np.asarray(window), np.asarray(full), what)


def test_window_forced_on_photos_is_close_to_the_reference(monkeypatch):
    """The window on ordinary photos (forced by a zero bound): close to the full resize but
    not equal, which is why exact mode keeps the full resize below the bound."""
    from cliprt import preprocess

    paths = sample_photos(step=25)
    monkeypatch.setattr(preprocess, "WINDOW_PIXELS", 0)
    monkeypatch.setattr(preprocess, "WINDOW_FACTOR", 0)
    equal = 0
    for spec in (CLIP_BICUBIC, CLIP_BILINEAR, NEAREST, TIMM):
        pre = Preprocessor(spec)
        for p in paths:
            with Image.open(p) as im:
                want = reference_pixels(im, spec)
            got = pre.pixels(p)
            what = f"{os.path.basename(p)} {spec.interpolation} {spec.resize_size}"
            if spec.interpolation == "nearest":
                with Image.open(p) as im:
                    assert_nearest_window_close(got, im, spec, what)
            else:
                assert_window_close(got, want, what)
            equal += int(np.array_equal(got, want))
    assert equal < 4 * len(paths), "the window matched everywhere: the full resize may no longer be needed"


def test_squash_of_a_very_long_side_reduces_first():
    from cliprt import preprocess

    im = synthetic("RGB", (3, 224 * preprocess.SQUASH_REDUCE + 300), seed=8)
    got = Preprocessor(SQUASH).pixels(im)
    want = np.asarray(im.resize((224, 224), Image.Resampling.BICUBIC).convert("RGB"))
    assert np.abs(got.astype(int) - want).mean() < 3, "squash after the integer reduction moved the picture"
    small = synthetic("RGB", (3, 224 * preprocess.SQUASH_REDUCE), seed=8)
    assert_same(Preprocessor(SQUASH)(small), reference(SQUASH)(small), "squash at the bound")


_MEMORY_CHILD = r"""
import importlib.machinery, json, resource, sys
root, path, mode = sys.argv[1:4]


class _SameTree:  # cliprt from the parent's tree, even where another copy is installed in development mode
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "cliprt" or name.startswith("cliprt."):
            return importlib.machinery.PathFinder.find_spec(name, path if path is not None else [root])
        return None


sys.meta_path.insert(0, _SameTree)
import io
import numpy as np
from PIL import Image
from cliprt import preprocess
from cliprt.models import ImageSpec
s = ImageSpec(size=(224, 224), resize_mode="shortest", resize_size=224, interpolation="bicubic",
              antialias=True, mean=(0.5,) * 3, std=(0.5,) * 3)
pre = preprocess.Preprocessor(s, mode=mode)
warm = io.BytesIO()
Image.new("RGB", (300, 200), (10, 20, 30)).save(warm, "PNG")
pre(warm.getvalue())
data = open(path, "rb").read()


def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


with open("/proc/self/clear_refs", "w") as f:   # ru_maxrss would carry the parent's peak
    f.write("5")
base = hwm()
out = pre(data)
print(json.dumps({"file": preprocess.__file__, "base_kb": base, "peak_kb": hwm(),
                  "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "ok": out.shape == (3, 224, 224) and bool(np.isfinite(out).all())}))
"""


@pytest.mark.parametrize("size", [(1, 1_000_000), (1_000_000, 1)], ids=["1x1000000", "1000000x1"])
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_thin_png_peak_memory_is_bounded(size, mode, tmp_path):
    """A few KB of PNG whose whole-image resize would take about 50 GB: the peak RSS of a
    fresh interpreter preprocessing it stays under 100 MB above its baseline (measured:
    about 12 MB, benchmarks/results/image_memory.md)."""
    import json
    import subprocess
    import sys

    import cliprt.preprocess

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        pytest.skip(f"needs Linux /proc/self/clear_refs to reset the peak RSS ({e})")
    n = size[0] * size[1]
    ramp = (np.arange(n) % 251).astype(np.uint8)
    path = tmp_path / "thin.png"
    Image.fromarray(np.stack([ramp, ramp[::-1], ramp // 2], axis=-1).reshape(size[1], size[0], 3)).save(path)
    assert path.stat().st_size < 100_000
    root = os.path.dirname(os.path.dirname(os.path.abspath(cliprt.preprocess.__file__)))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, root, str(path), mode], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["file"] == os.path.abspath(cliprt.preprocess.__file__) and r["ok"], r
    assert (r["peak_kb"] - r["base_kb"]) < 100 * 1024, r


# ---------------------------------------------------------------------------- image modes

ALL_MODES = ["1", "L", "P", "P+trns", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
             "HSV", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"]


def smooth(mode: str, size, seed: int = 0) -> Image.Image:
    """A smooth picture of `size` in `mode` (upscaled noise), so that fast mode's reduced
    scale changes it little. 16-bit modes span the whole 0-65535 range."""
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    if mode.startswith("I;16"):
        a = np.asarray(rgb.convert("L")).astype(np.uint16) * 257 + rng.integers(0, 257, (h, w)).astype(np.uint16)
        return Image.frombytes(mode, (w, h), a.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    if mode in ("P", "P+trns", "PA"):
        im = rgb.convert("P")
        if mode == "P+trns":
            im.info["transparency"] = 3
        return im.convert("PA") if mode == "PA" else im
    if mode in ("LA", "La", "RGBA", "RGBa"):
        alpha = Image.fromarray(np.linspace(40, 255, w * h).reshape(h, w).astype(np.uint8))
        return Image.merge("RGBA", (*rgb.split(), alpha)).convert(mode)
    return rgb.convert(mode)


@pytest.mark.parametrize("size", [(301, 217), (1201, 901)], ids=["small", "reduced-in-fast-mode"])
def test_every_mode_works_and_both_modes_agree(size):
    for spec in (CLIP_BICUBIC, SQUASH):
        exact, fast = Preprocessor(spec), Preprocessor(spec, mode="fast")
        ref = reference(spec)
        for mode in ALL_MODES:
            im = smooth(mode, size, seed=len(mode))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PIL warns about palette transparency
                got = exact(im)
                assert_same(got, ref(eight_bit(im)), f"{mode} {size} {spec.resize_mode}")
                quick = fast(im)
            diff = np.abs(quick - got)
            assert diff.mean() < 0.02 and np.percentile(diff, 99) < 0.1, (mode, size, spec.resize_mode, diff.mean())


def test_16_bit_gray_keeps_its_picture():
    """The reference's convert("RGB") clips 16-bit values to 255 (a nearly white picture);
    both modes encode a 16-bit PNG like its 8-bit twin."""
    im16 = smooth("I;16", (640, 480), seed=4)
    data16 = encode(im16, "PNG")
    with Image.open(io.BytesIO(data16)) as decoded:
        assert decoded.mode == "I;16"
    twin = Image.fromarray((np.asarray(im16) >> 8).astype(np.uint8))
    data8 = encode(twin, "PNG")
    for mode in ("exact", "fast"):
        pre = Preprocessor(CLIP_BICUBIC, mode=mode)
        px = pre.pixels(data16)
        np.testing.assert_array_equal(px, pre.pixels(data8))
        assert px.std() > 20 and (px == 255).mean() < 0.05, (mode, px.std())
    with Image.open(io.BytesIO(data16)) as decoded:
        clipped = reference(CLIP_BICUBIC)(decoded)
    white = reference(CLIP_BICUBIC)(Image.new("L", (640, 480), 255))
    assert (clipped == white).mean() > 0.9   # what the plain reference would have given


@pytest.mark.parametrize("mode,fmt", [("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF"), ("F", "TIFF"), ("PA", "TIFF"),
                                      ("CMYK", "TIFF"), ("LA", "PNG"), ("P+trns", "PNG"), ("1", "PNG"),
                                      ("YCbCr", "JPEG")])
def test_encoded_modes_agree_between_exact_and_fast(mode, fmt):
    im = smooth(mode, (1201, 901), seed=7)
    data = encode(im, fmt)
    with Image.open(io.BytesIO(data)) as decoded:
        decoded.load()
        want = reference(CLIP_BICUBIC)(eight_bit(decoded))
    got = Preprocessor(CLIP_BICUBIC)(data)
    assert_same(got, want, f"{mode} as {fmt}")
    diff = np.abs(Preprocessor(CLIP_BICUBIC, mode="fast")(data) - got)
    assert diff.mean() < 0.02 and np.percentile(diff, 99) < 0.1, (mode, fmt, diff.mean())
