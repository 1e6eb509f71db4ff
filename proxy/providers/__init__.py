"""The adapter registry: protocol name -> adapter. The catalog refers to these names."""

from proxy.providers import (
    byteplus,
    fal,
    gemini,
    openai_images,
    replicate,
    simulated,
    together,
    vertex,
)
from proxy.providers.base import Adapter

ADAPTERS: dict[str, Adapter] = {
    adapter.protocol: adapter for adapter in (
        simulated.ADAPTER, gemini.ADAPTER, vertex.ADAPTER, openai_images.ADAPTER,
        replicate.ADAPTER, fal.ADAPTER, together.ADAPTER, byteplus.ADAPTER,
    )
}
