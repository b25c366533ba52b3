"""Pixel math shared by images and video frames: target-size rules, uint8 bicubic resize and patchify."""

import math

import torch
import torch.nn.functional as F

from mossvl.constants import MAX_ASPECT_RATIO
from mossvl.errors import ConfigError, MediaError


def check_aspect_ratio(height: int, width: int, name: str) -> None:
    """Raise MediaError for an empty image or one whose long side exceeds MAX_ASPECT_RATIO × its short side."""
    if height <= 0 or width <= 0:
        raise MediaError(f"{name}: empty image of size {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise MediaError(
            f"{name}: aspect ratio {max(height, width) / min(height, width):.1f} of a {height}x{width} image "
            f"exceeds {MAX_ASPECT_RATIO}; crop or pad it first"
        )


def _scale_down(height: int, width: int, factor: int, beta: float) -> tuple[int, int]:
    return (
        max(factor, math.floor(height / beta / factor) * factor),
        max(factor, math.floor(width / beta / factor) * factor),
    )


def _scale_up(height: int, width: int, factor: int, beta: float) -> tuple[int, int]:
    return math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int, name: str = "image"
) -> tuple[int, int]:
    """Image target size: sides rounded to multiples of `factor`, rescaled only if outside [min, max] pixels."""
    check_aspect_ratio(height, width, name)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        h_bar, w_bar = _scale_down(height, width, factor, math.sqrt(height * width / max_pixels))
    elif h_bar * w_bar < min_pixels:
        h_bar, w_bar = _scale_up(height, width, factor, math.sqrt(min_pixels / (height * width)))
    return max(factor, h_bar), max(factor, w_bar)


def smart_resize_video(
    num_frames: int,
    height: int,
    width: int,
    factor: int,
    min_pixels: int,
    max_pixels: int,
    total_pixels: int,
    name: str = "video",
) -> tuple[int, int]:
    """One frame size for a whole video: per-frame max, then the video's volume budget, then per-frame min."""
    check_aspect_ratio(height, width, name)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        h_bar, w_bar = _scale_down(height, width, factor, math.sqrt(height * width / max_pixels))
    if num_frames * h_bar * w_bar > total_pixels:
        h_bar, w_bar = _scale_down(
            height, width, factor, math.sqrt(num_frames * height * width / total_pixels)
        )
    elif num_frames * h_bar * w_bar < min_pixels:
        h_bar, w_bar = _scale_up(height, width, factor, math.sqrt(min_pixels / (num_frames * height * width)))
    if h_bar * w_bar < min_pixels:
        h_bar, w_bar = _scale_up(height, width, factor, math.sqrt(min_pixels / (height * width)))
    return max(factor, h_bar), max(factor, w_bar)


def share_budget(weights: list[int], budget: int, low: int, high: int) -> list[int]:
    """Split an integer pixel budget in proportion to `weights`, each share clamped to [low, high]."""
    total = sum(weights)
    return [min(max(budget * w // total, low), high) for w in weights]


def resize_uint8(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic antialiased resize of uint8 (T, 3, H, W) frames with torch's native uint8 kernel; no-op if same size."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    return F.interpolate(frames, size=size, mode="bicubic", align_corners=False, antialias=True)


def check_patch_config(patch_size: int, temporal_patch_size: int, merge_size: int) -> None:
    """MOSS-VL embeds one frame per temporal step; other values would change the model's input layout."""
    if temporal_patch_size != 1:
        raise ConfigError(f"temporal_patch_size must be 1 for MOSS-VL, got {temporal_patch_size}")
    if patch_size <= 0 or merge_size <= 0:
        raise ConfigError(f"patch_size and merge_size must be positive, got {patch_size} and {merge_size}")


def patchify(
    frames: torch.Tensor,
    patch_size: int,
    merge_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 (T, C, H, W) → normalised float32 rows (T·gh·gw, C·p·p) in merge-window order, and grid (T, gh, gw).

    Rows go frame by frame, then over 2×2 merge windows in raster order, then over the window's patches in
    raster order; each row is channel-major (C, 1, p, p). Normalisation is (x − 255·mean) / (255·std), which
    for mean = std = 0.5 is exactly (x − 127.5) / 127.5 in float32.
    """
    t, c, h, w = frames.shape
    p, m = patch_size, merge_size
    if h % (p * m) or w % (p * m):
        raise MediaError(f"frame size {h}x{w} is not a multiple of {p * m}")
    gh, gw = h // p, w // p
    x = frames.reshape(t, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (T, gh/m, gw/m, m, m, C, p, p)
    # One pass: reorder and convert to float32 together (the output is the only full-size copy).
    rows = torch.empty(x.shape, dtype=torch.float32).copy_(x).view(t * gh * gw, c, p * p)
    scale = torch.tensor(std, dtype=torch.float32).mul_(255.0)[:, None]
    shift = torch.tensor(mean, dtype=torch.float32).mul_(255.0)[:, None]
    rows.sub_(shift).div_(scale)
    return rows.view(t * gh * gw, c * p * p), (t, gh, gw)
