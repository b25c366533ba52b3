"""Single home of MOSS-VL's fixed strings and defaults: special tokens, pixel budgets, media and generate defaults."""

# Special tokens. Ids always come from the tokenizer (looked up by these strings), never hard-coded.
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
TIME_START = "<|time_start|>"
TIME_END = "<|time_end|>"
SILENCE = "<|silence|>"
ROUND_START = "<|round_start|>"
ROUND_END = "<|round_end|>"
EOT_ID = "<|eot_id|>"

# Text placeholders that the processor expands; they are not vocabulary entries.
IMAGE_PLACEHOLDER = "<|image|>"
VIDEO_PLACEHOLDER = "<|video|>"

SPECIAL_TOKENS = [
    ENDOFTEXT,
    IM_START,
    IM_END,
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    VISION_START,
    VISION_END,
    VISION_PAD,
    IMAGE_PAD,
    VIDEO_PAD,
    TIME_START,
    TIME_END,
    SILENCE,
    ROUND_START,
    ROUND_END,
    EOT_ID,
]

# Output-queue protocol of `offline_generate`.
ERROR_PREFIX = "[ERROR] "

IGNORE_INDEX = -100

# The system prompt of realtime sessions started by `mossvl realtime`, and of the realtime demo model's training data.
REALTIME_SYSTEM_PROMPT = (
    "You watch a live video frame by frame. When nothing relevant has happened, answer <|silence|>."
)

# Default system prompts of the official offline API (used only when a query asks for them).
DEFAULT_SYSTEM_PROMPTS = {
    "text_image": (
        "You are a helpful AI assistant. Respond to the user's request based on the provided text and/or images."
    ),
    "video": (
        "You are a helpful AI assistant specializing in video analysis. "
        "Respond to the user's request based on the provided video content."
    ),
}

# Image processor defaults (pixel counts, not edges).
MIN_PIXELS = 4096
MAX_PIXELS = 16777216
MULTI_IMAGE_MAX_PIXELS = 201326592
VIDEO_MAX_PIXELS = 201326592
PATCH_SIZE = 16
TEMPORAL_PATCH_SIZE = 1
MERGE_SIZE = 2
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)
MAX_ASPECT_RATIO = 200

# Blank image injected for text-only samples (spec §9.4).
BLANK_IMAGE_SIZE = 128

VIDEO_FPS = 1.0
MIN_FRAMES = 1
MAX_FRAMES = 256
NUM_EXTRACT_THREADS = 4

IMAGE_MEDIA_DEFAULTS = {
    "min_pixels": MIN_PIXELS,
    "max_pixels": MAX_PIXELS,
    "multi_image_max_pixels": MULTI_IMAGE_MAX_PIXELS,
}
VIDEO_MEDIA_DEFAULTS = {
    **IMAGE_MEDIA_DEFAULTS,
    "video_max_pixels": VIDEO_MAX_PIXELS,
    "video_fps": VIDEO_FPS,
    "min_frames": MIN_FRAMES,
    "max_frames": MAX_FRAMES,
    "num_extract_threads": NUM_EXTRACT_THREADS,
}

# Generate defaults of the official offline API (`offline_generate` and friends).
GENERATE_DEFAULTS = {
    "max_new_tokens": 1024,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "do_sample": False,
}

VISION_CHUNKED_LENGTH = 64
