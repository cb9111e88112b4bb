"""The Likeness extension: the list of node classes."""

from .host.api import ComfyExtension

from .host import folders, routes

folders.register_all()
routes.register()  # /likeness/* routes for web/js/likeness.js, when a server runs

from .apply import LikenessApply, LikenessApplySimple  # noqa: E402
from .check.identity_score import LikenessIdentityScore  # noqa: E402
from .check.subject_score import LikenessSubjectScore  # noqa: E402
from .edit.qwen_encode import LikenessQwenEditEncode  # noqa: E402
from .edit.reference_latents import LikenessReferenceLatents  # noqa: E402
from .edit.reference_pack import LikenessReferencePack  # noqa: E402
from .encode import LikenessImageEncode  # noqa: E402
from .face import LikenessFaceEmbed, LikenessFaceModelLoader  # noqa: E402
from .instantid import LikenessFaceKeypoints, LikenessInstantID, LikenessInstantIDControl  # noqa: E402
from .frames import LikenessFrameWeights  # noqa: E402
from .images import LikenessNoiseImage, LikenessPrepImage  # noqa: E402
from .loaders import LikenessAdapterLoader  # noqa: E402
from .merge import LikenessMergeReferences  # noqa: E402
from .project import LikenessProject  # noqa: E402
from .pulid import LikenessIDEncoderLoader, LikenessPuLID  # noqa: E402
from .references_io import LikenessLoadReferences, LikenessSaveReferences  # noqa: E402
from .tiled import LikenessApplyTiled  # noqa: E402
from .unified import LikenessModelDoctor, LikenessUnifiedLoader  # noqa: E402

NODES = [
    LikenessAdapterLoader, LikenessUnifiedLoader, LikenessModelDoctor, LikenessImageEncode, LikenessProject,
    LikenessApply, LikenessApplySimple, LikenessFaceModelLoader, LikenessFaceEmbed, LikenessMergeReferences,
    LikenessSaveReferences, LikenessLoadReferences,
    LikenessReferencePack, LikenessReferenceLatents, LikenessQwenEditEncode,
    LikenessFaceKeypoints, LikenessInstantIDControl, LikenessInstantID,
    LikenessIdentityScore, LikenessSubjectScore, LikenessIDEncoderLoader, LikenessPuLID,
    LikenessPrepImage, LikenessNoiseImage, LikenessApplyTiled, LikenessFrameWeights,
]


class LikenessExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)
