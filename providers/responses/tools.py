"""A Responses request's tools as Chat Completions tools, and the names to map calls back by.

- ``function`` tools become chat function tools (``name``, ``description``, ``parameters``,
  ``strict``), ``strict`` only when the client set it.
- ``namespace`` tools become one chat function per nested tool, named ``<namespace>__<name>``;
  a call comes back as a ``function_call`` (or ``custom_tool_call``) with ``name`` and
  ``namespace`` apart, as the Responses API shows calls of namespaced tools.
- ``custom`` tools (free-form text input, optionally a grammar) become a chat function with one
  string parameter ``input``; a call comes back as a ``custom_tool_call`` carrying that text.
- Hosted tools (``web_search``, ``file_search``, ``mcp``, ``code_interpreter``... any other type)
  are left out, their types listed in ``dropped``, unless ``tool_choice`` requires one: then the
  request is a 400 naming it.

Chat function names must match ``^[a-zA-Z0-9_-]{1,64}$``. A name that does not (a long
namespaced one) is cleaned and shortened with a hash of the whole name; ``ToolNames`` remembers
every chat name so that calls come back under the names the client declared.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from providers.errors import InvalidRequest
from providers.responses.checks import (
    invalid,
    kind_of,
    list_of,
    name_of,
    object_of,
    optional_bool,
    optional_object,
    optional_text,
)

CHAT_NAME_LIMIT = 64
_NOT_IN_CHAT_NAMES = re.compile(r"[^a-zA-Z0-9_-]")
_CLIENT_TOOLS = ("function", "custom")


@dataclass(frozen=True, slots=True)
class ToolName:
    """A tool as the client declared it."""

    name: str
    namespace: str | None = None
    custom: bool = False


def chat_name(name: str, namespace: str | None = None) -> str:
    """The chat function name for a declared tool: ``<namespace>__<name>`` for a namespaced
    one; cleaned to the allowed characters and shortened to 64 with a hash of the whole name
    when it does not fit as it is. The same declared name always gives the same chat name, so
    calls in earlier turns are named as the tools of this one."""
    whole = f"{namespace}__{name}" if namespace else name
    cleaned = _NOT_IN_CHAT_NAMES.sub("_", whole)
    if cleaned == whole and len(whole) <= CHAT_NAME_LIMIT:
        return whole
    digest = hashlib.sha256(whole.encode()).hexdigest()[:8]
    return f"{cleaned[: CHAT_NAME_LIMIT - 9]}_{digest}"


@dataclass(slots=True)
class ToolNames:
    """Chat function name -> the tool the client declared, for mapping calls back."""

    by_chat_name: dict[str, ToolName] = field(default_factory=dict)

    def declared(self, chat_function_name: str) -> ToolName:
        """The declared tool for a chat call's function name; a name the model made up comes
        back as a function of that name."""
        return self.by_chat_name.get(chat_function_name) or ToolName(chat_function_name)

    def chat_name_for(self, name: str, *, custom: bool, param: str) -> str:
        """The chat name of the function or custom tool ``name`` (``tool_choice``): a top-level
        tool of that name, else the one namespaced tool of that name."""
        found = [
            chat
            for chat, tool in self.by_chat_name.items()
            if tool.name == name and tool.custom == custom
        ]
        top_level = [chat for chat in found if self.by_chat_name[chat].namespace is None]
        if top_level or len(found) == 1:
            return (top_level or found)[0]
        kind = "custom tool" if custom else "function"
        where = "is in several namespaces" if found else "is not in 'tools'"
        raise invalid(f"'{param}' names the {kind} '{name}', which {where}.", param)


@dataclass(slots=True)
class ChatTools:
    """What a request's ``tools``, ``tool_choice`` and ``parallel_tool_calls`` become."""

    fields: dict[str, Any]
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` of the chat request, if any."""
    names: ToolNames
    dropped: list[str]
    """The types of the hosted tools left out, each once, in order."""


def chat_tools(body: dict[str, Any]) -> ChatTools:
    """The chat ``tools``, ``tool_choice`` and ``parallel_tool_calls`` for a Responses request,
    the names to map calls back by, and the hosted tools left out."""
    names = ToolNames()
    tools: list[dict[str, Any]] = []
    dropped: list[str] = []
    declared = body.get("tools")
    for i, tool in enumerate(list_of(declared, "tools") if declared is not None else ()):
        where = f"tools[{i}]"
        kind = kind_of(tool, where)
        if kind == "namespace":
            tools += _namespace(tool, where, names)
        elif kind in _CLIENT_TOOLS:
            tools.append(_function(tool, where, names, None))
        elif kind not in dropped:
            dropped.append(kind)
    tools, choice = _tool_choice(body.get("tool_choice"), tools, names, dropped)
    parallel = optional_bool(body.get("parallel_tool_calls"), "parallel_tool_calls")
    if not tools:
        return ChatTools({}, names, dropped)  # tool_choice and parallel calls mean nothing
    fields: dict[str, Any] = {"tools": tools}
    if choice is not None:
        fields["tool_choice"] = choice
    if parallel is not None:
        fields["parallel_tool_calls"] = parallel
    return ChatTools(fields, names, dropped)


def _namespace(tool: dict[str, Any], where: str, names: ToolNames) -> list[dict[str, Any]]:
    namespace = name_of(tool.get("name"), f"{where}.name")
    nested = list_of(tool.get("tools"), f"{where}.tools")
    functions = []
    for j, inner in enumerate(nested):
        inner_where = f"{where}.tools[{j}]"
        if kind_of(inner, inner_where) not in _CLIENT_TOOLS:
            raise invalid(
                "A namespace can hold only function and custom tools.", f"{inner_where}.type"
            )
        functions.append(_function(inner, inner_where, names, namespace))
    return functions


def _function(
    tool: dict[str, Any], where: str, names: ToolNames, namespace: str | None
) -> dict[str, Any]:
    """A function or custom tool as a chat function tool, its name recorded in ``names``."""
    name = name_of(tool.get("name"), f"{where}.name")
    custom = tool["type"] == "custom"
    chat = chat_name(name, namespace)
    if chat in names.by_chat_name:
        raise invalid(f"The tool name '{chat}' is declared twice.", f"{where}.name")
    names.by_chat_name[chat] = ToolName(name, namespace, custom)
    function: dict[str, Any] = {"name": chat}
    description = optional_text(tool.get("description"), f"{where}.description")
    if description:
        function["description"] = description
    if custom:
        function["parameters"] = _custom_parameters(tool.get("format"), f"{where}.format")
        return {"type": "function", "function": function}
    parameters = optional_object(tool.get("parameters"), f"{where}.parameters")
    if parameters is not None:
        function["parameters"] = parameters
    strict = optional_bool(tool.get("strict"), f"{where}.strict")
    if strict is not None:
        function["strict"] = strict
    return {"type": "function", "function": function}


def _custom_parameters(text_format: Any, where: str) -> dict[str, Any]:
    """The one string parameter ``input`` that carries a custom tool's text; a grammar, which
    chat functions cannot enforce, is given to the model in the parameter's description."""
    description = "The tool's input, as free-form text."
    text_format = optional_object(text_format, where) or {"type": "text"}
    if text_format.get("type") == "grammar":
        syntax = name_of(text_format.get("syntax"), f"{where}.syntax")
        definition = name_of(text_format.get("definition"), f"{where}.definition")
        description = f"The tool's input, text that matches this {syntax} grammar:\n{definition}"
    elif text_format.get("type") != "text":
        raise invalid("A custom tool's format must be 'text' or 'grammar'.", f"{where}.type")
    return {
        "type": "object",
        "properties": {"input": {"type": "string", "description": description}},
        "required": ["input"],
        "additionalProperties": False,
    }


def _tool_choice(
    choice: Any, tools: list[dict[str, Any]], names: ToolNames, dropped: list[str]
) -> tuple[list[dict[str, Any]], Any]:
    """The chat tools and ``tool_choice`` for a Responses ``tool_choice``. ``allowed_tools``
    narrows the tools sent rather than using chat's own ``allowed_tools``, which few
    OpenAI-compatible servers know."""
    if choice is None or choice in ("auto", "none"):
        return tools, choice
    if choice == "required":
        return tools, _required(tools, dropped)
    kind = kind_of(choice, "tool_choice") if not isinstance(choice, str) else None
    if kind in _CLIENT_TOOLS:
        name = name_of(choice.get("name"), "tool_choice.name")
        chat = names.chat_name_for(name, custom=kind == "custom", param="tool_choice")
        return tools, {"type": "function", "function": {"name": chat}}
    if kind == "allowed_tools":
        return _allowed_tools(choice, tools, names, dropped)
    if kind is None:
        raise invalid(
            "'tool_choice' must be 'auto', 'none', 'required' or an object.", "tool_choice"
        )
    raise _hosted_required(kind)


def _required(tools: list[dict[str, Any]], dropped: list[str]) -> str:
    if tools:
        return "required"
    if dropped:
        raise _hosted_required(dropped[0])
    raise invalid("'tool_choice' is 'required' but the request has no tools.", "tool_choice")


def _hosted_required(kind: str) -> InvalidRequest:
    return invalid(
        f"'tool_choice' requires the hosted tool '{kind}', which this model cannot use: "
        "only function, custom and namespace tools reach it.",
        "tool_choice",
    )


def _allowed_tools(
    choice: dict[str, Any], tools: list[dict[str, Any]], names: ToolNames, dropped: list[str]
) -> tuple[list[dict[str, Any]], str]:
    mode = choice.get("mode")
    if mode not in ("auto", "required"):
        raise invalid("'tool_choice.mode' must be 'auto' or 'required'.", "tool_choice.mode")
    allowed: set[str] = set()
    hosted: list[str] = []
    for i, entry in enumerate(list_of(choice.get("tools"), "tool_choice.tools")):
        where = f"tool_choice.tools[{i}]"
        kind = kind_of(entry, where)
        name = object_of(entry, where).get("name")
        if kind == "namespace":
            namespace = name_of(name, f"{where}.name")
            allowed.update(c for c, t in names.by_chat_name.items() if t.namespace == namespace)
        elif kind in _CLIENT_TOOLS:
            name = name_of(name, f"{where}.name")
            allowed.add(names.chat_name_for(name, custom=kind == "custom", param=where))
        else:
            hosted.append(kind)
    narrowed = [tool for tool in tools if tool["function"]["name"] in allowed]
    if mode == "required":
        return narrowed, _required(narrowed, hosted or dropped)
    return narrowed, mode
