"""Video processor: frame sampling and timestamps, seeking decode vs sequential decode, segments, budgets, errors."""

import json
import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from mossvl.errors import MediaError, QueryError
from mossvl.processing.transforms import patchify, resize_uint8, smart_resize_video
from mossvl.processing.video import (
    MossVLVideoProcessor,
    decode_frames,
    parse_segments,
    probe_video,
    sample_frame_indices,
    split_frame_budget,
)


def expected_rows(frames: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """Reference path: resize the sequentially decoded frames and patchify them."""
    x = resize_uint8(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2), size)
    return patchify(x, 16, 2, (0.5,) * 3, (0.5,) * 3)[0]


@pytest.mark.parametrize("name", ["cfr", "vfr", "offset", "wide"])
@pytest.mark.parametrize("fps", [1.0, 4.0])
def test_sampled_frames_and_times_match_sequential_decode(clips, name, fps, decode_all):
    frames, times = decode_all(clips[name])
    index = probe_video(clips[name])
    assert index.num_frames == len(frames)
    assert index.times == pytest.approx(times, abs=1e-9)
    out = MossVLVideoProcessor(video_fps=fps, num_extract_threads=1).process([str(clips[name])])[0]
    n = max(1, min(math.ceil(index.duration * fps - 1e-6), len(frames)))
    indices = np.unique(np.linspace(0, len(frames) - 1, n).astype(np.int32)).tolist()
    assert out.frame_indices == indices
    # Timestamps are presentation times relative to the first frame, also for VFR and a non-zero first pts.
    assert out.timestamps == pytest.approx([times[i] for i in indices], abs=1e-9)
    h, w = out.grid_thw[1] * 16, out.grid_thw[2] * 16
    assert torch.equal(out.pixel_values, expected_rows([frames[i] for i in indices], (h, w)))


def test_vfr_times_are_the_real_presentation_times(clips):
    out = MossVLVideoProcessor(video_fps=30.0).process([str(clips["vfr"])])[0]
    # The clip was written with these millisecond pts (first at 500 ms).
    written = np.cumsum([0, 40, 40, 150, 40, 300, 40, 40, 90, 40, 40, 500, 40, 40]) / 1000
    assert out.timestamps == pytest.approx(written[out.frame_indices].tolist(), abs=1e-9)
    assert out.frame_indices == list(range(14))


@pytest.mark.parametrize("threads", [2, 4])
def test_threads_give_identical_frames(clips, threads):
    index = probe_video(clips["cfr"])
    wanted = list(range(0, 47, 3)) + [46]
    one = decode_frames(index, wanted, (64, 64), num_threads=1)
    many = decode_frames(index, wanted, (64, 64), num_threads=threads)
    assert torch.equal(one, many)


def test_decode_keeps_requested_order_and_duplicates(clips, decode_all):
    index = probe_video(clips["cfr"])
    frames, _ = decode_all(clips["cfr"])
    got = decode_frames(index, [30, 2, 30, 45], (48, 64))
    want = torch.from_numpy(np.stack([frames[i] for i in (30, 2, 30, 45)])).permute(0, 3, 1, 2)
    assert torch.equal(got, want)


def test_stream_without_timestamps_is_decoded_front_to_back(tmp_path, decode_all, frame_pattern):
    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(25):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_pattern(i, 48, 64), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    index = probe_video(path)
    assert not index.seekable and index.num_frames == 25
    frames, _ = decode_all(path)
    got = decode_frames(index, [3, 20], (48, 64))
    assert torch.equal(got, torch.from_numpy(np.stack([frames[3], frames[20]])).permute(0, 3, 1, 2))


def test_segments_sample_requested_times(clips, decode_all):
    frames, times = decode_all(clips["cfr"])
    proc = MossVLVideoProcessor(video_fps=2.0)
    outs = proc.process([{"video_path": str(clips["cfr"]), "segments": [[1.0, 2.5], [3.05]]}])
    assert len(outs) == 2  # one media unit per segment
    assert outs[0].timestamps == pytest.approx(
        [1.0, 1.5, 2.0]
    )  # linspace(1, 2.5, ceil(1.5·2), endpoint=False)
    assert outs[0].frame_indices == [10, 15, 20]
    assert outs[1].timestamps == [3.05] and outs[1].frame_indices == [30]
    assert outs[1].grid_thw[0] == 1
    assert torch.equal(outs[0].pixel_values, expected_rows([frames[i] for i in (10, 15, 20)], (64, 64)))


def test_segment_end_is_clamped_to_the_video(clips):
    out = MossVLVideoProcessor(video_fps=1.0).process(
        [{"video_path": str(clips["cfr"]), "segments": [[3, 100]]}]
    )[0]
    assert out.timestamps == pytest.approx([3.0, 3.85])  # linspace(3, 4.7, 2, endpoint=False)


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        ([[-1.0, 2.0]], "negative"),
        ([[3.0, 1.0]], "ends before it starts"),
        ([[2.0, 2.0]], "ends before it starts"),
        ([[1.0, 2.0, 3.0]], "must be"),
        ([], "non-empty"),
        ([["a", 2]], "must be"),
    ],
)
def test_bad_segments_raise(clips, segments, message):
    with pytest.raises(QueryError, match=message):
        parse_segments(segments, "clip.mp4")
    with pytest.raises(QueryError, match=message):
        MossVLVideoProcessor().process([{"video_path": str(clips["cfr"]), "segments": segments}])


def test_segment_after_the_end_raises(clips):
    with pytest.raises(MediaError, match="after the end"):
        MossVLVideoProcessor().process([{"video_path": str(clips["cfr"]), "segments": [[10.0, 12.0]]}])


def test_a_segmented_video_is_one_unit_per_segment(clips):
    path = str(clips["cfr"])
    items = MossVLVideoProcessor().plan([path, {"video_path": path, "segments": [[0, 1], [3]]}])
    assert [item.kind for item in items] == ["video"] * 3
    assert items[1].timestamps == [0.0] and items[2].timestamps == [3.0]
    assert len({item.key for item in items}) == 3


@pytest.mark.parametrize(
    ("num_frames", "duration", "fps", "max_frames", "expected"),
    [
        (47, 4.699999999999999, 1.0, 256, [0, 11, 23, 34, 46]),
        (30, 5.0, 1.0, 256, [0, 7, 14, 21, 29]),
        (30, 5.0, 1.0, 3, [0, 14, 29]),
        (3, 10.0, 1.0, 256, [0, 1, 2]),
        (1, 0.04, 1.0, 256, [0]),
    ],
)
def test_sample_frame_indices(num_frames, duration, fps, max_frames, expected):
    assert sample_frame_indices(num_frames, duration, fps, 1, max_frames) == expected


def test_min_frames_raises_the_count_up_to_the_total():
    assert (
        sample_frame_indices(47, 4.7, 1.0, 8, 256)
        == np.unique(np.linspace(0, 46, 8).astype(np.int32)).tolist()
    )
    assert len(sample_frame_indices(5, 4.7, 1.0, 8, 256)) == 5


@pytest.mark.parametrize(
    ("durations", "max_frames", "expected"),
    [([4.7], 256, [256]), ([1.0, 3.0], 10, [3, 7]), ([1.0, 1.0, 1.0], 4, [2, 1, 1]), ([5.0, 5.0], 1, [1, 1])],
)
def test_split_frame_budget(durations, max_frames, expected):
    caps = split_frame_budget(durations, max_frames)
    assert caps == expected


def test_max_frames_is_shared_by_the_videos_of_a_call(clips):
    outs = MossVLVideoProcessor(video_fps=4.0, max_frames=10).process(
        [str(clips["cfr"]), str(clips["offset"])]
    )
    # Durations 4.7 s and ~5.0 s: 2 reserved, 8 split by duration → 4 + 4 (largest remainder) → caps 5 and 5.
    assert [o.grid_thw[0] for o in outs] == [5, 5]


def test_video_max_pixels_is_a_volume_budget_shared_by_videos(clips):
    budget = 40 * 32 * 32
    outs = MossVLVideoProcessor(
        video_fps=4.0, video_max_pixels=budget, size={"shortest_edge": 1024, "longest_edge": 1 << 24}
    ).process([str(clips["cfr"]), str(clips["wide"])])
    t_a, t_b = outs[0].grid_thw[0], outs[1].grid_thw[0]
    volumes = [t_a * 48 * 64, t_b * 40 * 90]
    for out, (t, h, w), vol in zip(outs, [(t_a, 48, 64), (t_b, 40, 90)], volumes, strict=True):
        size = smart_resize_video(t, h, w, 32, 1024, 1 << 24, int(budget * vol / sum(volumes)))
        assert out.grid_thw[1:] == (size[0] // 16, size[1] // 16)
    assert sum(o.pixel_values.shape[0] * 256 for o in outs) <= budget


def test_pre_extracted_frames_keep_their_timestamps(frame_pattern):
    frames = [frame_pattern(i, 40, 70) for i in range(3)]
    proc = MossVLVideoProcessor()
    out = proc.process([{"frames": frames, "timestamps": [0.0, 0.5, 2.25]}])[0]
    assert out.timestamps == [0.0, 0.5, 2.25] and out.grid_thw == (3, 4, 6)
    assert torch.equal(out.pixel_values, expected_rows(frames, (64, 96)))
    from_fps = proc.process([{"frames": np.stack(frames), "fps": 2}])[0]
    assert from_fps.timestamps == [0.0, 0.5, 1.0]
    assert torch.equal(from_fps.pixel_values, out.pixel_values)


@pytest.mark.parametrize(
    ("video", "error", "message"),
    [
        (
            {"frames": [np.zeros((40, 40, 3), np.uint8), np.zeros((40, 48, 3), np.uint8)], "fps": 1},
            MediaError,
            "same size",
        ),
        ({"frames": [np.zeros((40, 40, 3), np.uint8)]}, QueryError, "timestamps"),
        (
            {"frames": [np.zeros((40, 40, 3), np.uint8)] * 2, "timestamps": [1.0]},
            QueryError,
            "2 frames but 1",
        ),
        (
            {"frames": [np.zeros((40, 40, 3), np.uint8)] * 2, "timestamps": [1.0, 0.5]},
            QueryError,
            "non-decreasing",
        ),
        ({"segments": [[0, 1]]}, QueryError, "video_path"),
        (12, QueryError, "unsupported video input"),
    ],
)
def test_bad_video_inputs_raise(video, error, message):
    with pytest.raises(error, match=message):
        MossVLVideoProcessor().process([video])


def test_media_errors_name_the_file(tmp_path):
    proc = MossVLVideoProcessor()
    with pytest.raises(MediaError, match="not found.*missing.mp4"):
        proc.process([str(tmp_path / "missing.mp4")])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.*empty.mp4"):
        proc.process([str(empty)])
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match="corrupt.mp4"):
        proc.process([str(corrupt)])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 20)
    with pytest.raises(MediaError, match="notes.mp4"):
        proc.process([str(text)])


def test_audio_only_file_raises(tmp_path):
    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(MediaError, match="no video stream.*audio"):
        MossVLVideoProcessor().process([str(path)])


def test_truncated_video_raises_or_decodes_what_exists(tmp_path, clips):
    data = clips["cfr"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaError, match="cut.mp4"):
        MossVLVideoProcessor().process([str(cut)])


def test_config_round_trip_with_official_keys(tmp_path, golden_dir):
    proc = MossVLVideoProcessor.from_pretrained(golden_dir)
    assert proc.num_extract_threads == 1 and proc.video_max_pixels == 201326592
    proc.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    official = json.loads((golden_dir / "video_preprocessor_config.json").read_text())
    assert {k: saved[k] for k in official if k != "video_processor_type"} == {
        k: v for k, v in official.items() if k != "video_processor_type"
    }
    again = MossVLVideoProcessor.from_pretrained(tmp_path)
    assert again.to_dict() == proc.to_dict()


def test_fraction_rate_clip_timestamps(tmp_path, write_clip):
    path = write_clip(tmp_path / "ntsc.mp4", 20, fps=Fraction(30000, 1001), gop=5)
    out = MossVLVideoProcessor(video_fps=10.0).process([str(path)])[0]
    assert out.timestamps == pytest.approx([i * 1001 / 30000 for i in out.frame_indices], abs=1e-9)
