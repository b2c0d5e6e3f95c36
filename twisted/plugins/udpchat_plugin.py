"""twistd plugin for udpchat: names the tap module so `twistd --help` imports nothing heavy.

This directory must have no __init__.py: twisted.plugins is a namespace that Twisted
extends with every `twisted/plugins` directory on sys.path.
"""

from twisted.application.service import ServiceMaker

udpchat = ServiceMaker("udpchat", "udpchat.daemon.tap", "Encrypted group chat over UDP", "udpchat")
