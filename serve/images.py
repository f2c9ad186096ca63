"""Untrusted image bytes in, metadata-free PNG bytes out.

Decoding follows one order, so that a hostile file costs little: size in bytes → format by magic bytes
(PNG, JPEG, WebP only; Pillow is never asked to guess) → header only (`Image.open` with that one format) →
pixel count and sides from the header, before any pixel is decoded → exactly one frame → `load()` with
truncated images refused. Every failure is an `ApiError` (4xx) that names no input.
"""

import base64
import binascii
import io
import logging
import re
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from refine_control.serve.schemas import ApiError
from refine_control.serve.settings import ServeSettings

logger = logging.getLogger(__name__)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # the default; pinned so no other import can flip it for the server
_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg|webp);base64,", re.IGNORECASE)


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name for PNG/JPEG/WebP magic bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def b64decode_image(text: str, settings: ServeSettings, field: str) -> bytes:
    """Base64 (optionally a `data:image/...;base64,` URL) → bytes, with the byte limit checked first."""
    text = _DATA_URL.sub("", text, count=1)
    if len(text) > (settings.max_image_bytes * 4) // 3 + 8:
        raise ApiError(413, "image_too_large", f"`{field}` is larger than {settings.max_image_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", f"`{field}` is not valid base64") from None
    if len(data) > settings.max_image_bytes:
        raise ApiError(413, "image_too_large", f"`{field}` is larger than {settings.max_image_bytes} bytes")
    return data


def decode_image(data: bytes, settings: ServeSettings, field: str = "image") -> np.ndarray:
    """Validate and decode untrusted bytes; returns an RGB (H, W, 3) uint8 array."""
    if not data:
        raise ApiError(400, "invalid_image", f"`{field}` is empty")
    if len(data) > settings.max_image_bytes:
        raise ApiError(413, "image_too_large", f"`{field}` is larger than {settings.max_image_bytes} bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise ApiError(415, "unsupported_image_format", f"`{field}` must be a PNG, JPEG or WebP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(field, settings) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise ApiError(400, "invalid_image", f"`{field}` is not a readable {fmt} image") from None
    with image:
        width, height = image.size
        if width * height > settings.max_image_pixels:
            raise _too_many_pixels(field, settings)
        if max(width, height) > settings.max_image_side:
            raise ApiError(413, "image_too_large", f"`{field}` sides must be at most {settings.max_image_side} px")
        if min(width, height) < settings.min_image_side:
            raise ApiError(422, "image_too_small", f"`{field}` sides must be at least {settings.min_image_side} px")
        if getattr(image, "n_frames", 1) != 1:
            raise ApiError(422, "animated_image", f"`{field}` must be a single frame, not an animation")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
                rgb = _to_rgb(image)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning, MemoryError):
            raise ApiError(400, "invalid_image", f"`{field}` is truncated or corrupt") from None
    return rgb


def _to_rgb(image: Image.Image) -> np.ndarray:
    try:
        image = ImageOps.exif_transpose(image) or image  # phone photos: honour the orientation tag
    except Exception:  # a broken EXIF block must not fail the upload; the pixels are what matter
        logger.debug("ignored an unreadable EXIF orientation")
    if image.mode != "RGB":
        image = image.convert("RGBA").convert("RGB") if image.mode in ("P", "LA", "PA") else image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def _too_many_pixels(field: str, settings: ServeSettings) -> ApiError:
    return ApiError(413, "image_too_many_pixels", f"`{field}` has more than {settings.max_image_pixels} pixels")


def resize_rgb(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 → (height, width, 3) uint8 (Lanczos, as the runtime resizes control images)."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def fit_within(width: int, height: int, max_side: int, multiple: int = 1) -> tuple[int, int]:
    """Scale (width, height) down so the long side is ≤ max_side, keeping the aspect; round to `multiple`."""
    scale = min(1.0, max_side / max(width, height))
    w = max(multiple, round(width * scale / multiple) * multiple)
    h = max(multiple, round(height * scale / multiple) * multiple)
    return w, h


def control_map_to_uint8(control: np.ndarray) -> np.ndarray:
    """A preprocessor's float map → uint8 for display ([0, 1] scaled; the inpaint holes (-1) show black)."""
    return (np.clip(control, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 → PNG bytes with no metadata chunks (no text, EXIF, ICC, time)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
