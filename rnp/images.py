"""Image files as a model sees them: the loader `rnp defend` and the `folder` data set read users' images with.

Pillow does the decoding and every conversion it has a tool for: EXIF orientation (ImageOps.exif_transpose),
palette, alpha, CMYK and grey to RGB or grey (Image.convert). The one conversion Pillow has no right tool for
is 16-bit and float pixels to 8 bits (its convert("L") clips a 16-bit image at 255): they are scaled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import RnpError

__all__ = ["read_image", "to_8bit", "class_order", "CLASSES_FILE"]

CLASSES_FILE = "classes.txt"  # in an image folder: the class names in the model's order, one per line
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_8bit(img):
    """A 16-bit or 32-bit integer image scaled to 0..255 from 0..65535, a float image from 0..1 (else clipped at 255);
    every other mode as it is."""
    from PIL import Image

    if img.mode in SIXTEEN_BIT:
        wide = np.asarray(img).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    if img.mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0
        return Image.fromarray(np.rint(values * scale).clip(0, 255).astype(np.uint8), "L")
    return img


def read_image(path: str | Path, image_size: int, channels: int = 3) -> np.ndarray:
    """One image file as a (image_size, image_size, channels) uint8 array, upright as a viewer shows it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = to_8bit(ImageOps.exif_transpose(img))
            if img.mode in ("P", "PA"):  # a palette's transparency is an alpha channel: go through RGBA, as Pillow advises
                img = img.convert("RGBA")
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(img).reshape(image_size, image_size, channels)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise RnpError(f"cannot read image {path} ({str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__})") from None


def class_order(folders: list[str], given: list[str] | None, classes_file: Path | None) -> tuple[list[str], str]:
    """The class folders in the model's order, and how it was chosen: `given` (--classes), else the folder's classes.txt,
    else numerically when every name is a number (so 10 comes after 9), else as strings (torchvision's ImageFolder)."""
    if given is None and classes_file is not None and classes_file.is_file():
        given = [line.strip() for line in classes_file.read_text(errors="replace").splitlines() if line.strip()]
        how = f"from {classes_file}"
    else:
        how = "as given (--classes)"
    if given is not None:
        if len(set(given)) != len(given):
            raise RnpError(f"the class order {how} names a class twice ({next(c for c in given if given.count(c) > 1)})")
        if set(given) != set(folders):
            missing, extra = sorted(set(folders) - set(given)), sorted(set(given) - set(folders))
            said = "; ".join(s for s in (f"folders not in it: {', '.join(missing)}" if missing else "",
                                         f"in it but no folder: {', '.join(extra)}" if extra else "") if s)
            raise RnpError(f"the class order {how} does not match the class folders ({said})")
        return list(given), how
    if all(name.isdigit() for name in folders):
        return sorted(folders, key=int), "numerical (every folder name is a number)"
    return sorted(folders), "sorted by name (give --classes or a classes.txt for another order)"
