"""Media and prompt processing: images, videos with timestamps, chat prompts and the MossVLProcessor."""

from mossvl.processing.image import MossVLImageProcessor, VisualPatches, load_image_array
from mossvl.processing.processor import MossVLProcessor, RenderedBatch
from mossvl.processing.prompt import Conversation, normalize_query, render_chat
from mossvl.processing.video import MossVLVideoProcessor, probe_video

__all__ = [
    "Conversation",
    "MossVLImageProcessor",
    "MossVLProcessor",
    "MossVLVideoProcessor",
    "RenderedBatch",
    "VisualPatches",
    "load_image_array",
    "normalize_query",
    "probe_video",
    "render_chat",
]
