"""Decoding one input image: what is kept (size, hashes, the stored image) and what is refused, with which reason."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib

import pytest
from PIL import Image, ImageFile

from pretrain.config import ImagesConfig
from pretrain.data import images
from pretrain.data.images import ImageSkip, decode


def encoded(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def picture(width: int = 120, height: int = 80, seed: int = 0) -> Image.Image:
    """A picture with structure (not a flat colour): a gradient and a few rectangles."""
    img = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    for k in range(3):
        x, y = (seed * 37 + k * 29) % width, (seed * 11 + k * 17) % height
        img.paste((200, 40 * k, 90), (x, y, min(width, x + width // 4), min(height, y + height // 4)))
    return img


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with a tiny IDAT: a decompression bomb in 70 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_bomb(side: int) -> bytes:
    """A valid, complete black 1-bit PNG of ``side`` x ``side``, compressed row block by row block (cheap)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    rows = b"\x00" * ((1 + (side + 7) // 8) * 1000)  # filter byte + packed bits, 1000 rows
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(rows) for _ in range(side // 1000)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def reason(data: bytes, cfg: ImagesConfig | None = None) -> str:
    with pytest.raises(ImageSkip) as info:
        decode(data, cfg or ImagesConfig())
    assert info.value.reason in images.SKIP_REASONS
    return info.value.reason


def test_a_picture_is_resized_so_its_shorter_side_is_the_size_and_keeps_its_original_size():
    out = decode(encoded(picture(200, 100)), ImagesConfig(size=64))
    assert (out.width, out.height) == (200, 100)  # as decoded: the filter judges this
    stored = Image.open(io.BytesIO(out.image))
    assert stored.format == "PNG" and stored.mode == "RGB" and stored.size == (128, 64) == (out.stored_width,
                                                                                             out.stored_height)
    tall = decode(encoded(picture(90, 300)), ImagesConfig(size=30))
    assert Image.open(io.BytesIO(tall.image)).size == (30, 100)


def test_a_small_image_is_never_enlarged():
    out = decode(encoded(picture(40, 30)), ImagesConfig(size=64))
    assert Image.open(io.BytesIO(out.image)).size == (40, 30)


@pytest.mark.parametrize("encoding", ["jpeg", "webp"])
def test_the_stored_image_is_re_encoded_as_the_recipe_says(encoding):
    out = decode(encoded(picture()), ImagesConfig(size=32, encoding=encoding, quality=80))
    assert Image.open(io.BytesIO(out.image)).format == encoding.upper()


def test_the_exact_hash_is_of_the_pixels_so_re_encodings_share_it_and_other_pictures_do_not():
    cfg = ImagesConfig()
    img = picture()
    as_png = decode(encoded(img, "PNG", compress_level=1), cfg)
    as_bmp = decode(encoded(img, "BMP"), cfg)
    as_webp = decode(encoded(img, "WEBP", lossless=True), cfg)
    assert as_png.image_hash == as_bmp.image_hash == as_webp.image_hash
    assert decode(encoded(picture(seed=1)), cfg).image_hash != as_png.image_hash
    # the size is part of the key: the same bytes laid out as another shape are another picture
    flat = Image.new("RGB", (20, 10), (9, 9, 9))
    assert decode(encoded(flat), cfg).image_hash != decode(encoded(flat.resize((10, 20))), cfg).image_hash


def test_the_perceptual_hash_is_a_signed_int64_of_the_stored_pixels_and_survives_a_jpeg():
    import imagehash

    cfg = ImagesConfig(size=64)
    out = decode(encoded(picture(256, 256)), cfg)
    stored = Image.open(io.BytesIO(out.image)).convert("RGB")
    assert -(1 << 63) <= out.phash < (1 << 63)
    assert out.phash & 0xFFFF_FFFF_FFFF_FFFF == int(str(imagehash.phash(stored)), 16)  # recomputable from a PNG
    jpeg = decode(encoded(picture(256, 256), "JPEG", quality=60), cfg)
    assert images.hamming(out.phash, jpeg.phash) <= 4 < images.hamming(out.phash, decode(
        encoded(picture(256, 256).transpose(Image.Transpose.ROTATE_90)), cfg).phash)
    assert images.hamming(-1, 0) == 64 and images.hamming(5, 5) == 0


def test_the_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[images.ORIENTATION] = 6  # rotate 90 degrees clockwise to view
    out = decode(encoded(picture(60, 20), "JPEG", exif=exif.tobytes()), ImagesConfig(size=64))
    assert (out.width, out.height) == (20, 60)


def test_transparent_pixels_become_white_and_grey_or_palette_images_become_rgb():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 5, 10))
    stored = Image.open(io.BytesIO(decode(encoded(rgba), ImagesConfig()).image))
    assert stored.mode == "RGB"
    assert stored.getpixel((8, 5)) == (255, 255, 255) and stored.getpixel((1, 5)) == (0, 0, 255)
    for mode in ("L", "P", "1", "CMYK", "I;16"):
        img = picture(30, 20).convert(mode) if mode != "I;16" else Image.new("I;16", (30, 20), 4000)
        out = decode(encoded(img, "TIFF" if mode in ("CMYK", "I;16") else "PNG"), ImagesConfig())
        assert Image.open(io.BytesIO(out.image)).mode == "RGB", mode


def test_a_zero_byte_image_and_one_over_max_bytes_are_refused_before_decoding():
    assert reason(b"") == "empty_image"
    assert reason(encoded(picture()), ImagesConfig(max_bytes=100)) == "image_too_large"


def test_a_20000_by_20000_png_is_refused_from_its_header_fast_whatever_the_limits():
    bomb = png_header_only(20000, 20000)
    assert len(bomb) < 200
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither Pillow's bomb warning nor anything else escapes
        assert reason(bomb) == "too_many_pixels"
        assert reason(bomb, ImagesConfig(max_pixels=10**12)) == "too_many_pixels"  # Pillow's own ceiling holds
        assert reason(png_header_only(10000, 10000)) == "too_many_pixels"  # over max_pixels, under that ceiling
    assert time.perf_counter() - start < 2.0  # nothing of 400M pixels was allocated or decoded
    assert reason(png_header_only(100, 100), ImagesConfig(max_pixels=9999)) == "too_many_pixels"
    assert reason(png_header_only(100, 100), ImagesConfig(max_pixels=10000)) == "undecodable_image"  # let in: its
    # header lies about the data behind it, which the full decode finds


def test_a_real_decompression_bomb_file_is_refused_too():
    bomb = png_bomb(20000)  # 400M pixels in ~50 KB, a valid PNG
    assert len(bomb) < 100_000 and reason(bomb) == "too_many_pixels"
    assert decode(png_bomb(2000), ImagesConfig(size=16)).width == 2000  # the same file, smaller: valid indeed


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_undecodable(fmt):
    data = encoded(picture(200, 150), fmt)
    for cut in (len(data) // 2, len(data) * 3 // 4, 40):
        assert reason(data[:cut]) == "undecodable_image", cut


def test_corrupt_data_and_non_images_are_undecodable():
    data = bytearray(encoded(picture(200, 150), "PNG"))
    data[len(data) // 2] ^= 0xFF  # a flipped byte in the IDAT: a CRC error
    assert reason(bytes(data)) == "undecodable_image"
    assert reason(b"this is a caption, not an image\n") == "undecodable_image"
    assert reason(png_header_only(0, 10)) == "undecodable_image"
    assert reason(encoded(picture(), "PDF")) == "undecodable_image"  # a format ingest does not read


def test_truncated_images_are_never_accepted_even_if_pillow_was_told_to(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode(encoded(picture()), ImagesConfig())
