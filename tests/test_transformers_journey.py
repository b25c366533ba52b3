"""A transformers user's journey, end to end, on the golden checkpoint and the shipped demo model: Auto classes,
apply_chat_template, generate, batch_decode, pipelines, streamers, save and reload, custom chat templates."""

import json
import shutil
from threading import Thread

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
    TextIteratorStreamer,
    pipeline,
)

import mossvl
from mossvl.data.synthetic import SAMPLES_DIR
from mossvl.errors import CheckpointError, ConfigError
from mossvl.inference.api import demo_model_dir
from mossvl.inference.engine import Engine

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def demo():
    processor = AutoProcessor.from_pretrained(demo_model_dir(), frame_extract_num_threads=1)
    model = AutoModelForImageTextToText.from_pretrained(demo_model_dir(), dtype=torch.float32)
    return model.eval(), processor


def image_message(text: str, image: str, key: str = "url") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", key: image}, {"type": "text", "text": text}]}]


def video_message(text: str, video) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": text}]}]


def test_auto_classes_chat_template_generate_and_decode_on_the_demo_model(demo):
    model, processor = demo
    assert type(processor).__name__ == "MossVLProcessor"
    assert processor.video_processor.num_extract_threads == 1
    messages = image_message("What color is the shape?", str(SAMPLES_DIR / "shape.png"))
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert answer == "green"
    assert answer == mossvl.chat(model, processor, messages, max_new_tokens=8)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "<|im_start|>user\n<|image|>What color is the shape?<|im_end|>\n<|im_start|>assistant\n"


def test_batched_conversations_with_video_and_every_source_form(demo):
    model, processor = demo
    clip = str(SAMPLES_DIR / "clip.mp4")
    conversations = [
        video_message("When does the blue circle appear?", clip),
        video_message("What happens to the blue circle in the video?", {"video_path": clip}),
        image_message("How many shapes are in the image?", str(SAMPLES_DIR / "shapes.png"), key="path"),
    ]
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, video_fps=1.0
    )
    assert inputs["input_ids"].shape[0] == 3 and inputs["media_nums_per_sample"].tolist() == [1, 1, 1]
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answers = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    engine = Engine(model, processor)
    assert answers == [engine.chat(c, max_new_tokens=8) for c in conversations]
    assert answers[0] == "2.3 seconds" and answers[2] == "3"


def test_pipeline_answers_images_and_videos(demo):
    pipe = pipeline("image-text-to-text", model=str(demo_model_dir()), dtype=torch.float32)
    image = pipe(
        text=image_message("What color is the shape?", str(SAMPLES_DIR / "shape.png")), max_new_tokens=8
    )
    assert image[0]["generated_text"][-1] == {"role": "assistant", "content": "green"}
    video = pipe(
        text=video_message("When does the blue circle appear?", str(SAMPLES_DIR / "clip.mp4")),
        max_new_tokens=8,
        return_full_text=False,
    )
    assert video[0]["generated_text"] == "2.3 seconds"


def test_text_iterator_streamer(demo):
    model, processor = demo
    messages = image_message("What color is the shape?", str(SAMPLES_DIR / "shape.png"))
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = Thread(target=model.generate, kwargs={**inputs, "streamer": streamer, "max_new_tokens": 8})
    thread.start()
    text = "".join(streamer)
    thread.join(60)
    assert text == "green"


def test_golden_checkpoint_journey_matches_the_official_tokens(golden_dir, golden_case, golden_expected):
    processor = AutoProcessor.from_pretrained(golden_dir, revision="main", use_fast=True)
    model = AutoModelForMultimodalLM.from_pretrained(golden_dir, dtype=torch.float32).eval()
    case = golden_case("image_single")
    messages = image_message("Describe the image.", str(golden_dir / case["images"][0]["path"]))
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    expected = golden_expected("image_single")
    assert torch.equal(inputs["input_ids"], expected["input_ids"])
    out = model.generate(
        **inputs, max_new_tokens=8, do_sample=False, pad_token_id=384, eos_token_id=[386, 384]
    )
    assert torch.equal(out[:, inputs["input_ids"].shape[1] :], expected["gen_tokens"])


def test_save_and_reload_give_the_same_logits(demo, tmp_path):
    model, processor = demo
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    messages = image_message("What color is the shape?", str(SAMPLES_DIR / "shape.png"))
    a = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    b = reloaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with torch.no_grad():
        assert torch.equal(model(**a).logits, again(**b).logits)


def official_folder(golden_dir, tmp_path):
    """An official-layout checkpoint: config and processor files naming remote code that is present."""
    folder = tmp_path / "official"
    shutil.copytree(golden_dir, folder, ignore=shutil.ignore_patterns("expected", "media", "*.md", "*s.json"))
    for name in ("configuration_moss_vl.py", "modeling_moss_vl.py", "processing_moss_vl.py"):
        (folder / name).write_text("# the official remote code\n")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    config["auto_map"] = {"AutoProcessor": "processing_moss_vl.MossVLProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return folder


def test_saved_checkpoints_keep_the_official_layout(golden_dir, tmp_path):
    source = official_folder(golden_dir, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(source)
    out = tmp_path / "out"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "chat_template.jinja",
        "config.json",
        "configuration_moss_vl.py",
        "generation_config.json",
        "model.safetensors",
        "modeling_moss_vl.py",
        "preprocessor_config.json",
        "processing_moss_vl.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "video_preprocessor_config.json",
    ]
    config = json.loads((out / "config.json").read_text())
    official = json.loads((source / "config.json").read_text())
    assert config["architectures"] == ["MossVLForConditionalGeneration"] and config["model_type"] == "moss_vl"
    assert config["auto_map"] == official["auto_map"]
    for key in ("image_token_id", "vision_start_token_id", "vision_end_token_id", "vision_seq_pad_multiple"):
        assert config[key] == official[key], key
    for key in ("cross_attention_layers", "num_hidden_layers", "hidden_size", "rope_theta", "rope_scaling"):
        assert config["text_config"][key] == official["text_config"][key], key
    processor_config = json.loads((out / "preprocessor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_moss_vl.MossVLProcessor"}
    assert processor_config["image_processor_type"] == "MossVLImageProcessorFast"
    from safetensors import safe_open

    with (
        safe_open(out / "model.safetensors", "pt") as saved,
        safe_open(source / "model.safetensors", "pt") as src,
    ):
        assert set(saved.keys()) == set(src.keys())
    # Without the remote-code files next to it, the auto_map would dangle: it is left out.
    again = tmp_path / "again"
    AutoModelForCausalLM.from_pretrained(golden_dir).save_pretrained(again)
    assert "auto_map" not in json.loads((again / "config.json").read_text())


def test_a_custom_chat_template_changes_what_chat_sends(golden_model, golden_processor, tmp_path):
    folder = tmp_path / "custom"
    golden_processor.save_pretrained(folder)
    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}{% if m['role'] == 'user' %}Q: {% endif %}"
        "{% for i in m['content'] %}{{ i['text'] if i['type'] == 'text' else '<|' + i['type'] + '|>' }}"
        "{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    (folder / "chat_template.jinja").write_text(template)
    custom = AutoProcessor.from_pretrained(folder)
    default = Engine(golden_model, golden_processor).generate(["Hello"], max_new_tokens=4)[0]
    changed = Engine(golden_model, custom).generate(["Hello"], max_new_tokens=4)[0]
    assert default.input_text == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    assert changed.input_text == "<|im_start|>user\nQ: Hello<|im_end|>\n<|im_start|>assistant\n"
    assert changed.prompt_tokens > default.prompt_tokens


def test_processor_loading_kwargs_and_errors(golden_dir, tmp_path, monkeypatch):
    processor = AutoProcessor.from_pretrained(
        golden_dir, max_pixels=1 << 16, video_fps=2.0, cache_dir=str(tmp_path), local_files_only=True
    )
    assert (
        processor.image_processor.size["longest_edge"] == 1 << 16
        and processor.video_processor.video_fps == 2.0
    )
    with pytest.raises(ConfigError, match="unknown processor settings"):
        AutoProcessor.from_pretrained(golden_dir, colour=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="OpenMOSS/not-cached"):
        mossvl.load("OpenMOSS/not-cached", cache_dir=str(tmp_path))
