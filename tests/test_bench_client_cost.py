"""bench/client_cost.py: each client it counts makes the same round trip to the fake upstream."""

from __future__ import annotations

import orjson
import pytest
import uvloop

from bench.client_cost import LAYERS, round_trips


@pytest.mark.parametrize("layer", LAYERS)
def test_each_client_gets_the_upstreams_answer_again_and_again(
    fake_upstream: str, layer: str
) -> None:
    answers = uvloop.run(round_trips(layer, fake_upstream, 3))
    assert len(answers) == 3
    for answer in answers:
        completion = orjson.loads(answer)
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["message"]["content"]
