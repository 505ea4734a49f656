"""Image decoding and preprocessing driven by a model package's `ImageSpec`.

Items: file paths (str / os.PathLike), encoded image bytes (bytes / bytearray / memoryview),
PIL images, and numpy uint8 arrays (H, W) gray, (H, W, 1) gray, (H, W, 3) RGB, (H, W, 4) RGBA.
Output: float32 (3, H, W) channel-first, channels in `spec.channel_order`; `Preprocessor.into`
writes straight into a slot of a caller's (N, 3, H, W) batch buffer.

Reference (what ``mode="exact"`` reproduces bit for bit): open_clip's eval transform on
``PIL.Image.open(path)``, i.e. torchvision on a PIL image::

    Resize(resize_size, BICUBIC | BILINEAR | NEAREST)   # "shortest": short side -> resize_size
    CenterCrop(size)                                     # offsets int(round((n - crop) / 2.0))
    convert("RGB")                                       # after the crop, as open_clip does
    ToTensor(); Normalize(mean, std)                     # (x / 255 - mean) / std in float32

and ``Resize((h, w))`` alone for "squash". The details that matter for exactness:

* Resize and crop run in the image's own mode; the RGB conversion comes after them
  (open_clip 3.x ``MaybeConvertMode``). PIL resizes "P" and "1" images with NEAREST whatever
  the filter, and "RGBA"/"LA" with premultiplied alpha, so converting first would change
  the pixels. RGBA -> RGB drops alpha (PIL's ``convert``), palette transparency is ignored.
* The short-side size is torchvision's ``_compute_resized_output_size`` (long side
  ``int(size * long / short)``, truncated), and no resize happens when it equals the input
  size. A crop larger than the resized image pads with 0 first, as torchvision does. For a
  non-square size, open_clip itself builds a different transform (ResizeKeepRatio); its
  exporter refuses that case, and "shortest" here means Resize(int) + CenterCrop((h, w)).
* PIL resizes always antialias (torchvision ignores ``antialias`` for PIL inputs), so a
  spec with ``antialias=False`` is refused rather than silently mismatched.
* Arrays are ``PIL.Image.fromarray(array)`` first; that is the reference for them too.
* No EXIF orientation is applied (open_clip does not): ``exif_transpose=True`` opts in and
  transposes before resizing, which equals ``ImageOps.exif_transpose`` then the reference.
* The normalisation does the reference's own float32 operations (divide by 255, subtract
  the float32 mean, divide by the float32 std). A fused ``x * scale + offset`` is cheaper
  but not bit-identical, and the exact arithmetic is small next to decoding, so both modes
  use it.
* Image modes. For every 8-bit mode the reference is followed as it is, conversion included
  (1, L, P with or without transparency, LA, RGB, RGBA, RGBX, CMYK, YCbCr, and the
  band-copying LAB / HSV conversions), and so are "I" and "F": their values are taken on
  the 0-255 scale, as ``convert("RGB")`` does (clipped), since these modes carry no range
  of their own. Three modes get an 8-bit image first, in both modes, because the reference
  result means nothing for them: 16-bit gray ("I;16", "I;16L", "I;16B", "I;16N", what
  Pillow decodes 16-bit gray PNGs and TIFFs as) keeps its high byte as "L", which is how
  Pillow itself reads 16-bit RGB and gray+alpha PNGs, where the reference's conversion
  would clip every value above 255 and return a nearly white picture; palette-with-alpha
  "PA" (TIFF) becomes RGBA, where the reference would interpolate palette indices and
  lose the palette; premultiplied "La" becomes "LA" (the reference cannot convert it).
  For these, "exact" means the reference applied to that 8-bit image.
* Memory follows the output, not the aspect ratio. The reference resizes the whole image
  before cropping, which for a thin image is huge (a 1 x 16,000 PNG resizes to 224 x
  3,584,000; a 1 x 1,000,000 one would need about 50 GB). Exact mode does the same while
  the resized image has at most ``WINDOW_PIXELS`` (12 million, 48 MB in RGB) or
  ``WINDOW_FACTOR`` (16) x the crop's pixels, whichever is more: aspect ratios up to about
  239:1 at 224 px (106:1 at 336 px), so photos, panoramas and banners are bit-identical.
  Beyond that it computes only the cropped window (`resize_window`): the source is cut to
  the pixels the window reads and each axis is resized in its own call, in the order
  Pillow 13 picks for the whole image. The window is not bit-identical, which is why it is
  kept for the images that need it: Pillow reads a fractional ``box`` as float32, so the
  filter positions of a cropped axis move by rounding. Forced onto all 1000 sample photos
  (specs 224/224, 256/224, 336/336) it differs from the full resize on 54-90% of them with
  bicubic or bilinear (bicubic by at most 2 levels in at most 1.3e-4 of the values,
  bilinear by 1 level in at most 1.7e-3), and with nearest (which Pillow uses for every
  palette image) it takes a neighbouring source pixel for 0.16-0.45% of the values; on
  random thin images (3 x 5000 ... 1500 x 41 in L, RGB, RGBA, P, I;16 and F) it stays
  within 2 levels in under 6e-4 of the values, nearest picking a neighbouring pixel in
  under 5e-4; with partial transparency the 2 levels hold for the premultiplied values
  Pillow resizes, so nearly transparent pixels can move more once alpha is dropped (4
  levels seen on random alpha). A single
  ``resize(box=...)`` over both axes is worse (up to 14 levels on the photos): Pillow runs
  the vertical pass first when the height shrinks by more than twice as many pixels as
  the width, and the crop changes that choice. Reproducing Pillow's arithmetic in numpy
  could make the window exact, but only for one build of Pillow (its coefficients are
  floating point and a compiler may fuse them differently), so it is not done. "squash"
  resizes straight to the output size and Pillow's pass order keeps its intermediate
  small (a 1 x 1,000,000 image squashes through a 1 x 224 one), but Pillow's filter table
  takes about 32 bytes per source pixel of a shrinking axis (2.8 GB for a 1 x 89 million
  image), so exact mode squashes a side more than ``SQUASH_REDUCE`` (4096) x the output
  after an integer box reduction, like fast mode (``reducing_gap``), not bit-identically.
  Fast mode resizes only the window through ``box`` in every case. Measured:
  benchmarks/image_memory.py and benchmarks/results/image_memory.md.

``mode="fast"`` trades a small deviation for speed on large photos: JPEGs are decoded with
DCT-domain downscaling (PIL ``draft``) at the strongest reduction (1/2, 1/4 or 1/8) whose
short side (or each side, for "squash") stays >= ``draft_margin`` x the resize target; the
resize keeps the exact geometry through the fractional box ``draft`` reports and covers
only the cropped region; other large images are box-reduced first (``reducing_gap``).
Images the caller passes as PIL objects are never drafted (``draft`` would change the
caller's object). Measured deviation and speed: benchmarks/results/preprocess.md.

Bad input (missing files, unknown formats, truncated or corrupt data, zero-size images,
wrong array dtypes or shapes, more than ``max_pixels`` pixels) raises `ImageError`, a
``ValueError`` whose message names the item and the cause. PIL's ``LOAD_TRUNCATED_IMAGES``
is left as it is (False by default: truncated files raise). PIL still emits its own
DecompressionBombWarning while opening an image between its threshold and twice that,
just before cliprt refuses it (a warnings filter is process-wide, so none is set here).

Threads: a `Preprocessor` holds no mutable state; PIL releases the GIL while decoding and
resizing and numpy while normalising, so one instance serves a pool of worker threads.
"""
from __future__ import annotations

import io
import math
import os
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from cliprt.models import ImageSpec

MODES = ("exact", "fast")

# PIL's own warning threshold (Image.MAX_IMAGE_PIXELS at import: 89,478,485 pixels, about
# 9459 x 9459): where PIL would only warn, cliprt raises. PIL itself refuses images over
# twice its threshold while opening them, so a larger max_pixels also needs a larger
# PIL.Image.MAX_IMAGE_PIXELS.
DEFAULT_MAX_PIXELS = 89_478_485

# Fast mode decodes JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) whose short side stays
# >= DRAFT_MARGIN x the resize target. 1.5 keeps a real resize after the draft; 1.0 is faster
# but deviates several times more from the exact result (speed and deviation of both:
# benchmarks/results/preprocess.md).
DRAFT_MARGIN = 1.5
# Formats Pillow may open: raster photo and web formats. Anything else (EPS and PostScript,
# which Pillow hands to Ghostscript; PDF; exotic scientific formats) is refused as an
# unsupported format, so untrusted files cannot reach an external interpreter.
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "ICO", "PPM", "TGA", "AVIF", "JPEG2000")
Image.init()
_OPEN_FORMATS = tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)
# Large images that cannot be drafted (PNG, WebP, PIL inputs) are box-reduced by an integer
# factor first, leaving at least this much of the reduction to the filter.
REDUCING_GAP = 2.0

# Exact mode resizes the whole image and then crops, as the reference does, while the
# resized image has at most WINDOW_PIXELS pixels (48 MB in RGB; aspect ratios up to about
# 239:1 at 224 px) or WINDOW_FACTOR x the crop's pixels, whichever is more; beyond that it
# computes only the cropped window (resize_window), so memory follows the output and not
# the aspect ratio. What that costs in exactness: the module notes.
WINDOW_PIXELS = 12_000_000
WINDOW_FACTOR = 16
# Pillow's filter table for an axis holds about 32 bytes per source pixel (bicubic) when it
# shrinks that axis, so exact "squash" of a side more than SQUASH_REDUCE x longer than the
# output (a 1 x 1,000,000 image) reduces by an integer factor first, as fast mode does.
SQUASH_REDUCE = 4096

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

# Half-width of each filter in source pixels at scale 1 (Pillow's filter supports).
_SUPPORT = {Image.Resampling.BICUBIC: 2.0, Image.Resampling.BILINEAR: 1.0, Image.Resampling.NEAREST: 0.5}

_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

Box = Tuple[float, float, float, float]


class ImageError(ValueError):
    """An item that cannot be decoded or preprocessed; the message names the item and why."""


class _Invalid(Exception):
    """A cause found by cliprt's own checks (becomes an ImageError with the item's name)."""


def describe_item(item, index: Optional[int] = None) -> str:
    """Short human name for an item, used in error messages: the path for files, else its
    kind and size, e.g. ``item 17 (bytes, 1234 B)``."""
    if isinstance(item, (str, os.PathLike)):
        desc = repr(os.fspath(item))
        return f"item {index} ({desc})" if index is not None else desc
    if isinstance(item, (bytes, bytearray, memoryview)):
        kind, detail = "bytes", f"{memoryview(item).nbytes} B"
    elif isinstance(item, Image.Image):
        kind, detail = "PIL image", f"{item.mode} {item.width}x{item.height}"
    elif isinstance(item, np.ndarray):
        kind, detail = "array", f"{item.dtype} {item.shape}"
    else:
        kind, detail = "object", type(item).__name__
    return f"item {index} ({kind}, {detail})" if index is not None else f"{kind} ({detail})"


def resized_size(width: int, height: int, short: int) -> Tuple[int, int]:
    """(width, height) after resizing the short side to `short`: torchvision's rule for an
    int size (the long side is truncated, not rounded; a square keeps both sides)."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def crop_offset(size: int, crop: int) -> int:
    """torchvision CenterCrop's offset: int(round((size - crop) / 2.0)) (round half to even)."""
    return int(round((size - crop) / 2.0))


def _transposed_box(box: Box, size: Tuple[int, int], method: Image.Transpose) -> Box:
    """Where the region `box` of an image of `size` lands after `method`."""
    x0, y0, x1, y1 = box
    w, h = size
    T = Image.Transpose
    if method == T.FLIP_LEFT_RIGHT:
        return w - x1, y0, w - x0, y1
    if method == T.FLIP_TOP_BOTTOM:
        return x0, h - y1, x1, h - y0
    if method == T.ROTATE_180:
        return w - x1, h - y1, w - x0, h - y0
    if method == T.TRANSPOSE:
        return y0, x0, y1, x1
    if method == T.ROTATE_90:                   # counter-clockwise: (x, y) -> (y, w - x)
        return y0, w - x1, y1, w - x0
    if method == T.ROTATE_270:                  # clockwise: (x, y) -> (h - y, x)
        return h - y1, x0, h - y0, x1
    return h - y1, w - x1, h - y0, w - x0       # TRANSVERSE: (x, y) -> (h - y, w - x)


def _array_image(a: np.ndarray) -> Image.Image:
    if a.dtype != np.uint8:
        raise _Invalid(f"array dtype is {a.dtype}, expected uint8 (H, W[, C]) pixels")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise _Invalid(f"array shape is {a.shape}, expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise _Invalid(f"image is empty ({a.shape[1]}x{a.shape[0]})")
    return Image.fromarray(a)


def _cause(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image in a format PIL can read (unknown format or corrupt header)"
    if isinstance(e, Image.DecompressionBombError):
        return f"refused as a possible decompression bomb ({e})"
    return f"cannot decode image ({type(e).__name__}: {e})"


class Preprocessor:
    """Decodes items and turns them into the float32 (3, H, W) tensors a model's image tower
    takes, as its `ImageSpec` says.

    mode: "exact" (default) reproduces the reference transform bit for bit; "fast" decodes
    large JPEGs at reduced scale (see the module notes). max_pixels: larger images raise
    ImageError before they are decoded. exif_transpose: apply the EXIF orientation first
    (the reference does not). draft_margin: fast mode only, see DRAFT_MARGIN."""

    def __init__(self, spec: ImageSpec, mode: str = "exact", max_pixels: int = DEFAULT_MAX_PIXELS,
                 exif_transpose: bool = False, draft_margin: float = DRAFT_MARGIN):
        if mode not in MODES:
            raise ValueError(f"mode is {mode!r}, expected one of {MODES}")
        if spec.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode {spec.resize_mode!r} is not supported (shortest, squash)")
        if spec.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation {spec.interpolation!r} is not supported ({', '.join(_RESAMPLE)})")
        if not spec.antialias:
            raise ValueError("antialias=False is not supported: PIL resizes always antialias "
                             "(torchvision ignores the flag for PIL images as well)")
        if spec.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order {spec.channel_order!r} is not supported (RGB, BGR)")
        if spec.layout != "NCHW":
            raise ValueError(f"layout {spec.layout!r} is not supported (NCHW)")
        if int(max_pixels) <= 0:
            raise ValueError("max_pixels must be positive")
        if not draft_margin >= 1.0:
            raise ValueError(f"draft_margin must be >= 1.0, got {draft_margin!r}")
        self.spec = spec
        self.mode = mode
        self.max_pixels = int(max_pixels)
        self.exif_transpose = bool(exif_transpose)
        self.draft_margin = float(draft_margin)
        self._resample = _RESAMPLE[spec.interpolation]
        # torchvision Normalize casts mean and std to the tensor's dtype (float32).
        self._mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
        if spec.channel_order == "BGR":
            self._mean, self._std = self._mean[::-1].copy(), self._std[::-1].copy()
        self._bgr = spec.channel_order == "BGR"

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(3, H, W) of one preprocessed image."""
        return (3, self.spec.size[0], self.spec.size[1])

    def __repr__(self) -> str:
        s = self.spec
        return (f"Preprocessor({s.resize_mode} {s.resize_size}->{s.size[0]}x{s.size[1]}, "
                f"{s.interpolation}, {s.channel_order}, mode={self.mode!r})")

    # ---- public API -------------------------------------------------------------------

    def load(self, item, name: Optional[str] = None, *, index: Optional[int] = None) -> Image.Image:
        """The decoded image in its own mode (not yet RGB: the reference converts after the
        resize; 16-bit gray, "PA" and "La" already made 8-bit, see the module notes),
        EXIF-transposed if asked, at reduced scale for large JPEGs in fast mode."""
        def run():
            opened = _Opened(self, item)
            with opened as (im, _, _):
                im.load()
                # closing the file destroys its image core: hand out a copy
                return im.copy() if im is opened.file else im
        return self._guard(run, item, name, index)

    def __call__(self, item, name: Optional[str] = None, *, index: Optional[int] = None) -> np.ndarray:
        """float32 (3, H, W) for one item."""
        out = np.empty(self.shape, dtype=np.float32)
        self.into(item, out, name, index=index)
        return out

    def into(self, item, out: np.ndarray, name: Optional[str] = None, *, index: Optional[int] = None) -> None:
        """Preprocesses one item into `out`, a float32 (3, H, W) array such as `batch[i]`.
        `name` (or `index`, for describe_item) labels the item in ImageError messages."""
        if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == self.shape):
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(f"out must be a float32 array of shape {self.shape}, got {got}")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
        pixels = self._guard(lambda: self._pixels(item), item, name, index)
        self._normalise(pixels, out)

    def pixels(self, item, name: Optional[str] = None, *, index: Optional[int] = None) -> np.ndarray:
        """uint8 (H, W, 3) RGB after resize, crop and RGB conversion, before normalisation."""
        return self._guard(lambda: self._pixels(item), item, name, index)

    # ---- internals --------------------------------------------------------------------

    @staticmethod
    def _guard(fn, item, name, index):
        try:
            return fn()
        except _Invalid as e:
            label = name if name is not None else describe_item(item, index)
            raise ImageError(f"{label}: {e}") from None
        except MemoryError:
            raise
        except Exception as e:
            label = name if name is not None else describe_item(item, index)
            raise ImageError(f"{label}: {_cause(e)}") from e

    def _check_size(self, w: int, h: int) -> None:
        if w <= 0 or h <= 0:
            raise _Invalid(f"image is empty ({w}x{h})")
        if w * h > self.max_pixels:
            raise _Invalid(f"image is {w}x{h} = {w * h} pixels, more than max_pixels={self.max_pixels} "
                           "(possible decompression bomb)")

    def _draft(self, im: Image.Image, swapped: bool) -> Optional[Box]:
        """Asks the JPEG decoder for the smallest DCT scale that keeps enough pixels (other
        formats ignore draft); returns the picture's box in the drafted image, or None when
        nothing changed."""
        w, h = im.size
        s = self.spec
        if s.resize_mode == "shortest":
            f = s.resize_size * self.draft_margin / min(w, h)
            req = (math.ceil(w * f), math.ceil(h * f))
        else:
            th, tw = (s.size[1], s.size[0]) if swapped else s.size
            req = (math.ceil(tw * self.draft_margin), math.ceil(th * self.draft_margin))
        if req[0] * 2 > w or req[1] * 2 > h:
            return None
        got = im.draft(None, req)
        if got is None:
            return None
        box = tuple(float(v) for v in got[1])
        return None if im.size == (w, h) else box  # type: ignore[return-value]

    def _pixels(self, item) -> np.ndarray:
        with _Opened(self, item) as (im, box, (w, h)):
            im = self._resize_crop(im, box, w, h)
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im)

    def _resize(self, im: Image.Image, size: Tuple[int, int], box: Optional[Box]) -> Image.Image:
        if self.mode == "fast":
            return im.resize(size, self._resample, box=box, reducing_gap=REDUCING_GAP)
        return im.resize(size, self._resample, box=box)

    def _resize_crop(self, im: Image.Image, box: Optional[Box], w: int, h: int) -> Image.Image:
        s = self.spec
        ch, cw = s.size
        if s.resize_mode == "squash":
            if box is None and (w, h) == (cw, ch):
                return im
            if self.mode == "exact" and max(w / cw, h / ch) > SQUASH_REDUCE:
                return im.resize((cw, ch), self._resample, box=box, reducing_gap=REDUCING_GAP)
            return self._resize(im, (cw, ch), box)
        nw, nh = resized_size(w, h, s.resize_size)
        # the part of the resized image that the centre crop keeps (a whole axis where it pads)
        x0, x1 = _crop_span(nw, cw)
        y0, y1 = _crop_span(nh, ch)
        window = (x0, y0, x1, y1)
        if box is None and (nw, nh) == (w, h):
            out = im if (x1 - x0, y1 - y0) == (w, h) else im.crop(window)
        elif self.mode == "fast":
            bx0, by0, bx1, by1 = box if box is not None else (0.0, 0.0, float(w), float(h))
            sx, sy = (bx1 - bx0) / nw, (by1 - by0) / nh
            sub = (bx0 + x0 * sx, by0 + y0 * sy,  # clamped: rounding must not leave the image
                   min(bx0 + x1 * sx, im.width), min(by0 + y1 * sy, im.height))
            out = self._resize(im, (x1 - x0, y1 - y0), sub)
        elif nw * nh <= max(WINDOW_PIXELS, WINDOW_FACTOR * cw * ch):
            out = im.resize((nw, nh), self._resample)            # the reference: whole image, then crop
            if (x1 - x0, y1 - y0) != (nw, nh):
                out = out.crop(window)
        else:
            out = resize_window(im, (nw, nh), window, self._resample)
        if (x1 - x0, y1 - y0) != (cw, ch):
            out = _center_crop_pad(out, cw, ch)
        return out

    def _normalise(self, pixels: np.ndarray, out: np.ndarray) -> None:
        chw = pixels.transpose(2, 0, 1)
        if self._bgr:
            chw = chw[::-1]
        np.divide(chw, np.float32(255), out=out, dtype=np.float32)
        np.subtract(out, self._mean, out=out)
        np.divide(out, self._std, out=out)


class _Opened:
    """Context manager: opens an item (closing any file it opened on exit), applies the size
    checks, the fast-mode draft and the optional EXIF transpose, and yields (image, box,
    size): box is the region of the image holding the picture (set when a JPEG was drafted,
    else None), size its (width, height) at full scale."""

    def __init__(self, pre: Preprocessor, item):
        self.pre = pre
        self.item = item
        self.file: Optional[Image.Image] = None
        self.fp = None

    def __enter__(self):
        try:
            return self._open()
        except BaseException:
            self.__exit__()
            raise

    def _open(self):
        pre, item = self.pre, self.item
        owned = True
        if isinstance(item, Image.Image):
            im, owned = item, False
        elif isinstance(item, np.ndarray):
            im = _array_image(item)
        elif isinstance(item, (bytes, bytearray, memoryview)):
            if memoryview(item).nbytes == 0:
                raise _Invalid("no data (0 bytes)")
            im = self.file = Image.open(io.BytesIO(item), formats=_OPEN_FORMATS)
        elif isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            self.fp = _open_regular(path)
            im = self.file = Image.open(self.fp, formats=_OPEN_FORMATS)
        else:
            raise _Invalid(f"unsupported item type {type(item).__name__} (expected a path, bytes, "
                           "a PIL image or a uint8 array)")
        w, h = im.size
        pre._check_size(w, h)
        method = None
        if pre.exif_transpose:
            method = _TRANSPOSE.get(im.getexif().get(_ORIENTATION_TAG, 1))
        swapped = method in (Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE,
                             Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270)
        box = None
        if pre.mode == "fast" and owned:
            box = pre._draft(im, swapped)
        im = _eight_bit(im)
        if method is not None:
            if box is not None:
                box = _transposed_box(box, im.size, method)
            im = im.transpose(method)
            if swapped:
                w, h = h, w
        return im, box, (w, h)

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()
        if self.fp is not None:
            self.fp.close()
        return False


def _open_regular(path: str):
    """The file at `path` opened for reading, if it is a regular file. Opened without
    blocking and checked on the descriptor (not by name first), so a FIFO, a device or a
    socket under an image's name, or put there after a directory listing, is refused
    instead of hanging the decode."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "not a regular file")
            raise _Invalid(f"not a regular file ({kind}): not opened")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _eight_bit(im: Image.Image) -> Image.Image:
    """The modes whose reference result means nothing, recast so that it does (module notes):
    16-bit gray keeps its high byte (as "L"), palette-with-alpha becomes RGBA, and
    premultiplied "La" becomes "LA". Other modes are returned as they are."""
    if im.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(im) >> 8).astype(np.uint8))
    if im.mode == "PA":
        return im.convert("RGBA")
    if im.mode == "La":
        return im.convert("LA")
    return im


def _center_crop_pad(im: Image.Image, cw: int, ch: int) -> Image.Image:
    """torchvision CenterCrop for a crop larger than the image: pad with 0 (left/top get the
    floor half), then crop at the centre."""
    from PIL import ImageOps

    w, h = im.size
    pad = ((cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0,
           (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0)
    bands = len(im.getbands())
    fill = 0 if bands == 1 else (0,) * bands
    if im.mode == "P":
        palette = im.getpalette()
        im = ImageOps.expand(im, border=pad, fill=fill)
        im.putpalette(palette)
    else:
        im = ImageOps.expand(im, border=pad, fill=fill)
    w, h = im.size
    if (w, h) == (cw, ch):
        return im
    left, top = crop_offset(w, cw), crop_offset(h, ch)
    return im.crop((left, top, left + cw, top + ch))


def _crop_span(size: int, crop: int) -> Tuple[int, int]:
    """[start, end) of the centre crop along one axis of the resized image: the whole axis
    when the crop is larger (the difference is padded afterwards)."""
    if crop >= size:
        return 0, size
    start = crop_offset(size, crop)
    return start, start + crop


def _source_span(start: int, end: int, n: int, length: int, support: float) -> Tuple[int, int]:
    """Source pixels [lo, hi) that output pixels [start, end) of an axis resized from
    `length` to `n` can read: the filter's reach plus a margin, clipped to the image. Pillow
    renormalises the filter only at the image's own edges, so any crop of the source that
    keeps this span leaves every output pixel's inputs in place."""
    if start == 0 and end == n:
        return 0, length
    scale = length / n
    reach = support * max(scale, 1.0) + 2.0
    return max(0, math.floor(start * scale - reach)), min(length, math.ceil(end * scale + reach))


def resize_window(im: Image.Image, size: Tuple[int, int], window: Tuple[int, int, int, int],
                  resample: int) -> Image.Image:
    """``im.resize(size, resample).crop(window)`` computed over the window only: memory and
    time follow the window, not `size`.

    The source is cut (in whole pixels) to the span the window reads, then each axis is
    resized in its own ``resize`` call, in the order Pillow picks for the full resize
    (vertical first when the height shrinks by more than twice as many pixels as the width),
    with premultiplied alpha across both passes as Pillow does. An axis the window covers
    whole gets the very same pass as the full resize; a cropped axis is placed with a
    fractional ``box``, which Pillow reads as float32, so its filter positions differ from
    the full resize's by rounding: results stay within 2 levels of the full resize in a
    small share of the values (premultiplied, for images with alpha), and nearest picks a
    neighbouring source pixel at a small share of the positions (module notes)."""
    nw, nh = size
    x0, y0, x1, y1 = window
    w, h = im.size
    if im.mode in ("1", "P"):
        resample = Image.Resampling.NEAREST
    support = _SUPPORT[resample]
    sx0, sx1 = _source_span(x0, x1, nw, w, support)
    sy0, sy1 = _source_span(y0, y1, nh, h, support)
    if (sx0, sy0, sx1, sy1) != (0, 0, w, h):
        im = im.crop((sx0, sy0, sx1, sy1))
    cw, ch = im.size

    def span(start: int, end: int, n: int, length: int, lo: int, here: int) -> Tuple[float, float]:
        if start == 0 and end == n:
            return 0.0, float(here)
        scale = length / n
        return start * scale - lo, min(end * scale - lo, float(here))

    bx0, bx1 = span(x0, x1, nw, w, sx0, cw)
    by0, by1 = span(y0, y1, nh, h, sy0, ch)
    ow, oh = x1 - x0, y1 - y0
    if resample == Image.Resampling.NEAREST:
        return im.resize((ow, oh), resample, box=(bx0, by0, bx1, by1))
    alpha = im.mode if im.mode in ("LA", "RGBA") else None
    if alpha:
        im = im.convert(alpha[:-1] + "a")
    if (h - nh) > 0 and (h - nh) > 2 * (w - nw):
        im = im.resize((cw, oh), resample, box=(0.0, by0, float(cw), by1))
        im = im.resize((ow, oh), resample, box=(bx0, 0.0, bx1, float(oh)))
    else:
        im = im.resize((ow, ch), resample, box=(bx0, 0.0, bx1, float(ch)))
        im = im.resize((ow, oh), resample, box=(0.0, by0, float(ow), by1))
    return im.convert(alpha) if alpha else im
