"""Which route each model's images are compared against to tell what routing saved.

By default a model's reference is the first route its catalog file lists (usually the host
the model is known from); `reference_routes` in the config names another, per model, by its
provider. The catalog's full inventory is read, live or not, so the server, the usage API
and `switchyard usage` price the same images the same way whichever keys are set.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from proxy.billing.usage import Prices, Reference
from proxy.catalog import Model, Route, inventory


class ReferenceError(ValueError):
    """A configured reference route that the catalog does not have."""


def reference_routes(models: Iterable[Model], chosen: Mapping[str, str]) -> dict[str, Route]:
    """model name -> its reference route; ReferenceError names a configured model or
    provider the catalog lacks."""
    found: dict[str, Route] = {}
    by_name = {m.name: m for m in models}
    for model_name, provider in chosen.items():
        model = by_name.get(model_name)
        if model is None:
            raise ReferenceError(f"reference_routes: no model {model_name!r} in the catalog")
        route = next((r for r in model.routes if r.provider.family == provider), None)
        if route is None:
            known = ", ".join(dict.fromkeys(r.provider.family for r in model.routes))
            raise ReferenceError(f"reference_routes: model {model_name!r} has no route on "
                                 f"{provider!r} (its routes: {known})")
        found[model_name] = route
    for model in by_name.values():
        if model.name not in found and model.routes:
            found[model.name] = model.routes[0]
    return found


def reference_prices(models: Iterable[Model], chosen: Mapping[str, str]) -> Prices:
    """model -> tier -> USD per image on its reference route. A model whose reference prices
    each quality apart (price.quality) has none: the ledger does not keep the quality a
    request asked, so its images are not priced against a reference and save nothing,
    where the tier price (that of quality high) made up savings of up to 89%."""
    return {name: dict(route.price_per_image)
            for name, route in reference_routes(models, chosen).items()
            if not route.quality_factors}


def describe(models: Iterable[Model], chosen: Mapping[str, str]) -> dict[str, str]:
    """model -> the reference route's provider, for reports that say what they compare to."""
    return {name: route.provider.family
            for name, route in reference_routes(models, chosen).items()}


def for_config(routes_dir: Path, chosen: Mapping[str, str],
               env: Mapping[str, str] | None = None) -> Reference:
    """The reference prices of the catalog under `routes_dir` (every route, live or not)."""
    from proxy.providers import ADAPTERS  # the protocols the catalog is checked against

    models = inventory(routes_dir, os.environ if env is None else env, ADAPTERS)
    return Reference(reference_prices(models, chosen),
                     {name: route.provider.family
                      for name, route in reference_routes(models, chosen).items()})
