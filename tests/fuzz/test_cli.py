"""Fuzzing CLI JSON input: `parse_payload` and the real `relaybus publish AGENT JSON` (and
`approve RUN --data JSON`) either accept the input or exit non-zero with one line on stderr —
never a traceback, and never a NaN silently turned into null."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from relaybus.agents.submit import parse_payload
from relaybus.bus import Bus, RelayError, Settings

from ..conftest import ROOT, child_env
from .hostile import DEEP_JSON, DEEP_JSON_OBJECT, PURE, bad_names, json_values

Arg = str | bytes

HOSTILE_JSON: list[Arg] = [
    "",
    "{",
    '{"x": ',
    "NaN",
    "[Infinity]",
    '{"x": -Infinity}',
    "[1e400]",
    "-1e999",
    "1" * 5000,
    "[" + "9" * 4001 + "]",
    DEEP_JSON.decode(),
    DEEP_JSON_OBJECT.decode(),
    '"\\ud800"',  # an escaped lone surrogate
    '"\x00"',
    '"a\x1fb"',
    "\x07",
    "{} {}",
    "'single'",
    b"\xff\xfe{}",  # not UTF-8 at all
    b'{"x": "\xc3\x28"}',  # an invalid UTF-8 sequence inside a string
]


def check_refusal(text: str) -> None:
    with pytest.raises(RelayError) as caught:
        parse_payload(text)
    message = str(caught.value)
    assert message.startswith("the task is not valid JSON"), message
    assert "\n" not in message and len(message) < 300


@PURE
@given(st.text(max_size=200))
@example(DEEP_JSON.decode())  # regression: RecursionError escaped
@example(DEEP_JSON_OBJECT.decode())
@example("1" * 5000)  # regression: ValueError (int digits limit) escaped
@example('"\\ud800"')  # regression: UnicodeEncodeError escaped
@example("\udcff")  # what Python makes of a non-UTF-8 argv byte
@example("NaN")  # regression: became null
@example("[1e400]")  # regression: became [null]
def test_parse_payload_returns_json_or_refuses_in_one_line(text: str) -> None:
    try:
        data = parse_payload(text)
    except RelayError as exc:
        assert str(exc).startswith("the task is not valid JSON") and "\n" not in str(exc)
        return
    assert msgspec.json.decode(data) == json.loads(text)  # what every agent's decoder reads


@PURE
@given(json_values)
def test_any_json_value_round_trips(value: object) -> None:
    assert msgspec.json.decode(parse_payload(json.dumps(value))) == value


@pytest.mark.parametrize("text", [t for t in HOSTILE_JSON if isinstance(t, str)])
def test_hostile_json_text_is_refused(text: str) -> None:
    check_refusal(text)


@PURE
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_numbers_json_cannot_carry_are_refused_not_nulled(number: float) -> None:
    text = json.dumps({"x": number})  # json.dumps writes NaN/Infinity/1e309 as bare words
    if math.isfinite(number):
        assert msgspec.json.decode(parse_payload(text)) == {"x": number}
    else:
        check_refusal(text)


# -- the real command ----------------------------------------------------------------------------


def run_all(
    settings: Settings, argvs: Sequence[Sequence[Arg]]
) -> list[subprocess.CompletedProcess[bytes]]:
    """Run `relaybus ARGV…` for every argv at once (each a real process), in order."""
    env = child_env(settings)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for argv in argvs:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "relaybus.cli", *argv],
                    env=env,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
            )
        done = []
        for argv, proc in zip(argvs, procs, strict=True):
            out, err = proc.communicate(timeout=60)
            done.append(subprocess.CompletedProcess(list(argv), proc.returncode, out, err))
        return done
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def assert_clean_outcome(result: subprocess.CompletedProcess[bytes], must_fail: bool) -> None:
    err = result.stderr.decode(errors="replace")
    shown = f"{result.args!r:.200}: rc={result.returncode} stderr={err[:500]!r}"
    assert "Traceback" not in err, shown
    if result.returncode == 0 and not must_fail:
        assert len(result.stdout.strip()) == 26, shown  # the run id of the accepted task
        return
    assert result.returncode == 1, shown
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown


async def test_publish_refuses_hostile_json_and_agent_names_in_one_line(
    settings: Settings, bus: Bus
) -> None:
    # Every kind of hostile text once (parse_payload is fuzzed in-process above).
    texts: list[Arg] = ["NaN", "1" * 5000, DEEP_JSON.decode(), '"\\ud800"', b"\xff\xfe{}"]
    argvs: list[list[Arg]] = [["publish", "--", "echo", text] for text in texts]
    argvs += [["publish", "--", name, "{}"] for name in ["*", "echo.>", "a b"]]
    argvs += [["publish", b"\xff", "{}"]]
    argvs += [
        ["approve", "RUN1", "--data", "NaN"],
        ["approve", "a.*", "--data", "true"],
    ]
    for result in run_all(settings, argvs):
        assert_clean_outcome(result, must_fail=True)


argv_json = st.one_of(
    st.sampled_from(HOSTILE_JSON),
    json_values.map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=30).filter(lambda b: b"\x00" not in b),
)


@hypothesis_settings(
    max_examples=2,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # shrinking subprocess runs takes minutes
)
@given(
    st.lists(
        st.tuples(
            st.one_of(bad_names.filter(lambda s: "\x00" not in s), st.just("fuzz-sink")), argv_json
        ),
        min_size=6,
        max_size=6,
    )
)
async def test_publish_never_prints_a_traceback(
    settings: Settings, bus: Bus, cases: list[tuple[str, Arg]]
) -> None:
    # `--`: argparse would read a leading '-' (`-1e999`) as an option and print its usage
    argvs = [["publish", "--", name, text] for name, text in cases if b"\x00" not in _raw(text)]
    for result in run_all(settings, argvs):
        assert_clean_outcome(result, must_fail=False)


def _raw(arg: Arg) -> bytes:
    return arg if isinstance(arg, bytes) else arg.encode(errors="surrogateescape")
