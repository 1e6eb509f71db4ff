"""The adapter registry: protocol name -> adapter. The catalog refers to these names."""

from collections.abc import Iterable

from proxy.catalog import Model
from proxy.providers import (
    byteplus,
    fal,
    gemini,
    gemini_batch,
    kie,
    openai_images,
    replicate,
    segmind,
    simulated,
    task,
    together,
    vertex,
    wavespeed,
)
from proxy.providers.base import Adapter
from proxy.upstream import tls

ADAPTERS: dict[str, Adapter] = {
    adapter.protocol: adapter for adapter in (
        simulated.ADAPTER, gemini.ADAPTER, vertex.ADAPTER, openai_images.ADAPTER,
        replicate.ADAPTER, fal.ADAPTER, together.ADAPTER, byteplus.ADAPTER, task.ADAPTER,
        segmind.ADAPTER, wavespeed.ADAPTER, kie.ADAPTER, gemini_batch.ADAPTER,
    )
}


def check_routes(models: Iterable[Model]) -> list[str]:
    """Problems in routes whose protocol can check its options (e.g. the generic task
    protocol's paths and state table), each naming the model file's route and option."""
    problems = []
    for model in models:
        for route in model.routes:
            validate = ADAPTERS[route.provider.protocol].validate
            if validate is not None:
                # ca_file is the transport's (tls.py), whatever the protocol.
                options = {name: value for name, value in
                           {**route.provider.options, **route.options}.items()
                           if name != tls.CA_FILE_OPTION}
                problems += [f"{route.id}: {line}" for line in validate(options)]
    return problems
