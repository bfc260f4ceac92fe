"""Uploaded images: format sniffing and the pixel size read from the header, so an oversized picture (a
decompression bomb: a few KB of PNG that decode to gigabytes) is refused before it is decoded."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import numpy.typing as npt

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageError(ValueError):
    """Not a JPEG/PNG, a truncated header, or undecodable data."""


def image_format(data: bytes) -> str:
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    raise ImageError("not a JPEG or PNG image (unknown signature)")


def header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the PNG IHDR chunk or the JPEG SOF segment."""
    kind = image_format(data)
    if kind == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError("truncated PNG: no IHDR chunk")
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ImageError("corrupt JPEG: expected a marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _SOF:
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return int(width), int(height)
        i += 2 + length
    raise ImageError("truncated JPEG: no frame header")


def decode_bgr(data: bytes) -> npt.NDArray[np.uint8]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError("the image data cannot be decoded")
    return np.asarray(image, np.uint8)
