"""The Likeness extension: the list of node classes."""

from comfy_api.v0_0_2 import ComfyExtension

from .host import folders

folders.register_all()

from .apply import LikenessApply, LikenessApplySimple  # noqa: E402
from .encode import LikenessImageEncode  # noqa: E402
from .loaders import LikenessAdapterLoader  # noqa: E402
from .project import LikenessProject  # noqa: E402

NODES = [LikenessAdapterLoader, LikenessImageEncode, LikenessProject, LikenessApply, LikenessApplySimple]


class LikenessExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)
