"""The fleet tests' catalog on the counting host (proxy/bench/counting.py): an OpenAI-shaped
image host on a real socket that counts the calls it is serving at once, capped by
`max_in_flight`, and a dearer spare host when a test wants one.
"""

from __future__ import annotations

from proxy.bench.counting import CountingHost, counting_host

__all__ = ["KEY_ENV", "MODEL", "CountingHost", "catalog_files", "counting_host"]

KEY_ENV = "COUNTING_HOST_TEST_KEY"
MODEL = "capped-image"


def catalog_files(host: CountingHost, max_in_flight: int,
                  spare: CountingHost | None = None) -> dict[str, str]:
    """routes/ for one model on the host, capped at `max_in_flight` calls at once, and on a
    dearer `spare` host (uncapped) when given."""
    providers = f"""
[capped-host]
protocol = "openai_images"
base_url = "http://127.0.0.1:{host.port}/v1"
key_env = "{KEY_ENV}"
timeout_s = 60
max_in_flight = {max_in_flight}
"""
    if spare is not None:
        providers += f"""
[spare-host]
protocol = "openai_images"
base_url = "http://127.0.0.1:{spare.port}/v1"
key_env = "{KEY_ENV}"
timeout_s = 60
"""
    model = f"""name = "{MODEL}"
owned_by = "tests"
default_strategy = "cheapest"

[capabilities]
aspect_ratios = ["1:1"]
max_n = 4

[[routes]]
provider = "capped-host"
upstream_model = "m"
price.per_image = {{ "1K" = 0.01 }}
options.sizes = ["1024x1024"]
"""
    if spare is not None:
        model += """
[[routes]]
provider = "spare-host"
upstream_model = "m"
price.per_image = { "1K" = 0.02 }
options.sizes = ["1024x1024"]
"""
    return {"providers.toml": providers, f"models/{MODEL}.toml": model}
