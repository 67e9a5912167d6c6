"""ScribeAI recording server."""

__version__ = "0.1.0"
