"""Exception classes of the public API: every bad input raises one of these with a message naming the problem."""


class MossVLError(Exception):
    """Base class of every error that mossvl raises on purpose."""


class ConfigError(MossVLError, ValueError):
    """An inconsistent or invalid model or processor configuration."""


class MediaError(MossVLError, ValueError):
    """A media item (image or video) that cannot be read, decoded or used."""


class QueryError(MossVLError, ValueError):
    """A malformed query, message list, prompt or data record."""


class CheckpointError(MossVLError, OSError):
    """A checkpoint folder that is missing files or holds unexpected weights."""
