"""Image processor: every accepted input kind, RGB conversion, EXIF orientation, shared budget, errors, config."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from mossvl.errors import ConfigError, MediaError, QueryError
from mossvl.processing.image import MossVLImageProcessor, blank_image, load_image_array
from mossvl.processing.transforms import patchify, resize_uint8


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)


def test_path_pil_numpy_and_tensor_inputs_agree(tmp_path, rgb):
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    inputs = [
        str(path),
        path,
        f"file://{path}",
        Image.fromarray(rgb),
        rgb,
        np.ascontiguousarray(rgb.transpose(2, 0, 1)),  # CHW numpy
        rgb.astype(np.float32) / 255,  # floats in [0, 1]
        torch.from_numpy(rgb).permute(2, 0, 1),  # CHW tensor
        torch.from_numpy(rgb),  # HWC tensor
    ]
    for item in inputs:
        assert np.array_equal(load_image_array(item), rgb), type(item)
    outs = MossVLImageProcessor().process(inputs)
    for out in outs[1:]:
        assert torch.equal(out.pixel_values, outs[0].pixel_values)


def test_grayscale_rgba_and_palette_become_rgb(rgb):
    gray = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    assert np.array_equal(load_image_array(Image.fromarray(gray, "L")), np.repeat(gray[:, :, None], 3, -1))
    assert np.array_equal(load_image_array(gray), np.repeat(gray[:, :, None], 3, -1))
    rgba = np.concatenate([rgb, np.full((50, 70, 1), 7, np.uint8)], -1)
    assert np.array_equal(load_image_array(Image.fromarray(rgba, "RGBA")), rgb)  # alpha dropped
    assert np.array_equal(load_image_array(rgba), rgb)
    palette = Image.fromarray(rgb).quantize(16)
    assert np.array_equal(load_image_array(palette), np.asarray(palette.convert("RGB")))
    assert load_image_array(Image.fromarray(gray, "L").convert("1")).shape == (64, 64, 3)


def test_exif_orientation_is_applied_to_files(tmp_path, rgb):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    loaded = load_image_array(path)
    assert loaded.shape == (70, 50, 3)
    assert np.array_equal(loaded, np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")))
    from_file, from_array = MossVLImageProcessor().process([path, loaded])
    assert torch.equal(from_file.pixel_values, from_array.pixel_values)


def test_budget_is_shared_in_proportion_to_area():
    big, small = np.zeros((640, 960, 3), np.uint8), np.zeros((320, 480, 3), np.uint8)
    proc = MossVLImageProcessor(multi_image_max_pixels=200_000)
    outs = proc.process([big, small])
    # Caps 160000 and 40000 (areas 4:1) → floor-scaled sizes.
    assert [o.grid_thw for o in outs] == [(1, 20, 30), (1, 10, 14)]
    alone = proc.process([small])[0]
    assert alone.grid_thw == (1, 20, 30)  # alone, the small image may take the whole budget
    unlimited = MossVLImageProcessor(multi_image_max_pixels=None).process([big, small])
    assert [o.grid_thw for o in unlimited] == [(1, 40, 60), (1, 20, 30)]


def test_call_kwargs_override_the_config():
    image = np.zeros((640, 960, 3), np.uint8)
    proc = MossVLImageProcessor()
    assert proc.process([image], max_pixels=64 * 96)[0].grid_thw == (1, 4, 6)
    assert proc.process([np.zeros((20, 20, 3), np.uint8)], min_pixels=128 * 128)[0].grid_thw == (1, 8, 8)
    batch = proc(np.zeros((64, 96, 3), np.uint8))
    assert batch["pixel_values"].shape == (24, 768) and batch["grid_thw"].tolist() == [[1, 4, 6]]


def test_resized_pixels_come_from_the_uint8_bicubic_kernel(rgb):
    out = MossVLImageProcessor().process([rgb])[0]
    x = resize_uint8(torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous(), (64, 64))
    assert torch.equal(out.pixel_values, patchify(x, 16, 2, (0.5,) * 3, (0.5,) * 3)[0])


def test_blank_image_is_all_zero_rows():
    blank = blank_image()
    assert blank.grid_thw == (1, 8, 8) and blank.load().shape == (64, 768)
    assert not blank.load().any()


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda d: str(d / "missing.png"), MediaError, "not found.*missing.png"),
        (
            lambda d: (d / "bad.png").write_text("hello") and str(d / "bad.png"),
            MediaError,
            "cannot read image.*bad.png",
        ),
        (lambda d: np.zeros((2, 500, 3), np.uint8), MediaError, "aspect ratio 250"),
        (lambda d: np.zeros((0, 5, 3), np.uint8), MediaError, "empty image"),
        (lambda d: np.zeros((4, 4, 4, 3), np.uint8), MediaError, "2-D or 3-D"),
        (lambda d: np.full((8, 8, 3), 300, np.int32), MediaError, "uint8"),
        (lambda d: np.zeros((8, 8, 7), np.uint8), MediaError, "channel axis"),
        (lambda d: 3.5, QueryError, "unsupported image input"),
        (lambda d: "data:image/png;base64,@@@", MediaError, "base64"),
    ],
)
def test_bad_images_raise(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        MossVLImageProcessor().process([make(tmp_path)])


def test_error_names_the_item_position(tmp_path):
    with pytest.raises(MediaError, match=r"image #1: .*nope.png"):
        MossVLImageProcessor().process([np.zeros((32, 32, 3), np.uint8), str(tmp_path / "nope.png")])


def test_config_round_trip_with_official_keys(tmp_path, golden_dir):
    proc = MossVLImageProcessor.from_pretrained(golden_dir)
    assert proc.multi_image_max_pixels == 65536000 and proc.size == {
        "shortest_edge": 4096,
        "longest_edge": 16777216,
    }
    proc.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    official = json.loads((golden_dir / "preprocessor_config.json").read_text())
    assert {k: saved[k] for k in official if k != "image_processor_type"} == {
        k: v for k, v in official.items() if k != "image_processor_type"
    }
    assert MossVLImageProcessor.from_pretrained(tmp_path).to_dict() == proc.to_dict()


def test_bad_configs_raise():
    with pytest.raises(ConfigError, match="shortest_edge"):
        MossVLImageProcessor(size={"height": 224, "width": 224})
    with pytest.raises(ConfigError, match="BICUBIC"):
        MossVLImageProcessor(interpolation="BILINEAR")
    with pytest.raises(ConfigError, match="temporal_patch_size"):
        MossVLImageProcessor(temporal_patch_size=2)
    assert MossVLImageProcessor(min_pixels=1024, max_pixels=2048).size == {
        "shortest_edge": 1024,
        "longest_edge": 2048,
    }
