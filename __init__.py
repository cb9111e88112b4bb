"""Likeness: image-prompted, subject-driven generation for ComfyUI (IP-Adapter family)."""

WEB_DIRECTORY = "./web"

if __package__:  # ComfyUI imports the pack as a package; a test runner may import this file on its own
    from .nodes.extension import LikenessExtension

    async def comfy_entrypoint():
        return LikenessExtension()
