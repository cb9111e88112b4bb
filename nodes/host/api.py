"""The one place that imports ComfyUI's V3 node API, and the base class of every Likeness node.

`comfy_api.v0_0_2` is the version Likeness is written and tested against. Newer ComfyUI releases keep older
version modules for a while but mark them unstable, so the import falls back to the next pinned version and
then to `latest`: a ComfyUI without v0_0_2 still loads every node. Node modules take `io`, `ui` and
`ComfyExtension` from here, never from `comfy_api` directly.
"""

from __future__ import annotations

import importlib
import logging

from ..core.validation import WidgetSpec, widget_problem

log = logging.getLogger(__name__)

API_VERSIONS = ("comfy_api.v0_0_2", "comfy_api.v0_0_3", "comfy_api.latest")


def _import_api():
    failures = []
    for name in API_VERSIONS:
        try:
            module = importlib.import_module(name)
            return name, module.io, module.ui, module.ComfyExtension
        except (ImportError, AttributeError) as e:
            failures.append(f"{name}: {e}")
    raise ImportError("Likeness needs ComfyUI's V3 node API (comfy_api); none of its versions could be imported ("
                      + "; ".join(failures) + "). Update ComfyUI.")


API_MODULE, io, ui, ComfyExtension = _import_api()
if API_MODULE != API_VERSIONS[0]:
    log.info("Likeness: %s is not available; using %s", API_VERSIONS[0], API_MODULE)

_WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def widget_specs(node_class) -> list[WidgetSpec]:
    """The widget inputs of a node class, from its schema as ComfyUI serves it (`INPUT_TYPES`)."""
    specs = []
    types = node_class.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, entry in (types.get(section) or {}).items():
            kind, opts = entry[0], (entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {})
            if isinstance(kind, (list, tuple)):
                kind, opts = "COMBO", {**opts, "options": list(kind)}
            if kind not in _WIDGETS:
                continue
            options = opts.get("options")
            specs.append(WidgetSpec(name, kind, opts.get("min"), opts.get("max"),
                                    tuple(options) if kind == "COMBO" and options is not None else None,
                                    bool(opts.get("multiline"))))
    return specs


class LikenessNode(io.ComfyNode):
    """Base of every Likeness node: every widget value of a prompt is checked against the node's schema at
    validation time (combo choices, finite numbers within their bounds, text without NUL and of bounded length),
    then by the node's own `check_inputs`. Linked inputs arrive as None and are checked when they run."""

    @classmethod
    def check_inputs(cls, **values) -> str | None:
        """Node-specific rules over the widget values (None where linked); a message, or None when fine."""
        return None

    @classmethod
    def validate_inputs(cls, **values):
        is_list = bool(getattr(cls, "INPUT_IS_LIST", False))
        problems = []
        for spec in widget_specs(cls):
            value = values.get(spec.name)
            for item in (value if is_list and isinstance(value, list) else [value]):
                problem = widget_problem(spec, item)
                if problem:
                    problems.append(problem)
                    break
        if not problems:
            if is_list:
                values = {k: (v[0] if isinstance(v, list) and v else v) for k, v in values.items()}
            problem = cls.check_inputs(**values)
            if problem:
                problems.append(problem)
        return " ".join(problems) if problems else True
