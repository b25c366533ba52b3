"""The official API methods on the model class, attached from this layer so that ``mossvl.model`` stays free of
engines, sessions and queues: ``model.offline_generate(processor, ...)`` and friends call the functions here."""

from __future__ import annotations

from ..model.modeling import MossVLForConditionalGeneration
from . import offline, realtime

OFFICIAL_METHODS = {
    "create_realtime_session": realtime.create_realtime_session,
    "online_generate": realtime.online_generate,
    "offline_generate": offline.offline_generate,
    "offline_batch_generate": offline.offline_batch_generate,
    "offline_image_generate": offline.offline_image_generate,
    "offline_video_generate": offline.offline_video_generate,
    "cancel_offline_generate": offline.cancel_offline_generate,
}


def attach_official_methods(cls: type = MossVLForConditionalGeneration) -> None:
    """Make the official methods available on ``cls`` (idempotent)."""
    for name, function in OFFICIAL_METHODS.items():
        setattr(cls, name, function)
