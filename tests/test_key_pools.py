"""Several keys per provider (issue 22.1, proxy/key_pools.py): each key is a member of the
provider's pool with its own health, rest and slots; a key the host refuses is taken out while
the others go on; members that tie take turns by load; no key ever shows in a name or an error.
The router runs the real `openai_images` adapter against a fake of OpenAI's API that checks
the bearer key."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from proxy import key_pools
from proxy.catalog import CatalogError, Model, load
from proxy.config import Secret
from proxy.domain import Policy
from proxy.providers import ADAPTERS
from proxy.providers.openai_images import ADAPTER
from proxy.routing.health import Health, Settings
from proxy.routing.router import Router
from proxy.routing.slots import Slots
from proxy.routing.strategies import rank
from tests.fakes.openai_images import BASE_URL, FakeOpenAIImages, make_request, make_route

PROVIDERS = """
[openai]
protocol = "openai_images"
base_url = "https://api.openai.com/v1"
key_env = {key_env}
"""
MODEL = """name = "pooled-image"
[[routes]]
provider = "openai"
upstream_model = "gpt-image-2"
price.per_image = {{ "1K" = 0.04 }}
options.sizes = ["1024x1024"]
"""


def catalog(tmp_path: Path, key_env: str, env: dict[str, str]) -> Model:
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "providers.toml").write_text(PROVIDERS.format(key_env=key_env))
    (tmp_path / "models" / "pooled-image.toml").write_text(MODEL.format())
    (model,) = load(tmp_path, env, False, ADAPTERS).models
    return model


def test_every_key_of_every_variable_is_a_member_named_by_a_hash(tmp_path: Path) -> None:
    env = {"POOL_A": "sk-one, sk-two\n", "POOL_B": "sk-three sk-one"}
    model = catalog(tmp_path, '["POOL_A", "POOL_B"]', env)
    providers = [route.provider for route in model.routes]
    assert len(providers) == 3  # sk-one once, though two variables hold it
    assert [p.key.reveal() for p in providers if p.key] == ["sk-one", "sk-two", "sk-three"]
    assert {p.family for p in providers} == {"openai"}
    assert len({route.id for route in model.routes}) == 3
    for provider in providers:
        name, _, digest = provider.name.partition(".")
        assert name == "openai" and len(digest) == 6 and "sk-" not in provider.name
        assert provider.key_env == "POOL_A, POOL_B"


def test_one_key_is_no_pool(tmp_path: Path) -> None:
    (route,) = catalog(tmp_path, '"POOL_A"', {"POOL_A": "sk-one"}).routes
    assert (route.provider.name, route.provider.family, route.id) == \
        ("openai", "openai", "pooled-image/openai")


def test_a_key_env_that_names_no_variable_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="key_env"):
        catalog(tmp_path, "[1, 2]", {})


def pool(*keys: str) -> list:
    base = make_route("openai_images", BASE_URL)
    provider = replace(base.provider, name="openai",
                       pool_keys=tuple(Secret(k) for k in keys))
    return [replace(base, id=f"test/{member.name}", provider=member)
            for member in key_pools.members(provider)]


def router(routes: list, fake: FakeOpenAIImages) -> Router:
    clients = {r.provider.name: httpx.AsyncClient(transport=fake) for r in routes}
    return Router({"openai_images": ADAPTER}, clients, 30.0,
                  health=Health(routes, Settings()),
                  slots=Slots(r.provider for r in routes))


def test_a_refused_key_is_taken_out_and_the_pool_goes_on() -> None:
    routes = pool("sk-revoked", "sk-good")
    fake = FakeOpenAIImages(key="sk-good")
    switchyard = router(routes, fake)
    model = Model(name="test", aliases=(), owned_by="t", created=0,
                  default_strategy="cheapest", routes=tuple(routes))

    async def go() -> list:
        return [await switchyard.serve(model, make_request()) for _ in range(3)]

    first, *rest = asyncio.run(go())
    refused, good = routes
    # The request that met the revoked key was served by the other one, not failed.
    assert [a.failure for a in first.attempts] == ["auth", None]
    assert first.provider == good.provider.name
    assert all(s.attempts[0].failure is None and s.provider == good.provider.name
               for s in rest)
    assert [seen.headers["authorization"] for seen in fake.requests] == \
        ["Bearer sk-revoked", "Bearer sk-good", "Bearer sk-good", "Bearer sk-good"]
    snap = switchyard.health.of(refused).snapshot("1K")
    assert snap.refused and not snap.available
    assert not switchyard.health.of(good).snapshot("1K").refused
    shown = " ".join(f"{a.provider} {a.route_id} {a.failure}" for a in first.attempts)
    assert "sk-revoked" not in shown and "sk-good" not in shown


def test_tied_keys_take_turns_by_load_and_only_names_the_provider() -> None:
    routes = pool("sk-a", "sk-b", "sk-c")
    health = Health(routes, Settings())
    health.of(routes[0]).begin()
    health.of(routes[0]).begin()
    health.of(routes[1]).begin()
    ranked = rank(routes, "cheapest", make_request(), health.snapshots(routes, "1K"))
    assert [r.provider.name for r in ranked] == \
        [routes[2].provider.name, routes[1].provider.name, routes[0].provider.name]
    from proxy.routing.strategies import constrain
    kept = constrain(routes, Policy(only=frozenset({"openai"})), make_request(),
                     health.snapshots(routes, "1K"))
    assert kept == routes
