"""Errors raised for bad user input. Their message is one sentence naming the field and what would be right."""


class ConfigError(ValueError):
    """An adapter configuration or a target selection that cannot work."""
