"""Views of each part of Stable Diffusion on its own: plain functions of a pipeline's components and
arrays, returning numbers, arrays or matplotlib figures.

- :mod:`.text_encoder`: BPE tokens and ids (BOS, EOS, padding, truncation), token and word similarity.
- :mod:`.vae`: round trip, latent channels, compression ratio, decoding an edited latent.
- :mod:`.noising`: the forward process at t (or over several t), and ᾱ, σ and SNR of a schedule.
- :mod:`.unet`: the UNet's architecture read from its config, and per-block feature norms of a step.
- :mod:`.training`: the training objective on a batch at t, and a tiny model trained live.
- :mod:`.editing`: where image-to-image starts for a strength, and a brushed inpainting mask.

The component explorers (:mod:`explainer.widgets.components`) draw these; notebooks and docs can too.
"""

from .editing import mask_from_strokes, strength_figure, strength_start
from .noising import forward_figure, noise_image, noising_figure, schedule_curves, schedule_figure
from .text_encoder import token_similarity, token_similarity_figure, tokenize, word_embeddings, word_similarity
from .training import TinyTrainer, training_figure, training_objective
from .unet import block_feature_norms, feature_norms_figure, unet_architecture, unet_diagram
from .vae import compression_ratio, decode_latent, edit_latent, vae_figure, vae_roundtrip

__all__ = [
    "TinyTrainer",
    "block_feature_norms",
    "compression_ratio",
    "decode_latent",
    "edit_latent",
    "feature_norms_figure",
    "forward_figure",
    "mask_from_strokes",
    "noise_image",
    "noising_figure",
    "schedule_curves",
    "schedule_figure",
    "strength_figure",
    "strength_start",
    "token_similarity",
    "token_similarity_figure",
    "tokenize",
    "training_figure",
    "training_objective",
    "unet_architecture",
    "unet_diagram",
    "vae_figure",
    "vae_roundtrip",
    "word_embeddings",
    "word_similarity",
]
