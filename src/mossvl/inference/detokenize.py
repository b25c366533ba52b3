"""Incremental detokenisation for streaming: text deltas that never split a UTF-8 character or leak a stop string.

A byte-level BPE token can end in the middle of a multi-byte character; decoding it alone yields U+FFFD. The
decoder keeps a small window of ids, decodes it twice (up to the last clean point, and up to now) and only
releases text once it no longer ends in U+FFFD. Window boundaries are always at clean points, so the
concatenated deltas equal ``tokenizer.decode(all_ids)`` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Turns a growing sequence of token ids into UTF-8-safe text deltas."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # start of the decode window (a clean point)
        self._read = 0  # end of the text already released (a clean point)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (possibly empty)."""
        self.ids.append(token_id)
        released = self._decode(self.ids[self._prefix : self._read])
        current = self._decode(self.ids[self._prefix :])
        if current.endswith(REPLACEMENT_CHAR) or len(current) <= len(released):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return current[len(released) :]

    def flush(self) -> str:
        """Release everything still held back (a trailing U+FFFD of an unfinished character included)."""
        released = self._decode(self.ids[self._prefix : self._read])
        current = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return current[len(released) :]


class TextStream:
    """The text of one generated sequence, released in safe deltas and cut before the first stop string.

    Text that could be the start of a stop string is held back until it is known not to be one.
    """

    def __init__(self, tokenizer, stop: Sequence[str] = (), skip_special_tokens: bool = True):
        self.detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens)
        self.stop = tuple(stop)
        self._longest_stop = max((len(s) for s in self.stop), default=0)
        self._text = ""
        self._released = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """The text released so far (the whole answer once :meth:`finish` was called)."""
        return self._text[: self._released]

    def push(self, token_id: int) -> str:
        """Add one generated id; return the newly releasable text. Sets ``stopped`` when a stop string appears."""
        if self.stopped:
            return ""
        return self._advance(self.detokenizer.push(token_id), final=False)

    def finish(self) -> str:
        """End of generation: return whatever is still held back."""
        if self.stopped:
            return ""
        return self._advance(self.detokenizer.flush(), final=True)

    def _advance(self, delta: str, final: bool) -> str:
        search_from = max(0, len(self._text) - self._longest_stop + 1)
        self._text += delta
        cut = min((i for i in (self._text.find(s, search_from) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self._text = self._text[:cut]
            self.stopped = True
            safe = cut
        elif final:
            safe = len(self._text)
        else:
            safe = len(self._text) - self._held_back()
        out = self._text[self._released : safe]
        self._released = max(self._released, safe)
        return out

    def _held_back(self) -> int:
        """Length of the longest text suffix that is a proper prefix of some stop string."""
        for size in range(min(self._longest_stop - 1, len(self._text)), 0, -1):
            tail = self._text[-size:]
            if any(s.startswith(tail) for s in self.stop):
                return size
        return 0
