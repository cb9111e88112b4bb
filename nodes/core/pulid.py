"""PuLID: identity tokens from face references, the SDXL methods (extra zero tokens and combine rules), and the
checks that say which input is missing.

Identity tokens (ToTheBeginning/PuLID, pipeline*.py `get_id_embedding`): the ID vector is antelopev2's raw identity
joined with EVA-CLIP's unit embedding of the parsed face; with its five hidden states it goes through the file's ID
encoder. The uncond side is the encoder's output for an all-zero ID vector and all-zero hidden states (PuLID's
zero convention). Several faces:

* IDFormer (v1.1, FLUX) reads them together, as the reference's multi-image input: their ID tokens and hidden-state
  tokens side by side give one set of 32 tokens. The uncond is that of one zero face.
* IDEncoder (v1) makes 10 tokens per face; the sets sit side by side at the attention, as the reference's demo
  does when it mixes several faces.
Merge the references first (Likeness Merge References) to average them or reject outliers.

SDXL combine rules (pulid/attention_processor.py `IDAttnProcessor2_0`, computed in float32): with `out` the text
attention's output and `ip` the identity attention's output at a site, both [b, n, c] (n query tokens),

    neutral   ip
    style     ip - P                       P = (Σ_n out·ip / Σ_n out·out) · out   (per batch row and channel:
    fidelity  ip - (1 - m) P                 the projection is taken along the token axis)
              m [b, n, 1] = Σ_{t < 5} mean_heads softmax_t(q_h k_h^T)   (unscaled scores, per query)

and the site adds weight x rule (the weight folded into the identity's values, which every rule is linear in). A
mask multiplies the term. Each method also appends zero tokens to the identity tokens (ZERO_TOKENS); their keys and
values are zero (the projections have no bias), so they only take part of the softmax mass, as the reference's
NUM_ZERO does.
"""

from __future__ import annotations

import torch

from .adapter import Adapter
from .errors import IncompatibleError, InputError
from .references import ImageTokens, References, match_count, working_projection
from .variants import IDENTITY_WIDTH, Layout

PULID_METHODS = ("fidelity", "style", "neutral")
FIDELITY_ID_TOKENS = 5  # the reference measures the attention mass on the first five identity tokens
FACE_MODEL_FOR_PULID = "antelopev2"
_TINY = 1e-12


# Zero tokens appended to the identity tokens, per method and encoder: v1 as the reference demo's two modes
# (app.py: fidelity 8, "extremely style" 16), v1.1 as its demo's default (app_v1_1.py: 20), none for neutral.
ZERO_TOKENS = {
    "fidelity": {Layout.PULID_ENCODER: 8, Layout.PULID_FORMER: 20},
    "style": {Layout.PULID_ENCODER: 16, Layout.PULID_FORMER: 20},
    "neutral": {Layout.PULID_ENCODER: 0, Layout.PULID_FORMER: 0},
}


def zero_tokens(method: str, layout: Layout) -> int:
    if method not in ZERO_TOKENS:
        raise InputError(f"pulid_method `{method}` is not one of: {', '.join(PULID_METHODS)}.")
    return ZERO_TOKENS[method][layout]


# ------------------------------------------------------------------ combine rules (pure functions, float32)

def projection_on(out: torch.Tensor, ip: torch.Tensor) -> torch.Tensor:
    """The part of `ip` along `out`, per batch row and channel, with the sums taken over the token axis."""
    scale = (out * ip).sum(dim=-2, keepdim=True) / (out * out).sum(dim=-2, keepdim=True).clamp_min(_TINY)
    return scale * out


def identity_mass(q: torch.Tensor, k: torch.Tensor, heads: int, tokens: int = FIDELITY_ID_TOKENS) -> torch.Tensor:
    """[b, n, 1]: per query, the softmax mass on the first `tokens` keys, from unscaled per-head scores averaged
    over the heads (q [b, n, c], k [b, t, c])."""
    b, n, c = q.shape
    d = c // heads
    qh = q.float().view(b, n, heads, d).transpose(1, 2)
    kh = k.float().view(k.shape[0], -1, heads, d).transpose(1, 2)
    probs = (qh @ kh.transpose(-2, -1)).softmax(dim=-1).mean(dim=1)  # [b, n, t]
    return probs[..., :tokens].sum(dim=-1, keepdim=True)


def combine_style(out: torch.Tensor, ip: torch.Tensor) -> torch.Tensor:
    out, ip = out.float(), ip.float()
    return ip - projection_on(out, ip)


def combine_fidelity(out: torch.Tensor, ip: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    out, ip = out.float(), ip.float()
    return ip + (mass.float() - 1) * projection_on(out, ip)


def pulid_term(method: str, q: torch.Tensor, out: torch.Tensor, keys_values: tuple, heads: int) -> torch.Tensor:
    """PuLID's term at one site: `out` the text attention's output [b, n, c], `keys_values` the identity's (k, v,
    mask) with the weight folded into v, k and v given per group of consecutive query rows that share them."""
    from .attention import image_attention

    k, v, mask = keys_values
    grouped = q.reshape(k.shape[0], -1, q.shape[-1])
    ip = image_attention(grouped, k, v, heads).reshape(out.shape)
    if method == "neutral":
        term = ip.float()
    elif method == "style":
        term = combine_style(out, ip)
    elif method == "fidelity":
        mass = identity_mass(grouped, k, heads).reshape(*out.shape[:-1], 1)
        term = combine_fidelity(out, ip, mass)
    else:
        raise InputError(f"pulid_method `{method}` is not one of: {', '.join(PULID_METHODS)}.")
    if mask is not None:
        term = (term.reshape(k.shape[0], -1, term.shape[-1]) * mask).reshape(out.shape)
    return term.to(out.dtype)


# ------------------------------------------------------------------ identity tokens

def _faces_for_pulid(adapter: Adapter, refs: References, role: str):
    det = adapter.detected
    title = det.variant.title if det.variant else "PuLID"
    if refs.face is None:
        raise IncompatibleError(
            f"adapter `{adapter.name}` ({title}) reads faces, but the {role} are CLIP image features. Make them with "
            "Likeness Face Embed (face_model: antelopev2, id_encoder: Likeness ID Encoder Loader).")
    if refs.face.model == "buffalo_l":
        raise IncompatibleError(
            f"adapter `{adapter.name}` ({title}) was trained on antelopev2 identities (glintr100); the {role} come "
            "from face model `buffalo_l`, whose identities live in another space. Choose antelopev2 in Likeness "
            "Face Model Loader (its files go in models/insightface/models/antelopev2/).")
    if refs.face.raw.shape[-1] != IDENTITY_WIDTH:
        raise IncompatibleError(
            f"adapter `{adapter.name}` ({title}) reads {IDENTITY_WIDTH}-wide identities; the {role} hold "
            f"{refs.face.raw.shape[-1]}-wide ones from face model `{refs.face.model}`. Use antelopev2.")
    parsed = refs.parsed_face
    if parsed is None:
        raise IncompatibleError(
            f"adapter `{adapter.name}` ({title}) also reads EVA-CLIP features of the parsed faces, but the {role} "
            "have none. Connect a Likeness ID Encoder Loader to the id_encoder input of Likeness Face Embed.")
    if parsed.hidden.shape[-1] != det.vit_width or parsed.embeds.shape[-1] != det.eva_embed_width:
        raise IncompatibleError(
            f"adapter `{adapter.name}` ({title}) needs {det.encoder.describe()}; the {role} were encoded with "
            f"{parsed.encoder} ({parsed.hidden.shape[-1]}-wide hidden states, {parsed.embeds.shape[-1]}-wide "
            "embeds). Load EVA02-CLIP-L-14-336 in Likeness ID Encoder Loader.")
    return refs.face.raw, parsed


@torch.no_grad()
def project_pulid(adapter: Adapter, refs: References, negative: References | None = None,
                  device: torch.device | None = None) -> ImageTokens:
    """Face references (identity + parsed-face features) -> PuLID identity tokens for the cond and uncond sides."""
    det = adapter.detected
    identity, parsed = _faces_for_pulid(adapter, refs, "references")
    device = device or torch.device("cpu")
    encoder = working_projection(adapter, device)
    n = identity.shape[0]

    def run(id_vec, hidden):
        levels = [hidden[:, i].to(device, torch.float32) for i in range(hidden.shape[1])]
        return encoder(id_vec.to(device, torch.float32), levels).float().cpu()

    def id_vectors(raw, embeds):
        return torch.cat([raw.float(), embeds.float()], dim=-1)

    if det.layout is Layout.PULID_FORMER:
        def joined(raw, p):  # all faces as one multi-image input: [1, K, I] and hidden [1, L, K * S, W]
            hidden = p.hidden.float().transpose(0, 1).reshape(1, p.hidden.shape[1], -1, p.hidden.shape[-1])
            return id_vectors(raw, p.embeds)[None], hidden

        cond = run(*joined(identity, parsed))
        if negative is None:
            uncond = run(torch.zeros(1, det.input_width), torch.zeros_like(parsed.hidden[:1]))
        else:
            uncond = run(*joined(*_faces_for_pulid(adapter, negative, "negative references")))
    else:
        cond = run(id_vectors(identity, parsed.embeds), parsed.hidden.float())
        if negative is None:
            uncond = run(torch.zeros(n, det.input_width), torch.zeros_like(parsed.hidden))
        else:
            neg_raw, neg_parsed = _faces_for_pulid(adapter, negative, "negative references")
            uncond = run(match_count(id_vectors(neg_raw, neg_parsed.embeds), n), match_count(neg_parsed.hidden, n))
    return ImageTokens(adapter.name, det.context_width, cond.shape[1], cond, uncond)

