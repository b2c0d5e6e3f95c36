"""The udpchat terminal client: ``udpchat-client HOST`` (see udpchat.client.cli).

commands (typed line -> action), display (what is shown, sanitized), session
(ChatClient: chat logic, sans-IO), protocol (Twisted UDP glue), pipe and terminal
(the two front ends), cli (entry point).
"""
