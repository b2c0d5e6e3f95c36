"""Standard input and output for both front ends, with output written at once.

Twisted's StandardIO buffers every write and writes it on a later turn of the
reactor, once epoll says that stdout has room: for a client that shows a line per
datagram, that was a second wake-up per received line (and, on a pipe, four
epoll_ctl calls, as Twisted's writer switches between watching for the reader's
close and watching for room). Here a write goes to the file descriptor at once when
nothing waits before it. Only what does not fit (the reader is slow) goes to
Twisted's writer and its buffer, whose flow control stays as it was: above its
bufferSize the producer (ChatLink) is paused, which stops reading the network, and
it is resumed once the buffer drained. Nothing is lost or reordered: while anything
waits in the buffer, every later write queues behind it.
"""

from __future__ import annotations

import os

from twisted.internet import stdio


class StandardIO(stdio.StandardIO):
    """twisted.internet.stdio.StandardIO whose writes go out at once when they can."""

    def write(self, data: bytes) -> None:
        # Twisted's writer of stdout (a process.ProcessWriter), None once it is gone.
        writer = self._writer  # type: ignore[attr-defined]
        if writer is None:
            return
        if (
            data
            and writer.connected
            and not writer.disconnecting
            and not writer._writeDisconnected
            and not writer._tempDataLen
            and writer.offset == len(writer.dataBuffer)
        ):  # nothing waits before it: try to write it now
            try:
                written = os.write(writer.fd, data)
            except BlockingIOError:
                written = 0  # the pipe is full
            except OSError:
                # The reader is gone, or worse: the buffered write below meets the
                # error again and reports it the way Twisted always did.
                written = 0
            if written == len(data):
                return
            data = data[written:]  # the rest waits, in order
        writer.write(data)
