"""Transcription: container headers and decoding (media), engines (whisper, openai, none)."""

from scribeai.transcription.engines import (
    Engine,
    NoneEngine,
    OpenAIEngine,
    Transcription,
    TranscriptionFailed,
    WhisperEngine,
    create_engine,
)
from scribeai.transcription.media import MissingHeader, UndecodableAudio, prepare

__all__ = [
    "Engine",
    "MissingHeader",
    "NoneEngine",
    "OpenAIEngine",
    "Transcription",
    "TranscriptionFailed",
    "UndecodableAudio",
    "WhisperEngine",
    "create_engine",
    "prepare",
]
