"""`mossvl ask`: media kinds from extensions, streamed answer, one-line errors."""

import pytest

from mossvl.cli.ask import build_query, media_kind
from mossvl.cli.main import main
from mossvl.errors import MediaError, QueryError
from mossvl.inference.engine import Engine


def test_media_kind_by_extension():
    assert media_kind("a/b.PNG") == "image" and media_kind("https://x.org/c.jpg?s=1") == "image"
    assert media_kind("clip.mp4") == "video" and media_kind("x.webm") == "video"
    with pytest.raises(QueryError, match="extension"):
        media_kind("notes.txt")


def test_build_query_orders_media_and_checks_files(golden_dir, tmp_path):
    image = str(golden_dir / "media" / "img_a_64x96.png")
    video = str(golden_dir / "media" / "vid_a_47f_10fps_48x64.mp4")
    query = build_query([video, image, "What?"])
    assert query["messages"][0]["content"] == "<|video|><|image|>What?"
    assert query["images"] == [image] and query["videos"] == [video]
    assert query["media_kwargs"]["video_fps"] == 1.0
    with pytest.raises(MediaError, match="not found"):
        build_query([str(tmp_path / "gone.png"), "What?"])


def test_ask_streams_the_engine_answer(golden_dir, golden_model, golden_processor, capsys):
    image = str(golden_dir / "media" / "img_a_64x96.png")
    code = main(
        ["ask", image, "Describe the image.", "--checkpoint", str(golden_dir), "--max-new-tokens", "8"]
    )
    assert code == 0
    query = {
        "prompt": "Describe the image.",
        "images": [image],
        "media_kwargs": build_query([image, "x"])["media_kwargs"],
    }
    expected = Engine(golden_model, golden_processor).generate([query], max_new_tokens=8)[0].text
    assert capsys.readouterr().out == expected + "\n"


def test_ask_text_only_without_streaming(golden_dir, golden_model, golden_processor, capsys):
    code = main(["ask", "Hello", "--checkpoint", str(golden_dir), "--max-new-tokens", "5", "--no-stream"])
    assert code == 0
    expected = Engine(golden_model, golden_processor).generate(["Hello"], max_new_tokens=5)[0].text
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ask", "file.xyz", "What?"], "extension"),
        (["ask", "missing.png", "What?"], "not found"),
        (["ask", "Hi", "--checkpoint", "/nonexistent/ckpt"], "does not exist"),
        (["ask", "Hi", "--top-p", "0"], "top_p"),
    ],
)
def test_ask_bad_input_is_one_line_and_nonzero(golden_dir, capsys, argv, message):
    if "--checkpoint" not in argv:
        argv = [*argv, "--checkpoint", str(golden_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
