"""Reading images for a model: photos (PNG, JPEG) fitted the way Fashion-MNIST's were made, and
IDX image files passed unchanged.

How a PNG or JPEG becomes model input, following the way Fashion-MNIST's 28x28 images were made
from product photos (light garment on a black background):
1. EXIF orientation is applied; transparent pixels are laid over white, like a studio backdrop.
2. The image becomes 8-bit grayscale (Pillow's ``L`` mode: ITU-R 601-2 luma).
3. Polarity: the image is inverted when its border is lighter than its centre, i.e. when the median
   of the outermost ring of pixels (one output pixel wide, about 1/28 of the shorter side) exceeds
   the mean of the central half. A dark garment photographed on white becomes a light garment on
   black. On the 10,000 Fashion-MNIST test images the rule never inverts an original and always
   inverts a negated copy.
4. Fit: scaled, keeping the aspect ratio, until the longer side equals the model's input size
   (28 pixels for Fashion-MNIST); area averaging when shrinking (an image enlarged by repeating
   pixels comes back exactly), bicubic when enlarging. The shorter side is padded evenly with the
   background (the border's median after step 3). Nothing is cropped: crop a photo to the garment
   first, as Fashion-MNIST's photos were.
5. The pixels stay uint8 0..255: the model normalizes inside itself.

``--idx FILE`` passes an IDX image file's pixels unchanged. NumPy and Pillow only, no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import BenchError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_SIZE = (28, 28)  # when a model carries no input signature


def read_gray(path: str | Path) -> np.ndarray:
    """Decode an image file into an 8-bit grayscale array (steps 1-2 of the module docstring).

    Raises:
        BenchError: missing, unreadable, not an image, or damaged.
    """
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode.startswith("I"):  # 16/32-bit grayscale PNG: scale to 0..255
                wide = np.asarray(img, dtype=np.float64)
                return np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                white = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, img.convert("RGBA"))
            return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise BenchError(f"{path}: not an image (expected PNG or JPEG)") from None
    except Image.DecompressionBombError as exc:
        raise BenchError(f"{path}: image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise BenchError(f"{path}: damaged image ({reason})") from None


def _ring_width(gray: np.ndarray, size: tuple[int, int]) -> int:
    return max(1, round(min(gray.shape) / min(size)))


def border_median(gray: np.ndarray, width: int = 1) -> float:
    """Median of the outermost ``width`` pixels on all four sides."""
    import numpy as np

    w = max(1, min(width, min(gray.shape) // 2 or 1))
    ring = np.concatenate(
        [gray[:w].ravel(), gray[-w:].ravel(), gray[w:-w, :w].ravel(), gray[w:-w, -w:].ravel()]
    )
    return float(np.median(ring))


def needs_inversion(gray: np.ndarray, width: int = 1) -> bool:
    """True when the border is lighter than the centre (step 3 of the module docstring)."""
    h, w = gray.shape
    centre = gray[h // 4 : h - h // 4, w // 4 : w - w // 4]
    return border_median(gray, width) > float(centre.mean())


def fit(gray: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """Turn any grayscale image into a ``size`` uint8 array, light garment on dark (steps 3-5).

    Args:
        gray: (H, W) uint8 pixels, any size.
        size: (height, width) the model takes.

    Returns:
        (height, width) uint8 array.
    """
    import numpy as np
    from PIL import Image

    if gray.ndim != 2 or gray.size == 0:
        raise BenchError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    width = _ring_width(gray, size)
    if needs_inversion(gray, width):
        gray = 255 - gray
    background = int(round(border_median(gray, width)))
    out_h, out_w = size
    h, w = gray.shape
    scale = min(out_h / h, out_w / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8))
    if (new_h, new_w) != (h, w):
        img = img.resize((new_w, new_h), resample=resample)
    canvas = Image.new("L", (out_w, out_h), background)
    canvas.paste(img, ((out_w - new_w) // 2, (out_h - new_h) // 2))
    return np.asarray(canvas, dtype=np.uint8).copy()


def convert_image(path: str | Path, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """Read an image file and convert it the way Fashion-MNIST was made (module docstring)."""
    return fit(read_gray(path), size)


def read_idx_images(path: str) -> np.ndarray:
    """An IDX file's images as (N, height, width) uint8.

    Raises:
        BenchError: missing or damaged file, labels instead of images, pixels other than uint8.
    """
    from bench.data import read_idx

    if not Path(path).is_file():
        raise BenchError(f"--idx {path}: no such file")
    images = read_idx(path)
    if images.ndim == 2 and images.shape[0] > 1:
        images = images[None]  # one image stored without the count dimension
    if images.ndim != 3:
        raise BenchError(
            f"--idx {path}: holds an array of shape {images.shape}, not images "
            "(N, height, width); is it a labels file?"
        )
    if images.dtype.name != "uint8":
        raise BenchError(f"--idx {path}: pixels are {images.dtype}; the model takes uint8")
    return images


def check_size(path: str, images: np.ndarray, size: tuple[int, int]) -> None:
    if images.shape[1:] != size:
        raise BenchError(
            f"--idx {path}: images are {images.shape[1]}x{images.shape[2]} but the "
            f"model takes {size[0]}x{size[1]}"
        )
