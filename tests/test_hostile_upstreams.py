"""A broken upstream is a failover, never a 500 and never a bill: replies that are not images,
drip forever, inflate without end or claim gigapixels, from a real socket (the lean transport)
and through httpx (the path multipart uploads and proxies take)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from proxy import catalog as catalog_module
from proxy import imaging
from proxy.bench.hostile import MB, HostileUpstream, catalog_files
from proxy.bench.loopback import on_own_loop
from proxy.billing.keys import KeyLimits
from proxy.providers import ADAPTERS
from tests.conftest import Running, make_config, serve


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileUpstream]:
    """The hostile server on a loop of its own thread, for the module."""
    upstream = HostileUpstream(drip_s=0.3, huge_bytes=40 * MB, bomb_bytes=64 * MB)
    with on_own_loop(upstream):
        yield upstream


@pytest.fixture
def switchyard(hostile: HostileUpstream, tmp_path: Path) -> Iterator[Running]:
    """A fresh server per test (so no breaker remembers the last one), replies capped at 8 MB."""
    root = tmp_path / "routes"
    for name, text in catalog_files(hostile).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    live = catalog_module.load(root, {"HOSTILE_TEST_KEY": "k"}, demo=False, protocols=ADAPTERS)
    config = make_config(tmp_path / "data", max_reply_bytes=8 * MB)
    with serve(config, live) as running:
        yield running


CASES = {  # behaviour -> how the hostile attempt must end
    "drip": "timeout",
    "gzip_bomb": "upstream_broken",
    "huge_length": "upstream_broken",
    "huge_chunked": "upstream_broken",
    "not_image": "upstream_broken",
    "huge_pixels": "upstream_broken",
    "truncated": "upstream_broken",
}


@pytest.mark.parametrize("behaviour", sorted(CASES))
def test_a_hostile_reply_fails_over_and_costs_nothing(switchyard: Running, behaviour: str) -> None:
    key = switchyard.new_key("hostile", KeyLimits(budget_usd=Decimal("1")))
    with openai.OpenAI(base_url=switchyard.v1, api_key=key, max_retries=0) as sdk:
        raw = sdk.images.with_raw_response.generate(model="hardened", prompt=behaviour,
                                                    size="1024x1024")
    result = raw.parse()
    assert raw.headers["x-switchyard-provider"] == "healthy"
    assert raw.headers["x-switchyard-attempt-log"] == f"hostile={CASES[behaviour]}, healthy=ok"
    assert imaging.dimensions(base64.b64decode(result.data[0].b64_json or "")) == (1024, 1024)
    assert_billed_once(switchyard, raw.headers["x-request-id"])


def assert_billed_once(running: Running, request_id: str) -> None:
    """One row: billed the quote of the first route ($0.01; a failover to a dearer host is
    Switchyard's cost), paid the healthy host's $0.02, nothing for the hostile one."""
    with running.store() as store:
        rows = store.db.query("SELECT request_id, outcome, billed_micros, upstream_micros, "
                              "provider FROM ledger")
        assert rows == [(request_id, "success", 10_000, 20_000, "healthy")]
        assert store.db.query("SELECT COUNT(*) FROM reservations")[0][0] == 0


def test_a_slow_drip_fails_over_within_the_routes_timeout(switchyard: Running) -> None:
    """The route's timeout_s (3 s) bounds the whole reply; the request's 300 s does not."""
    key = switchyard.new_key()
    with openai.OpenAI(base_url=switchyard.v1, api_key=key, max_retries=0, timeout=20) as sdk:
        raw = sdk.images.with_raw_response.generate(model="hardened", prompt="drip")
    assert raw.headers["x-switchyard-attempt-log"] == "hostile=timeout, healthy=ok"
    assert 2.5 < raw.http_response.elapsed.total_seconds() < 8


def test_invalid_base64_for_a_link_fails_over(switchyard: Running) -> None:
    """Decoding for a link happens inside the attempt: a reply that does not decode is the
    host's failure (it was a 500 with its budget hold left behind)."""
    key = switchyard.new_key("links", KeyLimits(budget_usd=Decimal("1")))
    with openai.OpenAI(base_url=switchyard.v1, api_key=key, max_retries=0) as sdk:
        raw = sdk.images.with_raw_response.generate(model="hardened", prompt="bad_base64",
                                                    response_format="url")
    assert raw.headers["x-switchyard-attempt-log"] == "hostile=upstream_broken, healthy=ok"
    assert raw.parse().data[0].url
    assert_billed_once(switchyard, raw.headers["x-request-id"])


def test_garbage_that_needs_a_conversion_fails_over(switchyard: Running) -> None:
    key = switchyard.new_key()
    with openai.OpenAI(base_url=switchyard.v1, api_key=key, max_retries=0) as sdk:
        raw = sdk.images.with_raw_response.generate(model="hardened", prompt="corrupt",
                                                    extra_body={"output_format": "jpeg"})
    assert raw.headers["x-switchyard-attempt-log"] == "hostile=upstream_broken, healthy=ok"
    data = base64.b64decode(raw.parse().data[0].b64_json or "")
    assert imaging.sniff(data) == "jpeg"


def test_more_images_than_asked_are_cut_to_n_and_billed_for_n(switchyard: Running) -> None:
    key = switchyard.new_key()
    with openai.OpenAI(base_url=switchyard.v1, api_key=key, max_retries=0) as sdk:
        raw = sdk.images.with_raw_response.generate(model="hardened", prompt="too_many", n=2)
    assert raw.headers["x-switchyard-provider"] == "hostile"
    assert len(raw.parse().data) == 2
    assert raw.headers["x-switchyard-billed-usd"] == "0.020000"  # 2 x $0.01


def test_a_failure_storing_a_link_leaves_no_hold(switchyard: Running) -> None:
    """The one 500 left (Switchyard's own disk) still settles: no hold, a row at $0."""
    key = switchyard.new_key("disk", KeyLimits(budget_usd=Decimal("1")))
    images = switchyard.config.data_dir / "images"
    for path in images.iterdir():
        path.unlink()
    images.rmdir()
    images.write_bytes(b"not a directory")
    with openai.OpenAI(base_url=switchyard.v1, api_key=key, max_retries=0) as sdk, \
            pytest.raises(openai.InternalServerError):
        sdk.images.generate(model="hardened", prompt="fine", response_format="url")
    with switchyard.store() as store:
        assert store.db.query("SELECT outcome, billed_micros FROM ledger") == \
            [("undelivered", 0)]
        assert store.db.query("SELECT COUNT(*) FROM reservations")[0][0] == 0
