"""The adapter registry: protocol name -> adapter. The catalog refers to these names."""

from proxy.providers import simulated
from proxy.providers.base import Adapter

ADAPTERS: dict[str, Adapter] = {
    adapter.protocol: adapter for adapter in (simulated.ADAPTER,)
}
