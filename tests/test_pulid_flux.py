"""PuLID-FLUX on a tiny FLUX (4 double, 8 single blocks) through ComfyUI's dit block replaces: parity with a plain
forward that inserts the cross-attention at the reference's intervals, no forward replaced, nothing left behind,
other replaces still called, extra arguments passed on, identity keys/values computed once per run."""

from __future__ import annotations

import copy

import pytest
import torch

import builders
import comfy.ldm.flux.model
import comfy.patcher_extension
import comfy.sample
import comfy.utils
import folder_paths
import nodes
from comfy.ldm.flux.layers import timestep_embedding
from conftest import CAPTURED, pack, run_prompt
from test_pulid_encoders import group, reference_ca

adapter_mod = pack("nodes.core.adapter")
references = pack("nodes.core.references")
references_io = pack("nodes.core.references_io")
pulid = pack("nodes.core.pulid")
pulid_flux = pack("nodes.core.pulid_flux")
pulid_encoders = pack("nodes.core.pulid_encoders")
pulid_patch = pack("nodes.host.pulid_patch")
errors = pack("nodes.core.errors")
reference_files = pack("nodes.host.reference_files")

CONTEXT = builders.TINY_CONTEXT


@pytest.fixture(scope="module")
def flux_adapter(tmp_path_factory):
    state = builders.tiny_pulid_state("flux", seed=11, flux_blocks=4, flux_dim=64)
    path = builders.save_safetensors(str(tmp_path_factory.mktemp("pulid") / "pulid_flux_tiny.safetensors"), state)
    return adapter_mod.load_adapter(path), state


def face_references(count=1, seed=0, model="antelopev2"):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(count, 512, generator=gen) * 4
    identity = references.FaceIdentity(model, torch.nn.functional.normalize(raw, dim=-1), raw)
    parsed = references.ParsedFaceFeatures("tiny EVA-CLIP", torch.nn.functional.normalize(
        torch.randn(count, 32, generator=gen), dim=-1), torch.randn(count, 5, 17, 64, generator=gen))
    return references.References(face=identity, parsed_face=parsed)


def tokens_for(adapter, seed=0):
    return references.project_references(adapter, face_references(seed=seed))


def sampled_options(patched, sigma, chunks=(0,)):
    """transformer_options as the sampler builds them: the clone's options, its wrappers, sigmas and chunk order."""
    options = copy.deepcopy(patched.model_options["transformer_options"])
    comfy.patcher_extension.merge_nested_dicts(options.setdefault("wrappers", {}), patched.wrappers, copy_dict1=False)
    options["sigmas"] = sigma
    options["cond_or_uncond"] = list(chunks)
    return options


def inputs(batch=1, seed=3, h=8, w=12):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, h, w, generator=gen)
    context = torch.randn(batch, 7, CONTEXT, generator=gen)
    y = torch.randn(batch, builders.TINY_FLUX["vec_in_dim"], generator=gen)
    t = torch.full((batch,), 0.6)
    guidance = torch.full((batch,), 3.5)
    return x, t, context, y, guidance


def plain_forward(dm, x, t, context, y, guidance, ca=None, weight=1.0, identity=None):
    """FLUX's forward written out (the reference's flux/model.py with ComfyUI's modules), inserting
    img += weight * CA_i(identity, img) after double blocks 0, 2, ... and single blocks 0, 4, ... when `ca` is given."""
    img, img_ids = dm.process_img(x)
    n = img.shape[1]
    txt_ids = torch.zeros(x.shape[0], context.shape[1], 3)
    img = dm.img_in(img)
    vec = dm.time_in(timestep_embedding(t, 256)) + dm.guidance_in(timestep_embedding(guidance, 256))
    vec = vec + dm.vector_in(y)
    txt = dm.txt_in(context)
    pe = dm.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
    k = 0
    for i, block in enumerate(dm.double_blocks):
        img, txt = block(img=img, txt=txt, vec=vec, pe=pe)
        if ca is not None and i % 2 == 0:
            img = img + weight * reference_ca(ca[k], identity, img)
            k += 1
    img = torch.cat((txt, img), 1)
    for i, block in enumerate(dm.single_blocks):
        img = block(img, vec=vec, pe=pe)
        real, txt_part = img[:, txt.shape[1]:], img[:, :txt.shape[1]]
        if ca is not None and i % 4 == 0:
            real = real + weight * reference_ca(ca[k], identity, real)
            k += 1
        img = torch.cat((txt_part, real), 1)
    out = dm.final_layer(img[:, txt.shape[1]:], vec)[:, :n]
    h, w = (x.shape[-2] + 1) // 2, (x.shape[-1] + 1) // 2
    out = out.reshape(x.shape[0], h, w, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(x.shape[0], 16, h * 2, w * 2)
    return out[:, :, :x.shape[-2], :x.shape[-1]]


def apply(model, adapter, tokens, weight=1.0, start_at=0.0, end_at=1.0, mask=None):
    return pulid_patch.apply_pulid(model, adapter, tokens, weight, start_at=start_at, end_at=end_at, attn_mask=mask)


def test_the_tiny_flux_output_matches_a_forward_with_the_reference_insertions(flux_adapter):
    adapter, state = flux_adapter
    model = builders.build_flux()
    tokens = tokens_for(adapter)
    patched = apply(model, adapter, tokens, weight=0.8)
    x, t, context, y, guidance = inputs()
    dm = model.model.diffusion_model
    ca = [group(state, f"pulid_ca.{i}.") for i in range(4)]
    with torch.no_grad():
        plain = dm(x, t, context, y, guidance, transformer_options=sampled_options(model, t))
        torch.testing.assert_close(plain, plain_forward(dm, x, t, context, y, guidance), rtol=1e-4, atol=1e-5)
        got = dm(x, t, context, y, guidance, transformer_options=sampled_options(patched, t))
        expected = plain_forward(dm, x, t, context, y, guidance, ca, 0.8, tokens.cond.reshape(1, -1, CONTEXT))
    assert not torch.allclose(got, plain, atol=1e-3)  # the identity changes the output
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_one_insertion_adds_perceiver_attention_ca_to_the_image_tokens(flux_adapter):
    adapter, state = flux_adapter
    tokens = tokens_for(adapter)
    blocks = (("double_block", 0), ("double_block", 2), ("single_block", 0), ("single_block", 4))
    insertion = pulid_flux.IdentityInsertion(adapter.flux_modules, blocks, *tokens.flat(), weight=0.7,
                                             sigma_start=1.0, sigma_end=0.0)
    gen = torch.Generator().manual_seed(5)
    img, txt = torch.randn(2, 24, 64, generator=gen), torch.randn(2, 7, 64, generator=gen)
    options = {"sigmas": torch.tensor([0.5, 0.5]), "cond_or_uncond": [0, 1]}
    cond, uncond = (t.reshape(1, -1, CONTEXT) for t in tokens.flat())

    double = pulid_flux.FluxBlockInsertion(("double_block", 2), ((insertion, 1),))
    out = double({"img": img, "txt": txt, "transformer_options": options},
                 {"original_block": lambda args: {"img": args["img"] * 2, "txt": args["txt"]}})
    sd = group(state, "pulid_ca.1.")
    expected = torch.cat([2 * img[:1] + 0.7 * reference_ca(sd, cond, 2 * img[:1]),
                          2 * img[1:] + 0.7 * reference_ca(sd, uncond, 2 * img[1:])])
    torch.testing.assert_close(out["img"], expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(out["txt"], txt)

    single = pulid_flux.FluxBlockInsertion(("single_block", 4), ((insertion, 3),))
    joint = torch.cat([txt, img], dim=1)
    token = pulid_flux._CALL.set(pulid_flux.FluxCall((4, 6), 7))
    try:
        out = single({"img": joint, "transformer_options": options}, {"original_block": lambda args: {"img": args["img"]}})
    finally:
        pulid_flux._CALL.reset(token)
    sd = group(state, "pulid_ca.3.")
    assert torch.equal(out["img"][:, :7], txt)  # the text part is left alone
    expected = torch.cat([img[:1] + 0.7 * reference_ca(sd, cond, img[:1]), img[1:] + 0.7 * reference_ca(sd, uncond, img[1:])])
    torch.testing.assert_close(out["img"][:, 7:], expected, rtol=1e-4, atol=1e-5)


def test_replaces_and_wrapper_pass_extra_arguments_on(flux_adapter):
    adapter, _ = flux_adapter
    insertion = pulid_flux.IdentityInsertion(adapter.flux_modules[:1], (("double_block", 0),), *tokens_for(adapter).flat(),
                                             1.0, 1.0, 0.0)
    seen = {}

    def foreign(args, extra, *more, **kwargs):
        seen["foreign"] = (more, kwargs)
        return extra["original_block"](args, *more, **kwargs)

    def original(args, *more, **kwargs):
        seen["original"] = (more, kwargs)
        return {"img": args["img"], "txt": args["txt"]}

    replace = pulid_flux.FluxBlockInsertion(("double_block", 0), ((insertion, 0),), base=foreign)
    args = {"img": torch.randn(1, 6, 64), "txt": torch.randn(1, 3, 64), "transformer_options": {}}
    replace(args, {"original_block": original}, "positional", block_index=0, future_option=True)
    assert seen["foreign"] == (("positional",), {"block_index": 0, "future_option": True})
    assert seen["original"] == (("positional",), {"block_index": 0, "future_option": True})

    def executor(*a, **kw):
        seen["executor"] = (a, kw)
        return "ran"

    executor.class_obj = None
    wrapper = pulid_flux.FluxCallShape()
    assert wrapper(executor, torch.zeros(1, 16, 8, 8), None, torch.zeros(1, 5, 4), latent_shapes=[(1, 16, 8, 8)]) == "ran"
    assert seen["executor"][1] == {"latent_shapes": [(1, 16, 8, 8)]}
    assert pulid_flux.current_call() is None  # reset when the call returns


def test_a_replace_set_before_is_still_called_and_two_applies_add(flux_adapter):
    adapter, state = flux_adapter
    model = builders.build_flux().clone()
    calls = []

    def other_pack(args, extra, *more, **kwargs):
        calls.append(1)
        out = extra["original_block"](args)
        return {"img": out["img"] + 0.01, "txt": out["txt"]}

    model.set_model_patch_replace(other_pack, "dit", "double_block", 0)
    t1, t2 = tokens_for(adapter, seed=1), tokens_for(adapter, seed=2)
    one = apply(model, adapter, t1, weight=0.5)
    both = apply(one, adapter, t2, weight=0.3)
    x, t, context, y, guidance = inputs()
    dm = model.model.diffusion_model
    with torch.no_grad():
        got = dm(x, t, context, y, guidance, transformer_options=sampled_options(both, t))
    assert calls  # the other pack's replace ran
    replace = both.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    assert replace.base is other_pack and len(replace.entries) == 2

    # at the first double block: the block, the other pack's +0.01, then both identities' terms from that output
    img, img_ids = dm.process_img(x)
    with torch.no_grad():
        txt = dm.txt_in(context)
        vec = dm.time_in(timestep_embedding(t, 256)) + dm.guidance_in(timestep_embedding(guidance, 256)) + \
            dm.vector_in(y)
        pe = dm.pe_embedder(torch.cat((torch.zeros(1, 7, 3), img_ids), dim=1))

        def block(a):  # the block adds to txt in place: give it its own copy
            return dict(zip(("img", "txt"), dm.double_blocks[0](img=a["img"], txt=a["txt"].clone(), vec=vec, pe=pe)))

        h = block({"img": dm.img_in(img), "txt": txt})["img"] + 0.01
        sd = group(state, "pulid_ca.0.")
        expected = h + 0.5 * reference_ca(sd, t1.cond.reshape(1, -1, CONTEXT), h) + \
            0.3 * reference_ca(sd, t2.cond.reshape(1, -1, CONTEXT), h)
        out = replace({"img": dm.img_in(img), "txt": txt, "vec": vec, "pe": pe,
                       "transformer_options": {"sigmas": t, "cond_or_uncond": [0]}}, {"original_block": block})
    assert torch.isfinite(got).all()
    torch.testing.assert_close(out["img"], expected, rtol=1e-4, atol=1e-5)


def test_identity_keys_values_are_computed_once_and_shared_by_clones(flux_adapter, monkeypatch):
    adapter, _ = flux_adapter
    model = builders.build_flux()
    patched = apply(model, adapter, tokens_for(adapter))
    calls = []
    original = pulid_encoders.PulidFluxCrossAttention.identity_keys_values
    monkeypatch.setattr(pulid_encoders.PulidFluxCrossAttention, "identity_keys_values",
                        lambda self, x: calls.append(1) or original(self, x))
    clone = patched.clone()
    dit = patched.model_options["transformer_options"]["patches_replace"]["dit"]
    dit_clone = clone.model_options["transformer_options"]["patches_replace"]["dit"]
    assert all(dit[k].entries[0][0] is dit_clone[k].entries[0][0] for k in dit)  # one insertion, shared
    positive = builders.flux_conditioning()
    latent = torch.zeros(1, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    comfy.sample.sample(clone, noise, 3, 1.0, "euler", "simple", positive, positive, latent, seed=0)
    assert not calls  # never per step


def test_no_forward_is_replaced_and_nothing_is_left_behind(flux_adapter):
    adapter, _ = flux_adapter
    model = builders.build_flux(seed=5)
    dm = model.model.diffusion_model
    params = {k: v.clone() for k, v in dm.state_dict().items()}
    options_before = copy.deepcopy(model.model_options)
    positive = builders.flux_conditioning(seed=4)
    latent = torch.zeros(1, 16, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 1)

    def run(m):
        return comfy.sample.sample(m, noise, 2, 1.0, "euler", "simple", positive, positive, latent, seed=1)

    before = run(model)
    attributes = {name: set(vars(m)) for name, m in dm.named_modules()}  # after ComfyUI's own loading
    with_pulid = run(apply(model, adapter, tokens_for(adapter)))
    after = run(model)
    assert not torch.equal(with_pulid, before)
    assert torch.equal(after, before)  # the MODEL PuLID was given gives bit-identical output afterwards
    assert "forward_orig" not in vars(dm) and "forward" not in vars(dm)
    assert type(dm).forward_orig is comfy.ldm.flux.model.Flux.forward_orig
    assert {name: set(vars(m)) for name, m in dm.named_modules()} == attributes
    assert all(torch.equal(v, params[k]) for k, v in dm.state_dict().items())
    assert model.model_options == options_before and not model.wrappers.get(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL)


def test_the_sigma_window_and_the_mask_limit_the_identity(flux_adapter):
    adapter, _ = flux_adapter
    model = builders.build_flux()
    tokens = tokens_for(adapter)
    x, t, context, y, guidance = inputs(h=8, w=8)
    dm = model.model.diffusion_model

    def out(m, sigma):
        with torch.no_grad():
            return dm(x, sigma, context, y, guidance, transformer_options=sampled_options(m, sigma))

    late = apply(model, adapter, tokens, start_at=0.5, end_at=1.0)
    sampling = model.get_model_object("model_sampling")
    high, low = torch.tensor([float(sampling.percent_to_sigma(0.2))]), torch.tensor([float(
        sampling.percent_to_sigma(0.8))])
    assert torch.equal(out(late, high), out(model, high))  # before start_at: as if absent
    assert not torch.allclose(out(late, low), out(model, low))

    nothing = apply(model, adapter, tokens, mask=torch.zeros(1, 64, 64))
    assert torch.equal(out(nothing, low), out(model, low))
    left = torch.zeros(1, 64, 64)
    left[:, :, :32] = 1
    half = apply(model, adapter, tokens, mask=left)
    insertion = half.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)].entries[0][0]
    mask = insertion.mask_on(16, pulid_flux.FluxCall((4, 4), 7), 1, 1)[0, :, 0].reshape(4, 4)
    assert torch.equal(mask, torch.tensor([[1.0, 1, 0, 0]] * 4))


def test_pulid_files_refuse_the_wrong_model(flux_adapter, tmp_path):
    adapter, _ = flux_adapter
    sdxl = builders.build_unet("sdxl")
    with pytest.raises(errors.IncompatibleError, match="pulid_flux_tiny.safetensors.*for FLUX.*not a FLUX DiT.*70 "
                                                       "cross-attention sites"):
        apply(sdxl, adapter, tokens_for(adapter))
    v11 = adapter_mod.load_adapter(builders.save_safetensors(str(tmp_path / "pulid_v1.1.safetensors"),
                                                             builders.tiny_pulid_state("v1.1", widths=[32] * 70)))
    with pytest.raises(errors.IncompatibleError, match="pulid_v1.1.safetensors.*the MODEL is a FLUX DiT.*"
                                                       "pulid_flux_v0.9.1.safetensors"):
        apply(builders.build_flux(), v11, references.project_references(v11, face_references()))
    bigger = builders.build_flux(depth=6, depth_single_blocks=8)
    with pytest.raises(errors.IncompatibleError, match="4 cross-attention modules.*takes 5"):
        apply(bigger, adapter, tokens_for(adapter))


def test_pulid_needs_antelopev2_faces_with_parsed_features(flux_adapter):
    adapter, _ = flux_adapter
    with pytest.raises(errors.IncompatibleError, match="antelopev2.*buffalo_l.*Likeness Face Model Loader"):
        references.project_references(adapter, face_references(model="buffalo_l"))
    refs = face_references()
    no_eva = references.References(face=refs.face)
    with pytest.raises(errors.IncompatibleError, match="id_encoder input of Likeness Face Embed"):
        references.project_references(adapter, no_eva)


# ---------------------------------------------------------------- through the executor

class LikenessTestTinyFlux:
    """A tiny FLUX and its conditioning; `fresh` builds a new model object with the same weights."""

    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "CONDITIONING")
    RETURN_NAMES = ("model", "positive")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "fresh": ("BOOLEAN", {"default": False})}}

    def load(self, seed, fresh):
        model = builders.build_flux.__wrapped__(seed) if fresh else builders.build_flux(seed)
        return (model, builders.flux_conditioning(seed=seed + 1))


nodes.NODE_CLASS_MAPPINGS["LikenessTestTinyFlux"] = LikenessTestTinyFlux


def flux_prompt(key, adapter_name=None, refs_file=None, fresh=False):
    prompt = {
        "1": {"class_type": "LikenessTestTinyFlux", "inputs": {"seed": 0, "fresh": fresh}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 7, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["1", 1], "negative": ["1", 1], "latent_image": ["5", 0], "denoise": 1.0}},
        "9": {"class_type": "LikenessTestCapture", "inputs": {"samples": ["6", 0], "key": key}},
    }
    if adapter_name:
        prompt.update({
            "11": {"class_type": "LikenessAdapterLoader", "inputs": {"adapter_name": adapter_name}},
            "12": {"class_type": "LikenessLoadReferences", "inputs": {"references_file": refs_file}},
            "14": {"class_type": "LikenessProject", "inputs": {"adapter": ["11", 0], "references": ["12", 0]}},
            "13": {"class_type": "LikenessApply", "inputs": {
                "model": ["1", 0], "adapter": ["11", 0], "tokens": ["14", 0], "weight": 1.0,
                "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}},
        })
        prompt["6"]["inputs"]["model"] = ["13", 0]
    return prompt


def test_bypassing_pulid_gives_the_output_of_a_model_that_never_saw_it(models_dir):
    state = builders.tiny_pulid_state("flux", seed=11, flux_blocks=4, flux_dim=64)
    builders.save_safetensors(str(models_dir / "ipadapter" / "pulid_flux_e2e.safetensors"), state)
    folder_paths.filename_list_cache.clear()
    path, choice = reference_files.new_file_path("pulid_flux_face")
    references_io.save_references(face_references(), path)
    result = run_prompt(flux_prompt("with", "pulid_flux_e2e.safetensors", choice))
    assert result.success, result.execution_error() or result.node_errors
    assert run_prompt(flux_prompt("bypassed")).success  # the same loader output, PuLID left out of the graph
    assert run_prompt(flux_prompt("never", fresh=True)).success
    assert not torch.equal(CAPTURED["with"], CAPTURED["never"])
    assert torch.equal(CAPTURED["bypassed"], CAPTURED["never"])


def test_likeness_pulid_refuses_an_ip_adapter_file(tmp_path):
    state = builders.tiny_adapter_state("linear", [32] * 16)
    ip_adapter = adapter_mod.load_adapter(builders.save_safetensors(str(tmp_path / "ip-adapter_sd15.safetensors"),
                                                                    state))
    node = pack("nodes.pulid").LikenessPuLID
    with pytest.raises(errors.IncompatibleError, match="takes PuLID files.*ip-adapter_sd15.safetensors"):
        node.execute(builders.build_unet("sd15"), ip_adapter, None, None, torch.zeros(1, 64, 64, 3), 1.0, 0.0, 1.0,
                     "fidelity")


def test_copies_are_made_when_comfyui_moves_the_patches_not_per_step(flux_adapter, monkeypatch):
    adapter, _ = flux_adapter
    insertion = pulid_flux.IdentityInsertion(adapter.flux_modules[:1], (("double_block", 0),),
                                             *tokens_for(adapter).flat(), 1.0, 1.0, 0.0)
    made = []
    original = pulid_flux.IdentityInsertion.placed
    monkeypatch.setattr(pulid_flux.IdentityInsertion, "placed", lambda self, *a: made.append(a) or original(self, *a))
    replace = pulid_flux.FluxBlockInsertion(("double_block", 0), ((insertion, 0),))
    loaded = replace.to(torch.device("cpu")).to(torch.float64)  # as ComfyUI loads: device, then the model's dtype
    assert len(made) == 1 and loaded.placed[0].module.to_q.weight.dtype == torch.float64
    assert replace.placed == () and loaded is not replace  # the shared object is left as it was
    args = {"img": torch.randn(1, 6, 64, dtype=torch.float64), "txt": torch.randn(1, 3, 64, dtype=torch.float64),
            "transformer_options": {"sigmas": torch.tensor([0.5])}}
    for _ in range(3):
        loaded(args, {"original_block": lambda a: {"img": a["img"], "txt": a["txt"]}})
    assert len(made) == 1  # no copies per step
    fp8_weights = replace.to(torch.device("cpu")).to(torch.float8_e4m3fn)  # the compute dtype shows in the forward
    for _ in range(3):
        fp8_weights(args, {"original_block": lambda a: {"img": a["img"], "txt": a["txt"]}})
    assert len(made) == 2
    assert fp8_weights.to(torch.device("cpu")).placed == ()  # an offload drops the copies


def test_what_pulid_flux_cannot_do_is_refused_with_a_message(flux_adapter):
    """One identity at one weight after FLUX's blocks: unfold_batch, per-frame weights and per-layer weights (UNet
    transformer indices) stop with a message naming each, before anything is patched."""
    errors = pack("nodes.core.errors")
    adapter, _ = flux_adapter
    model = builders.build_flux()
    tokens = tokens_for(adapter)
    for kwargs, weight in (({"unfold_batch": True}, 1.0), ({}, [1.0, 0.5]), ({"layer_weights": "0:1.0"}, 1.0)):
        with pytest.raises(errors.InputError) as e:
            pulid_patch.apply_pulid(model, adapter, tokens, weight, **kwargs)
        assert all(word in str(e.value) for word in ("unfold_batch", "per-frame", "layer_weights"))
    assert "patches_replace" not in model.model_options.get("transformer_options", {})
    assert apply(model, adapter, tokens) is not model  # the same call without them patches a clone
