"""Decode one input image into what a sample stores: checked, hashed, resized, re-encoded.

The guards run cheapest first, so hostile input costs little: an empty or oversized file is refused before
Pillow sees it; a decompression bomb (a small file whose header claims billions of pixels) is refused from its
header, never decoded; a truncated or corrupt file fails a full ``load()`` (truncated images are not
accepted: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays False). Each refusal is an :class:`ImageSkip` whose
``reason`` is one of :data:`SKIP_REASONS`.

What is kept (see ``pretrain.data.documents.SAMPLE_SCHEMA``): the image EXIF-transposed and in RGB (transparent
pixels over white), its size as decoded, an exact-duplicate key (xxh3-128 of the RGB pixels and the size, so
re-encodings of one picture share it), a 64-bit perceptual hash (imagehash's pHash of the stored pixels, so it
can be recomputed from a PNG sample), and the image resized so its shorter side is ``size`` (never enlarged).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import warnings

import numpy as np
import xxhash
from PIL import Image, ImageFile, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")  # what a folder of images is read for
SKIP_REASONS = ("empty_image", "image_too_large", "too_many_pixels", "undecodable_image")
# The containers worth trying; anything else (PSD, EPS, ICO, ...) is refused without probing every plugin.
FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF")
REDUCING_GAP = 3.0  # reduce by an integer factor first, then LANCZOS the last step: fast and sharp
_ENCODE = {"png": ("PNG", {"compress_level": 6}), "jpeg": ("JPEG", {}), "webp": ("WEBP", {"method": 4})}
_WHITE = (255, 255, 255)
ORIENTATION = 0x0112  # the EXIF tag


class ImageSkip(Exception):
    """An input image that is not turned into a sample; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class Decoded:
    """One decoded image: the stored bytes and what the filter and dedup judge it by."""

    image: bytes  # re-encoded as ``images.encoding``, shorter side ``images.size`` at most
    width: int  # as decoded (after the EXIF orientation), before resizing
    height: int
    image_hash: str  # hex xxh3-128 of the RGB pixels and the size
    phash: int  # imagehash.phash as a signed 64-bit bit pattern (an int64 column)
    stored_width: int
    stored_height: int


def decode(data: bytes, cfg) -> Decoded:
    """Check, decode, hash, resize and re-encode ``data`` (``cfg``: the recipe's ``ImagesConfig``).

    Raises :class:`ImageSkip` with the reason for anything not kept; never anything else on bad input.
    """
    if not data:
        raise ImageSkip("empty_image")
    if len(data) > cfg.max_bytes:
        raise ImageSkip("image_too_large", f"{len(data)} bytes > images.max_bytes {cfg.max_bytes}")
    img = _open(data, cfg.max_pixels)
    rgb = _load_rgb(img)
    width, height = rgb.size
    pixels = rgb.tobytes()
    h = xxhash.xxh3_128(pixels)
    h.update(f"|{width}x{height}".encode())
    small = resize(rgb, cfg.size)
    return Decoded(image=encode(small, cfg.encoding, cfg.quality), width=width, height=height,
                   image_hash=h.hexdigest(), phash=phash(small), stored_width=small.width, stored_height=small.height)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header only (no pixels) and refuse what claims too many pixels."""
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: our limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_formats())
    except Image.DecompressionBombError as err:  # over Pillow's hard ceiling (2 x MAX_IMAGE_PIXELS)
        raise ImageSkip("too_many_pixels", str(err)) from None
    except Exception as err:  # Pillow's parsers raise many types on malformed headers
        raise ImageSkip("undecodable_image", f"{type(err).__name__}: {err}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageSkip("undecodable_image", f"size {width}x{height}")
    if width * height > max_pixels:
        raise ImageSkip("too_many_pixels", f"{width}x{height} > images.max_pixels {max_pixels}")
    return img


@functools.lru_cache(maxsize=1)
def _formats() -> tuple[str, ...]:
    """The wanted containers this Pillow build opens (MPO, for one, is not a format of its own in every build)."""
    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def _load_rgb(img: Image.Image) -> Image.Image:
    """Decode every pixel (a truncated file fails here), apply the EXIF orientation, convert to RGB."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone turned it on process-wide: a cut file would pass as whole
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; image ingest needs it False")
    try:
        img.load()
        if img.getexif().get(ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except Exception as err:  # truncated data, bad CRCs, decoder errors: OSError, SyntaxError, ValueError, ...
        raise ImageSkip("undecodable_image", f"{type(err).__name__}: {err}") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB; transparent pixels are laid over white (not the black that dropping the alpha would show)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit / float grey: scale to 8 bits first
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) or 1.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def resize(img: Image.Image, size: int) -> Image.Image:
    """Shorter side ``size`` (the longer one in proportion); an image already that small is kept as is."""
    width, height = img.size
    short = min(width, height)
    if short <= size:
        return img
    if width <= height:
        target = (size, max(1, round(height * size / width)))
    else:
        target = (max(1, round(width * size / height)), size)
    return img.resize(target, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)


def encode(img: Image.Image, encoding: str, quality: int = 90) -> bytes:
    """The image as ``png``, ``jpeg`` or ``webp`` bytes (``quality`` for the lossy two)."""
    fmt, options = _ENCODE[encoding]
    if encoding != "png":
        options = {**options, "quality": quality}
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def phash(img: Image.Image) -> int:
    """imagehash's pHash (hash_size 8) as a signed int64 bit pattern, most significant bit first."""
    import imagehash

    bits = np.packbits(imagehash.phash(img).hash.flatten())
    return int.from_bytes(bits.tobytes(), "big", signed=True)


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes stored as signed int64."""
    return ((a ^ b) & 0xFFFF_FFFF_FFFF_FFFF).bit_count()
