"""Standard input and output for both front ends, with output written at once.

Twisted's StandardIO buffers every write and writes it on a later turn of the
reactor, once epoll says that stdout has room: for a client that shows a line per
datagram, that was a second wake-up per received line (and, on a pipe, four
epoll_ctl calls, as Twisted's writer switches between watching for the reader's
close and watching for room). Here a write goes to the file descriptor at once when
nothing waits before it. Only what does not fit (the reader is slow) goes to
Twisted's buffer, whose flow control stays as it was: above its bufferSize the
producer (ChatLink) is paused, which stops reading the network, and it is resumed
once the buffer drained. Nothing is lost or reordered: while anything waits in the
buffer, every later write queues behind it.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import process, stdio


class PromptWriter(process.ProcessWriter):
    """Twisted's writer of stdout, that writes at once what it can (see module
    docstring)."""

    def write(self, data: bytes) -> None:
        if (
            data
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
        ):  # nothing waits before it: try to write it now
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0  # the pipe is full
            except OSError:
                # The reader is gone, or worse: the buffered write below meets the
                # error again and reports it the way Twisted always did.
                written = 0
            if written == len(data):
                return
            data = data[written:]  # the rest waits, in order
        super().write(data)


class StandardIO(stdio.StandardIO):
    """twisted.internet.stdio.StandardIO with a PromptWriter for stdout."""

    def __init__(self, proto: Any, stdin: int = 0, stdout: int = 1, reactor: Any = None) -> None:
        # As Twisted's __init__, but for the writer's class.
        if reactor is None:
            from twisted.internet import reactor
        self.protocol = proto
        self._writer = PromptWriter(reactor, self, "write", stdout)
        self._reader = process.ProcessReader(reactor, self, "read", stdin)
        self._reader.startReading()
        self.protocol.makeConnection(self)
