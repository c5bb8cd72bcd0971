"""HTTP fields made from the option rows of an action (:class:`datamodules.options.Option`):
a request model for the fields sent with an upload and in JSON bodies, the multipart schema of
a route that reads its form itself, and the form parameters of a route FastAPI reads. The
descriptions, defaults, choices and limits are the rows', so the CLI, the API, its OpenAPI page
and the Lab's forms (built from that page) say the same."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

from fastapi import File, Form, UploadFile
from pydantic import BaseModel, Field, create_model

from datamodules.options import FILE, Option


def _value_type(o: Option) -> Any:
    t = Literal[o.choices] if o.choices else o.type
    return t | None if o.default is None and not o.required else t


def _constraints(o: Option) -> dict:
    kw: dict[str, Any] = {"description": o.help or None}
    kw |= {k: getattr(o, k) for k in ("ge", "gt", "le") if getattr(o, k) is not None}
    if o.example is not ...:
        kw["examples"] = [o.example]
    return kw


def params_model(name: str, options: tuple[Option, ...], base: type[BaseModel], doc: str):
    """A request model of the ``http="params"`` rows (``base``: its config and methods)."""
    fields = {
        o.name: (_value_type(o), Field(... if o.required else o.default, **_constraints(o)))
        for o in options
        if o.http == "params"
    }
    return create_model(name, __base__=base, __doc__=doc, __module__=base.__module__, **fields)


def multipart_properties(options: tuple[Option, ...], model: type[BaseModel]) -> dict:
    """The multipart form's JSON schema properties: the upload rows, then ``model``'s fields."""
    params = model.model_json_schema()["properties"]
    out = {}
    for o in options:
        if o.http == "params":
            out[o.name] = params[o.name]
        elif o.http == "upload" and o.type == FILE:
            out[o.name] = {"type": "array", "items": {"type": "string", "format": "binary"}}
            out[o.name] |= {"description": o.help}
        elif o.http == "upload":
            out[o.name] = {"type": "string", "description": o.help}
            if o.example is not ...:
                out[o.name]["example"] = o.example
    return out


def _form_parameter(o: Option) -> inspect.Parameter:
    if o.type == FILE:
        t: Any = list[UploadFile] if o.repeat else UploadFile
        annotation = Annotated[t if o.required else t | None, File(description=o.help or None)]
    else:
        t = (
            (str | None if o.default is None else str) if o.repeat else _value_type(o)
        )  # a list: comma-separated
        annotation = Annotated[t, Form(**_constraints(o))]
    default = inspect.Parameter.empty if o.required else o.default
    kind = inspect.Parameter.KEYWORD_ONLY
    return inspect.Parameter(o.name, kind, default=default, annotation=annotation)


def form_fields(options: tuple[Option, ...]):
    """Decorate a route ``fn(form: dict, **others)``: FastAPI reads the HTTP rows of ``options``
    as form fields (and files) and ``fn`` gets them as ``form``, by name."""
    rows = [o for o in options if o.http]

    def wrap(fn):
        sig = inspect.signature(fn, eval_str=True)
        others = [p for n, p in sig.parameters.items() if n != "form"]

        def route(**kwargs):
            form = {o.name: kwargs.pop(o.name) for o in rows}
            return fn(form, **kwargs)

        route.__name__, route.__qualname__, route.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__

        params = [_form_parameter(o) for o in rows] + [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in others
        ]
        route.__signature__ = sig.replace(parameters=params)
        return route

    return wrap
