"""Switchyard: an OpenAI-compatible routing proxy for image generation."""

__version__ = "0.1.0"
