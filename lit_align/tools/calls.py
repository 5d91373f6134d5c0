"""Tool calls: the tools' schemas, the calls found in a completion, and running one call within its limits.

The call format is the Hermes / Qwen / SmolLM3 one, which most tool-calling chat templates use: a JSON object with
the tool's ``name`` and its ``arguments`` between ``<tool_call>`` and ``</tool_call>``. A tool is a plain Python
function (or an environment's bound method) with type hints and a Google-style docstring; its JSON schema is
transformers' ``get_json_schema``, the schema a chat template's ``tools=`` renders. Nothing in a completion is ever
evaluated: a call names a tool the config listed, with JSON arguments bound to its signature.

A call that cannot be parsed, names no known tool, binds badly, raises, or outlives ``timeout`` is a FAILED call:
it is counted (``tools/failure_frequency``) and its error goes back to the model as the tool's message. A result
longer than ``max_result_chars`` is cut to that length with a note saying how much was cut.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lit_align.errors import OptionError

CALL_PATTERN = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
OPEN_TAG, CLOSE_TAG = "<tool_call>", "</tool_call>"


@dataclass
class ToolCall:
    """One call found in a completion: the tool's ``name`` and ``arguments``, or why it could not be read."""

    name: str
    arguments: dict[str, Any]
    error: str | None = None  # set when the call could not be parsed (then it fails without running)


@dataclass
class ToolResult:
    """What a call gave: the message content the model sees, whether it failed, and whether it was cut."""

    name: str
    content: str
    failed: bool
    truncated: bool = False


def tool_name(tool: Callable) -> str:
    return getattr(tool, "__name__", type(tool).__name__)


def tool_schema(tool: Callable) -> dict[str, Any]:
    """The JSON schema of ``tool`` as chat templates take it (transformers' ``get_json_schema``): its name, the
    docstring's description and each argument's type and description. Raises ``ValueError`` naming the tool when
    its hints or docstring do not give one."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(tool)
    except Exception as err:  # transformers raises its own TypeError / DocstringParsingException
        raise OptionError(
            f"tool {tool_name(tool)!r}: no JSON schema for it ({type(err).__name__}: {err}); a tool needs a type "
            "hint on every argument and a Google-style docstring with a description and an 'Args:' entry for each"
        ) from err


def parse_tool_calls(text: str) -> list[ToolCall]:
    """The calls in one assistant turn, in order. A block whose JSON is not ``{"name": str, "arguments": {...}}``
    (``arguments`` may also be a JSON string of an object), or an opening tag left unclosed, is a call with its
    ``error`` set."""
    calls = []
    for body in CALL_PATTERN.findall(text):
        calls.append(_parse_call(body.strip()))
    rest = CALL_PATTERN.sub("", text)
    if OPEN_TAG in rest:
        calls.append(ToolCall("", {}, f"a {OPEN_TAG} without its {CLOSE_TAG}"))
    return calls


def _parse_call(body: str) -> ToolCall:
    try:
        call = json.loads(body)
    except json.JSONDecodeError as err:
        return ToolCall("", {}, f"the tool call is not valid JSON ({err.msg} at character {err.pos})")
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return ToolCall("", {}, 'a tool call must be a JSON object {"name": "<tool>", "arguments": {...}}')
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    if not isinstance(arguments, dict):
        return ToolCall(call["name"], {}, f"the arguments of {call['name']!r} must be a JSON object")
    return ToolCall(call["name"], arguments)


class ToolTimeout(Exception):
    """A tool call ran past its time limit."""


def run_tool_call(
    call: ToolCall, tools: dict[str, Callable], timeout: float, max_result_chars: int
) -> ToolResult:
    """Run ``call`` against ``tools`` (name -> callable) within ``timeout`` seconds; never raises for the tool's
    faults: they come back as a failed :class:`ToolResult` whose content is the error the model reads."""
    if call.error is not None:
        return ToolResult(call.name or "unknown", f"Error: {call.error}", failed=True)
    tool = tools.get(call.name)
    if tool is None:
        known = ", ".join(sorted(tools)) or "none"
        return ToolResult(call.name, f"Error: unknown tool {call.name!r}; the tools are: {known}", failed=True)
    try:
        inspect.signature(tool).bind(**call.arguments)
    except TypeError as err:
        return ToolResult(call.name, f"Error: bad arguments for {call.name}: {err}", failed=True)
    except ValueError:  # no introspectable signature: the call itself decides
        pass
    try:
        value = _call_with_timeout(tool, call.arguments, timeout)
    except ToolTimeout:
        return ToolResult(call.name, f"Error: {call.name} did not finish within {timeout:g} s", failed=True)
    except Exception as err:  # the tool's own failure is the model's feedback, never a crash of the run
        return ToolResult(call.name, f"Error: {type(err).__name__}: {err}", failed=True)
    content = _as_text(value)
    if len(content) > max_result_chars:
        cut = len(content) - max_result_chars
        return ToolResult(call.name, f"{content[:max_result_chars]}... [{cut} more characters cut]", False, True)
    return ToolResult(call.name, content, failed=False)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple | int | float | bool) or value is None:
        try:
            return json.dumps(value, default=str)
        except (TypeError, ValueError):
            pass
    return str(value)


def _call_with_timeout(tool: Callable, arguments: dict[str, Any], timeout: float) -> Any:
    """``tool(**arguments)``, stopped after ``timeout`` seconds: coroutines by ``asyncio.wait_for``; on the main
    thread of Unix by SIGALRM (interrupts Python code and sleeps); elsewhere by waiting on a worker thread, which is
    abandoned (a daemon) when it overruns."""
    if inspect.iscoroutinefunction(tool):
        try:
            return asyncio.run(asyncio.wait_for(tool(**arguments), timeout))
        except TimeoutError as err:
            raise ToolTimeout from err
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def expire(signum: int, frame: Any) -> None:
            raise ToolTimeout

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            return tool(**arguments)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = tool(**arguments)
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ToolTimeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def tools_by_name(tools: Sequence[Callable], where: str) -> dict[str, Callable]:
    """``{name: tool}``, refusing two tools of one name (the model could not tell them apart)."""
    named: dict[str, Callable] = {}
    for tool in tools:
        name = tool_name(tool)
        if name in named:
            raise OptionError(f"{where}: two tools are named {name!r}; a call names its tool, so names must differ")
        named[name] = tool
    return named
