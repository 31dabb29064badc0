"""Fuzzing what a model endpoint sends back: a reply that is not a chat completion is an
UpstreamFailed (never another exception, never a ChatResult with wrongly typed fields that a
replay could not decode), and hostile tool calls in a reply are refused as ToolCalls."""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgspec
from hypothesis import example, given
from hypothesis import strategies as st

from relaybus.agents.llm.client import ChatResult, LLMClient
from relaybus.agents.llm.tools import ToolCall, _run_call
from relaybus.bus import Settings, UpstreamFailed

from .hostile import DEEP_JSON, DEEP_JSON_OBJECT, PURE, json_values

any_json = st.one_of(json_values, st.integers(), st.text(max_size=10))
completion = st.fixed_dictionaries(
    {},
    optional={
        "model": any_json,
        "usage": st.one_of(
            any_json,
            st.fixed_dictionaries(
                {}, optional={"prompt_tokens": any_json, "completion_tokens": any_json}
            ),
        ),
        "choices": st.one_of(
            any_json,
            st.lists(
                st.one_of(
                    any_json,
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "finish_reason": any_json,
                            "message": st.one_of(
                                any_json,
                                st.fixed_dictionaries(
                                    {},
                                    optional={
                                        "content": any_json,
                                        "tool_calls": st.one_of(any_json, st.lists(any_json)),
                                    },
                                ),
                            ),
                        },
                    ),
                ),
                max_size=2,
            ),
        ),
    },
).map(msgspec.json.encode)
replies = st.one_of(
    completion,
    st.binary(max_size=100),
    json_values.map(msgspec.json.encode),
    st.sampled_from([b"", b"{", DEEP_JSON, DEEP_JSON_OBJECT]),
)


REPLY: list[bytes] = [b""]
CLIENT = LLMClient(Settings.from_env({}, llm_base_url="http://model.invalid/v1"))
# one client for every example: the endpoint answers with whatever REPLY holds
CLIENT._http = httpx.AsyncClient(
    transport=httpx.MockTransport(lambda request: httpx.Response(200, content=REPLY[0]))
)


async def post(reply: bytes) -> ChatResult:
    """What the client makes of `reply` (HTTP 200) to one chat request."""
    REPLY[0] = reply
    return await CLIENT._post({"model": "m", "messages": []})


@PURE
@given(replies)
@example(b'{"choices": ["text"]}')  # regression: AttributeError escaped
@example(b'{"choices": [{"message": "text"}]}')
@example(b'{"choices": [{"message": {"content": 5}}]}')  # regression: a ChatResult no replay reads
@example(b'{"choices": [{"message": {"tool_calls": ["x"]}}]}')
@example(b'{"choices": [{}], "usage": {"prompt_tokens": "many"}}')
@example(DEEP_JSON_OBJECT)  # regression: RecursionError escaped
async def test_a_reply_is_a_well_typed_chat_result_or_upstream_failed(reply: bytes) -> None:
    try:
        result = await post(reply)
    except UpstreamFailed as exc:
        assert "not a chat completion" in str(exc)
        return
    # what ctx.llm journals must decode again on a replay
    assert msgspec.json.decode(msgspec.json.encode(result), type=ChatResult) == result


tool_call = st.one_of(
    any_json,
    st.fixed_dictionaries(
        {},
        optional={
            "id": any_json,
            "function": st.one_of(
                any_json,
                st.fixed_dictionaries(
                    {},
                    optional={
                        "name": any_json,
                        "arguments": st.one_of(
                            any_json,
                            json_values.map(json.dumps),
                            st.sampled_from(
                                [DEEP_JSON.decode(), "1" * 5000, "NaN", "[1e400]", "{"]
                            ),
                        ),
                    },
                ),
            ),
        },
    ),
)


@PURE
@given(tool_call)
@example({"function": {"name": "spy", "arguments": DEEP_JSON.decode()}})  # regression
@example("not a call")  # regression: AttributeError on a tool call that is no object
@example({"function": {"name": "spy", "arguments": {"already": "parsed"}}})
async def test_a_hostile_tool_call_is_refused_as_a_tool_call(raw: Any) -> None:
    call = await _run_call(None, {}, raw)  # type: ignore[arg-type]  # no tool: ctx is never used
    assert isinstance(call, ToolCall) and not call.ok and call.error
