"""Image processor: load any image input as RGB uint8, resize under a shared pixel budget, patchify.

Planning reads the size of every image of a call first (a file's or URL's header, never its pixels), checks the
sizes against the processor's ``InputLimits`` and only then decodes; whatever a decoder raises on a hostile file
becomes a MediaError naming the image.
"""

import base64
import binascii
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers.image_processing_base import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ImagesKwargs

from mossvl import constants as C
from mossvl.errors import ConfigError, MediaError, MossVLError, QueryError
from mossvl.processing.limits import InputLimits, check_media_settings, check_planned_pixels
from mossvl.processing.media_plan import PlannedMedia, array_digest, settings_key
from mossvl.processing.sources import HTTP_PREFIXES, fetch_bytes, local_media_file
from mossvl.processing.transforms import (
    check_aspect_ratio,
    check_patch_config,
    patchify,
    resize_uint8,
    share_budget,
    smart_resize,
)


@dataclass
class VisualPatches:
    """One processed image or video: pixel rows (N, C·p·p) float32 and its (t, h, w) grid in patches."""

    pixel_values: torch.Tensor
    grid_thw: tuple[int, int, int]
    timestamps: list[float] | None = None
    frame_indices: list[int] | None = None


def describe(source: Any) -> str:
    """A short name for a media item, used in error messages."""
    if isinstance(source, str | Path):
        text = str(source)
        return text if len(text) <= 200 else text[:120] + "..."
    if isinstance(source, np.ndarray | torch.Tensor):
        return f"{type(source).__name__} of shape {tuple(source.shape)}"
    if isinstance(source, Image.Image):
        return f"PIL image {source.size[0]}x{source.size[1]} mode {source.mode}"
    return type(source).__name__


@contextmanager
def _image_errors(name: str, limits: InputLimits) -> Iterator[None]:
    """Whatever PIL raises on a hostile file (many types) becomes a MediaError naming the image."""
    try:
        yield
    except MossVLError:
        raise
    except Image.DecompressionBombError as err:
        raise MediaError(
            f"image {name} has more pixels than {limits.max_image_pixels} (InputLimits.max_image_pixels); it was "
            f"refused before decoding ({err})"
        ) from err
    except Exception as err:  # noqa: BLE001 - any decoder failure is this image's, never its neighbours'
        raise MediaError(f"cannot read image {name}: {type(err).__name__}: {err}") from err


def _opener(source: str | Path, limits: InputLimits) -> Callable[[], Image.Image]:
    """A function that opens the image of a path / file:// / http(s) URL / data URI lazily (header only)."""
    text = str(source)
    if text.startswith(HTTP_PREFIXES):
        data = fetch_bytes(text, limits, "image")
        return lambda: Image.open(io.BytesIO(data))
    if text.startswith("data:image/"):
        try:
            data = base64.b64decode(text.split(",", 1)[1], validate=True)
        except (IndexError, binascii.Error) as err:
            raise MediaError(f"malformed base64 image data URI: {err}") from err
        return lambda: Image.open(io.BytesIO(data))
    path = local_media_file(text.removeprefix("file://"), "image")
    return partial(Image.open, path)


def _check_source_pixels(height: int, width: int, limits: InputLimits, name: str) -> None:
    if height * width > limits.max_image_pixels:
        raise MediaError(
            f"image {name} is {width}x{height} = {height * width} pixels; the limit is {limits.max_image_pixels} "
            "(InputLimits.max_image_pixels), checked before decoding"
        )


@dataclass
class _SourceImage:
    """An image whose pixel count is known and whose pixels are not decoded yet."""

    pixels: int
    decode: Callable[[], np.ndarray]


def _inspect(source: Any, limits: InputLimits) -> _SourceImage:
    """Read an image input's size (headers only for files, URLs and lazy PIL images) and check it."""
    name = describe(source)
    if isinstance(source, str | Path):
        open_image = _opener(source, limits)
        with _image_errors(name, limits), open_image() as image:
            width, height = image.size
        _check_source_pixels(height, width, limits, name)
        return _SourceImage(height * width, partial(_decode_file, open_image, name, limits))
    if isinstance(source, Image.Image):
        width, height = source.size
        _check_source_pixels(height, width, limits, name)
        return _SourceImage(height * width, partial(_decode_pil, source, name, limits))
    if isinstance(source, np.ndarray | torch.Tensor):
        is_tensor = isinstance(source, torch.Tensor)
        with _image_errors(name, limits):  # numpy has no bfloat16, complex tensors, ...
            array = source.detach().cpu().numpy() if is_tensor else source
        array = _array_to_hwc(array, channels_first=is_tensor, name=name)
        _check_source_pixels(*array.shape[:2], limits, name)
        return _SourceImage(array.shape[0] * array.shape[1], lambda: array)
    raise QueryError(
        f"unsupported image input of type {type(source).__name__}; use a path, PIL image or array"
    )


def _decode_file(open_image: Callable[[], Image.Image], name: str, limits: InputLimits) -> np.ndarray:
    """Decode an opened file's pixels, EXIF orientation applied."""
    with _image_errors(name, limits), open_image() as image:
        image.load()
        return np.array(ImageOps.exif_transpose(image).convert("RGB"))


def _decode_pil(image: Image.Image, name: str, limits: InputLimits) -> np.ndarray:
    with _image_errors(name, limits):
        return np.array(image.convert("RGB"))


def _array_to_hwc(array: np.ndarray, channels_first: bool, name: str) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise MediaError(f"image {name}: expected a 2-D or 3-D array, got {array.ndim} dimensions")
    first_is_channel, last_is_channel = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
    if first_is_channel and (channels_first or not last_is_channel):
        array = array.transpose(1, 2, 0)
    elif not last_is_channel:
        raise MediaError(f"image {name}: cannot find a channel axis of size 1, 3 or 4 in shape {array.shape}")
    if array.dtype != np.uint8:
        floating = np.issubdtype(array.dtype, np.floating)
        if not floating or (
            array.size and not (np.isfinite(array).all() and 0 <= array.min() <= array.max() <= 1)
        ):
            raise MediaError(
                f"image {name}: expected uint8 values or finite floats in [0, 1], got dtype {array.dtype}"
            )
        array = np.rint(array * 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[:, :, :3])


def load_image_array(source: Any, limits: InputLimits | None = None) -> np.ndarray:
    """Any supported image input → RGB uint8 array (H, W, 3).

    Accepts a path / file:// / http(s) URL / data URI (EXIF orientation applied), a PIL image (any mode;
    alpha is dropped, palettes expanded), a numpy array (HWC, HW or CHW; uint8 or floats in [0, 1]) or a torch
    tensor (CHW preferred, HWC accepted). The size is checked against ``limits`` (defaults when None) before
    any pixel is decoded.
    """
    return _inspect(source, limits or InputLimits()).decode()


def hwc_to_tensor(arrays: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) numpy → uint8 (..., 3, H, W) tensor view in channels-last memory (no copy)."""
    tensor = torch.from_numpy(arrays)
    return tensor.movedim(-1, -3)


def size_dict(size: dict[str, int] | None, min_pixels: int | None, max_pixels: int | None) -> dict[str, int]:
    """`size` in pixel counts; Qwen-style `min_pixels` / `max_pixels` config keys are accepted as aliases."""
    size = dict(size or {"shortest_edge": C.MIN_PIXELS, "longest_edge": C.MAX_PIXELS})
    if set(size) != {"shortest_edge", "longest_edge"}:
        raise ConfigError(f"size must have keys shortest_edge and longest_edge (pixel counts), got {size}")
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if not 0 < size["shortest_edge"] <= size["longest_edge"]:
        raise ConfigError(f"need 0 < shortest_edge <= longest_edge (pixel counts), got {size}")
    return size


class MossVLImageKwargs(ImagesKwargs, total=False):
    multi_image_max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int


class MossVLImageProcessor(BaseImageProcessor):
    """Images → pixel rows + grid. Saves/loads as preprocessor_config.json with the official MOSS-VL keys.

    `size` holds pixel counts: shortest_edge = min_pixels, longest_edge = per-image max_pixels.
    `multi_image_max_pixels` is a budget shared by all images of one call in proportion to their areas.
    """

    valid_kwargs = MossVLImageKwargs
    model_input_names = ["pixel_values", "grid_thw"]

    def __init__(
        self,
        size: dict[str, int] | None = None,
        multi_image_max_pixels: int | None = C.MULTI_IMAGE_MAX_PIXELS,
        patch_size: int = C.PATCH_SIZE,
        temporal_patch_size: int = C.TEMPORAL_PATCH_SIZE,
        merge_size: int = C.MERGE_SIZE,
        image_mean: list[float] | tuple[float, ...] = C.IMAGE_MEAN,
        image_std: list[float] | tuple[float, ...] = C.IMAGE_STD,
        interpolation: str = "BICUBIC",
        limits: InputLimits | None = None,
        **kwargs: Any,
    ) -> None:
        for key in ("image_processor_type", "processor_class"):
            kwargs.pop(key, None)
        size = size_dict(size, kwargs.pop("min_pixels", None), kwargs.pop("max_pixels", None))
        super().__init__(**kwargs)
        if str(interpolation).upper() != "BICUBIC":
            raise ConfigError(f"only BICUBIC interpolation is supported, got {interpolation}")
        check_patch_config(patch_size, temporal_patch_size, merge_size)
        self.size = size
        self.multi_image_max_pixels = multi_image_max_pixels
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.merge_size = merge_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.interpolation = "BICUBIC"
        self.limits = limits or InputLimits()

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": dict(self.size),
            "multi_image_max_pixels": self.multi_image_max_pixels,
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "interpolation": self.interpolation,
            "image_processor_type": type(self).__name__,
            "processor_class": "MossVLProcessor",
        }

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def target_sizes(
        self,
        shapes: list[tuple[int, int]],
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        multi_image_max_pixels: int | None = None,
    ) -> list[tuple[int, int]]:
        """Target (h, w) of each image of one call; the multi-image budget is shared in proportion to area."""
        min_pixels = self.size["shortest_edge"] if min_pixels is None else min_pixels
        max_pixels = self.size["longest_edge"] if max_pixels is None else max_pixels
        budget = self.multi_image_max_pixels if multi_image_max_pixels is None else multi_image_max_pixels
        for i, (h, w) in enumerate(shapes):
            check_aspect_ratio(h, w, f"image #{i}")
        if budget is None or not shapes:
            caps = [max_pixels] * len(shapes)
        else:
            caps = share_budget([h * w for h, w in shapes], budget, min_pixels, max_pixels)
        return [
            smart_resize(h, w, self.factor, min_pixels, cap, name=f"image #{i}")
            for i, ((h, w), cap) in enumerate(zip(shapes, caps, strict=True))
        ]

    def plan(
        self,
        images: list[Any],
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        multi_image_max_pixels: int | None = None,
    ) -> list[PlannedMedia]:
        """Decode and size all images of one call (they share the multi-image budget); resizing and patchifying
        wait for ``load()``. Settings and sizes are checked against ``self.limits``: every image's size before
        any is decoded, the resized total before ``load()`` allocates it."""
        settings = check_media_settings(
            {
                "min_pixels": self.size["shortest_edge"] if min_pixels is None else min_pixels,
                "max_pixels": self.size["longest_edge"] if max_pixels is None else max_pixels,
                "multi_image_max_pixels": self.multi_image_max_pixels
                if multi_image_max_pixels is None
                else multi_image_max_pixels,
            },
            self.limits,
        )
        sources = [self._numbered(i, _inspect, image, self.limits) for i, image in enumerate(images)]
        check_planned_pixels(0, sum(s.pixels for s in sources), self.limits, "the images of this call")
        arrays = [self._numbered(i, source.decode) for i, source in enumerate(sources)]
        sizes = self.target_sizes([a.shape[:2] for a in arrays], **settings)
        check_planned_pixels(sum(h * w for h, w in sizes), 0, self.limits, "the images of this call")
        factor = self.patch_size
        return [
            PlannedMedia(
                kind="image",
                grid_thw=(1, size[0] // factor, size[1] // factor),
                key=settings_key("image", array_digest(array), size, self.image_mean, self.image_std),
                load=partial(self._pixels, array, size),
            )
            for array, size in zip(arrays, sizes, strict=True)
        ]

    @staticmethod
    def _numbered(index: int, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` with a MediaError renamed to say which image of the call it is about."""
        try:
            return function(*args)
        except MediaError as err:
            raise type(err)(f"image #{index}: {err}") from err

    def _pixels(self, array: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        frames = resize_uint8(hwc_to_tensor(array)[None], size)
        rows, _ = patchify(frames, self.patch_size, self.merge_size, self.image_mean, self.image_std)
        return rows

    def process(self, images: list[Any], **kwargs: Any) -> list[VisualPatches]:
        """Process all images of one call (they share the multi-image budget); one VisualPatches per image."""
        return [VisualPatches(item.load(), item.grid_thw) for item in self.plan(images, **kwargs)]

    def preprocess(self, images: Any, return_tensors: str | None = "pt", **kwargs: Any) -> BatchFeature:
        if not isinstance(images, list | tuple):
            images = [images]
        patches = self.process(list(images), **kwargs)
        return BatchFeature(
            {
                "pixel_values": torch.cat([p.pixel_values for p in patches]),
                "grid_thw": torch.tensor([p.grid_thw for p in patches], dtype=torch.long),
            }
        )

    def __call__(self, images: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)


def blank_image(patch_size: int = C.PATCH_SIZE) -> PlannedMedia:
    """The stand-in for a text-only sample (spec §9.4): a 128×128 image whose normalised pixels are all 0.0."""
    grid = C.BLANK_IMAGE_SIZE // patch_size
    return PlannedMedia(
        kind="image",
        grid_thw=(1, grid, grid),
        key=settings_key("blank", patch_size),
        load=lambda: torch.zeros(grid * grid, 3 * patch_size * patch_size),
    )
