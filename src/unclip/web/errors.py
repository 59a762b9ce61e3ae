"""Error answers that always serialise: a bad request is a 4xx with a JSON ``detail``, never a 500.

FastAPI echoes each invalid value back in its 422 body (``input``). A JSON ``NaN``, ``Infinity`` or ``1e309``
(float overflow) or a lone surrogate (``"\\ud800"``) cannot be written as strict UTF-8 JSON, so the default
handler failed and the client got a 500. :func:`validation_error_handler` makes every value JSON-safe (and short)
and rewrites the vague messages; :func:`http_error_handler` turns the bare "There was an error parsing the body"
400 (nesting too deep, a number with thousands of digits, a body that is not UTF-8) into a 422 that says why.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from itertools import islice
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

MAX_ECHO_CHARS = 200
"""Longest string echoed back in an error's ``input``."""
MAX_MESSAGE_CHARS = 1000
MAX_ECHO_ITEMS = 20
MAX_ECHO_DEPTH = 4
PARSE_ERROR = "There was an error parsing the body"
_FLOAT_NAMES = {"nan": "NaN", "inf": "Infinity (or a number too large for a float)", "-inf": "-Infinity"}


def safe_text(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text`` as valid UTF-8 (lone surrogates written as ``\\udxxx``), cut to ``limit`` characters."""
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as strict JSON can hold it: non-finite floats as strings, texts valid and short, containers cut."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if value.bit_length() <= 256 else f"<an integer of {len(str(abs(value)))} digits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # 'nan', 'inf', '-inf'
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, BaseException):
        return safe_text(str(value), MAX_MESSAGE_CHARS)
    if depth >= MAX_ECHO_DEPTH:
        return "…"
    if isinstance(value, dict):
        return {safe_text(str(k)): json_safe(v, depth + 1) for k, v in islice(value.items(), MAX_ECHO_ITEMS)}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, depth + 1) for v in value[:MAX_ECHO_ITEMS]]
    return safe_text(repr(value))


def _surrogate_message(value: Any, loc: Sequence[Any]) -> str | None:
    """'prompt is not valid Unicode text: ...' for a string with a lone surrogate (else None)."""
    if not isinstance(value, str):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "the text")
        bad = value[err.start].encode("utf-8", "backslashreplace").decode("ascii")
        return (f"{name} is not valid Unicode text: a lone surrogate {bad} at character {err.start} "
                "(UTF-16 surrogates come in pairs)")  # fmt: skip
    return None


def clean_error(error: dict[str, Any]) -> dict[str, Any]:
    """One validation error made JSON-safe, with a message that says what is wrong."""
    loc = [p if isinstance(p, int) else safe_text(str(p)) for p in error.get("loc", ())]
    out: dict[str, Any] = {"type": str(error.get("type", "value_error")), "loc": loc,
                           "msg": safe_text(str(error.get("msg", "invalid value")), MAX_MESSAGE_CHARS)}  # fmt: skip
    if out["type"] == "string_unicode":
        out["msg"] = _surrogate_message(error.get("input"), loc) or out["msg"]
    elif out["type"] == "finite_number" and isinstance(error.get("input"), float):
        name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "the value")
        out["msg"] = f"{name} must be a finite number, got {_FLOAT_NAMES.get(repr(error['input']), error['input'])}"
    elif out["type"] == "json_invalid" and isinstance(error.get("ctx"), dict) and "error" in error["ctx"]:
        where = f" (at character {loc[1]})" if len(loc) > 1 and isinstance(loc[1], int) else ""
        out["msg"] = f"the request body is not valid JSON: {safe_text(str(error['ctx']['error']))}{where}"
    if "input" in error:
        out["input"] = json_safe(error["input"])
    if isinstance(error.get("ctx"), dict):
        out["ctx"] = json_safe(error["ctx"])
    return out


def error_response(errors: Sequence[dict[str, Any]], status_code: int = 422) -> JSONResponse:
    """``{"detail": [...]}`` of cleaned errors; inputs are dropped should anything still not serialise."""
    detail = [clean_error(e) for e in errors]
    try:
        json.dumps(detail, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError):
        detail = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in detail]
    return JSONResponse({"detail": detail}, status_code=status_code)


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field, whatever the value was (NaN, Infinity, lone surrogates ...)."""
    return error_response(exc.errors())


def _parse_failure(cause: BaseException) -> str:
    """Why a body could not be parsed, in words."""
    if isinstance(cause, RecursionError):
        return "the request body is nested too deeply to parse"
    if isinstance(cause, UnicodeDecodeError):
        return f"the request body is not UTF-8 text: {cause.reason} at byte {cause.start}"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        limit = sys.get_int_max_str_digits()
        return f"a number in the request body has more than {limit} digits"
    return f"the request body could not be parsed: {safe_text(str(cause)) or type(cause).__name__}"


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's handler, except that a body that failed to parse is a 422 saying why, and that a detail which
    would not serialise is made JSON-safe."""
    cause = exc.__cause__
    if exc.status_code == 400 and exc.detail == PARSE_ERROR and cause is not None:
        return error_response([{"type": "body_invalid", "loc": ["body"], "msg": _parse_failure(cause)}])
    try:
        json.dumps(exc.detail, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError):
        exc = StarletteHTTPException(exc.status_code, json_safe(exc.detail), getattr(exc, "headers", None))
    return await http_exception_handler(request, exc)


def install(app: FastAPI) -> None:
    """Use these handlers in ``app``."""
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
