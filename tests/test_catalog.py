"""proxy.catalog: the shipped demo loads, demo auto-switching, and every mistake names its file."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from proxy import catalog
from proxy.catalog import Catalog, CatalogError
from proxy.config import default_routes_dir
from proxy.providers import ADAPTERS

KEY = "sk-acme-0123456789-do-not-print"
PROVIDERS = """
[acme]
protocol = "simulated"
base_url = "https://api.acme.example/v1/"
key_env = "ACME_KEY"
timeout_s = 45
allowed_hosts = ["cdn.acme.example"]

[unused]
protocol = "simulated"
base_url = "https://unused.example"
"""
MODEL = """
name = "acme-image"
aliases = ["acme", "acme-latest"]
created = 2026-03-01
default_strategy = "fastest"

[capabilities]
aspect_ratios = ["16:9", "1:1"]
max_n = 2

[[routes]]
provider = "acme"
upstream_model = "acme-img-3"
typical_latency_s = 4.5
price.per_image = { "2K" = 0.08, "1K" = 0.04 }
capabilities.max_n = 4
"""


def _tree(root: Path, providers: str = PROVIDERS, models: dict[str, str] | None = None,
          demo: bool = True) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "providers.toml").write_text(providers)
    for name, text in (models if models is not None else {"acme-image": MODEL}).items():
        (root / "models" / f"{name}.toml").write_text(text)
    if demo:
        shutil.copytree(default_routes_dir() / "demo", root / "demo")
    return root


def _load(root: Path, env: dict[str, str] | None = None, demo: bool | None = None) -> Catalog:
    return catalog.load(root, env or {}, demo, ADAPTERS)


def _names(cat: Catalog) -> list[str]:
    return [m.name for m in cat.models]


def test_shipped_demo_loads() -> None:
    cat = _load(default_routes_dir())
    assert cat.demo is True
    assert _names(cat) == ["demo-image", "demo-image-pro"]
    assert {p.name for p in cat.providers} == {"sim-thrifty", "sim-steady", "sim-swift"}
    assert {p.protocol for p in cat.providers} == {"simulated"}
    assert cat.resolve("demo") is cat.resolve("demo-image") is cat.models[0]
    for model in cat.models:
        assert model.routes
        for route in model.routes:
            assert route.provider in cat.providers
            assert route.id == f"{model.name}/{route.provider.name}"
            assert set(route.price_per_image) == set(route.capabilities.tiers)


def test_shipped_demo_off_gives_an_empty_catalog() -> None:
    cat = _load(default_routes_dir(), demo=False)
    assert (cat.models, cat.providers, cat.demo) == ((), (), False)
    assert cat.resolve("demo-image") is None


@pytest.mark.parametrize("env", [{}, {"ACME_KEY": ""}, {"OTHER_KEY": KEY}])
def test_demo_is_on_while_no_real_provider_has_a_key(tmp_path: Path, env: dict[str, str]) -> None:
    cat = _load(_tree(tmp_path), env)
    assert cat.demo is True
    assert _names(cat) == ["demo-image", "demo-image-pro"]
    assert cat.resolve("acme-image") is None
    assert "acme" not in {p.name for p in cat.providers}


def test_demo_turns_off_when_a_real_key_is_set(tmp_path: Path) -> None:
    cat = _load(_tree(tmp_path), {"ACME_KEY": KEY})
    assert cat.demo is False
    assert _names(cat) == ["acme-image"]
    (acme,) = cat.providers  # `unused` serves no model, so it is left out
    assert acme.name == "acme"
    assert acme.key is not None and acme.key.reveal() == KEY
    assert acme.base_url == "https://api.acme.example/v1"
    assert (acme.timeout_s, acme.allowed_hosts) == (45.0, ("cdn.acme.example",))


def test_demo_forced_on_mixes_with_real_providers(tmp_path: Path) -> None:
    cat = _load(_tree(tmp_path), {"ACME_KEY": KEY}, demo=True)
    assert cat.demo is True
    assert _names(cat) == ["acme-image", "demo-image", "demo-image-pro"]
    assert {p.name for p in cat.providers} == {"acme", "sim-thrifty", "sim-steady", "sim-swift"}


def test_demo_forced_off_without_real_providers_is_empty(tmp_path: Path) -> None:
    cat = _load(_tree(tmp_path), {}, demo=False)
    assert (cat.models, cat.providers, cat.demo) == ((), (), False)


def test_model_and_route_fields(tmp_path: Path) -> None:
    model = _load(_tree(tmp_path, demo=False), {"ACME_KEY": KEY}).models[0]
    assert model.default_strategy == "fastest"
    assert model.created == int(dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp())
    assert model.tiers() == ("1K", "2K")
    assert model.aspect_ratios() == ("1:1", "16:9")  # canonical order, not the file's
    (route,) = model.routes
    assert route.id == "acme-image/acme"
    assert route.upstream_model == "acme-img-3"
    assert route.price_per_image == {"1K": Decimal("0.04"), "2K": Decimal("0.08")}
    assert route.typical_latency_s == 4.5
    assert route.capabilities.max_n == 4  # the route's own value beats the model's
    assert route.capabilities.aspect_ratios == ("16:9", "1:1")  # inherited from the model
    assert route.capabilities.output_formats == ("png",)


def test_aliases_resolve_to_the_same_model(tmp_path: Path) -> None:
    cat = _load(_tree(tmp_path, demo=False), {"ACME_KEY": KEY})
    model = cat.resolve("acme-image")
    assert model is not None and model.name == "acme-image"
    assert cat.resolve("acme") is model
    assert cat.resolve("acme-latest") is model
    assert cat.resolve("acme-imag") is None


@pytest.mark.parametrize(("second", "clash"), [
    (MODEL.replace('aliases = ["acme", "acme-latest"]', "aliases = []"), "acme-image"),
    (MODEL.replace('name = "acme-image"', 'name = "other"').replace('"acme-latest"', '"x"'),
     "acme"),
])
def test_duplicate_model_names_raise(tmp_path: Path, second: str, clash: str) -> None:
    root = _tree(tmp_path, models={"a": MODEL, "b": second}, demo=False)
    with pytest.raises(CatalogError, match=f"'{clash}'"):
        _load(root, {"ACME_KEY": KEY})


def test_real_model_named_like_a_demo_model_clashes_when_mixed(tmp_path: Path) -> None:
    root = _tree(tmp_path, models={"x": MODEL.replace('"acme-image"', '"demo-image"')})
    assert _names(_load(root, {"ACME_KEY": KEY})) == ["demo-image"]
    with pytest.raises(CatalogError, match="'demo-image'"):
        _load(root, {"ACME_KEY": KEY}, demo=True)


_ROUTE = MODEL.split("[[routes]]")[0] + "[[routes]]\n"


@pytest.mark.parametrize(("file", "providers", "model", "needle"), [
    ("providers.toml", PROVIDERS.replace('"simulated"', '"carrier-pigeon"', 1), MODEL,
     "carrier-pigeon"),
    ("providers.toml", PROVIDERS.replace('base_url = "https://api.acme.example/v1/"', ""),
     MODEL, "base_url"),
    ("acme-image.toml", PROVIDERS, MODEL.replace('provider = "acme"', 'provider = "nobody"'),
     "nobody"),
    ("acme-image.toml", PROVIDERS, _ROUTE + 'provider = "acme"\nupstream_model = "m"\n',
     "price.per_image"),
    ("acme-image.toml", PROVIDERS, MODEL.replace('{ "2K" = 0.08, "1K" = 0.04 }', "{}"),
     "price.per_image"),
    ("acme-image.toml", PROVIDERS, MODEL.replace('"2K" = 0.08', '"8K" = 0.08'), "8K"),
    ("acme-image.toml", PROVIDERS, MODEL.replace('"16:9"', '"7:5"'), "7:5"),
    ("acme-image.toml", PROVIDERS, MODEL.replace("max_n = 4", "max_n = 0"), "max_n"),
    ("acme-image.toml", PROVIDERS, MODEL.replace("max_n = 4", "max_n = 11"), "max_n"),
    ("acme-image.toml", PROVIDERS, MODEL.replace('"fastest"', '"random"'), "random"),
    ("acme-image.toml", PROVIDERS, MODEL.replace('upstream_model = "acme-img-3"', ""),
     "upstream_model"),
    ("acme-image.toml", PROVIDERS, MODEL + 'capabilities.output_formats = ["gif"]\n', "gif"),
    ("acme-image.toml", PROVIDERS, MODEL + "this is = not toml\n", "line"),
    # A key pool's members are `<provider>.<label>`: a dot would pass for one.
    ("providers.toml", PROVIDERS.replace("[acme]", '["acme.eu"]', 1),
     MODEL.replace('provider = "acme"', 'provider = "acme.eu"'), "no '.'"),
])
def test_mistakes_raise_catalog_error_naming_the_file(
        tmp_path: Path, file: str, providers: str, model: str, needle: str) -> None:
    root = _tree(tmp_path, providers, {"acme-image": model}, demo=False)
    with pytest.raises(CatalogError) as caught:
        _load(root, {"ACME_KEY": KEY})
    message = str(caught.value)
    assert file in message
    assert needle in message


@pytest.mark.parametrize(("providers", "model"), [
    (PROVIDERS.replace("timeout_s = 45", 'timeout_s = "fast"'), MODEL),
    (PROVIDERS.replace("timeout_s = 45", 'max_in_flight = "many"'), MODEL),
    (PROVIDERS, MODEL.replace("max_n = 4", 'max_n = "four"')),
    (PROVIDERS, MODEL.replace('price.per_image = { "2K" = 0.08, "1K" = 0.04 }', "price = 0.05")),
    (PROVIDERS, MODEL.replace('"1K" = 0.04', '"1K" = "cheap"')),
])
def test_malformed_values_raise_catalog_error_naming_the_file(
        tmp_path: Path, providers: str, model: str) -> None:
    root = _tree(tmp_path, providers, {"acme-image": model}, demo=False)
    with pytest.raises(CatalogError, match=r"acme-image\.toml|providers\.toml"):
        _load(root, {"ACME_KEY": KEY})


def test_missing_demo_folder_is_reported(tmp_path: Path) -> None:
    root = _tree(tmp_path, demo=False)
    with pytest.raises(CatalogError, match=re.escape(str(root / "demo" / "providers.toml"))):
        _load(root, {})  # no key: the demo is wanted, and it is not there


def test_provider_secret_never_appears_in_repr(tmp_path: Path) -> None:
    cat = _load(_tree(tmp_path), {"ACME_KEY": KEY}, demo=True)
    assert cat.providers[0].key is not None and cat.providers[0].key.reveal() == KEY
    for text in (repr(cat), str(cat), repr(cat.models[0].routes[0]), repr(cat.providers)):
        assert KEY not in text
        assert "Secret('********')" in text


HOSTS_LINE = 'allowed_hosts = ["cdn.acme.example"]'
OPTIONED = PROVIDERS.replace(HOSTS_LINE, HOSTS_LINE + '''
options = { region = "eu", project = "" }
options_env = { project = "ACME_PROJECT", region = "ACME_REGION" }
required_options = ["project"]''')


def test_options_from_the_environment_override_the_file(tmp_path: Path) -> None:
    root = _tree(tmp_path, OPTIONED)
    cat = _load(root, {"ACME_KEY": "k", "ACME_PROJECT": "p-1", "ACME_REGION": "us"})
    (provider,) = cat.providers
    assert provider.options["project"] == "p-1" and provider.options["region"] == "us"
    assert provider.options_env == {"project": "ACME_PROJECT", "region": "ACME_REGION"}


def test_a_required_option_left_unset_keeps_the_provider_off(tmp_path: Path) -> None:
    root = _tree(tmp_path, OPTIONED)
    cat = _load(root, {"ACME_KEY": "k"})
    assert "acme-image" not in _names(cat) and cat.demo
    (model,) = catalog.inventory(root, {"ACME_KEY": "k"}, ADAPTERS)[:1]
    provider = model.routes[0].provider
    assert provider.credentialed and provider.missing_options() == ("project",)
    assert not provider.live


def test_a_token_command_makes_a_provider_live_without_its_key(tmp_path: Path) -> None:
    root = _tree(tmp_path, PROVIDERS.replace('timeout_s = 45', 'timeout_s = 45\n'
                                             'options = { token_command = "echo t" }'))
    assert "acme-image" in _names(_load(root, {}))


def test_options_env_must_name_variables(tmp_path: Path) -> None:
    root = _tree(tmp_path, PROVIDERS.replace('timeout_s = 45', 'timeout_s = 45\n'
                                             'options_env = { project = 3 }'))
    with pytest.raises(catalog.CatalogError, match=r"\[acme\]: options_env"):
        _load(root)
