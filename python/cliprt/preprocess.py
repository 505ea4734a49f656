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
* Exact mode resizes the whole image and then crops, like the reference. Resizing only the
  cropped region (``resize(box=...)``) would be cheaper but is not bit-identical: Pillow
  takes the box as float32, so the filter positions shift by rounding, and it picks the
  order of its two passes from the output size, which the crop changes.

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

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

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
        resize), EXIF-transposed if asked, at reduced scale for large JPEGs in fast mode."""
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
            return self._resize(im, (cw, ch), box)
        nw, nh = resized_size(w, h, s.resize_size)
        if cw > nw or ch > nh:
            full = im if box is None and (nw, nh) == (w, h) else self._resize(im, (nw, nh), box)
            return _center_crop_pad(full, cw, ch)
        left, top = crop_offset(nw, cw), crop_offset(nh, ch)
        crop = (left, top, left + cw, top + ch)
        if box is None and (nw, nh) == (w, h):
            return im.crop(crop)
        if (cw, ch) == (nw, nh):
            return self._resize(im, (nw, nh), box)
        if self.mode == "fast":
            x0, y0, x1, y1 = box if box is not None else (0.0, 0.0, float(w), float(h))
            sx, sy = (x1 - x0) / nw, (y1 - y0) / nh
            sub = (x0 + left * sx, y0 + top * sy,  # clamped: rounding must not leave the image
                   min(x0 + (left + cw) * sx, im.width), min(y0 + (top + ch) * sy, im.height))
            return self._resize(im, (cw, ch), sub)
        return im.resize((nw, nh), self._resample).crop(crop)

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
            im = self.file = Image.open(path, formats=_OPEN_FORMATS)
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
        return False


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
