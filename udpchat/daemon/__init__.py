"""The daemon's Twisted side: the UDP adapter, the service, twistd glue, config,
systemd notification and address discovery."""
