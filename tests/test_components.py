"""The component views (explainer.views.components) and explorers (explainer.explore_*), on the toy model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import explainer
from explainer.views import components as views
from explainer.views.components._images import sample_image
from explainer.views.components.text_encoder import _toy_known_words
from explainer.views.components.noising import SCHEDULES, named_schedule
from explainer.widgets import components as widgets
from explainer.widgets.explore import default_pipeline


@pytest.fixture(scope="module")
def pipe():
    return default_pipeline()


@pytest.fixture(scope="module")
def image():
    return sample_image(3)


# ------------------------------------------------------------------------------------------ text encoder
def test_tokenize_marks_bos_eos_padding_and_truncation(pipe):
    tok = pipe.tokenizer
    info = views.tokenize(tok, "a red circle", known=_toy_known_words())
    L = tok.model_max_length
    assert len(info["ids"]) == len(info["kinds"]) == len(info["tokens"]) == L == info["max_length"]
    assert info["ids"][0] == tok.bos_token_id and info["kinds"][:5] == ["bos", "word", "word", "word", "eos"]
    assert info["ids"][4] == tok.eos_token_id and info["kinds"][5:] == ["pad"] * (L - 5)
    assert info["n_prompt"] == 3 and info["truncated"] == [] and info["unknown_words"] == []
    long = " ".join(["red"] * (L + 5))
    cut = views.tokenize(tok, long)
    assert cut["n_prompt"] == L + 5 and len(cut["truncated"]) == 7 and cut["kinds"][-1] == "eos" and "pad" not in cut["kinds"]


@pytest.mark.parametrize(
    ("prompt", "unknown"),
    [("a purple star on the left", ["purple", "star"]), ("a cat", ["cat"]),
     ("a blue square to the right of a red circle", ["to", "of"]), ("a red circle above a blue square", [])],
)  # fmt: skip
def test_tokenize_names_words_the_toy_does_not_know(pipe, prompt, unknown):
    info = views.tokenize(pipe.tokenizer, prompt, known=_toy_known_words())
    assert info["unknown_words"] == unknown
    flags = [k for k, kind in zip(info["known"], info["kinds"]) if kind == "word"]
    assert flags.count(False) == len([t for t in info["tokens"] if t.replace("</w>", "") in unknown])


def test_every_toy_caption_is_known(pipe):
    from explainer.toy.world import all_captions

    known = _toy_known_words()
    assert all(views.tokenize(pipe.tokenizer, c, known=known)["unknown_words"] == [] for c in all_captions()[::37])


def test_token_similarity(pipe):
    labels, sim = views.token_similarity(pipe.tokenizer, pipe.text_encoder, "a red circle")
    assert labels == ["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"] and sim.shape == (5, 5)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-5)
    np.testing.assert_allclose(sim, sim.T, atol=1e-6)
    _, table = views.token_similarity(pipe.tokenizer, pipe.text_encoder, "a red circle", space="input")
    assert not np.allclose(sim, table)  # the encoder mixes context in
    with pytest.raises(ValueError, match="space='middle'"):
        views.token_similarity(pipe.tokenizer, pipe.text_encoder, "a", space="middle")


def test_word_similarity_is_the_embedding_table_of_one_token_words(pipe):
    tok, enc = pipe.tokenizer, pipe.text_encoder
    words = ["red", "circle", "left"]
    vecs = views.word_embeddings(tok, enc, words)
    assert vecs.shape == (3, enc.get_input_embeddings().weight.shape[1])
    labels, sim = views.word_similarity(tok, enc, words)
    _, table = views.token_similarity(tok, enc, "red circle left", space="input")  # BOS red circle left EOS
    assert labels == words
    np.testing.assert_allclose(sim, table[1:4, 1:4], atol=1e-5)
    with pytest.raises(ValueError, match="'squarish' is 3 BPE tokens"):
        views.word_embeddings(tok, enc, ["squarish"])


# ----------------------------------------------------------------------------------------------- VAE
def test_vae_roundtrip_and_edits(pipe, image):
    vae = pipe.vae
    r = views.vae_roundtrip(vae, image)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    h, w = image.shape[:2]
    assert r["latent"].shape == (vae.config.latent_channels, h // factor, w // factor)
    assert r["ratio"] == pytest.approx(3 * h * w / r["latent"].size) and r["decoded"].shape == image.shape
    assert r["error"] < 0.05  # the toy VAE reconstructs its world
    np.testing.assert_allclose(views.decode_latent(vae, r["latent"]), r["decoded"], atol=1e-5)
    zeroed = views.edit_latent(r["latent"], channel=1, scale=0.0)
    assert np.all(zeroed[1] == 0) and np.array_equal(zeroed[0], r["latent"][0])
    assert np.abs(views.decode_latent(vae, zeroed) - r["decoded"]).mean() > 0.01
    with pytest.raises(ValueError, match="channel=9"):
        views.edit_latent(r["latent"], channel=9)
    with pytest.raises(ValueError, match="multiples"):
        views.compression_ratio(vae, h + 1, w)


# ------------------------------------------------------------------------------------------- noising
def test_schedule_curves_define_sigma_and_snr(pipe):
    c = views.schedule_curves(pipe.scheduler)
    a = c["alpha_bar"]
    T = pipe.scheduler.config.num_train_timesteps
    assert len(a) == T and np.all(np.diff(a) < 0)
    finite = a > 0
    np.testing.assert_allclose(c["sigma"][finite], np.sqrt((1 - a[finite]) / a[finite]))
    np.testing.assert_allclose(c["snr"][finite] * c["sigma"][finite] ** 2, 1.0, rtol=1e-9)
    assert c["snr"][-1] == 0 and np.isinf(c["sigma"][-1])  # the toy's zero terminal SNR
    cosine = views.schedule_curves(named_schedule("cosine", base=pipe.scheduler))
    assert not np.allclose(cosine["alpha_bar"], a)
    assert set(SCHEDULES) >= {"linear", "cosine"}
    with pytest.raises(ValueError, match="schedule='warp'"):
        named_schedule("warp", base=pipe.scheduler)


def test_noise_image(pipe, image):
    low = views.noise_image(pipe.vae, pipe.scheduler, image, 0)
    high = views.noise_image(pipe.vae, pipe.scheduler, image, 900)
    a = float(pipe.scheduler.alphas_cumprod[900])
    assert high["alpha_bar"] == pytest.approx(a) and high["sigma"] == pytest.approx(np.sqrt((1 - a) / a))
    assert np.abs(low["noisy_latent"] - low["latent"]).mean() < np.abs(high["noisy_latent"] - high["latent"]).mean()
    assert np.abs(low["pixel_noisy"] - image).mean() < np.abs(high["pixel_noisy"] - image).mean()
    with pytest.raises(ValueError, match="t=1000"):
        views.noise_image(pipe.vae, pipe.scheduler, image, 1000)


def test_forward_figure_shows_latent_and_pixel_rows(pipe, image):
    results = [views.noise_image(pipe.vae, pipe.scheduler, image, t) for t in (0, 500, 999)]
    fig = views.forward_figure(results)
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:3]] == [f"t = {r['t']}, ᾱ = {r['alpha_bar']:.2f}" for r in results]
    assert fig.axes[5].get_title() == "σ = ∞"  # zero terminal SNR
    with pytest.raises(ValueError, match="results is empty"):
        views.forward_figure([])


# ---------------------------------------------------------------------------------------------- UNet
def _tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=16, attention_head_dim=2, norm_num_groups=16)  # fmt: skip


@pytest.mark.parametrize("which", ["toy", "tiny"])
def test_unet_architecture_comes_from_the_config(pipe, which):
    unet = pipe.unet if which == "toy" else _tiny_unet()
    arch = views.unet_architecture(unet)
    cfg = unet.config
    blocks = arch["blocks"]
    assert [b["type"] for b in blocks] == [*cfg.down_block_types, cfg.mid_block_type, *cfg.up_block_types]
    assert [b["cross_attention"] for b in blocks] == ["CrossAttn" in b["type"] for b in blocks]
    downs = [b for b in blocks if b["part"] == "down"]
    assert [b["resolution"][0] for b in downs] == [cfg.sample_size >> i for i in range(len(downs))]
    assert [b["out_channels"] for b in downs] == list(cfg.block_out_channels)
    # every skip a down block (and conv_in) sends, an up block takes
    assert 1 + sum(b["skips_out"] for b in blocks) == sum(b["skips_in"] for b in blocks)
    assert sum(b["params"] for b in blocks) + arch["params_time"] + arch["params_io"] == arch["params"]
    assert arch["cross_attention_dim"] == cfg.cross_attention_dim
    fig = views.unet_diagram(arch, highlight="mid_block")
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert all(b["name"] in texts for b in blocks) and str(cfg.cross_attention_dim) in texts


def test_block_feature_norms(pipe):
    trace = explainer.trace(pipe, "a red circle", num_inference_steps=4, seed=0, progress=False)
    rows = views.block_feature_norms(pipe, trace, 0)
    assert [r["name"] for r in rows][:1] == ["down_blocks.0"] and rows[len(pipe.unet.down_blocks)]["name"] == "mid_block"
    assert all(r["rms"] > 0 and r["map"].shape == tuple(r["shape"][1:]) for r in rows)
    assert rows[-1]["shape"][1:] == list(trace.latents.shape[2:])
    later = views.block_feature_norms(pipe, trace, 3)
    assert [r["rms"] for r in later] != [r["rms"] for r in rows]


def _rerun_output(pipe, trace, step):
    """block_feature_norms' UNet call at ``step``, and its output (the conditional branch's model output)."""
    seen = []
    handle = pipe.unet.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out.sample))
    try:
        rows = views.block_feature_norms(pipe, trace, step)
    finally:
        handle.remove()
    return rows, seen[0][0].float().numpy()


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_block_feature_norms_rerun_the_recorded_conditional_call(pipe, family):
    """The re-run call gets the conditioning the pipeline gave it: its output is the recorded eps_cond (SDXL: with
    the recorded pooled embedding and add_time_ids, and the second prompt)."""
    if family == "sdxl":
        from _sdxl import build_sdxl_pipeline

        pipe = build_sdxl_pipeline()
    kwargs = {"prompt_2": "a blue square"} if family == "sdxl" else {}
    trace = explainer.trace(pipe, "a red circle", num_inference_steps=3, seed=0, progress=False,
                            record={"dtype": "float32"}, **kwargs)  # fmt: skip
    for step in (0, 2):
        rows, out = _rerun_output(pipe, trace, step)
        np.testing.assert_allclose(out, trace.eps_cond[step], atol=1e-4, rtol=1e-4)
        assert rows[len(pipe.unet.down_blocks)]["name"] == "mid_block" and all(r["rms"] > 0 for r in rows)


def test_block_feature_norms_refuses_a_transformer_family():
    from _sd3 import build_sd3_pipeline

    pipe = build_sd3_pipeline()
    trace = explainer.trace(pipe, "a red circle", num_inference_steps=1, seed=0, progress=False)
    with pytest.raises(ValueError, match=r"for UNet families \(SD 1.x/2.x, SDXL\), not Stable Diffusion 3"):
        views.block_feature_norms(pipe, trace, 0)


# ------------------------------------------------------------------------------------------ training
def test_training_objective(pipe):
    early, late = views.training_objective(pipe, 50, n=2), views.training_objective(pipe, 950, n=2)
    assert early["target_name"] == "v" and early["target"].shape == early["prediction"].shape
    assert early["mse"].shape == (2,) and early["loss"] == pytest.approx(float(early["mse"].mean()))
    np.testing.assert_allclose(early["mse"], ((early["prediction"] - early["target"]) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)
    assert early["loss"] != late["loss"]
    mixed = views.training_objective(pipe, [50, 950], seed=0)  # one t per image
    assert mixed["t"] == [50, 950] and list(mixed["timesteps"]) == [50, 950] and len(mixed["captions"]) == 2
    np.testing.assert_allclose(mixed["mse"][0], early["mse"][0], rtol=1e-4)  # the same image, noise and t
    assert "t = 50, 950" in views.training_figure(mixed)._suptitle.get_text()
    with pytest.raises(ValueError, match=r"t=\[50, 1000\]"):
        views.training_objective(pipe, [50, 1000])


def test_tiny_trainer_learns(pipe):
    tiny = views.TinyTrainer(pipe, batch=2)
    before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    losses = tiny.train(2)
    assert len(losses) == 2 and all(np.isfinite(losses)) and tiny.losses == losses
    assert any(not torch.equal(before[k], v) for k, v in tiny.unet.state_dict().items())
    assert tiny.objective(500, n=1)["prediction"].shape[1] == pipe.unet.config.out_channels
    with pytest.raises(ValueError, match="channels"):
        views.TinyTrainer(pipe, channels=(20, 32))


# ------------------------------------------------------------------------------------------- editing
def test_strength_start_matches_a_traced_edit(pipe, image):
    info = views.strength_start(pipe.scheduler, 8, 0.5)
    trace = explainer.trace(pipe, "a blue circle", image=image, strength=0.5, num_inference_steps=8, progress=False)
    assert info["start_step"] == trace.start_step and info["t_start"] == int(trace.timesteps[0])
    assert info["steps_run"] == trace.num_steps
    with pytest.raises(ValueError, match="strength=0"):
        views.strength_start(pipe.scheduler, 8, 0)


def test_mask_from_strokes():
    mask = views.mask_from_strokes([[4, 4]], 16, 16, radius=2)
    assert mask.shape == (16, 16) and mask[4, 4] == 1 and mask[12, 12] == 0 and 9 <= mask.sum() <= 16
    assert views.mask_from_strokes([], 8, 8).sum() == 0


# ------------------------------------------------------------------------------------------- widgets
def _srcs(w):
    return {p["key"]: p["src"] for p in w.pictures}


def _set(w, **values):
    before, revision = _srcs(w), w.revision
    w.values = {**w.values, **values}
    assert w.revision > revision and w.error == ""
    return before, _srcs(w)


def test_text_encoder_explorer(pipe):
    w = explainer.explore_text_encoder("a red circle")
    assert "the toy knows every word" in w.info_html
    before, after = _set(w, prompt="a purple star on the left")
    assert before["similarity"] != after["similarity"]
    assert 'data-known="false"' in w.info_html and "purple, star" in w.info_html


def test_text_encoder_explorer_takes_known_words_as_any_collection(pipe):
    from explainer.toy import vocabulary

    for known in (vocabulary(), vocabulary()["words"], set(vocabulary()["words"]), ("A", "Red", "circle")):
        w = explainer.explore_text_encoder("a red circle above a blue square", pipe=pipe, known=known)
        unknown = w.tokens["unknown_words"]
        assert unknown == ([] if len(known) > 3 else ["above", "blue", "square"]), (type(known), unknown)
    for bad, error, match in ((
        "red", TypeError, "known must be a collection of words"), ({"colours": ["red"]}, ValueError, "'words' list"),
        ([1, 2], TypeError, r"known must hold words \(str\), not int"), (3, TypeError, "not int")):  # fmt: skip
        with pytest.raises(error, match=match):
            explainer.explore_text_encoder("a red circle", known=bad)


def test_vae_noising_and_unet_explorers(pipe):
    v = explainer.explore_vae()
    before, after = _set(v, scale=2.0)
    assert before["vae"] != after["vae"]
    n = explainer.explore_noising(t=100)
    before, after = _set(n, t=800)
    assert before["noising"] != after["noising"] and before["schedule"] != after["schedule"]
    _, schedule = _set(n, schedule="cosine")
    assert schedule["schedule"] != after["schedule"]
    n.values = {**n.values, "t": 5000}
    assert "t=5000" in n.error
    u = explainer.explore_unet(num_inference_steps=4)
    before, after = _set(u, step=3)
    assert before["diagram"] == after["diagram"] and before["norms"] != after["norms"]


def test_training_explorer(pipe, monkeypatch):
    monkeypatch.setattr(widgets, "TRAIN_STEPS", 1)
    w = explainer.explore_training(t=100)
    before, after = _set(w, t=900)
    assert before["objective"] != after["objective"] and w.tiny is None
    _set(w, train=1)
    assert len(w.tiny.losses) == 1 and {"loss", "tiny"} <= set(_srcs(w))


def test_editing_explorer(pipe):
    w = explainer.explore_editing(strength=0.5, num_inference_steps=4)
    before, after = _set(w, strength=1.0)
    assert before["schedule"] != after["schedule"] and w.result is None
    _set(w, run=1)
    assert w.result.mode == "img2img" and "result" in _srcs(w)
    before, after = _set(w, strokes=[[20, 20], [24, 24]])
    assert before["input"] != after["input"] and w.mask().sum() > 0
    _set(w, run=2)
    assert w.result.mode == "inpaint"
    _set(w, clear=1)
    assert w.values["strokes"] == [] and w.mask() is None


def _png_size(src: str) -> tuple[int, int]:
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).size


def test_presentation_mode_draws_bigger_pictures(pipe):
    from explainer.widgets.explore import PRESENT_DISPLAY

    n = explainer.explore_noising(t=100)
    small = {k: _png_size(v) for k, v in _srcs(n).items()}
    revision = n.revision
    n.presentation = True  # what the "Presentation" button does
    assert n.revision > revision and n.error == ""
    big = {k: _png_size(v) for k, v in _srcs(n).items()}
    for key, (w, h) in small.items():  # the same figure at PRESENT_SCALE times the resolution: its text grows too
        assert big[key] == (w * widgets.PRESENT_SCALE, h * widgets.PRESENT_SCALE) and big[key][0] >= PRESENT_DISPLAY
    n.presentation = False
    assert {k: _png_size(v) for k, v in _srcs(n).items()} == small
    e = explainer.explore_editing(strength=0.5, num_inference_steps=4, presentation=True)  # a pixel picture
    widths = {p["key"]: p.get("width") for p in e.pictures}
    assert widths["input"] == PRESENT_DISPLAY and n.present_display == PRESENT_DISPLAY
    u = explainer.explore_unet(num_inference_steps=2, presentation=True)
    assert _png_size(_srcs(u)["diagram"])[0] >= PRESENT_DISPLAY
    with pytest.raises(TypeError, match="presentation must be True or False, not 'yes'"):
        explainer.explore_vae(presentation="yes")
