"""Phone photos made in the test: an MNIST digit as dark ink on paper, lit from the top left,
a soft-edged shadow across the lower right, camera noise, a slight blur, saved as JPEG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter


def phone_photo(digit: np.ndarray, seed: int = 0, width: int = 640, height: int = 480) -> bytes:
    """`digit` (28x28, white on black) photographed: JPEG bytes. The paper's brightness falls
    from about 235 to 95 across the frame, the shadow takes 45% more off a third of it, and
    the digit (260 px tall) straddles the shadow's edge."""
    rng = np.random.default_rng(seed)
    ink = np.zeros((height, width))
    top, left = (height - 260) // 2 - 2, (width - 260) // 2 + 10
    ink[top:top + 260, left:left + 260] = np.asarray(Image.fromarray(digit).resize(
        (260, 260), Image.Resampling.BICUBIC), np.float64) / 255
    yy, xx = np.mgrid[0:height, 0:width]
    light = 235 - 110 * xx / width - 30 * yy / height
    shadow = 1 - 0.45 / (1 + np.exp(-(xx + yy - 1.5 * height) / 25))
    shot = light * shadow * (1 - 0.75 * ink) + rng.normal(0, 4, (height, width))
    image = Image.fromarray(np.clip(shot, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(1.2)).convert("RGB").save(buf, format="JPEG",
                                                                   quality=85)
    return buf.getvalue()
