"""Nodes for edit models (FLUX.1 Kontext, Qwen-Image-Edit, OmniGen2, FLUX.2, HiDream-O1): choose and prepare
reference photos, and condition the model with any number of them."""
