"""cliprt.preprocess against the reference transform (open_clip / torchvision on PIL images).

Exact mode must match the reference tensor bit for bit: on synthetic images of awkward
sizes in every PIL mode a user may hand in, with each interpolation and resize mode, and on
the real photos of ../shared/data/imagenet-sample (a subset here; all 1000 in
benchmarks/preprocess_bench.py). Fast mode is checked for bounded deviation on photos of
>= 1024 px, made by upscaling the sample photos (PIL LANCZOS, JPEG quality 90). Bad input
must raise ImageError naming the item and the cause.
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
MODES = ["RGB", "L", "P", "P+trns", "P+trns-bytes", "RGBA", "LA", "CMYK", "I;16", "1", "I", "F"]


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
    if mode in ("RGBA", "LA"):
        a = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        return Image.fromarray(a).convert(mode)
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
            assert_same(Preprocessor(spec)(im), reference(spec)(im), f"{mode} {size} {spec.resize_mode} "
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
        want = ref(im)
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
        ("unsupported type", 3.5, "unsupported item type float"),
    ]


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
