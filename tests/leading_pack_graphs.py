"""Our own workflows in the leading IP-Adapter pack's saved format (cubiq/ComfyUI_IPAdapter_plus), for the
converter's tests. Written from that pack's node definitions (socket names, widget order, every widget layout
its history saved); no file of that pack is copied. Each graph samples with the core nodes, so the converted
graph can run through the executor on tiny models (the model and image names are those of workflows/)."""

from __future__ import annotations

SD15 = "v1-5-pruned-emaonly.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
CLIP_H = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
KOLORS_FACEID = "Kolors-IP-Adapter-FaceID-Plus.bin"
KOLORS = "Kolors-unet.safetensors"  # a Kolors model, as a Kolors loader pack would load it

# output types of the nodes these graphs use (leading pack and core)
OUTPUTS = {
    "CheckpointLoaderSimple": ["MODEL", "CLIP", "VAE"], "CLIPTextEncode": ["CONDITIONING"],
    "EmptyLatentImage": ["LATENT"], "KSampler": ["LATENT"], "VAEDecode": ["IMAGE"], "SaveImage": [],
    "LoadImage": ["IMAGE", "MASK"], "CLIPVisionLoader": ["CLIP_VISION"], "ImageBatch": ["IMAGE"],
    "SolidMask": ["MASK"], "Note": [],
    "IPAdapter": ["MODEL"], "IPAdapterAdvanced": ["MODEL"], "IPAdapterBatch": ["MODEL"],
    "IPAdapterFaceID": ["MODEL", "IMAGE"], "IPAAdapterFaceIDBatch": ["MODEL", "IMAGE"],
    "IPAdapterFaceIDKolors": ["MODEL", "IMAGE"], "IPAdapterTiled": ["MODEL", "IMAGE", "MASK"],
    "IPAdapterTiledBatch": ["MODEL", "IMAGE", "MASK"], "IPAdapterEmbeds": ["MODEL"],
    "IPAdapterEmbedsBatch": ["MODEL"], "IPAdapterStyleComposition": ["MODEL"],
    "IPAdapterStyleCompositionBatch": ["MODEL"], "IPAdapterMS": ["MODEL"], "IPAdapterClipVisionEnhancer": ["MODEL"],
    "IPAdapterClipVisionEnhancerBatch": ["MODEL"], "IPAdapterFromParams": ["MODEL"],
    "IPAdapterPreciseStyleTransfer": ["MODEL"], "IPAdapterPreciseStyleTransferBatch": ["MODEL"],
    "IPAdapterPreciseComposition": ["MODEL"], "IPAdapterPreciseCompositionBatch": ["MODEL"],
    "IPAdapterUnifiedLoader": ["MODEL", "IPADAPTER"], "IPAdapterUnifiedLoaderFaceID": ["MODEL", "IPADAPTER"],
    "IPAdapterUnifiedLoaderCommunity": ["MODEL", "IPADAPTER"], "IPAdapterModelLoader": ["IPADAPTER"],
    "IPAdapterInsightFaceLoader": ["INSIGHTFACE"], "IPAdapterEncoder": ["EMBEDS", "EMBEDS"],
    "IPAdapterCombineEmbeds": ["EMBEDS"], "IPAdapterNoise": ["IMAGE"], "PrepImageForClipVision": ["IMAGE"],
    "IPAdapterSaveEmbeds": [], "IPAdapterLoadEmbeds": ["EMBEDS"],
    "IPAdapterWeights": ["FLOAT", "FLOAT", "INT", "IMAGE", "IMAGE", "WEIGHTS_STRATEGY"],
    "IPAdapterWeightsFromStrategy": ["FLOAT", "FLOAT", "INT", "IMAGE", "IMAGE", "WEIGHTS_STRATEGY"],
    "IPAdapterRegionalConditioning": ["IPADAPTER_PARAMS", "CONDITIONING", "CONDITIONING"],
    "IPAdapterCombineParams": ["IPADAPTER_PARAMS"], "IPAdapterCombineWeights": ["FLOAT", "INT"],
    "IPAdapterPromptScheduleFromWeightsStrategy": ["STRING"],
}


class Workflow:
    """A UI-format (0.4) workflow, built node by node; nodes go left to right in columns."""

    def __init__(self):
        self.nodes, self.links, self.groups = [], [], []

    def add(self, type_, widgets=(), column=0, row=0, height=200, **inputs):
        node_id = len(self.nodes) + 1
        node = {"id": node_id, "type": type_, "pos": [column * 400, row * 300], "size": [320, height], "flags": {},
                "order": node_id, "mode": 0, "inputs": [], "properties": {"Node name for S&R": type_},
                "outputs": [{"name": t.lower(), "type": t, "links": [], "slot_index": i}
                            for i, t in enumerate(OUTPUTS[type_])],
                "widgets_values": list(widgets)}
        self.nodes.append(node)
        for name, (src, slot) in inputs.items():
            link_id = len(self.links) + 1
            typ = self.nodes[src - 1]["outputs"][slot]["type"]
            node["inputs"].append({"name": name, "type": typ, "link": link_id})
            self.nodes[src - 1]["outputs"][slot]["links"].append(link_id)
            self.links.append([link_id, src, slot, node_id, len(node["inputs"]) - 1, typ])
        return node_id

    def reroute(self, src, slot=0, column=0, row=0):
        """The frontend's Reroute node on an output (it saves an untyped input and the type it passes on)."""
        node_id = len(self.nodes) + 1
        typ = self.nodes[src - 1]["outputs"][slot]["type"]
        link_id = len(self.links) + 1
        self.nodes.append({"id": node_id, "type": "Reroute", "pos": [column * 400, row * 300 + 150], "size": [75, 26],
                           "flags": {}, "order": node_id, "mode": 0,
                           "inputs": [{"name": "", "type": "*", "link": link_id}],
                           "outputs": [{"name": "", "type": typ, "links": [], "slot_index": 0}],
                           "properties": {"showOutputText": False, "horizontal": False}})
        self.nodes[src - 1]["outputs"][slot]["links"].append(link_id)
        self.links.append([link_id, src, slot, node_id, 0, typ])
        return node_id

    def set_get(self, src, slot, name, column=0, row=0):
        """KJNodes' Set node on an output and a Get node of the same name; returns the Get node."""
        typ = self.nodes[src - 1]["outputs"][slot]["type"]
        link_id = len(self.links) + 1
        setter = len(self.nodes) + 1
        self.nodes.append({"id": setter, "type": "SetNode", "pos": [column * 400, row * 300 + 150], "size": [210, 58],
                           "flags": {"collapsed": True}, "order": setter, "mode": 0, "title": f"Set_{name}",
                           "inputs": [{"name": typ, "type": typ, "link": link_id}],
                           "outputs": [{"name": "*", "type": "*", "links": None}], "properties": {"previousName": name},
                           "widgets_values": [name]})
        self.nodes[src - 1]["outputs"][slot]["links"].append(link_id)
        self.links.append([link_id, src, slot, setter, 0, typ])
        getter = len(self.nodes) + 1
        self.nodes.append({"id": getter, "type": "GetNode", "pos": [column * 400 + 220, row * 300 + 150],
                           "size": [210, 58], "flags": {"collapsed": True}, "order": getter, "mode": 0,
                           "title": f"Get_{name}", "inputs": [],
                           "outputs": [{"name": typ, "type": typ, "links": [], "slot_index": 0}], "properties": {},
                           "widgets_values": [name]})
        return getter

    def sampled(self, model, ckpt, positive=None, negative=None, column=6, batch=1):
        latent = self.add("EmptyLatentImage", [64, 64, batch], column, 2)
        sampler = self.add("KSampler", [1, "fixed", 2, 4.0, "euler", "normal", 1.0], column, 0, model=(model, 0),
                           positive=positive or (self.text(ckpt, "a portrait", column - 1, 3), 0),
                           negative=negative or (self.text(ckpt, "blurry", column - 1, 4), 0),
                           latent_image=(latent, 0))
        decoded = self.add("VAEDecode", [], column + 1, 0, samples=(sampler, 0), vae=(ckpt, 2))
        self.add("SaveImage", ["migrated"], column + 2, 0, images=(decoded, 0))

    def text(self, ckpt, prompt, column, row):
        return self.add("CLIPTextEncode", [prompt], column, row, clip=(ckpt, 1))

    def data(self):
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": self.groups, "config": {}, "extra": {}, "version": 0.4}


def _base(checkpoint=SD15):
    w = Workflow()
    ckpt = w.add("CheckpointLoaderSimple", [checkpoint], 0, 0)
    clip = w.add("CLIPVisionLoader", [CLIP_H], 0, 1)
    image = w.add("LoadImage", ["likeness_subject_a.png", "image"], 0, 2)
    return w, ckpt, clip, image


def advanced_and_simple():
    """Old layouts: IPAdapter with 3 values, Advanced with 5; Prep (top), Noise negative, style and composition."""
    w, ckpt, clip, image = _base()
    adapter = w.add("IPAdapterModelLoader", ["ip-adapter-plus_sd15.safetensors"], 0, 3)
    prep = w.add("PrepImageForClipVision", ["LANCZOS", "top", 0.15], 1, 2, image=(image, 0))
    noise = w.add("IPAdapterNoise", ["fade", 0.3, 5], 1, 3, image_optional=(image, 0))
    a = w.add("IPAdapterAdvanced", [0.8, "ease in", "concat", 0.0, 1.0], 2, 0, model=(ckpt, 0),
              ipadapter=(adapter, 0), image=(prep, 0), image_negative=(noise, 0), clip_vision=(clip, 0))
    b = w.add("IPAdapterAdvanced", [0.7, "style and composition", "average", 0.0, 0.9, "K+V"], 3, 0, model=(a, 0),
              ipadapter=(adapter, 0), image=(image, 0), clip_vision=(clip, 0))
    w.groups.append({"title": "IP-Adapter", "bounding": [780, -60, 800, 500], "color": "#3f789e", "flags": {}})
    w.sampled(b, ckpt)
    return w.data()


def simple_unified():
    """The simple node in both layouts behind a Unified loader."""
    w, ckpt, clip, image = _base()
    loader = w.add("IPAdapterUnifiedLoader", ["PLUS (high strength)"], 1, 0, model=(ckpt, 0))
    a = w.add("IPAdapter", [0.8, 0.0, 1.0], 2, 0, model=(loader, 0), ipadapter=(loader, 1), image=(image, 0))
    b = w.add("IPAdapter", [0.5, 0.1, 0.9, "prompt is more important"], 3, 0, model=(a, 0), ipadapter=(loader, 1),
              image=(image, 0))
    w.sampled(b, ckpt)
    return w.data()


def embeds():
    """Encoder weights (one on a batch of two), Combine Embeds, Embeds (old 4 values), Save."""
    w, ckpt, clip, image = _base()
    other = w.add("LoadImage", ["likeness_subject_b.png", "image"], 0, 4)
    adapter = w.add("IPAdapterModelLoader", ["ip-adapter-plus_sd15.safetensors"], 0, 3)
    e1 = w.add("IPAdapterEncoder", [0.6], 1, 0, ipadapter=(adapter, 0), image=(image, 0), clip_vision=(clip, 0))
    both = w.add("ImageBatch", [], 0, 5, image1=(other, 0), image2=(image, 0))
    e2 = w.add("IPAdapterEncoder", [1.5], 1, 1, ipadapter=(adapter, 0), image=(both, 0), clip_vision=(clip, 0))
    combined = w.add("IPAdapterCombineEmbeds", ["average"], 2, 0, embed1=(e1, 0), embed2=(e2, 0))
    normed = w.add("IPAdapterCombineEmbeds", ["norm average"], 2, 1, embed1=(e1, 0), embed2=(e2, 0))
    applied = w.add("IPAdapterEmbeds", [0.8, "linear", 0.0, 1.0], 3, 0, model=(ckpt, 0), ipadapter=(adapter, 0),
                    pos_embed=(combined, 0), neg_embed=(e1, 1))
    applied = w.add("IPAdapterEmbeds", [0.3, "ease out", 0.0, 1.0, "K+V w/ C penalty"], 4, 0, model=(applied, 0),
                    ipadapter=(adapter, 0), pos_embed=(normed, 0))
    w.add("IPAdapterSaveEmbeds", ["migrated_embeds"], 3, 2, embeds=(combined, 0))
    w.sampled(applied, ckpt)
    return w.data()


def style_composition(reroutes=False):
    """SDXL: Style & Composition, the precise nodes, Mad Scientist with layer_weights. With `reroutes` (what the
    browser test converts), the frontend's Reroute nodes carry the adapter, the checkpoint's MODEL and the
    composition image."""
    w, ckpt, clip, image = _base(SDXL)
    comp = w.add("LoadImage", ["likeness_composition.png", "image"], 0, 4)
    adapter = w.add("IPAdapterModelLoader", ["ip-adapter-plus_sdxl_vit-h.safetensors"], 0, 3)
    first_model, first_adapter, comp_image = (ckpt, 0), (adapter, 0), (comp, 0)
    if reroutes:
        first_model = (w.reroute(ckpt, 0, 0.6, 0), 0)
        first_adapter = (w.reroute(adapter, 0, 0.6, 3), 0)
        comp_image = (w.reroute(comp, 0, 0.6, 4), 0)
    m = w.add("IPAdapterStyleComposition", [1.2, 0.9, False, "average", 0.0, 1.0, "V only"], 1, 0,
              model=first_model, ipadapter=first_adapter, image_style=(image, 0), image_composition=comp_image,
              clip_vision=(clip, 0))
    m = w.add("IPAdapterPreciseStyleTransfer", [0.6, 1.5, "concat", 0.0, 1.0, "V only"], 2, 0, model=(m, 0),
              ipadapter=(adapter, 0), image=(image, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterPreciseComposition", [0.5, 0.35, "concat", 0.0, 1.0, "K+mean(V) w/ C penalty"], 3, 0,
              model=(m, 0), ipadapter=(adapter, 0), image=(comp, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterMS", [0.8, 1.0, "composition precise", "concat", 0.0, 1.0, "V only", "3:1.0, 6:0.35"], 4, 0,
              model=(m, 0), ipadapter=(adapter, 0), image=(comp, 0), clip_vision=(clip, 0))
    w.sampled(m, ckpt, column=7)
    return w.data()


def animation():
    """Frame weights into the Batch nodes (unfold), Tiled, Enhancer; old Batch layout with 4 values."""
    w, ckpt, clip, image = _base()
    other = w.add("LoadImage", ["likeness_subject_b.png", "image"], 0, 4)
    frames = w.add("ImageBatch", [], 1, 3, image1=(image, 0), image2=(other, 0))
    adapter = w.add("IPAdapterModelLoader", ["ip-adapter-plus_sd15.safetensors"], 0, 3)
    weights = w.add("IPAdapterWeights", ["1.0, 0.2", "linear", 2, 0, 9999, 0, 0, "full batch"], 1, 1,
                    image=(frames, 0))
    m = w.add("IPAdapterBatch", [1.0, "linear", 0.0, 1.0, "V only", 0], 2, 0, model=(ckpt, 0), ipadapter=(adapter, 0),
              image=(weights, 3), clip_vision=(clip, 0))
    w.nodes[m - 1]["inputs"].append({"name": "weight", "type": "FLOAT", "widget": {"name": "weight"},
                                     "link": len(w.links) + 1})
    w.nodes[weights - 1]["outputs"][0]["links"].append(len(w.links) + 1)
    w.links.append([len(w.links) + 1, weights, 0, m, len(w.nodes[m - 1]["inputs"]) - 1, "FLOAT"])
    m = w.add("IPAdapterBatch", [0.4, "ease in-out", 0.0, 1.0], 3, 0, model=(m, 0), ipadapter=(adapter, 0),
              image=(frames, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterTiled", [0.5, "linear", "concat", 0.0, 1.0, 0.1, "V only"], 4, 0, model=(m, 0),
              ipadapter=(adapter, 0), image=(image, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterTiledBatch", [0.4, "linear", 0.0, 1.0, 0.0, "V only", 1], 5, 0, model=(m, 0),
              ipadapter=(adapter, 0), image=(frames, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterClipVisionEnhancer", [0.6, "linear", "concat", 0.0, 1.0, "V only", 2, 0.8], 6, 0,
              model=(m, 0), ipadapter=(adapter, 0), image=(image, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterClipVisionEnhancerBatch", [0.6, "linear", 0.0, 1.0, "V only", 2, 0.5, 0], 7, 0,
              model=(m, 0), ipadapter=(adapter, 0), image=(frames, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterPreciseStyleTransferBatch", [0.5, 1.0, 0.0, 1.0, "V only"], 8, 0, model=(m, 0),
              ipadapter=(adapter, 0), image=(frames, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterPreciseCompositionBatch", [0.5, 0.2, 0.0, 1.0, "V only"], 9, 0, model=(m, 0),
              ipadapter=(adapter, 0), image=(frames, 0), clip_vision=(clip, 0))
    again = w.add("IPAdapterWeightsFromStrategy", [], 2, 3, weights_strategy=(weights, 5), image=(frames, 0))
    m = w.add("IPAdapterStyleCompositionBatch", [0.5, 0.5, True, 0.0, 1.0, "V only"], 10, 0, model=(m, 0),
              ipadapter=(adapter, 0), image_style=(again, 3), image_composition=(frames, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterEmbedsBatch", [0.5, "linear", 0.0, 1.0, "V only"], 11, 0, model=(m, 0),
              ipadapter=(adapter, 0),
              pos_embed=(w.add("IPAdapterEncoder", [1.0], 10, 3, ipadapter=(adapter, 0), image=(frames, 0),
                               clip_vision=(clip, 0)), 0))
    w.sampled(m, ckpt, column=12, batch=2)
    return w.data()


def old_layouts():
    """The apply nodes as saved before embeds_scaling and encode_batch_size existed."""
    w, ckpt, clip, image = _base()
    adapter = w.add("IPAdapterModelLoader", ["ip-adapter-plus_sd15.safetensors"], 0, 3)
    m = w.add("IPAdapterBatch", [0.5, "linear", 0.0, 1.0, "K+V"], 1, 0, model=(ckpt, 0), ipadapter=(adapter, 0),
              image=(image, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterTiled", [0.5, "linear", "concat", 0.0, 1.0, 0.0], 2, 0, model=(m, 0),
              ipadapter=(adapter, 0), image=(image, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterTiledBatch", [0.4, "linear", 0.0, 1.0, 0.0], 3, 0, model=(m, 0),
              ipadapter=(adapter, 0), image=(image, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterTiledBatch", [0.4, "linear", 0.0, 1.0, 0.0, "V only"], 4, 0, model=(m, 0),
              ipadapter=(adapter, 0), image=(image, 0), clip_vision=(clip, 0))
    embeds = w.add("IPAdapterEncoder", [1.0], 4, 2, ipadapter=(adapter, 0), image=(image, 0), clip_vision=(clip, 0))
    m = w.add("IPAdapterEmbeds", [0.5, "linear", 0.0, 1.0, "V only"], 5, 0, model=(m, 0), ipadapter=(adapter, 0),
              pos_embed=(embeds, 0))
    weights = w.add("IPAdapterWeights", ["1.0, 0.5", "ease_in", 3, 0, 9999], 5, 3)
    m = w.add("IPAdapterAdvanced", [0.5, "linear", "concat", 0.0, 1.0, "V only"], 6, 0, model=(m, 0),
              ipadapter=(adapter, 0), image=(image, 0),
              clip_vision=(clip, 0))
    w.sampled(m, ckpt, column=7)
    return w.data()


def faceid():
    """FaceID in its old 6-value layout and the newest, the Batch variant and face_image; InsightFace (1 value)."""
    w, ckpt, clip, _ = _base()
    face = w.add("LoadImage", ["likeness_face_1.png", "image"], 0, 4)
    insight = w.add("IPAdapterInsightFaceLoader", ["CPU"], 0, 5)
    adapter = w.add("IPAdapterModelLoader", ["ip-adapter-faceid-plusv2_sd15.bin"], 0, 3)
    negative = w.add("LoadImage", ["likeness_subject_b.png", "image"], 0, 6)
    plain = w.add("IPAdapterModelLoader", ["ip-adapter-faceid_sd15.bin"], 0, 7)
    # FaceID Plus with a negative image (its CLIP features become the uncond crops' side)
    m = w.add("IPAdapterFaceID", [0.9, 1.5, "linear", "concat", 0.0, 1.0], 1, 0, model=(ckpt, 0),
              ipadapter=(adapter, 0), image=(face, 0), image_negative=(negative, 0), clip_vision=(clip, 0),
              insightface=(insight, 0))
    m = w.add("IPAAdapterFaceIDBatch", [0.5, 1.0, "linear", "concat", 0.0, 1.0, "V only"], 2, 0, model=(m, 0),
              ipadapter=(adapter, 0), image=(face, 0), clip_vision=(clip, 0), insightface=(insight, 0))
    # plain FaceID with a negative image, which the leading pack does not use with it
    m = w.add("IPAdapterFaceID", [0.3, 1.0, "ease out", "average", 0.0, 1.0, "V only"], 3, 0, model=(m, 0),
              ipadapter=(plain, 0), image=(face, 0), image_negative=(negative, 0), clip_vision=(clip, 0),
              insightface=(insight, 0))
    m = w.add("IPAAdapterFaceIDBatch", [0.3, 1.0, "linear", "concat", 0.0, 1.0], 4, 0, model=(m, 0),
              ipadapter=(adapter, 0), image=(face, 0), clip_vision=(clip, 0), insightface=(insight, 0))
    m = w.add("IPAAdapterFaceIDBatch", [0.3, 1.0, "linear", "concat", 0.0, 1.0, "V only", "0:1.0, 15:0.5"], 5, 0,
              model=(m, 0), ipadapter=(adapter, 0), image=(face, 0), clip_vision=(clip, 0),
              insightface=(insight, 0))
    w.sampled(m, ckpt)
    return w.data()


def faceid_unified():
    """Unified FaceID and Community loaders on SDXL, 8-value FaceID (layer_weights era)."""
    w, ckpt, clip, image = _base(SDXL)
    face = w.add("LoadImage", ["likeness_face_1.png", "image"], 0, 4)
    loader = w.add("IPAdapterUnifiedLoaderFaceID", ["FACEID PLUS V2", 0.6, "CPU"], 1, 0, model=(ckpt, 0))
    m = w.add("IPAdapterFaceID", [0.8, 2.0, "linear", "concat", 0.0, 1.0, "V only", ""], 2, 0, model=(loader, 0),
              ipadapter=(loader, 1), image=(face, 0))
    comp = w.add("IPAdapterUnifiedLoaderCommunity", ["Composition"], 3, 0, model=(m, 0))
    m = w.add("IPAdapterAdvanced", [1.0, "composition", "concat", 0.0, 1.0, "V only"], 4, 0, model=(comp, 0),
              ipadapter=(comp, 1), image=(image, 0))
    w.sampled(m, ckpt, column=5)
    return w.data()


def kolors_community(checkpoint=KOLORS):
    """The Community loader's Kolors preset. On the Kolors checkpoint (the tests' loader gives a tiny Kolors-layout
    UNet, as a Kolors loader pack does) it runs; on SDXL the run stops with the message that this is no Kolors."""
    w, ckpt, clip, image = _base(checkpoint)
    kolors = w.add("IPAdapterUnifiedLoaderCommunity", ["Kolors"], 1, 0, model=(ckpt, 0))
    m = w.add("IPAdapterAdvanced", [0.6, "style transfer precise", "concat", 0.0, 1.0, "V only"], 2, 0,
              model=(kolors, 0), ipadapter=(kolors, 1), image=(image, 0))
    w.sampled(m, ckpt, column=3)
    return w.data()


def kolors_faceid(checkpoint=KOLORS):
    """FaceID Kolors with antelopev2, on the Kolors checkpoint or (the no-Kolors message) on SDXL."""
    w, ckpt, clip, _ = _base(checkpoint)
    face = w.add("LoadImage", ["likeness_face_1.png", "image"], 0, 4)
    insight = w.add("IPAdapterInsightFaceLoader", ["CPU", "antelopev2"], 0, 5)
    adapter = w.add("IPAdapterModelLoader", [KOLORS_FACEID], 0, 3)
    m = w.add("IPAdapterFaceIDKolors", [0.7, 1.0, 0.8, "linear", "concat", 0.0, 1.0, "V only"], 1, 0,
              model=(ckpt, 0), ipadapter=(adapter, 0), image=(face, 0), insightface=(insight, 0),
              clip_vision=(clip, 0))
    w.sampled(m, ckpt, column=2)
    return w.data()


def reroutes():
    """Pass-through nodes on the adapter's and the MODEL's paths: Reroutes (one chained after another, one of
    rgthree's) and a KJNodes Set / Get pair carrying the IPADAPTER and another carrying a MODEL."""
    w, ckpt, clip, image = _base()
    adapter = w.add("IPAdapterModelLoader", ["ip-adapter-plus_sd15.safetensors"], 0, 3)
    r1 = w.reroute(adapter, 0, 1, 3)
    r2 = w.reroute(r1, 0, 2, 3)
    get_adapter = w.set_get(adapter, 0, "ipa", 0, 4)
    model_in = w.reroute(ckpt, 0, 1, 1)
    w.nodes[model_in - 1]["type"] = "Reroute (rgthree)"
    a = w.add("IPAdapterAdvanced", [0.7, "linear", "concat", 0.0, 1.0, "V only"], 2, 0, model=(model_in, 0),
              ipadapter=(r1, 0), image=(image, 0), clip_vision=(clip, 0))
    b = w.add("IPAdapterAdvanced", [0.5, "ease out", "concat", 0.0, 1.0, "V only"], 3, 0, model=(a, 0),
              ipadapter=(r2, 0), image=(image, 0), clip_vision=(clip, 0))
    get_model = w.set_get(b, 0, "patched", 3, 2)
    c = w.add("IPAdapterAdvanced", [0.3, "linear", "concat", 0.0, 1.0, "V only"], 4, 0, model=(get_model, 0),
              ipadapter=(get_adapter, 0), image=(image, 0), clip_vision=(clip, 0))
    model_out = w.reroute(c, 0, 5, 1)
    w.sampled(model_out, ckpt, column=6)
    return w.data()


def regional():
    """Regional Conditioning in both layouts, Combine Params and From Params."""
    w, ckpt, clip, image = _base()
    other = w.add("LoadImage", ["likeness_subject_b.png", "image"], 0, 4)
    adapter = w.add("IPAdapterModelLoader", ["ip-adapter-plus_sd15.safetensors"], 0, 3)
    left = w.add("SolidMask", [1.0, 64, 64], 1, 3)
    right = w.add("SolidMask", [0.5, 64, 64], 1, 4)
    pos_a = w.text(ckpt, "a red coat", 1, 0)
    pos_b = w.text(ckpt, "a blue hat", 1, 1)
    neg = w.text(ckpt, "blurry", 1, 2)
    ra = w.add("IPAdapterRegionalConditioning", [0.8, 1.0, "linear", 0.0, 1.0], 2, 0, image=(image, 0),
               mask=(left, 0), positive=(pos_a, 0), negative=(neg, 0))
    rb = w.add("IPAdapterRegionalConditioning", ["default", 0.6, 1.5, "ease in", 0.0, 0.8], 2, 1, image=(other, 0),
               mask=(right, 0), positive=(pos_b, 0))
    params = w.add("IPAdapterCombineParams", [], 3, 0, params_1=(ra, 0), params_2=(rb, 0))
    m = w.add("IPAdapterFromParams", ["concat", "V only"], 4, 0, model=(ckpt, 0), ipadapter=(adapter, 0),
              ipadapter_params=(params, 0), clip_vision=(clip, 0))
    w.sampled(m, ckpt, positive=(rb, 1), negative=(ra, 2))
    return w.data()


def unconvertible():
    """Nodes with no Likeness equivalent (and a layout no version saved): they stay, each with a Note."""
    w, ckpt, clip, image = _base()
    adapter = w.add("IPAdapterModelLoader", ["ip-adapter-plus_sd15.safetensors"], 0, 3)
    weights = w.add("IPAdapterWeights", ["1.0, 0.0", "linear", 4, 0, 9999], 1, 1)
    w.add("IPAdapterCombineWeights", [0.0, 0.0], 2, 1, weights_1=(weights, 0), weights_2=(weights, 1))
    w.add("IPAdapterPromptScheduleFromWeightsStrategy", ["a cat"], 2, 2, weights_strategy=(weights, 5))
    m = w.add("IPAdapterAdvanced", [0.5, "linear", "concat", 0.0, 1.0, "V only"], 1, 0, model=(ckpt, 0),
              ipadapter=(adapter, 0), image=(image, 0), clip_vision=(clip, 0))  # converts, and comes first
    m = w.add("IPAdapterAdvanced", [1.0, "linear", "concat", 0.0, 1.0, "V only", "extra", "values"], 2, 0,
              model=(m, 0), ipadapter=(adapter, 0), image=(image, 0), clip_vision=(clip, 0))
    w.add("IPAdapterLoadEmbeds", ["alice.ipadpt"], 1, 4)
    w.sampled(m, ckpt)
    return w.data()


RUNNABLE = {"old_layouts": old_layouts, "advanced_and_simple": advanced_and_simple, "embeds": embeds,
            "style_composition": style_composition, "animation": animation, "faceid": faceid, "regional": regional,
            "simple_unified": simple_unified, "faceid_unified": faceid_unified, "reroutes": reroutes,
            "kolors_community": kolors_community, "kolors_faceid": kolors_faceid}
# converted, validated and run on SDXL: the run ends in the message that this ComfyUI has no Kolors of its own
NO_KOLORS = {"kolors_community_on_sdxl": lambda: kolors_community(SDXL),
             "kolors_faceid_on_sdxl": lambda: kolors_faceid(SDXL)}
