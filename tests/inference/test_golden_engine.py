"""Golden parity of the engine and the official offline methods (tests/fixtures/golden, README.md there).

Greedy engine tokens must equal ``gen_tokens`` (official HF decode quirk) and, with the rotated decode query,
``gen_tokens_rotq``. ``batch_text_and_images`` is the documented divergence of the model (the official code pairs
frames with image_pads across the whole batch): there each row must equal the same query run alone, which is
what the official code gives for its image row outside that batch.
"""

import copy

import pytest
import torch

from mossvl.inference.engine import Engine

SINGLE_RUN_CASES = {"batch_text_and_images"}


def case_queries(case: dict, golden_dir) -> list[dict]:
    """One query per user text; images and videos are taken in placeholder order across the batch."""
    images = iter(str(golden_dir / m["path"]) for m in case["images"])
    videos = iter(str(golden_dir / m["path"]) for m in case["videos"])
    queries = []
    for text in case["user_texts"]:
        queries.append(
            {
                "messages": [{"role": "user", "content": text}],
                "images": [next(images) for _ in range(text.count("<|image|>"))],
                "videos": [next(videos) for _ in range(text.count("<|video|>"))],
                "generate_kwargs": {"max_new_tokens": 8, "do_sample": False},
            }
        )
    return queries


@pytest.mark.parametrize("rotated", [False, True], ids=["hf", "rotq"])
def test_engine_greedy_tokens_equal_golden(
    golden_model, rotq_model, golden_processor, golden_dir, golden_json, golden_expected, rotated
):
    engine = Engine(rotq_model if rotated else golden_model, golden_processor)
    for case in golden_json["cases"]:
        expected = golden_expected(case["name"])["gen_tokens_rotq" if rotated else "gen_tokens"]
        queries = case_queries(case, golden_dir)
        results = engine.generate(queries)
        assert [r.error for r in results] == [None] * len(queries), case["name"]
        assert [r.input_text for r in results] == case["rendered_prompts"], case["name"]
        if case["name"] in SINGLE_RUN_CASES:
            alone = [engine.generate([query])[0].token_ids for query in queries]
            assert [r.token_ids for r in results] == alone, case["name"]
        else:
            assert [r.token_ids for r in results] == expected.tolist(), case["name"]
            assert [r.finish_reason for r in results] == ["length"] * len(queries)


def test_engine_text_skips_special_tokens_like_the_offline_api(
    golden_model, golden_processor, golden_dir, golden_case
):
    """video_single generates <|round_start|>: the golden decoded text keeps it, the offline API text drops it."""
    engine = Engine(golden_model, golden_processor)
    case = golden_case("video_single")
    result = engine.generate(case_queries(case, golden_dir))[0]
    tokenizer = golden_processor.tokenizer
    assert tokenizer.decode(result.token_ids) == case["decoded_gen_text"][0]
    assert "<|round_start|>" in case["decoded_gen_text"][0]
    assert result.text == tokenizer.decode(result.token_ids, skip_special_tokens=True)


def test_offline_image_and_video_generate_match_official_strings(
    golden_model, golden_processor, golden_dir, golden_json
):
    api = golden_json["offline_api"]
    call = api["offline_image_generate"]["call"]
    text = golden_model.offline_image_generate(
        golden_processor, call["prompt"], str(golden_dir / call["image"]), max_new_tokens=8
    )
    assert text == api["offline_image_generate"]["text"]
    call = api["offline_video_generate"]["call"]
    text = golden_model.offline_video_generate(
        golden_processor,
        call["prompt"],
        str(golden_dir / call["video"]),
        max_new_tokens=8,
        num_extract_threads=call["num_extract_threads"],
    )
    assert text == api["offline_video_generate"]["text"]


def test_offline_image_generate_accepts_pil_and_bf16_rounded_inputs(
    golden_model, golden_processor, golden_dir, golden_json
):
    """The official helper hands over PIL images; its bf16 pixel cast did not change the tokens."""
    from PIL import Image

    api = golden_json["offline_api"]["offline_image_generate"]
    image = Image.open(golden_dir / api["call"]["image"]).convert("RGB")
    text = golden_model.offline_image_generate(
        golden_processor, api["call"]["prompt"], image, max_new_tokens=8
    )
    assert text == api["text"]

    engine = Engine(golden_model, golden_processor)
    request = engine.prepare({"prompt": "Describe the image.", "images": [image]}, {"max_new_tokens": 8})
    request.media[0].pixels = request.media[0].pixels.to(torch.bfloat16).to(torch.float32)
    assert engine.submit(request).result().text == api["text"]


def test_offline_batch_generate_matches_official_results(
    golden_model, golden_processor, golden_dir, golden_json
):
    api = golden_json["offline_api"]["offline_batch_generate"]
    queries = copy.deepcopy(api["call"])
    for query in queries:
        query["images"] = [str(golden_dir / p) for p in query["images"]]
        query["videos"] = [str(golden_dir / p) for p in query["videos"]]
    out = golden_model.offline_batch_generate(golden_processor, queries)
    got = [{key: r[key] for key in ("index", "text", "input_text")} for r in out["results"]]
    assert got == api["results"]
    assert len(out["session_states"]) == len(queries)
