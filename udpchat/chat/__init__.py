"""The chat layer, sans-IO: messages, line ids, the chat rules and the server
composition. Imports udpchat.core, never Twisted."""
