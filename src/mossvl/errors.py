"""Exception classes of the public API: every bad input raises one of these with a message naming the problem."""


class MossVLError(Exception):
    """Base class of every error that mossvl raises on purpose."""


class ConfigError(MossVLError, ValueError):
    """An inconsistent or invalid model or processor configuration."""


class MediaError(MossVLError, ValueError):
    """A media item (image or video) that cannot be read, decoded or used."""


class MediaTooLargeError(MediaError):
    """A media item over a byte limit (a download or upload cap)."""


class QueryError(MossVLError, ValueError):
    """A malformed query, message list, prompt or data record."""


class CheckpointError(MossVLError, OSError):
    """A checkpoint folder that is missing files or holds unexpected weights."""


class PreparationError(MossVLError):
    """A query failed while it was prepared, with an error mossvl does not name itself; the message starts with
    the original exception's type name, and the original is chained as ``__cause__``."""


class MediaWarning(UserWarning):
    """Media that was used although it is not whole (a truncated or partly corrupt video); the message says how
    much of it was read."""
