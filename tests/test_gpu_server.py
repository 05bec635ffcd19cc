"""bench/gpu_server.py's cost model: steps, slots, prefill, the prefix cache, lengths and usage (no HTTP, fast clock)."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench.gpu_server import GPUSimulator, SimServer, full_batch_rate, message_tokens

A, B, C = 0.01, 0.001, 0.0001


def _server(tmp_path, max_active=2, lengths=None, **options):
    path = tmp_path / "lengths.json"
    path.write_text(json.dumps({"lengths": lengths or {"draft": [10], "critique": [4], "revision": [7]}}))
    return SimServer(max_active, lengths=path, a=A, b=B, c=C, time_scale=0.001, **options)


async def _serve(server, requests):
    loop_task = asyncio.get_running_loop().create_task(server.sim.run())
    try:
        return await asyncio.gather(*(server.chat(r) for r in requests))
    finally:
        loop_task.cancel()


def _draft(i, max_tokens=256):
    return {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": max_tokens, "seed": i}


def test_usage_and_reply_length_follow_the_drawn_length_capped_by_max_tokens(tmp_path):
    server = _server(tmp_path)
    short, capped = asyncio.run(_serve(server, [_draft(1), _draft(2, max_tokens=6)]))
    assert short["usage"]["completion_tokens"] == 10 and short["choices"][0]["finish_reason"] == "stop"
    assert len(short["choices"][0]["message"]["content"].split()) == 10
    assert capped["usage"]["completion_tokens"] == 6 and capped["choices"][0]["finish_reason"] == "length"
    prompt = message_tokens({"content": "question 1"})
    assert short["usage"]["prompt_tokens"] == prompt and short["usage"]["total_tokens"] == prompt + 10


def test_slots_steps_and_costs(tmp_path):
    # S = 2, three 10-token drafts: two run for 10 steps, the third waits for a slot and runs 10 more.
    server = _server(tmp_path)
    asyncio.run(_serve(server, [_draft(i) for i in range(3)]))
    stats = server.sim.summary()
    assert stats["steps"] == 20
    p = message_tokens({"content": "question 0"})
    assert stats["prefill_tokens"] == 3 * p
    first, second = 10 * (A + 2 * B) + C * 2 * p, 10 * (A + B) + C * p  # the third is admitted in step 11
    assert stats["busy_s"] == pytest.approx(first + second)
    assert stats["mean_active_while_busy"] == pytest.approx((2 * first + second) / (first + second))
    assert stats["ideal_s"] == pytest.approx(30 / full_batch_rate(A, B, 2) + C * 3 * p)
    assert stats["by_step"]["draft"] == {"requests": 3, "output_tokens": 30}


def test_steps_are_told_apart_by_the_constitution_requests_and_the_prefix_cache_charges_only_new_turns(tmp_path):
    from constitution.loader import load_constitution

    principle = load_constitution("principles.yaml").principles[0]
    server = _server(tmp_path)
    draft_request = _draft(1)

    async def chain():
        loop_task = asyncio.get_running_loop().create_task(server.sim.run())
        try:
            draft = await server.chat(draft_request)
            messages = draft_request["messages"] + [draft["choices"][0]["message"],
                                                    {"role": "user", "content": principle.critique_request}]
            before = server.sim.stats["prefill_tokens"]
            critique = await server.chat({**draft_request, "messages": messages})
            charged = server.sim.stats["prefill_tokens"] - before
            messages = messages + [critique["choices"][0]["message"],
                                   {"role": "user", "content": principle.revision_request}]
            revision = await server.chat({**draft_request, "messages": messages})
            return critique, revision, charged
        finally:
            loop_task.cancel()

    critique, revision, charged = asyncio.run(chain())
    assert critique["usage"]["completion_tokens"] == 4
    assert revision["usage"]["completion_tokens"] == 7
    assert charged == message_tokens({"content": principle.critique_request})  # prompt and draft were cached
    assert server.sim.stats["by_step"]["revision"]["requests"] == 1


def test_zero_latency_answers_at_once():
    server = SimServer(zero_latency=True)
    reply = asyncio.run(server.chat(_draft(1)))
    assert reply["usage"]["completion_tokens"] == 6 and server.served["requests"] == 1


def test_simulated_time_tracks_wall_time(tmp_path):
    server = GPUSimulator(4, a=0.01, b=0.0, c=0.0, time_scale=1.0)

    async def one():
        loop_task = asyncio.get_running_loop().create_task(server.run())
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await server.submit([1], [1], 20, "draft")
            return loop.time() - started
        finally:
            loop_task.cancel()

    assert asyncio.run(one()) == pytest.approx(0.2, abs=0.05)
