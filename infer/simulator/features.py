"""The simulator's tools, JSON output and images: deterministic answers tests can predict.

What a chat request gets, first match wins:
- tools offered (tool_choice not "none") and the last message is the user's: a call of
  the first tool, or the one tool_choice names, with the minimal arguments its
  parameters schema allows (see `minimal`);
- the last message is a tool result: "The tool said: <result>.";
- response_format json_object (Ollama: format "json"): `{"answer":"simulated"}`;
  json_schema (Ollama: format holding the schema): the schema's minimal instance;
- images in the conversation: "I see N image(s).";
- otherwise the made-up text of models.py.
A model is a vision model when its name says so (`llava`, `vision`, or `vl`, as in
llama3.2-vision, llava and qwen2.5vl); /api/show then lists "vision" too. Each image
counts IMAGE_TOKENS prompt tokens; each tool definition the tokens of its JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from infer.simulator.models import Completion, count_prompt_tokens

IMAGE_TOKENS = 576  # as LLaVA 1.5's encoder: a 24 by 24 grid of patches
JSON_OBJECT = '{"answer":"simulated"}'
_PIECES = re.compile(r"\s*[\w.]+|\s*[^\w\s]|\s+")
_VISION = re.compile(r"llava|vision|vl\b|vl[:\d-]|-vl")


def is_vision_model(name: str) -> bool:
    return bool(_VISION.search(name.lower().rsplit("/", 1)[-1]))


def chat_capabilities(name: str) -> list[str]:
    return ["completion", "tools", "vision"] if is_vision_model(name) else ["completion", "tools"]


@dataclass(slots=True)
class Features:
    """What a chat request asks beyond text: tools, a response format, images."""

    tools: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    forced: str | None = None  # the tool tool_choice names
    tools_off: bool = False  # tool_choice "none"
    last_role: str = "user"
    last_content: str = ""
    json_format: Any = None  # "json", or a schema
    images: int = 0

    @property
    def prompt_tokens(self) -> int:
        tool_tokens = sum(
            count_prompt_tokens([json.dumps({"name": n, "parameters": p})]) for n, p in self.tools
        )
        return tool_tokens + self.images * IMAGE_TOKENS


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str

    @property
    def id(self) -> str:
        digest = hashlib.sha256(f"{self.name}\x00{self.arguments}".encode()).hexdigest()
        return f"call_{digest[:24]}"


@dataclass(frozen=True, slots=True)
class Planned:
    completion: Completion
    tool_call: ToolCall | None = None


def parse_tools(value: object) -> list[tuple[str, dict[str, Any]]]:
    tools: list[tuple[str, dict[str, Any]]] = []
    for item in value if isinstance(value, list) else []:
        function = item.get("function") if isinstance(item, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            tools.append((function["name"], parameters if isinstance(parameters, dict) else {}))
    return tools


def read_features(data: dict[str, Any], *, dialect: str) -> Features:
    """The features of an Ollama (`ollama`) or OpenAI (`openai`) chat request body."""
    features = Features(tools=parse_tools(data.get("tools")))
    messages = [m for m in data.get("messages") or [] if isinstance(m, dict)]
    if messages:
        features.last_role = str(messages[-1].get("role"))
        content = messages[-1].get("content")
        features.last_content = content if isinstance(content, str) else _text(content)
    for message in messages:
        if dialect == "ollama":
            images = message.get("images")
            features.images += len(images) if isinstance(images, list) else 0
        elif isinstance(message.get("content"), list):
            features.images += sum(
                1
                for part in message["content"]
                if isinstance(part, dict) and part.get("type") == "image_url"
            )
    if dialect == "ollama":
        features.json_format = data.get("format") or None
        return features
    choice = data.get("tool_choice")
    features.tools_off = choice == "none"
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        features.forced = choice["function"].get("name")
    form = data.get("response_format")
    if isinstance(form, dict) and form.get("type") == "json_object":
        features.json_format = "json"
    elif isinstance(form, dict) and form.get("type") == "json_schema":
        spec = form.get("json_schema")
        features.json_format = spec.get("schema") if isinstance(spec, dict) else None
    return features


def _text(content: object) -> str:
    if not isinstance(content, list):
        return ""
    return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))


def plan(features: Features, limit: int | None) -> Planned | None:
    """The answer the request's features call for; None for plain made-up text."""
    if features.tools and not features.tools_off and features.last_role == "user":
        name, parameters = next(
            ((n, p) for n, p in features.tools if n == features.forced), features.tools[0]
        )
        arguments = minimal(parameters or {"type": "object"}, parameters)
        call = ToolCall(name, json.dumps(arguments if isinstance(arguments, dict) else {}))
        pieces = split(call.arguments)
        if limit is not None and len(pieces) > limit:
            # Cut short, the call cannot be parsed: the model's raw text is the answer.
            return Planned(Completion(tuple(pieces[:limit]), "length"))
        return Planned(Completion(tuple(pieces), "tool_calls"), call)
    if features.last_role == "tool":
        text = f"The tool said: {features.last_content}."
    elif features.json_format == "json":
        text = JSON_OBJECT
    elif isinstance(features.json_format, dict):
        text = json.dumps(minimal(features.json_format, features.json_format))
    elif features.images:
        text = f"I see {features.images} image{'s' if features.images != 1 else ''}."
    else:
        return None
    pieces = split(text)
    if limit is not None and len(pieces) > limit:
        return Planned(Completion(tuple(pieces[:limit]), "length"))
    return Planned(Completion(tuple(pieces), "stop"))


def split(text: str) -> list[str]:
    """Text as tokens, each with the spaces before it; joined, they give the text back."""
    return _PIECES.findall(text) or [text]


def minimal(schema: Any, root: Any, depth: int = 0) -> Any:
    """The smallest instance of a JSON schema: required properties only, each with the
    first value its type, enum, const or bounds allow."""
    if not isinstance(schema, dict) or depth > 32:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key) if isinstance(target, dict) else None
        return minimal(target, root, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return minimal(schema[key][0], root, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else None)
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {
            name: minimal(properties.get(name, {}), root, depth + 1)
            for name in schema.get("required") or []
        }
    if kind == "array":
        count = schema.get("minItems", 0)
        return [minimal(schema.get("items", {}), root, depth + 1) for _ in range(count)]
    if kind == "string":
        low, high = schema.get("minLength", 1), schema.get("maxLength", 8)
        return "a" * min(max(low, 1), high)
    if kind in ("integer", "number"):
        value = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        value = min(value, schema.get("maximum", value))
        return int(value) if kind == "integer" else value
    if kind == "boolean":
        return False
    return None
