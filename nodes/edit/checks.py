"""The model doctor's edit-model section: what this ComfyUI offers each edit-model target (core nodes, reference
methods), and warnings about a workflow's reference method for the models it loads. Reads the targets table."""

from __future__ import annotations

from ..core.edit_targets import TARGETS, core_method, variant_for_file
from ..host import edit

# Nodes whose widget sets the reference method, and the name of that widget.
METHOD_SETTERS = {"FluxKontextMultiReferenceLatentMethod": "reference_latents_method",
                  "LikenessReferenceLatents": "method"}
MODEL_FILE_ENDINGS = (".safetensors", ".sft", ".gguf", ".ckpt", ".pt", ".pth", ".bin")
METHOD_PR = {"index_timestep_zero": "Comfy-Org/ComfyUI#11340, December 2025"}


def availability_lines() -> list[str]:
    methods = edit.core_reference_methods()
    lines = ["Edit models (reference images; Likeness Reference Pack prepares them for each):"]
    if methods is None:
        lines.append("  (run the Likeness Model Doctor node inside ComfyUI to see which edit-model nodes and reference "
                     "methods this ComfyUI has)")
    else:
        lines.append(f"  reference methods this ComfyUI offers: "
                     f"{', '.join(methods) or '(none: no FluxKontextMultiReferenceLatentMethod)'}")
    for t in TARGETS:
        if not t.core_nodes:
            continue
        missing = edit.missing_nodes(t.core_nodes)
        state = "?? " if missing is None else "OK " if not missing else "-- "
        text = f"  {state} {t.name}: "
        if missing:
            text += (f"this ComfyUI lacks {', '.join(missing)} ({t.comfyui_version} has them); Likeness still "
                     f"prepares its references by the published rule. Feed them to {t.takes}.")
        else:
            text += f"references go to {t.takes}."
        lines.append(text)
        if t.default_method:
            wrong = "; ".join(f"not `{m}`: {why}" for m, why in t.wrong_methods)
            lines.append(f"       method `{t.default_method}`" + (f"; {wrong}" if wrong else ""))
        for v in t.variants:
            if v.method and v.method != t.default_method and methods is not None:
                if v.method in methods:
                    lines.append(f"       {v.name} needs method `{v.method}`: available.")
                else:
                    lines.append(f"       {v.name} needs method `{v.method}`, which this ComfyUI lacks: update ComfyUI "
                                 f"({METHOD_PR.get(v.method, 'a newer ComfyUI')}); until then it runs with the wrong "
                                 "method and holds the references less well.")
    return lines


def _widget_strings(node: dict) -> list[str]:
    return [v for v in (node.get("inputs") or {}).values() if isinstance(v, str)]


def workflow_warnings(prompt: dict | None) -> list[str]:
    """Warnings for the workflow being run: a model file of a known edit model together with a reference method
    that is wrong for it, or one that needs a method this ComfyUI lacks."""
    if not prompt:
        return []
    models = []  # (node id, file name, target, variant)
    methods = []  # (node id, class, method)
    for node_id, node in prompt.items():
        if not isinstance(node, dict):
            continue
        cls = node.get("class_type", "")
        if cls in METHOD_SETTERS:
            value = (node.get("inputs") or {}).get(METHOD_SETTERS[cls])
            if isinstance(value, str):
                methods.append((node_id, cls, core_method(value)))
        else:
            for name in _widget_strings(node):
                found = variant_for_file(name) if name.lower().endswith(MODEL_FILE_ENDINGS) else None
                if found:
                    models.append((node_id, name, *found))
    offered = edit.core_reference_methods() or ()
    out = []
    for node_id, name, target, variant in models:
        for m_id, m_cls, method in methods:
            why = dict(target.wrong_methods).get(method)
            if why:
                out.append(f"WARNING: node {m_id} ({m_cls}) sets method `{method}` and node {node_id} loads {name} "
                           f"({variant.name}). {why}")
        if variant.method and variant.method != target.default_method:
            if variant.method not in offered:
                out.append(f"WARNING: node {node_id} loads {name} ({variant.name}), which needs reference method "
                           f"`{variant.method}`; this ComfyUI lacks it ({', '.join(offered) or 'none'}). "
                           "Update ComfyUI "
                           f"({METHOD_PR.get(variant.method, 'a newer ComfyUI')}).")
            elif not any(method == variant.method for _, _, method in methods):
                out.append(f"WARNING: node {node_id} loads {name} ({variant.name}), which needs reference method "
                           f"`{variant.method}`, and no node of this workflow sets it. Add "
                           f"FluxKontextMultiReferenceLatentMethod (or set Likeness Reference Latents' method) to "
                           f"`{variant.method}`.")
        missing = edit.missing_nodes(target.core_nodes)
        if missing:
            out.append(f"WARNING: node {node_id} loads {name} ({variant.name}); this ComfyUI lacks "
                       f"{', '.join(missing)} "
                       f"and cannot run it. Update to {target.comfyui_version}.")
    return out


def section(prompt: dict | None = None) -> list[str]:
    lines = availability_lines()
    warnings = workflow_warnings(prompt)
    if prompt is not None:
        lines += ["", "This workflow's edit models:"] + ([f"  {w}" for w in warnings] or ["  no problems found."])
    return lines
