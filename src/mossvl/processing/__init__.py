"""Media and prompt processing: conversations, images, videos with timestamps, chat templates and the processor."""

from mossvl.processing.conversation import Conversation, conversation_from_query, conversation_from_record
from mossvl.processing.image import MossVLImageProcessor, VisualPatches, load_image_array
from mossvl.processing.media_plan import PlannedMedia
from mossvl.processing.processor import MossVLProcessor, PlannedInputs
from mossvl.processing.prompt import default_chat_template, render_chat
from mossvl.processing.video import MossVLVideoProcessor, probe_video

__all__ = [
    "Conversation",
    "MossVLImageProcessor",
    "MossVLProcessor",
    "MossVLVideoProcessor",
    "PlannedInputs",
    "PlannedMedia",
    "VisualPatches",
    "conversation_from_query",
    "conversation_from_record",
    "default_chat_template",
    "load_image_array",
    "probe_video",
    "render_chat",
]
