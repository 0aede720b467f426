"""Small files for tests/test_data.py: CSVs and images in every format the image_folder reads.

PNG and JPEG come from TensorFlow's encoders; TensorFlow has no GIF or BMP encoder (and PIL is
not a dependency), so those two are written byte by byte here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tensorflow as tf

COLORS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 255, 0)}


def solid(color: tuple[int, int, int], height: int = 6, width: int = 5) -> np.ndarray:
    """A uint8 [height, width, 3] image of one color."""
    return np.broadcast_to(np.array(color, np.uint8), (height, width, 3)).copy()


def write_png(path: Path, image: np.ndarray) -> Path:
    path.write_bytes(tf.io.encode_png(image).numpy())
    return path


def write_jpeg(path: Path, image: np.ndarray) -> Path:
    path.write_bytes(tf.io.encode_jpeg(image, quality=95).numpy())
    return path


def write_bmp(path: Path, image: np.ndarray) -> Path:
    """An uncompressed 24-bit BMP (rows bottom-up, BGR, each row padded to 4 bytes)."""
    height, width, _ = image.shape
    row_bytes = (width * 3 + 3) // 4 * 4
    rows = b"".join(
        image[y, :, ::-1].tobytes() + b"\0" * (row_bytes - width * 3)
        for y in range(height - 1, -1, -1)
    )
    header = b"BM" + struct.pack("<IHHI", 54 + len(rows), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(rows), 2835, 2835, 0, 0)
    path.write_bytes(header + info + rows)
    return path


def write_gif(path: Path, image: np.ndarray) -> Path:
    """A GIF89a whose pixels are all 128-colour palette entries, LZW-coded without compression.

    With a minimum code size of 7 every code is 8 bits wide as long as the code table stays
    below 256 entries, so a clear code every 100 pixels keeps each code exactly one byte.
    """
    height, width, _ = image.shape
    palette: list[tuple[int, int, int]] = []
    indices = []
    for pixel in image.reshape(-1, 3):
        color = tuple(int(c) for c in pixel)
        if color not in palette:
            palette.append(color)
        indices.append(palette.index(color))
    assert len(palette) <= 126, "write_gif supports up to 126 colors"
    table = b"".join(bytes(c) for c in palette) + b"\0" * (3 * (128 - len(palette)))
    codes = bytearray()
    for start in range(0, len(indices), 100):
        codes.append(128)  # clear code
        codes.extend(indices[start:start + 100])
    codes.append(129)  # end of information
    blocks = b"".join(
        bytes([len(codes[i:i + 255])]) + bytes(codes[i:i + 255]) for i in range(0, len(codes), 255)
    )
    data = (
        b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF6, 0, 0) + table
        + b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)
        + b"\x07" + blocks + b"\x00" + b"\x3b"
    )
    path.write_bytes(data)
    return path


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> str:
    path.write_bytes(text.encode(encoding))
    return str(path)


def image_folder(root: Path) -> dict[str, object]:
    """A class-per-subfolder tree with every supported format, a corrupt file and a text file.

    Returns what the reader should find: readable image counts per class and the bad files.
    """
    red, blue, green = (root / "red"), (root / "blue"), (root / "green")
    for folder in (red, blue, green):
        folder.mkdir(parents=True)
    write_png(red / "a.png", solid(COLORS["red"]))
    write_jpeg(red / "b.JPG", solid(COLORS["red"], 8, 7))
    write_gif(red / "c.gif", solid(COLORS["red"], 4, 9))
    write_bmp(red / "d.bmp", solid(COLORS["red"], 5, 5))
    (red / "nested").mkdir()
    write_jpeg(red / "nested" / "e.jpeg", solid(COLORS["red"]))
    write_png(blue / "a.png", solid(COLORS["blue"]))
    write_bmp(blue / "b.BMP", solid(COLORS["blue"], 3, 7))
    write_gif(blue / "c.gif", solid(COLORS["blue"], 10, 12))
    # Grayscale and RGBA PNGs become RGB.
    gray = np.full((4, 4, 1), 200, np.uint8)
    write_png(green / "gray.png", gray)
    rgba = np.concatenate([solid(COLORS["green"], 4, 4), np.full((4, 4, 1), 9, np.uint8)], -1)
    write_png(green / "rgba.png", rgba)
    write_jpeg(green / "c.jpg", solid(COLORS["green"]))
    (blue / "broken.jpg").write_bytes(b"this is not a jpeg at all")
    (green / "empty.png").write_bytes(b"")
    (red / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("top-level files are ignored")
    return {
        "counts": {"blue": 3, "green": 3, "red": 5},
        "unreadable": 2,
        "ignored": 2,
    }
