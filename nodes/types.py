"""Socket types of Likeness. Each carries one frozen dataclass from nodes/core."""

from .host.api import io

Adapter = io.Custom("LIKENESS_ADAPTER")  # core.adapter.Adapter
References = io.Custom("LIKENESS_REFS")  # core.references.References
Tokens = io.Custom("LIKENESS_TOKENS")  # core.references.ImageTokens
FaceModel = io.Custom("LIKENESS_FACE_MODEL")  # host.face.FaceModel
IDEncoder = io.Custom("LIKENESS_ID_ENCODER")  # host.id_encoder.IDEncoder (PuLID's EVA-CLIP + face parsing)
WeightsStrategy = io.Custom("LIKENESS_WEIGHTS_STRATEGY")  # core.frames.FrameStrategy

CATEGORY = "Likeness"
