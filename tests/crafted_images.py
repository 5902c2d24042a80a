"""Crafted images for predict and serve: a digit in every PIL mode and container, and hostile files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin


def digit_like(height=120, width=80, ink=0, paper=255):
    """A thick '7'-ish stroke drawn on paper (dark ink on light by default)."""
    image = np.full((height, width), paper, np.uint8)
    image[20:32, 10:70] = ink  # top bar
    for row in range(32, 110):  # diagonal
        col = 62 - (row - 32) * 40 // 78
        image[row, col : col + 12] = ink
    return image


def encode(image: Image.Image | np.ndarray, format: str = "PNG", **options) -> bytes:  # noqa: A002
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


INK = digit_like() < 128
GREY = np.where(INK, 0, 255).astype(np.uint8)
ON_CLEAR = np.stack([np.zeros_like(GREY)] * 3 + [np.where(INK, 255, 0).astype(np.uint8)], -1)  # RGBA


def _palette() -> Image.Image:
    """Index 0: transparent (black in the palette), 1: black ink."""
    palette = Image.frombytes("P", (INK.shape[1], INK.shape[0]), INK.astype(np.uint8).tobytes())
    palette.putpalette([0, 0, 0] * 256)
    return palette


def _on_colour() -> bytes:
    """Paper of a colour marked transparent (L+transparency: of a grey)."""
    rgb = np.stack([GREY] * 3, -1)
    rgb[~INK] = (10, 20, 30)
    return encode(rgb, transparency=(10, 20, 30))


DRAWINGS = {  # the digit_like drawing (black ink; paper white or transparent) as a file of one kind
    "L": lambda: encode(GREY),
    "RGBA": lambda: encode(ON_CLEAR),
    "P+transparency": lambda: encode(_palette(), transparency=0),
    "GIF+transparency": lambda: encode(_palette(), "GIF", transparency=0),
    "LA": lambda: encode(Image.fromarray(np.stack([np.zeros_like(GREY), ON_CLEAR[..., 3]], -1), "LA")),
    "PA": lambda: encode(Image.fromarray(ON_CLEAR).convert("PA"), "TIFF"),
    "RGB+transparency": _on_colour,
    "L+transparency": lambda: encode(np.where(INK, 0, 7).astype(np.uint8), transparency=7),
    "I;16": lambda: encode(Image.fromarray(GREY.astype(np.uint16) * 257)),
    "I;16+transparency": lambda: encode(
        Image.fromarray(np.where(INK, 0, 1234).astype(np.uint16)), transparency=1234),
    "1": lambda: encode(Image.fromarray(GREY).convert("1")),
    "CMYK": lambda: encode(Image.fromarray(GREY).convert("CMYK"), "TIFF"),
    "CMYK JPEG": lambda: encode(Image.fromarray(GREY).convert("CMYK"), "JPEG", quality=95),
    "F": lambda: encode(Image.fromarray(GREY.astype(np.float32) / 255), "TIFF"),
    "RGB JPEG": lambda: encode(np.stack([GREY] * 3, -1), "JPEG", quality=95),
    "BMP": lambda: encode(GREY, "BMP"),
    "WebP": lambda: encode(GREY, "WEBP", lossless=True),
}  # fmt: skip


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A few bytes of PNG whose header claims width x height pixels (a trusting decoder allocates them)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def ztxt_bomb() -> bytes:
    """A small PNG with a zTXt chunk that decompresses past PIL's MAX_TEXT_CHUNK."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "A" * (PngImagePlugin.MAX_TEXT_CHUNK + 1024), zip=True)
    return encode(digit_like(), pnginfo=info)


def sparse_ink() -> bytes:
    """Ink in 2 pixels of a 3x100000 image: scaled to 20 pixels wide, nothing is left of it."""
    image = np.full((3, 100_000), 255, np.uint8)
    image[1, 5] = image[1, 99_990] = 0
    return encode(image)


def blank() -> bytes:
    return encode(np.full((50, 50), 255, np.uint8))


def truncated() -> bytes:
    data = encode(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    return data[: len(data) // 2]


def big_digit(side: int = 4096) -> bytes:
    """A side x side drawing of a digit: a few KB of PNG, side**2 pixels decoded."""
    image = np.full((side, side), 255, np.uint8)
    image[side // 5 : side * 4 // 5, side * 9 // 20 : side * 11 // 20] = 0
    return encode(image, compress_level=1)
