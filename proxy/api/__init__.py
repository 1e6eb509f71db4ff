"""The HTTP surface: thin handlers over the library, OpenAI-shaped in and out."""
