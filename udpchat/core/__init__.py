"""The transport core: wire format, handshake, sessions, reliability. Imports nothing
from Twisted or from the rest of udpchat."""
