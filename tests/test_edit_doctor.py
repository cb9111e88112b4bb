"""The model doctor's edit-model section: what this ComfyUI offers each target, and the workflow checks."""

from __future__ import annotations

from conftest import pack, run_prompt

checks = pack("nodes.edit.checks")
doctor = pack("nodes.doctor")
host_edit = pack("nodes.host.edit")


def test_the_doctor_lists_every_edit_model_and_what_this_comfyui_lacks():
    text = doctor.report()
    assert "Edit models (reference images" in text
    assert "reference methods this ComfyUI offers: offset, index, uxo" in text
    for line in ("OK  FLUX.1 Kontext [dev]", "OK  Qwen-Image-Edit Plus", "OK  OmniGen2", "--  FLUX.2",
                 "--  HiDream-O1"):
        assert line in text, line
    assert "this ComfyUI lacks EmptyFlux2LatentImage" in text and "still prepares its references" in text
    assert "this ComfyUI lacks HiDreamO1ReferenceImages" in text
    assert "Qwen-Image-Edit 2511 needs method `index_timestep_zero`, which this ComfyUI lacks" in text
    assert "not `index`: Kontext [dev] was trained with one reference" in text


def kontext_workflow(method, setter="FluxKontextMultiReferenceLatentMethod", widget="reference_latents_method"):
    return {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-kontext-dev.safetensors",
                                                         "weight_dtype": "default"}},
            "2": {"class_type": setter, "inputs": {"conditioning": ["3", 0], widget: method}}}


def test_kontext_with_index_is_warned_about():
    warnings = checks.workflow_warnings(kontext_workflow("index"))
    assert len(warnings) == 1 and "node 2 (FluxKontextMultiReferenceLatentMethod) sets method `index`" in warnings[0]
    assert "flux1-kontext-dev.safetensors" in warnings[0]
    assert checks.workflow_warnings(kontext_workflow("offset")) == []
    ours = checks.workflow_warnings(kontext_workflow("index", "LikenessReferenceLatents", "method"))
    assert len(ours) == 1 and "LikenessReferenceLatents" in ours[0]


def test_qwen_2511_needs_a_method_this_comfyui_lacks(monkeypatch):
    workflow = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "qwen_image_edit_2511_bf16.safetensors"}}}
    warnings = checks.workflow_warnings(workflow)
    assert len(warnings) == 1 and "needs reference method `index_timestep_zero`; this ComfyUI lacks it" in warnings[0]
    assert checks.workflow_warnings({"1": {"class_type": "UNETLoader", "inputs": {
        "unet_name": "qwen_image_edit_2509_fp8_e4m3fn.safetensors"}}}) == []
    # a newer ComfyUI that has the method: the workflow must set it
    monkeypatch.setattr(host_edit, "core_reference_methods", lambda: ("offset", "index", "uxo", "index_timestep_zero"))
    warnings = checks.workflow_warnings(workflow)
    assert len(warnings) == 1 and "no node of this workflow sets it" in warnings[0]
    workflow["2"] = {"class_type": "FluxKontextMultiReferenceLatentMethod",
                     "inputs": {"reference_latents_method": "index_timestep_zero"}}
    assert checks.workflow_warnings(workflow) == []


def test_a_model_this_comfyui_cannot_run_is_named():
    warnings = checks.workflow_warnings({"4": {"class_type": "UNETLoader", "inputs": {
        "unet_name": "flux2_dev_fp8mixed.safetensors"}}})
    assert len(warnings) == 1 and "lacks EmptyFlux2LatentImage" in warnings[0]


def test_the_doctor_node_checks_the_workflow_it_runs_in():
    prompt = kontext_workflow("index")
    prompt["9"] = {"class_type": "LikenessModelDoctor", "inputs": {}}
    result = run_prompt(prompt)
    assert result.success, result.error or result.execution_error()
    text = result.executor.history_result["outputs"]["9"]["text"][0]
    assert "This workflow's edit models:" in text and "sets method `index`" in text
