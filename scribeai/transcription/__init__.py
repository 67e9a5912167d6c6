"""Transcription: the durable queue, the worker pipeline, engines (whisper, openai, none) and container media."""
