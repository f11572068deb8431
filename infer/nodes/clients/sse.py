"""Server-sent events, line by line: the data of each event, comments and other fields skipped."""

from __future__ import annotations

from infer.errors import UpstreamError
from infer.nodes.clients.wire import MAX_LINE_BYTES


class EventDecoder:
    """Collects `data:` lines until the blank line that ends an event (per the SSE spec).

    Lines starting with `:` are comments (Exo's keep-alives and progress reports);
    `event:`, `id:` and `retry:` carry nothing a chat stream needs.
    """

    def __init__(self, *, limit: int = MAX_LINE_BYTES) -> None:
        self.limit = limit
        self._data: list[bytes] = []
        self._size = 0

    def feed(self, line: bytes) -> bytes | None:
        """Take one line (without its line end); return an event's data when one ends."""
        if not line:
            return self.flush()
        if line.startswith(b":"):
            return None
        name, _, value = line.partition(b":")
        if name != b"data":
            return None
        value = value.removeprefix(b" ")
        self._size += len(value) + 1
        if self._size > self.limit:
            raise UpstreamError(f"the node sent an event larger than {self.limit // 1024} KiB")
        self._data.append(value)
        return None

    def flush(self) -> bytes | None:
        """End the current event (at a blank line, or where the stream ends)."""
        if not self._data:
            return None
        data = b"\n".join(self._data)
        self._data, self._size = [], 0
        return data
