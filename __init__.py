"""Likeness: image-prompted, subject-driven generation for ComfyUI (IP-Adapter family)."""

from .nodes.extension import LikenessExtension

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    return LikenessExtension()
