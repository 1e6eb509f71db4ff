"""What routing saved, for a model whose reference route prices each quality apart: the
ledger does not keep the quality asked, so its images cannot be priced on the reference and
save nothing. They had been priced at the tier price (quality high): a low-quality image on
the model's one route, where routing chose nothing, showed 89% 'saved'."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson

from tests import protocol_kit as kit
from tests.conftest import make_config, serve
from tests.fakes.openai_images import image_b64
from tests.test_billed_as_made import FLARE, OPENAI

# Output image tokens at 1024x1024 per quality (the catalog's own measured figures).
TOKENS = {"low": 196, "medium": 439, "high": 1756, "auto": 1756}


class OpenAI(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fields: dict[str, Any] = orjson.loads(await request.aread())
        n, quality = int(fields.get("n", 1)), str(fields.get("quality", "auto"))
        tokens = TOKENS[quality] * n
        body = {"created": int(time.time()), "data": [
            {"b64_json": image_b64(1024, 1024, "png", f"{i}")} for i in range(n)],
            "size": "1024x1024", "quality": quality, "output_format": "png",
            "usage": {"input_tokens": 20, "output_tokens": tokens, "total_tokens": tokens + 20,
                      "input_tokens_details": {"text_tokens": 20, "image_tokens": 0},
                      "output_tokens_details": {"image_tokens": tokens, "text_tokens": 0}}}
        return httpx.Response(200, json=body, headers={"x-request-id": "req_1"})


def test_a_single_route_model_reports_no_routing_savings(tmp_path: Path) -> None:
    catalog = kit.write_catalog(tmp_path / "routes", OPENAI, {"gpt-image-2.5-flare": FLARE},
                                {"OPENAI_API_KEY": "test-key"})
    # The usage report reads the catalog under routes_dir for its reference prices.
    config = make_config(tmp_path / "data", routes_dir=tmp_path / "routes")
    with serve(config, catalog, {"openai": OpenAI()}) as running:
        key = running.new_key()
        with openai.OpenAI(base_url=running.v1, api_key=key, max_retries=0) as sdk:
            raw = sdk.images.with_raw_response.generate(
                model="gpt-image-2.5-flare", prompt="a red fox", size="1024x1024",
                quality="low")
        assert raw.headers["x-switchyard-cost-usd"] == "0.005880"  # 196 tokens at $30/M
        usage = httpx.get(f"{running.v1}/usage", params={"group_by": "model"},
                          headers={"authorization": f"Bearer {key}"}).json()
    (row,) = usage["data"]
    assert row["upstream_usd"] == "0.00588"
    assert Decimal(row["saved_usd"]) == 0, (
        f"one route, nothing to route between, yet the report says routing saved "
        f"${row['saved_usd']} of ${row['reference_usd']} (reference priced at quality high)")
