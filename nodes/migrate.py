"""Moves workflows from the leading IP-Adapter pack (cubiq/ComfyUI_IPAdapter_plus) to Likeness.

    python -m nodes.migrate IN.json [OUT.json]

Reads a UI-format workflow (version 0.4: nodes, links, groups) or an API-format prompt, replaces every node of
that pack Likeness covers with the equivalent Likeness subgraph, keeping widget values, links, groups and
positions, and prints a summary: what was converted, what stayed (each with a Note saying why) and which
numbers may differ. The same conversion serves POST /likeness/migrate for the menu command in the browser.

Pure Python (no comfy import): the rule table is nodes/core/migrate_rules.py.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field, replace

try:
    from .core import migrate_rules as R
except ImportError:  # run as a file rather than a module
    from core import migrate_rules as R  # type: ignore

MAX_NODES = 5000


class Unconvertible(Exception):
    """The node stays as it is; the message goes on the Note next to it."""


class BadWorkflow(ValueError):
    """The input is not a workflow this converter can read (a 400 for the route)."""


@dataclass(frozen=True)
class Link:
    """A value coming from a link: (node id, output slot) in the converted graph."""
    node: object
    slot: int


@dataclass(frozen=True)
class Bundle:
    """What the leading pack's IPADAPTER socket carried, as separate Likeness sources."""
    adapter: Link
    clip_vision: Link | None = None
    face_model: Link | None = None
    faceid: bool = False
    plus: bool | None = None
    v2: bool | None = None
    sdxl: bool | None = None
    kolors: bool = False


@dataclass(frozen=True)
class Params:
    """IPADAPTER_PARAMS: regions of the regional-conditioning nodes, evaluated statically."""
    regions: tuple


DEFAULT_NEGATIVE = "default negative"  # the Encoder's neg_embed: Likeness Project's own default
# Frontend-only pass-through nodes, which conversion reads through: the frontend's Reroute, rgthree's, and KJNodes'
# Set / Get pairs (a Get node passes on what the Set node of the same name receives)
SET, GET = "SetNode", "GetNode"
PASS_THROUGH = ("Reroute", "Reroute (rgthree)", SET, GET)


# ------------------------------------------------------------------ the two file formats behind one interface

class Graph:
    """Common operations on a UI workflow or an API prompt."""

    def __init__(self, data: dict):
        self.data = data

    def __deepcopy__(self, memo):
        clone = copy.copy(self)
        clone.data = copy.deepcopy(self.data, memo)
        return clone


class UIGraph(Graph):
    def __init__(self, data):
        super().__init__(data)
        nodes = data.get("nodes")
        links = data.get("links")
        if not isinstance(nodes, list) or not isinstance(links, list):
            raise BadWorkflow("a UI workflow needs `nodes` and `links` lists.")
        for n in nodes:
            if not isinstance(n, dict) or not isinstance(n.get("id"), int) or not isinstance(n.get("type"), str):
                raise BadWorkflow("every node needs an integer `id` and a `type`.")
        for link in links:
            if not (isinstance(link, list) and len(link) >= 6 and all(isinstance(v, int) for v in link[:5])):
                raise BadWorkflow("every link must be [id, origin, origin_slot, target, target_slot, type].")
        for key, ids in (("last_node_id", [n["id"] for n in nodes]), ("last_link_id", [k[0] for k in links])):
            saved = data.get(key)
            data[key] = max([saved if isinstance(saved, int) else 0] + ids)

    # --- reading
    def ids(self):
        return [n["id"] for n in self.data["nodes"]]

    def node(self, node_id):
        return next((n for n in self.data["nodes"] if n["id"] == node_id), None)

    def type_of(self, node_id):
        n = self.node(node_id)
        return n["type"] if n else None

    def link(self, link_id):
        return next((k for k in self.data["links"] if k[0] == link_id), None)

    def source(self, node_id, name):
        """Where an input reads from: the nearest node, which may pass on what another node made (see `origin`)."""
        for slot in self.node(node_id).get("inputs") or []:
            if slot.get("name") == name and slot.get("link") is not None:
                link = self.link(slot["link"])
                if link:
                    return Link(link[1], link[2])
        return None

    def origin(self, src: Link) -> Link:
        """The output that made what `src` passes on, behind any pass-through nodes (`src` itself otherwise)."""
        if not self.is_reroute(src.node):
            return src
        link = self.through_reroutes([None, src.node, src.slot])
        return Link(link[1], link[2])

    def is_reroute(self, node_id):
        return self.type_of(node_id) in PASS_THROUGH

    @staticmethod
    def _variable(node):
        values = node.get("widgets_values")
        return values[0] if isinstance(values, list) and values else None

    def _same_variable(self, node, kind):
        return [n for n in self.data["nodes"] if n["type"] == kind and self._variable(n) == self._variable(node)]

    def feed(self, node_id):
        """The link into a pass-through node (a Get node's is its Set node's)."""
        node = self.node(node_id)
        if node["type"] == GET:
            setters = self._same_variable(node, SET)
            if len(setters) != 1:
                return None
            node = setters[0]
        inputs = node.get("inputs") or []
        return self.link(inputs[0].get("link")) if inputs and inputs[0].get("link") is not None else None

    def passes_to(self, node_id):
        """(target, input name) that read what a pass-through node passes on (a Set node's Get nodes' readers)."""
        out = list(self.consumers(node_id, 0))
        if self.type_of(node_id) == SET:
            for getter in self._same_variable(self.node(node_id), GET):
                out.append((getter["id"], None))
        return out

    def through_reroutes(self, link):
        """The link that feeds a chain of pass-through nodes ending in `link` (itself when none is on the way)."""
        seen = set()
        while self.is_reroute(link[1]) and link[1] not in seen:
            seen.add(link[1])
            upstream = self.feed(link[1])
            if upstream is None:
                break
            link = upstream
        return link

    def readers(self, node_id, slot=None):
        """The nodes that read an output (slot None: what a pass-through node passes on), seen through
        pass-through nodes (which are not listed)."""
        out, seen = [], set()
        pending = [(node_id, None)] if slot is None else list(self.consumers(node_id, slot))
        while pending:
            target, name = pending.pop()
            if self.is_reroute(target):
                if target not in seen:
                    seen.add(target)
                    pending += self.passes_to(target)
            else:
                out.append((target, name))
        return out

    def idle(self, node_id):
        """A pass-through node that passes nothing on any more."""
        if self.consumers(node_id, 0):
            return False
        return self.type_of(node_id) != SET or not self._same_variable(self.node(node_id), GET)

    def widget_values(self, node_id):
        values = self.node(node_id).get("widgets_values")
        if isinstance(values, dict):  # some frontends save named values
            return values
        return list(values or [])

    def consumers(self, node_id, slot):
        """(target id, input name) of every link out of an output."""
        out = []
        for link in self.data["links"]:
            if link[1] == node_id and link[2] == slot:
                target = self.node(link[3])
                inputs = (target or {}).get("inputs") or []
                if target and link[4] < len(inputs):
                    out.append((link[3], inputs[link[4]]["name"]))
        return out

    def title(self, node_id):
        n = self.node(node_id)
        return n.get("title") or n["type"]

    # --- writing
    def add_node(self, class_type, widgets: dict, near=None, title=None):
        shape = R.LIKENESS[class_type]
        optional = R.OPTIONAL.get(class_type, set())
        self.data["last_node_id"] += 1
        node_id = self.data["last_node_id"]
        inputs = []
        for name, typ in shape["sockets"]:
            slot = {"localized_name": name, "name": name, "type": typ, "link": None}
            if name in optional:
                slot["shape"] = 7
            inputs.append(slot)
        for name, typ, _ in shape["widgets"]:
            slot = {"localized_name": name, "name": name, "type": typ, "widget": {"name": name}, "link": None}
            if name in optional:
                slot["shape"] = 7
            inputs.append(slot)
        values = [default if isinstance(widgets.get(name), Link) else widgets.get(name, default)
                  for name, _, default in shape["widgets"]]  # a linked widget keeps a value underneath
        node = {"id": node_id, "type": class_type, "pos": list(near or (0, 0)), "size": list(node_size(class_type)),
                "flags": {}, "order": 0, "mode": 0, "inputs": inputs,
                "outputs": [{"localized_name": name, "name": name, "type": typ, "links": [], "slot_index": i}
                            for i, (name, typ) in enumerate(shape["outputs"])],
                "properties": {"Node name for S&R": class_type,
                               **({"cnr_id": "comfyui-likeness"} if class_type.startswith("Likeness") else {})},
                "widgets_values": values}
        if title:
            node["title"] = title
        self.data["nodes"].append(node)
        for name, value in widgets.items():
            if isinstance(value, Link):
                self.connect(value, node_id, name)
        return node_id

    def add_note(self, text, pos):
        self.data["last_node_id"] += 1
        self.data["nodes"].append({"id": self.data["last_node_id"], "type": "Note", "pos": list(pos),
                                   "size": [360, 160], "flags": {}, "order": 0, "mode": 0, "inputs": [],
                                   "outputs": [], "properties": {"text": ""}, "widgets_values": [text],
                                   "color": "#432", "bgcolor": "#653"})
        return self.data["last_node_id"]

    def _drop_link(self, link_id):
        link = self.link(link_id)
        if link is None:
            return
        self.data["links"].remove(link)
        origin = self.node(link[1])
        if origin and link[2] < len(origin.get("outputs") or []):
            out = origin["outputs"][link[2]]
            out["links"] = [k for k in (out.get("links") or []) if k != link_id]
        target = self.node(link[3])
        if target and link[4] < len(target.get("inputs") or []) and target["inputs"][link[4]].get("link") == link_id:
            target["inputs"][link[4]]["link"] = None

    def connect(self, src: Link, target_id, name):
        target = self.node(target_id)
        index = next((i for i, s in enumerate(target.get("inputs") or []) if s.get("name") == name), None)
        if index is None:
            raise Unconvertible(f"{target['type']} has no input `{name}`")
        if target["inputs"][index].get("link") is not None:
            self._drop_link(target["inputs"][index]["link"])
        origin = self.node(src.node)
        typ = (origin["outputs"][src.slot]["type"] if origin and src.slot < len(origin.get("outputs") or [])
               else target["inputs"][index]["type"])
        self.data["last_link_id"] += 1
        link_id = self.data["last_link_id"]
        self.data["links"].append([link_id, src.node, src.slot, target_id, index, typ])
        target["inputs"][index]["link"] = link_id
        if origin:
            out = origin["outputs"][src.slot]
            out["links"] = list(out.get("links") or []) + [link_id]
        return link_id

    def disconnect(self, target_id, name):
        for slot in self.node(target_id).get("inputs") or []:
            if slot.get("name") == name and slot.get("link") is not None:
                self._drop_link(slot["link"])

    def remove(self, node_id):
        for link in [k for k in self.data["links"] if node_id in (k[1], k[3])]:
            self._drop_link(link[0])
        self.data["nodes"] = [n for n in self.data["nodes"] if n["id"] != node_id]


class APIGraph(Graph):
    def __init__(self, data):
        super().__init__(data)
        for key, node in data.items():
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) \
                    or not isinstance(node.get("inputs", {}), dict):
                raise BadWorkflow(f"prompt entry `{str(key)[:40]}` needs a `class_type` and an `inputs` object.")
        numbers = [int(k) for k in data if str(k).isdigit()]
        self.next_id = max(numbers, default=0)

    def ids(self):
        return list(self.data)

    def node(self, node_id):
        return self.data.get(node_id)

    def type_of(self, node_id):
        n = self.data.get(node_id)
        return n["class_type"] if n else None

    def source(self, node_id, name):
        value = self.data[node_id].get("inputs", {}).get(name)
        if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
            return Link(str(value[0]), value[1])
        return None

    def widget_values(self, node_id):
        return {k: v for k, v in self.data[node_id].get("inputs", {}).items()
                if not (isinstance(v, list) and len(v) == 2 and isinstance(v[1], int))}

    def consumers(self, node_id, slot):
        out = []
        for key, node in self.data.items():
            for name, value in node.get("inputs", {}).items():
                if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id) and value[1] == slot:
                    out.append((key, name))
        return out

    def title(self, node_id):
        node = self.data[node_id]
        return (node.get("_meta") or {}).get("title") or node["class_type"]

    def add_node(self, class_type, widgets: dict, near=None, title=None):
        self.next_id += 1
        node_id = str(self.next_id)
        inputs = {}
        for name, _, default in R.LIKENESS[class_type]["widgets"]:
            value = widgets.get(name, default)
            inputs[name] = [str(value.node), value.slot] if isinstance(value, Link) else value
        self.data[node_id] = {"inputs": inputs, "class_type": class_type, "_meta": {"title": title or class_type}}
        for name, value in widgets.items():
            if isinstance(value, Link) and name not in inputs:
                self.connect(value, node_id, name)
        return node_id

    def add_note(self, text, pos):
        return None  # an API prompt has no notes; the summary carries the reason

    def connect(self, src: Link, target_id, name):
        self.data[target_id].setdefault("inputs", {})[name] = [str(src.node), src.slot]

    def disconnect(self, target_id, name):
        self.data[target_id].get("inputs", {}).pop(name, None)

    def remove(self, node_id):
        self.data.pop(node_id, None)


# ------------------------------------------------------------------ node sizes and layout

ROW = 34  # the saved size: what the classic canvas draws
WIDTH = 340
GAP = 60
# What the Vue node renderer draws, measured on frontend 1.27 (tests/test_browser.py): most nodes about 430 wide
# whatever their saved size, and taller rows. Layout reserves the larger of both renderers' boxes.
VUE_WIDTH = 440
VUE_HEADER, VUE_SOCKET_ROW, VUE_WIDGET_ROW = 60, 28, 38
# drawn below the rows: a picture under LoadImage's widgets, CLIPTextEncode's multi-line text box
EXTRA_HEIGHT = {"LoadImage": 430, "LoadImageMask": 430, "CLIPTextEncode": 80}
NOTES = ("Note", "MarkdownNote")


def node_size(class_type):
    shape = R.LIKENESS[class_type]
    sockets = max(len(shape["sockets"]), len(shape["outputs"]))
    return WIDTH, 46 + ROW * (sockets + len(shape["widgets"]))


def _vue_height(node):
    sockets = [i for i in node.get("inputs") or [] if isinstance(i, dict) and not i.get("widget")]
    widgets = node.get("widgets_values")
    rows = max(len(sockets), len(node.get("outputs") or []))
    count = len(widgets) if isinstance(widgets, list) else len(widgets or {})
    return VUE_HEADER + VUE_SOCKET_ROW * rows + VUE_WIDGET_ROW * count + EXTRA_HEIGHT.get(node.get("type"), 0)


def _box(node):
    """The node's box in either renderer (title bar included): the larger of the saved size and the Vue one."""
    pos, size = node.get("pos") or [0, 0], node.get("size") or [300, 120]
    if isinstance(pos, dict):
        pos = [pos.get("0", 0), pos.get("1", 0)]
    if isinstance(size, dict):
        size = [size.get("0", 300), size.get("1", 120)]
    x, y = float(pos[0]), float(pos[1])
    w, h = max(float(size[0]), 60.0), max(float(size[1]), 40.0)
    if node.get("type") not in NOTES:
        w, h = max(w, VUE_WIDTH), max(h, _vue_height(node))
        h += 30  # the title bar sits above pos
        y -= 30
    return x, y, w, h


def _overlap(a, b, gap=20):
    return a[0] < b[0] + b[2] + gap and b[0] < a[0] + a[2] + gap and a[1] < b[1] + b[3] + gap and b[1] < a[1] + a[3] + gap


def resolve_overlaps(data):
    """Pushes nodes down until no two boxes (title bars included) overlap; earlier nodes (by y, x) stay put."""
    nodes = sorted(data["nodes"], key=lambda n: (_box(n)[1], _box(n)[0]))
    placed = []
    for node in nodes:
        for _ in range(1000):
            box = _box(node)
            hit = next((p for p in placed if _overlap(box, _box(p))), None)
            if hit is None:
                break
            hb = _box(hit)
            node["pos"] = [node["pos"][0], hb[1] + hb[3] + 40 + (30 if node.get("type") not in NOTES else 0)]
        placed.append(node)


# ------------------------------------------------------------------ conversion

@dataclass
class Conversion:
    graph: Graph
    out: dict = field(default_factory=dict)        # (old id, slot) -> Link | Bundle | Params | str | None
    converted: list = field(default_factory=list)  # (old id, old type, title, [new ids])
    kept: list = field(default_factory=list)       # (old id, old type, reason)
    caveats: set = field(default_factory=set)
    added: list = field(default_factory=list)
    layout_of: dict = field(default_factory=dict)  # old id -> (x, y, w, h) of the old node
    kept_for: set = field(default_factory=set)     # old loaders kept because an unconverted node reads them
    reroutes: set = field(default_factory=set)     # pass-through nodes that read a converted node

    def resolve(self, value):
        """A link into the old graph, seen through what converted nodes became. Behind pass-through nodes
        (Reroutes, Set / Get): a converted node's single output is still read through them (they are rewired to
        it), anything else (an adapter bundle, params) directly."""
        if not isinstance(value, Link):
            return value
        made = self.graph.origin(value) if isinstance(self.graph, UIGraph) else value
        if (made.node, made.slot) in self.out:
            found = self.out[(made.node, made.slot)]
            return value if made != value and isinstance(found, Link) else found
        if self.graph.type_of(made.node) in R.LAYOUTS:
            raise Unconvertible(f"it reads `{self.graph.type_of(made.node)}` (node {made.node}), which stayed as "
                                "it was")
        return value


class Site:
    """One old node being converted: its values, its inputs, and where its replacement goes."""

    def __init__(self, conv: Conversion, node_id):
        self.conv, self.g, self.id = conv, conv.graph, node_id
        self.type = self.g.type_of(node_id)
        self.values = self._values()
        self.new = []
        self.column = 0

    def _values(self):
        raw = self.g.widget_values(self.id)
        layouts = R.LAYOUTS[self.type]
        if isinstance(raw, dict):
            values = dict(raw)
            names = max(layouts, key=len)
        else:
            names = next((layout for layout in layouts if len(layout) == len(raw)), None)
            if names is None:
                counts = " or ".join(str(len(layout)) for layout in layouts)
                raise Unconvertible(f"{len(raw)} widget values, a layout this converter does not know (it reads "
                                    f"{counts})")
            values = dict(zip(names, raw))
        defaults = {**R.DEFAULTS, **R.CLASS_DEFAULTS.get(self.type, {})}
        for name in max(layouts, key=len):
            source = self.g.source(self.id, name)  # a widget turned into an input and linked
            if source is not None:
                values[name] = self.conv.resolve(source)
            values.setdefault(name, defaults.get(name))
        return values

    def __getitem__(self, name):
        return self.values[name]

    def input(self, name):
        source = self.g.source(self.id, name)
        return None if source is None else self.conv.resolve(source)

    def bundle(self):
        value = self.input("ipadapter")
        if not isinstance(value, Bundle):
            raise Unconvertible("its `ipadapter` input does not come from a loader of the leading pack")
        clip = self.input("clip_vision") or value.clip_vision
        face = self.input("insightface") or value.face_model
        return Bundle(value.adapter, clip, face, value.faceid, value.plus, value.v2, value.sdxl, value.kolors)

    def add(self, class_type, widgets=None, row=0):
        box = self.conv.layout_of.get(self.id, (0, 0, 300, 100))
        pos = (box[0] + self.column * (VUE_WIDTH + GAP), box[1] + row * 60 + 30)
        node_id = self.g.add_node(class_type, {k: v for k, v in (widgets or {}).items() if v is not None}, pos)
        self.new.append(node_id)
        return node_id

    def add_column(self):
        self.column += 1


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _merge_mode(site, name="combine_embeds"):
    mode = site[name]
    if isinstance(mode, Link) or mode not in R.COMBINE_MODES:
        raise Unconvertible(f"`{name}` = {mode!r} is not a mode this converter knows")
    if mode == "norm average":
        site.conv.caveats.add("norm average")
    return R.COMBINE_MODES[mode]


def _references(site, bundle, image, *, negative=False, enhance=False, batch=False, mask=None):
    """Encode (or Face Embed) an image input -> a Link to LIKENESS_REFS."""
    if bundle.faceid:
        if bundle.face_model is None:
            raise Unconvertible("a FaceID adapter needs an InsightFace loader on `insightface`")
        crop = "336" if bundle.kolors else "256" if bundle.sdxl else "224"
        node = site.add("LikenessFaceEmbed", {"face_model": bundle.face_model, "image": image,
                                               "clip_vision": bundle.clip_vision, "select": "most confident",
                                               "on_no_face": "error", "crop_size": crop}, row=10 * negative)
        site.conv.caveats.add("face select")
        return Link(node, 0)
    if bundle.clip_vision is None:
        raise Unconvertible("no CLIP vision model: connect `clip_vision` or load with a Unified loader")
    widgets = {"clip_vision": bundle.clip_vision, "image": image, "crop": "center", "sharpen": 0.0, "mask": mask}
    if enhance and not negative:
        widgets.update(enhance_tiles=site["enhance_tiles"], enhance_ratio=site["enhance_ratio"])
    if batch:
        widgets["encode_batch_size"] = site.values.get("encode_batch_size", 0)
    return Link(site.add("LikenessImageEncode", widgets, row=10 * negative), 0)


def _chain(site, bundle, model, refs, *, weight, weight_type, start_at, end_at, embeds_scaling, attn_mask=None,
           negative=None, combine="concat", extra_apply=None, project=None, unfold=False):
    """[Merge] -> Project -> Apply(s), columns after the references; returns the MODEL link."""
    site.add_column()
    if combine != "concat":
        refs = Link(site.add("LikenessMergeReferences", {"references_1": refs, "mode": combine}), 0)
        site.add_column()
    if negative == DEFAULT_NEGATIVE:
        negative = None
    project_widgets = {"adapter": bundle.adapter, "references": refs, "negative": negative, **(project or {})}
    if bundle.faceid and bundle.v2 is not None and "faceid_plus_version" not in project_widgets:
        project_widgets["faceid_plus_version"] = "v2" if bundle.v2 else "v1"
    tokens = Link(site.add("LikenessProject", project_widgets), 0)
    site.add_column()
    apply = {"adapter": bundle.adapter, "tokens": tokens, "start_at": start_at, "end_at": end_at,
             "embeds_scaling": embeds_scaling, "attn_mask": attn_mask, "unfold_batch": unfold,
             **(extra_apply or {})}
    if bundle.faceid:
        apply["faceid_lora_strength"] = 0.0
        site.conv.caveats.add("face lora")
    if negative is None and (not bundle.faceid or bundle.plus):
        site.conv.caveats.add("negative")
    site.conv.caveats.add("middle")
    fixed_composition = weight_type == "style and composition" and _number(weight) != 1.0
    if fixed_composition:  # the leading pack's nodes pin the composition sites at 1.0 and scale only the style ones
        node = site.add("LikenessApply", {**apply, "model": model, "weight": weight, "weight_type": "style transfer"})
        site.add_column()
        node = site.add("LikenessApply", {**apply, "model": Link(node, 0), "weight": 1.0,
                                          "weight_type": "composition"})
    else:
        node = site.add("LikenessApply", {**apply, "model": model, "weight": weight, "weight_type": weight_type})
    return Link(node, 0)


def _negative_refs(site, bundle, image_negative):
    if image_negative is None:
        return None
    if bundle.faceid and not bundle.plus:  # the leading pack ignores it there too: identity uncond is zero
        site.conv.caveats.add("face negative")
        return None
    # FaceID Plus: the leading pack CLIP-encodes the raw negative image for the crops' side and keeps a zero
    # identity, which Project does with Image Encode references as its negative
    return _references(site, replace(bundle, faceid=False), image_negative, negative=True)


def _apply_node(site, *, image_name="image", enhance=False, batch=False, layer_weights=False, precise=None):
    """Advanced and its relatives (FaceID, MS, Batch, Enhancer, Precise): one chain."""
    bundle = site.bundle()
    if site.type == "IPAdapterFaceIDKolors":  # only the Kolors FaceID Plus file works with this node
        bundle = Bundle(bundle.adapter, bundle.clip_vision, bundle.face_model, faceid=True, plus=True, v2=True,
                        sdxl=True, kolors=True)
        site.conv.caveats.add("kolors")
    model = site.input("model")
    image = site.input(image_name)
    if model is None or image is None:
        raise Unconvertible("`model` and `image` must be connected")
    negative = _negative_refs(site, bundle, site.input("image_negative"))
    refs = _references(site, bundle, image, enhance=enhance, batch=batch)
    combine = _merge_mode(site) if "combine_embeds" in site.values else "concat"
    weight_type = site.values.get("weight_type", "linear")
    extra, project = {}, {}
    if precise == "style":
        weight_type, extra["style_boost"] = "style transfer precise", site["style_boost"]
    elif precise == "composition":
        weight_type, extra["composition_boost"] = "composition precise", site["composition_boost"]
    if layer_weights and site.values.get("layer_weights"):
        extra["layer_weights"] = site["layer_weights"]
    if "weight_kolors" in site.values:
        extra["weight_kolors"] = site["weight_kolors"]
    if bundle.faceid:
        if "weight_faceidv2" in site.values:
            project["faceid_v2_weight"] = site["weight_faceidv2"]
        elif _number(site["weight"]) is not None:
            project["faceid_v2_weight"] = min(5.0, 2 * site["weight"])  # the leading pack: v2 weight = 2 x weight
    if isinstance(weight_type, Link) or weight_type not in R.LIKENESS_WEIGHT_TYPES:
        raise Unconvertible(f"weight_type {weight_type!r} is not one Likeness has")
    out = _chain(site, bundle, model, refs, weight=site["weight"], weight_type=weight_type,
                 start_at=site["start_at"], end_at=site["end_at"], embeds_scaling=site["embeds_scaling"],
                 attn_mask=site.input("attn_mask"), negative=negative, combine=combine, extra_apply=extra,
                 project=project, unfold=batch)
    result = {0: out}
    if site.type in ("IPAdapterFaceID", "IPAAdapterFaceIDBatch", "IPAdapterFaceIDKolors"):
        result[1] = Link(refs.node, 1) if bundle.faceid else None
    return result


def _file_bundle(adapter: Link, name: str) -> Bundle:
    lower = str(name).lower()
    faceid = "faceid" in lower
    return Bundle(adapter, faceid=faceid, plus="plus" in lower if faceid else None,
                  v2=("plusv2" in lower or "plus-v2" in lower or "kolors" in lower) if faceid and "plus" in lower
                  else None,
                  sdxl=True if ("sdxl" in lower or "kolors" in lower) else False if "sd15" in lower else None,
                  kolors="kolors" in lower)


# --- one function per leading-pack node: returns {old output slot: what it became}

def rule_model_loader(site):
    name = site["ipadapter_file"]
    node = site.add("LikenessAdapterLoader", {"adapter_name": name})
    bundle = _file_bundle(Link(node, 0), name)
    if bundle.kolors:
        site.conv.caveats.add("kolors")
    return {0: bundle}


def _unified(site, preset, lora=0.6, provider="auto"):
    model = site.input("model")
    if model is None:
        raise Unconvertible("`model` must be connected")
    if isinstance(preset, Link) or preset not in R.UNIFIED_PRESETS:
        raise Unconvertible(f"preset {preset!r} has no Likeness preset")
    target = R.UNIFIED_PRESETS[preset]
    if target == "KOLORS":
        site.conv.caveats.add("kolors")
    node = site.add("LikenessUnifiedLoader", {"model": model, "preset": target, "faceid_lora_strength": lora,
                                             "provider": provider})
    faceid = target.startswith("FACEID")
    return {0: Link(node, 0),
            1: Bundle(Link(node, 1), Link(node, 2), Link(node, 3) if faceid else None, faceid=faceid,
                      plus="PLUS" in target if faceid else None,
                      v2=(target == "FACEID PLUS V2") if "PLUS" in target else None,
                      sdxl=True if target in ("VIT-G", "KOLORS", "FACEID PORTRAIT UNNORM") else
                      False if "SD1.5" in preset else None,
                      kolors=target == "KOLORS")}


def rule_unified(site):
    return _unified(site, site["preset"])


def rule_unified_faceid(site):
    provider = site["provider"]
    if provider == "OpenVINO":
        site.conv.caveats.add("openvino")
    return _unified(site, site["preset"], site["lora_strength"], R.PROVIDERS.get(provider, "auto"))


def rule_insightface(site):
    if site["provider"] == "OpenVINO":
        site.conv.caveats.add("openvino")
    node = site.add("LikenessFaceModelLoader", {"model_pack": site["model_name"],
                                                "provider": R.PROVIDERS.get(site["provider"], "auto")})
    return {0: Link(node, 0)}


def rule_simple(site):
    bundle = site.bundle()
    model, image = site.input("model"), site.input("image")
    if model is None or image is None:
        raise Unconvertible("`model` and `image` must be connected")
    kind = site.values.get("weight_type") or "standard"
    mask = site.input("attn_mask")
    if kind == "standard" and mask is None and not bundle.faceid and bundle.clip_vision is not None:
        node = site.add("LikenessApplySimple", {"model": model, "adapter": bundle.adapter,
                                                "clip_vision": bundle.clip_vision, "image": image,
                                                "weight": site["weight"], "start_at": site["start_at"],
                                                "end_at": site["end_at"]})
        site.conv.caveats.update({"middle", "negative"})
        return {0: Link(node, 0)}
    if kind not in R.SIMPLE_WEIGHT_TYPES:
        raise Unconvertible(f"weight_type {kind!r} is unknown")
    refs = _references(site, bundle, image)
    return {0: _chain(site, bundle, model, refs, weight=site["weight"], weight_type=R.SIMPLE_WEIGHT_TYPES[kind],
                      start_at=site["start_at"], end_at=site["end_at"], embeds_scaling="V only", attn_mask=mask)}


def rule_advanced(site):
    return _apply_node(site, layer_weights=True)


def rule_batch(site):
    return _apply_node(site, batch=True, layer_weights=True)


def rule_enhancer(site):
    return _apply_node(site, enhance=True)


def rule_enhancer_batch(site):
    return _apply_node(site, enhance=True, batch=True)


def rule_precise_style(site):
    return _apply_node(site, precise="style", batch=site.type.endswith("Batch"))


def rule_precise_composition(site):
    return _apply_node(site, precise="composition", batch=site.type.endswith("Batch"))


def rule_style_composition(site):
    bundle = site.bundle()
    model = site.input("model")
    style, composition = site.input("image_style"), site.input("image_composition")
    if model is None or style is None or composition is None:
        raise Unconvertible("`model`, `image_style` and `image_composition` must be connected")
    if bundle.faceid:
        raise Unconvertible("style and composition needs an image adapter, not FaceID")
    batch = site.type.endswith("Batch")
    combine = _merge_mode(site) if "combine_embeds" in site.values else "concat"
    negative = _negative_refs(site, bundle, site.input("image_negative"))
    common = dict(start_at=site["start_at"], end_at=site["end_at"], embeds_scaling=site["embeds_scaling"],
                  attn_mask=site.input("attn_mask"), negative=negative, combine=combine, unfold=batch)
    refs = _references(site, bundle, style, batch=batch)
    first_column = site.column
    styled = _chain(site, bundle, model, refs, weight=site["weight_style"],
                    weight_type="strong style transfer" if site["expand_style"] else "style transfer", **common)
    site.column = first_column
    refs = _references(site, bundle, composition, batch=batch, negative=False)
    # the composition chain goes one row band lower
    for node_id in site.new[-1:]:
        _shift(site.g, node_id, 0, 640)
    before = len(site.new)
    out = _chain(site, bundle, styled, refs, weight=site["weight_composition"], weight_type="composition", **common)
    for node_id in site.new[before:]:
        _shift(site.g, node_id, 0, 640)
    return {0: out}


def _shift(g, node_id, dx, dy):
    node = g.node(node_id)
    if isinstance(g, UIGraph) and node:
        node["pos"] = [node["pos"][0] + dx, node["pos"][1] + dy]


def rule_tiled(site):
    bundle = site.bundle()
    if bundle.faceid or bundle.clip_vision is None:
        raise Unconvertible("Tiled needs an image adapter and a CLIP vision model")
    model, image = site.input("model"), site.input("image")
    if model is None or image is None:
        raise Unconvertible("`model` and `image` must be connected")
    batch = site.type.endswith("Batch")
    node = site.add("LikenessApplyTiled", {
        "model": model, "adapter": bundle.adapter, "clip_vision": bundle.clip_vision, "image": image,
        "image_negative": site.input("image_negative"), "attn_mask": site.input("attn_mask"),
        "weight": site["weight"], "weight_type": site["weight_type"],
        "combine_embeds": _merge_mode(site) if "combine_embeds" in site.values else "concat",
        "start_at": site["start_at"], "end_at": site["end_at"], "sharpening": site["sharpening"],
        "embeds_scaling": site["embeds_scaling"], "encode_batch_size": site.values.get("encode_batch_size", 0),
        "unfold_batch": batch})
    site.conv.caveats.update({"middle", "negative"})
    return {0: Link(node, 0), 1: Link(node, 1), 2: Link(node, 2)}


def rule_embeds(site):
    bundle = site.bundle()
    model, pos = site.input("model"), site.input("pos_embed")
    if model is None or pos is None:
        raise Unconvertible("`model` and `pos_embed` must be connected")
    return {0: _chain(site, bundle, model, pos, weight=site["weight"], weight_type=site["weight_type"],
                      start_at=site["start_at"], end_at=site["end_at"], embeds_scaling=site["embeds_scaling"],
                      attn_mask=site.input("attn_mask"), negative=site.input("neg_embed"),
                      unfold=site.type.endswith("Batch"))}


def rule_encoder(site):
    bundle = site.bundle()
    image = site.input("image")
    if image is None:
        raise Unconvertible("`image` must be connected")
    site.column = -1
    refs = _references(site, bundle, image, mask=site.input("mask"))
    weight = site["weight"]
    if isinstance(weight, Link) or weight != 1.0:
        if isinstance(weight, Link):
            raise Unconvertible("its `weight` comes from a link; Merge References takes weights as text")
        if _number(weight) is None:
            raise Unconvertible(f"its `weight` is {weight!r}, not a number")
        if weight == 0:
            raise Unconvertible("its `weight` is 0: the leading pack kept zero features, where Merge References "
                                "would drop the reference")
        site.add_column()  # the leading pack multiplies the features of every image by it: concat with one weight
        refs = Link(site.add("LikenessMergeReferences", {"references_1": refs, "mode": "concat",
                                                         "weights": f"{float(weight):.10g}"}), 0)
    return {0: refs, 1: DEFAULT_NEGATIVE}


def rule_combine_embeds(site):
    inputs = {f"references_{i}": site.input(f"embed{i}") for i in range(1, 6)}
    if inputs["references_1"] is None:
        raise Unconvertible("`embed1` must be connected")
    if any(v == DEFAULT_NEGATIVE for v in inputs.values()):
        raise Unconvertible("it combines an Encoder's neg_embed, which Likeness keeps implicit")
    node = site.add("LikenessMergeReferences", {**inputs, "mode": _merge_mode(site, "method")})
    return {0: Link(node, 0)}


def rule_noise(site):
    node = site.add("LikenessNoiseImage", {"type": site["type"], "strength": site["strength"], "blur": site["blur"],
                                           "image_optional": site.input("image_optional"), "size": 224})
    return {0: Link(node, 0)}


def rule_prep(site):
    image = site.input("image")
    if image is None:
        raise Unconvertible("`image` must be connected")
    node = site.add("LikenessPrepImage", {"image": image, "interpolation": site["interpolation"],
                                          "crop_position": site["crop_position"], "sharpening": site["sharpening"],
                                          "size": 224})
    site.conv.caveats.add("prep")
    return {0: Link(node, 0)}


def rule_save_embeds(site):
    refs = site.input("embeds")
    if refs is None or refs == DEFAULT_NEGATIVE:
        raise Unconvertible("`embeds` must come from references (an Encoder's pos_embed, Combine or Load)")
    site.add("LikenessSaveReferences", {"references": refs, "filename_prefix": site["filename_prefix"]})
    return {}


def rule_load_embeds(site):
    node = site.add("LikenessLoadReferences", {"references_file": site["embeds"]})
    site.conv.caveats.add("ipadpt")
    return {0: Link(node, 0)}


def rule_weights(site):
    widgets = {name: site[name] for name, _, _ in R.LIKENESS["LikenessFrameWeights"]["widgets"]}
    node = site.add("LikenessFrameWeights", {**widgets, "image": site.input("image")})
    return {i: Link(node, i) for i in range(6)}


def rule_weights_from_strategy(site):
    strategy = site.input("weights_strategy")
    if strategy is None:
        raise Unconvertible("`weights_strategy` must be connected")
    node = site.add("LikenessFrameWeights", {"image": site.input("image"), "weights_strategy": strategy})
    return {i: Link(node, i) for i in range(6)}


def rule_regional(site):
    image, mask = site.input("image"), site.input("mask")
    if image is None:
        raise Unconvertible("`image` must be connected")
    region = dict(image=image, mask=mask, weight=site["image_weight"], weight_type=site["weight_type"],
                  start_at=site["start_at"], end_at=site["end_at"])
    result = {0: Params((region,))}
    for slot, name in ((1, "positive"), (2, "negative")):
        cond = site.input(name)
        if cond is not None and mask is not None:
            node = site.add("ConditioningSetMask", {"conditioning": cond, "mask": mask,
                                                    "strength": site["prompt_weight"],
                                                    "set_cond_area": site["set_cond_area"]}, row=4 * (slot - 1))
            result[slot] = Link(node, 0)
        else:
            result[slot] = cond
    site.conv.caveats.add("regional")
    return result


def rule_combine_params(site):
    regions = ()
    for i in range(1, 6):
        value = site.input(f"params_{i}")
        if isinstance(value, Params):
            regions += value.regions
        elif value is not None:
            raise Unconvertible(f"`params_{i}` does not come from Regional Conditioning or Combine Params")
    return {0: Params(regions)}


def rule_from_params(site):
    bundle = site.bundle()
    model, params = site.input("model"), site.input("ipadapter_params")
    if model is None or not isinstance(params, Params) or not params.regions:
        raise Unconvertible("`ipadapter_params` must come from Regional Conditioning / Combine Params")
    combine = _merge_mode(site)
    negative = _negative_refs(site, bundle, site.input("image_negative"))
    for index, region in enumerate(params.regions):
        start = len(site.new)
        site.column = 0
        refs = _references(site, bundle, region["image"])
        model = _chain(site, bundle, model, refs, weight=region["weight"], weight_type=region["weight_type"],
                       start_at=region["start_at"], end_at=region["end_at"], embeds_scaling=site["embeds_scaling"],
                       attn_mask=region["mask"], negative=negative, combine=combine)
        for node_id in site.new[start:]:
            _shift(site.g, node_id, 0, 640 * index)
    return {0: model}


RULES = {
    "IPAdapterModelLoader": rule_model_loader, "IPAdapterUnifiedLoader": rule_unified,
    "IPAdapterUnifiedLoaderFaceID": rule_unified_faceid, "IPAdapterUnifiedLoaderCommunity": rule_unified,
    "IPAdapterInsightFaceLoader": rule_insightface,
    "IPAdapter": rule_simple, "IPAdapterAdvanced": rule_advanced, "IPAdapterFaceID": rule_advanced,
    "IPAdapterMS": rule_advanced, "IPAdapterFaceIDKolors": rule_advanced,
    "IPAdapterBatch": rule_batch, "IPAAdapterFaceIDBatch": rule_batch,
    "IPAdapterClipVisionEnhancer": rule_enhancer, "IPAdapterClipVisionEnhancerBatch": rule_enhancer_batch,
    "IPAdapterPreciseStyleTransfer": rule_precise_style, "IPAdapterPreciseStyleTransferBatch": rule_precise_style,
    "IPAdapterPreciseComposition": rule_precise_composition,
    "IPAdapterPreciseCompositionBatch": rule_precise_composition,
    "IPAdapterStyleComposition": rule_style_composition, "IPAdapterStyleCompositionBatch": rule_style_composition,
    "IPAdapterTiled": rule_tiled, "IPAdapterTiledBatch": rule_tiled,
    "IPAdapterEmbeds": rule_embeds, "IPAdapterEmbedsBatch": rule_embeds,
    "IPAdapterEncoder": rule_encoder, "IPAdapterCombineEmbeds": rule_combine_embeds,
    "IPAdapterNoise": rule_noise, "PrepImageForClipVision": rule_prep,
    "IPAdapterSaveEmbeds": rule_save_embeds, "IPAdapterLoadEmbeds": rule_load_embeds,
    "IPAdapterWeights": rule_weights, "IPAdapterWeightsFromStrategy": rule_weights_from_strategy,
    "IPAdapterRegionalConditioning": rule_regional, "IPAdapterCombineParams": rule_combine_params,
    "IPAdapterFromParams": rule_from_params,
}
NO_EQUIVALENT = {
    "IPAdapterCombineWeights": "Likeness has no node that joins two FLOAT weight lists; build one schedule with "
                               "Likeness Frame Weights instead",
    "IPAdapterPromptScheduleFromWeightsStrategy": "Likeness has no prompt-schedule node; write the schedule for "
                                                  "your prompt-travel node by hand",
}


def _order(graph, ids):
    """Leading-pack nodes, each after the leading-pack nodes it reads from."""
    pending, done, order = list(ids), set(), []
    wanted = set(ids)
    while pending:
        progress = False
        for node_id in list(pending):
            deps = set()
            for name in _input_names(graph, node_id):
                src = graph.source(node_id, name)
                if src is not None and isinstance(graph, UIGraph):
                    src = graph.origin(src)
                if src is not None and src.node in wanted:
                    deps.add(src.node)
            if deps <= done:
                order.append(node_id)
                done.add(node_id)
                pending.remove(node_id)
                progress = True
        if not progress:
            order += pending  # a cycle: leave the rest in file order; each will fail to resolve and stay
            break
    return order


def _input_names(graph, node_id):
    node = graph.node(node_id)
    if isinstance(graph, UIGraph):
        return [s.get("name") for s in node.get("inputs") or []]
    return list(node.get("inputs", {}))


def _rewire(conv: Conversion, old_id, slot, value, converted):
    graph = conv.graph
    for target, name in graph.consumers(old_id, slot):
        if target in converted:  # it was rebuilt from this value already, and goes away
            continue
        if isinstance(graph, UIGraph) and graph.is_reroute(target):
            conv.reroutes.add(target)
            if not isinstance(value, Link) and all(t in converted for t, _ in graph.readers(target)):
                continue  # only converted nodes read through it; it goes away with them
        if isinstance(value, Link):
            graph.connect(value, target, name)
        elif value is None or value == DEFAULT_NEGATIVE:
            graph.disconnect(target, name)
        else:  # a Bundle or Params read by a node that was not converted: keep the old node for it
            conv.kept_for.add(old_id)


AFTER_LIKENESS = ("; it now comes after a Likeness node on the MODEL chain, where the leading pack stops with "
                  "\"no attribute 'add'\" (it extends an attention patch it expects to be its own): move it before "
                  "the first Likeness node of the chain")


def _warn_about_order(conv: Conversion):
    """A kept node of the leading pack that reads a MODEL patched by Likeness fails in that pack: say so."""
    graph = conv.graph

    def model_of(node_id):
        src = graph.source(node_id, "model") if graph.node(node_id) else None
        return graph.origin(src) if src is not None and isinstance(graph, UIGraph) else src

    for index, (node_id, kind, reason) in enumerate(conv.kept):
        current, seen = model_of(node_id), set()
        while current is not None and current.node not in seen:
            seen.add(current.node)
            if (graph.type_of(current.node) or "").startswith("Likeness"):
                conv.kept[index] = (node_id, kind, reason + AFTER_LIKENESS)
                break
            current = model_of(current.node)


def _drop_idle_reroutes(conv: Conversion):
    """Pass-through nodes on the converted paths that no longer lead anywhere (every reader was converted); the
    others are retyped to what they now carry."""
    graph = conv.graph
    pending = set(conv.reroutes)
    stack = list(pending)
    while stack:  # the whole chain after each one found
        for target, _ in graph.passes_to(stack.pop()):
            if graph.is_reroute(target) and target not in pending:
                pending.add(target)
                stack.append(target)
    changed = True
    while changed:
        changed = False
        for node_id in sorted(pending, key=str):
            if graph.node(node_id) is not None and graph.idle(node_id):
                graph.remove(node_id)
                pending.discard(node_id)
                changed = True
    for node_id in pending:
        node = graph.node(node_id)
        link = graph.feed(node_id)
        if node is None or link is None:
            continue
        typ = link[5]
        for slot in (node.get("inputs") or [])[:1] if node["type"] != GET else []:
            slot["type"] = "*" if node["type"] != SET else typ
        for out in node.get("outputs") or []:
            out["type"] = typ
        for k in graph.data["links"]:
            if k[1] == node_id:
                k[5] = typ


def convert(workflow: dict) -> tuple[dict, dict]:
    """(converted workflow, summary). The input is not modified."""
    if not isinstance(workflow, dict):
        raise BadWorkflow("the workflow must be a JSON object.")
    data = copy.deepcopy(workflow)
    is_ui = "nodes" in data or "links" in data
    graph = UIGraph(data) if is_ui else APIGraph(data)
    if len(graph.ids()) > MAX_NODES:
        raise BadWorkflow(f"the workflow has {len(graph.ids())} nodes; the converter reads at most {MAX_NODES}.")
    conv = Conversion(graph)
    leading = [i for i in graph.ids() if graph.type_of(i) in R.LAYOUTS]
    if is_ui:
        for node_id in leading:
            conv.layout_of[node_id] = _box(graph.node(node_id))
    for node_id in _order(graph, leading):
        kind = graph.type_of(node_id)
        if kind in NO_EQUIVALENT:
            conv.kept.append((node_id, kind, NO_EQUIVALENT[kind]))
            continue
        snapshot = copy.deepcopy(graph.data)
        next_id = getattr(graph, "next_id", None)
        site = None
        try:
            site = Site(conv, node_id)
            result = RULES[kind](site)
        except (Unconvertible, LookupError, TypeError, ValueError, AttributeError) as e:
            graph.data = snapshot
            if next_id is not None:
                graph.next_id = next_id
            reason = str(e) if isinstance(e, Unconvertible) else f"unexpected values ({type(e).__name__}: {e})"
            conv.kept.append((node_id, kind, reason))
            continue
        for slot, value in result.items():
            conv.out[(node_id, slot)] = value
        conv.converted.append((node_id, kind, graph.title(node_id), list(site.new)))
    # rewire what read the converted nodes, then drop them (unless an unconverted node still needs a bundle)
    converted = {c[0] for c in conv.converted}
    for (old, slot), value in list(conv.out.items()):
        _rewire(conv, old, slot, value, converted)
    for node_id, kind, _, _ in conv.converted:
        if node_id in conv.kept_for:
            continue
        graph.remove(node_id)
    if is_ui:
        _drop_idle_reroutes(conv)
    _warn_about_order(conv)
    if is_ui:
        _finish_layout(conv)
    return graph.data, summary(conv, is_ui)


def _finish_layout(conv: Conversion):
    data = conv.graph.data
    # each converted node's subgraph is wider than the node: push everything to its right by the extra width
    extra = []
    for old_id, _, _, new_ids in conv.converted:
        box = conv.layout_of.get(old_id)
        new = [conv.graph.node(i) for i in new_ids if conv.graph.node(i)]
        if not box or not new:
            continue
        right = max(_box(n)[0] + _box(n)[2] for n in new)
        extra.append((box[0], box[0] + box[2], right - (box[0] + box[2])))
    new_ids = {i for _, _, _, ids in conv.converted for i in ids}
    group_members = []
    for group in data.get("groups") or []:
        b = group.get("bounding") or [0, 0, 0, 0]
        inside = [n["id"] for n in data["nodes"] if b[0] <= _box(n)[0] < b[0] + b[2] and b[1] <= _box(n)[1] + 30 < b[1] + b[3]]
        for old_id, _, _, ids in conv.converted:
            box = conv.layout_of.get(old_id)
            if box and b[0] <= box[0] < b[0] + b[2] and b[1] <= box[1] + 30 < b[1] + b[3]:
                inside += ids
        group_members.append((group, inside))
    columns = {}
    for x0, x1, dx in extra:  # converted nodes in one column widen it once, by the widest subgraph
        key = round(x0 / 50)
        columns[key] = (x0, x1, max(dx, columns.get(key, (0, 0, 0))[2]))

    def shift_for(x):
        return sum(dx for _, x1, dx in columns.values() if dx > 0 and x >= x1 - 1)

    moved = {}
    for old_id, _, _, ids in conv.converted:  # new nodes move as their old node would have
        box = conv.layout_of.get(old_id)
        for i in ids:
            moved[i] = shift_for(box[0]) if box else 0
    for node in data["nodes"]:
        shift = moved[node["id"]] if node["id"] in moved else shift_for(_box(node)[0])
        if shift:
            node["pos"] = [node["pos"][0] + shift, node["pos"][1]]
    for old_id, kind, reason in conv.kept:
        box = conv.layout_of.get(old_id)
        if box:
            note = conv.graph.add_note(f"Not converted to Likeness ({kind}): {reason}.", (box[0], box[1] + box[3] + 40))
            conv.added.append(note)
    resolve_overlaps(data)
    for group, inside in group_members:
        boxes = [_box(conv.graph.node(i)) for i in inside if conv.graph.node(i)]
        if boxes:
            x0 = min(b[0] for b in boxes) - 20
            y0 = min(b[1] for b in boxes) - 40
            x1 = max(b[0] + b[2] for b in boxes) + 20
            y1 = max(b[1] + b[3] for b in boxes) + 20
            group["bounding"] = [x0, y0, x1 - x0, y1 - y0]


def summary(conv: Conversion, is_ui: bool) -> dict:
    converted = [{"id": old, "type": kind, "title": title, "became": [conv.graph.type_of(i) for i in new
                                                                      if conv.graph.type_of(i)]}
                 for old, kind, title, new in conv.converted]
    kept = [{"id": old, "type": kind, "reason": reason} for old, kind, reason in conv.kept]
    kept += [{"id": old, "type": conv.graph.type_of(old), "reason": "an unconverted node still reads its IPADAPTER "
              "or params output; the Likeness nodes that replace it are in place as well"}
             for old in sorted(conv.kept_for, key=str) if conv.graph.type_of(old)]
    caveats = [R.CAVEATS[key] for key in sorted(conv.caveats)]
    lines = [f"Converted {len(converted)} node(s) of the leading IP-Adapter pack to Likeness."]
    lines += [f"  {c['type']} #{c['id']} -> {', '.join(c['became']) or '(wiring only)'}" for c in converted]
    if kept:
        lines.append(f"Kept {len(kept)} node(s) as they were" + (" (a Note next to each says why):" if is_ui else ":"))
        lines += [f"  {k['type']} #{k['id']}: {k['reason']}" for k in kept]
    if caveats:
        lines.append("Numbers that may differ from the leading pack:")
        lines += [f"  - {c}" for c in caveats]
    return {"converted": converted, "kept": kept, "caveats": caveats, "text": "\n".join(lines)}


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or len(args) > 2 or args[0] in ("-h", "--help"):
        print(__doc__.strip().split("\n\n")[1] if __doc__ else "python -m nodes.migrate IN.json [OUT.json]")
        return 2
    source = args[0]
    target = args[1] if len(args) > 1 else source.rsplit(".json", 1)[0] + "_likeness.json"
    try:
        with open(source, encoding="utf-8") as f:
            workflow = json.load(f)
        converted, report = convert(workflow)
    except (OSError, json.JSONDecodeError, BadWorkflow, RecursionError, LookupError, TypeError, ValueError,
            AttributeError) as e:  # as the route answers them: a message, not a traceback
        print(f"Cannot convert {source}: {e}", file=sys.stderr)
        return 1
    with open(target, "w", encoding="utf-8") as f:
        json.dump(converted, f, indent=2)
        f.write("\n")
    print(report["text"])
    print(f"Wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
