"""A request body's pydantic validation error as the BadInput naming its field."""

from __future__ import annotations

from pydantic import ValidationError

from infer.errors import BadInput


def refusal(exc: ValidationError) -> BadInput:
    """The first error of `exc` as a 400 naming its `param`: the top-level field (None
    for the body itself), as OpenAI names it."""
    error = exc.errors()[0]
    location = str(error["loc"][0]) if error["loc"] else None
    if error["type"] == "json_invalid":
        return BadInput("the request body is not valid JSON")
    if location is None:
        return BadInput("the request body must be a JSON object")
    if error["type"] == "missing":
        return BadInput(f"missing required parameter: {location}", param=location)
    message = str(error["msg"]).removeprefix("Value error, ")
    return BadInput(f"invalid value for {location}: {message}", param=location)
