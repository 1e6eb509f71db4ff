"""Ids that sort by time (proxy/ids.py): each request's ledger row, a job's and a budget
hold's go to the end of their primary-key index instead of a random page of it."""

from __future__ import annotations

import os
import re
import time

import openai

from proxy import ids
from tests.conftest import Running


def test_request_ids_sort_in_the_order_requests_came(client: openai.OpenAI,
                                                      server: Running) -> None:
    made = []
    for _ in range(12):
        reply = client.images.with_raw_response.generate(model="test-image", prompt="a fox")
        made.append(reply.headers["x-request-id"])
        time.sleep(0.002)  # ids of one millisecond sort by their random half
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", made_id) for made_id in made)
    assert made == sorted(made)


def test_ids_have_their_shape_and_do_not_repeat() -> None:
    made = [ids.ordered("imgjob_") for _ in range(50_000)]
    assert all(re.fullmatch(r"imgjob_[0-9a-f]{24}", made_id) for made_id in made)
    assert len(set(made)) == len(made)
    assert int(made[0][7:19], 16) <= time.time_ns() // 1_000_000  # the time they were made


def test_a_forked_child_draws_random_bits_of_its_own() -> None:
    """A child forked with the parent's pool of random bytes would make the parent's ids."""
    ids.ordered("req_")  # the pool is filled
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(writer, ids._random())
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    theirs = os.read(reader, 64)
    os.close(reader)
    assert theirs != ids._random()
