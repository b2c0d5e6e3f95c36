"""udpchat: an encrypted group chat over UDP, served by a twistd daemon."""

# setup.cfg reads this with `attr:` (statically, without importing the package).
__version__ = "0.1.0"
