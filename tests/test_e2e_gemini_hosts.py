"""Any host serves the Gemini surface: a google-genai request for Nano Banana 2 answered by fal,
Replicate or Google itself (fakes speaking each one's wire format), with our headers saying
who served it and the bill on the key."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from google.genai import types

from tests.surfaces import HOSTS, gemini, hosted, key_id, ledger, opened, picture


@pytest.mark.parametrize("name", list(HOSTS))
def test_a_gemini_request_is_served_by_any_host_and_billed_on_the_key(
        tmp_path: Path, name: str) -> None:
    with hosted(tmp_path, HOSTS[name]) as (running, fake):
        key = running.new_key()
        client = gemini(running, key)
        response = client.models.generate_content(
            model="gemini-3.1-flash-image", contents="a red fox in the snow",
            config=types.GenerateContentConfig(
                response_modalities=["IMAGE"],
                image_config=types.ImageConfig(aspect_ratio="16:9", image_size="1K")))
        headers = response.sdk_http_response.headers if response.sdk_http_response else None
        assert headers is not None and headers["x-switchyard-provider"] == name
        assert response.candidates and response.candidates[0].content
        (part,) = response.candidates[0].content.parts or []  # IMAGE only: no words
        assert part.inline_data is not None
        width, height = opened(part.inline_data.data or b"").size
        assert abs(width / height - 16 / 9) < 0.05
        (row,) = ledger(running)
        assert (row.key_id, row.provider, row.outcome) == (key_id(running, key), name, "success")
        assert row.billed_micros == round(float(headers["x-switchyard-billed-usd"]) * 1e6) > 0
        assert fake.seen, "the host's fake was called"


@pytest.mark.parametrize("name", list(HOSTS))
def test_an_edit_hands_the_host_the_image_it_was_given(tmp_path: Path, name: str) -> None:
    upload = picture(40, 40)
    with hosted(tmp_path, HOSTS[name]) as (running, fake):
        client = gemini(running, running.new_key())
        response = client.models.generate_content(
            model="nano-banana-2", contents=[
                types.Part.from_bytes(data=upload, mime_type="image/png"), "make it blue"])
        assert response.candidates
        sent = b"".join(orjson.dumps(seen.json) for seen in fake.seen if seen.json)
        assert base64.b64encode(upload) in sent


def test_the_hosts_words_come_with_the_image_when_text_is_asked(tmp_path: Path) -> None:
    with hosted(tmp_path, HOSTS["google"]) as (running, _):
        client = gemini(running, running.new_key())
        both = client.models.generate_content(model="nano-banana-2", contents="a red fox")
        assert both.candidates and both.candidates[0].content
        words, image = both.candidates[0].content.parts or []
        assert words.text == "Here is your image." and image.inline_data is not None
        assert both.text == "Here is your image."
        # Google's token counts pass through: 1120 image tokens at 1K, and the 5 of the words.
        assert both.usage_metadata and both.usage_metadata.candidates_token_count == 1125
        assert both.usage_metadata.candidates_tokens_details == [
            types.ModalityTokenCount(modality=types.MediaModality.TEXT, token_count=5),
            types.ModalityTokenCount(modality=types.MediaModality.IMAGE, token_count=1120)]
        chunks = list(client.models.generate_content_stream(model="nano-banana-2",
                                                            contents="a red fox"))
        assert [p.text for c in chunks for cand in c.candidates or []
                for p in (cand.content.parts if cand.content else None) or []
                if p.text] == ["Here is your image."]
