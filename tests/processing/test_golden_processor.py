"""Golden parity of the processor: all 7 cases of tests/fixtures/golden, bit-exact, plus video sampling facts."""

import pytest
import torch

from mossvl.processing.processor import MossVLProcessor
from mossvl.processing.video import MossVLVideoProcessor

EXACT_KEYS = ("input_ids", "attention_mask", "grid_thw", "cross_attention_mask", "media_nums_per_sample")


@pytest.fixture(scope="module")
def processor(golden_dir) -> MossVLProcessor:
    return MossVLProcessor.from_pretrained(golden_dir)


def test_processor_outputs_match_golden(
    processor, golden_dir, golden_case, golden_expected, golden_case_name
):
    case = golden_case(golden_case_name)
    expected = golden_expected(golden_case_name)
    call = {k: v for k, v in case["processor_call"].items() if v is not None}
    prompts = case["rendered_prompts"]
    out = processor(
        prompts if len(prompts) > 1 else prompts[0],
        images=[str(golden_dir / m["path"]) for m in case["images"]],
        videos=[str(golden_dir / m["path"]) for m in case["videos"]],
        **call,
    )
    for key in EXACT_KEYS:
        assert out[key].dtype == expected[key].dtype, key
        assert torch.equal(out[key], expected[key]), key
    assert out["pixel_values"].dtype == torch.float32
    assert torch.equal(out["pixel_values"], expected["pixel_values"])


def test_prepare_from_user_texts_renders_the_golden_prompts(
    processor, golden_dir, golden_case, golden_expected, golden_case_name
):
    case = golden_case(golden_case_name)
    images = iter(m["path"] for m in case["images"])
    videos = iter(m["path"] for m in case["videos"])
    queries = []
    for text in case["user_texts"]:
        # Give each query the media its own placeholders consume, in order.
        queries.append(
            {
                "messages": [{"role": "user", "content": text}],
                "images": [next(images) for _ in range(text.count("<|image|>"))],
                "videos": [next(videos) for _ in range(text.count("<|video|>"))],
            }
        )
    conversations = processor.conversations(queries, base_dir=str(golden_dir))
    assert [processor.render(c.messages) for c in conversations] == case["rendered_prompts"]
    prepared = processor.prepare(queries, base_dir=str(golden_dir))
    expected = golden_expected(golden_case_name)
    for key in EXACT_KEYS:
        assert torch.equal(prepared[key], expected[key]), key


@pytest.mark.parametrize("name", ["video_single", "interleaved"])
def test_video_sampling_matches_golden(golden_dir, golden_json, golden_case, name):
    sampling = golden_case(name)["video_sampling"][0]
    path = golden_dir / golden_json["media"][sampling["key"]]["path"]
    out = MossVLVideoProcessor.from_pretrained(golden_dir).process([str(path)])[0]
    assert out.frame_indices == sampling["sampled_frame_indices"]
    assert out.timestamps == pytest.approx(sampling["timestamps"], abs=1e-12)
    assert [f"{t:.1f}" for t in out.timestamps] == sampling["timestamp_strings"]
