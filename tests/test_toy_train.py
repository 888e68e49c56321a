"""The training recipe on a tiny config: the loss goes down, and a resumed run is the same run."""

import torch

from explainer.toy.train import TrainConfig, Trainer
from test_checkpoints import loading_problems, text_encoder_keys

TINY = dict(image_size=32, vae_channels=(32, 32), unet_channels=(32, 32), unet_heads=1, text_width=32,
            text_layers=1, vae_batch=4, batch=4, warmup=1, checkpoint_every=10**6)


def test_a_few_steps_lower_the_loss(tmp_path):
    tr = Trainer(tmp_path / "run", TrainConfig(vae_steps=40, vae_lr=2e-3, steps=40, unet_lr=2e-3, text_lr=2e-3,
                                               lr_decay_steps=40, **TINY), "cpu")
    with torch.no_grad():
        vae_before = tr.vae_loss(10_000).item()  # a fixed held-out batch
    tr.train_vae(progress=False)
    with torch.no_grad():
        vae_after = tr.vae_loss(10_000).item()
    assert tr.scaling_factor is not None and tr.scaling_factor > 0
    assert vae_after < 0.5 * vae_before

    with torch.no_grad():
        before = sum(tr.diffusion_loss(10_000 + k).item() for k in range(3))
    tr.train_diffusion(progress=False)
    with torch.no_grad():
        after = sum(tr.diffusion_loss(10_000 + k).item() for k in range(3))
    assert after < 0.8 * before
    assert (tmp_path / "run" / "train_log.jsonl").exists()


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    cfg = dict(vae_steps=3, steps=4, **TINY)
    straight = Trainer(tmp_path / "a", TrainConfig(**cfg), "cpu")
    straight.train_vae(progress=False)
    straight.train_diffusion(progress=False)

    first = Trainer(tmp_path / "b", TrainConfig(**{**cfg, "steps": 2}), "cpu")
    first.train_vae(progress=False)
    first.train_diffusion(progress=False)  # saves a checkpoint at the end
    resumed = Trainer(tmp_path / "b", None, "cpu", overrides={"steps": 4})
    assert resumed.step == 2 and resumed.vae_step == 3
    resumed.train_diffusion(progress=False)

    for (k, a), (_, b) in zip(straight.unet.state_dict().items(), resumed.unet.state_dict().items()):
        assert torch.equal(a, b), k
    for k in straight.ema:
        assert torch.equal(straight.ema[k], resumed.ema[k]), k


def test_export_is_a_diffusers_folder(tmp_path):
    from diffusers import StableDiffusionPipeline

    tr = Trainer(tmp_path / "run", TrainConfig(vae_steps=1, steps=1, **TINY), "cpu")
    tr.train_vae(progress=False)
    tr.train_diffusion(progress=False)
    out = tr.export(tmp_path / "model")
    assert (out / "model_index.json").exists()
    pipe = StableDiffusionPipeline.from_pretrained(str(out), torch_dtype=torch.float32)
    assert pipe.vae.config.scaling_factor == tr.scaling_factor
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    assert pipe.unet.dtype == torch.float32
    # every key in place on this transformers, and the text encoder in the layout every version loads
    assert loading_problems(out) == {}
    assert all(k.startswith("text_model.") for k in text_encoder_keys(out))


def test_grounding_loss_scores_attention_against_object_masks():
    from explainer.toy.train import grounding_loss, object_token_indices

    assert object_token_indices("a red circle above a blue square") == [(2, 3), (6, 7)]
    assert object_token_indices("a red circle on the left") == [(2, 3)]
    cover = torch.zeros(1, 1, 8, 8)
    cover[0, 0, :4, :4] = 1.0  # the object fills the top-left quarter
    inside = torch.full((1, 16, 77), 1e-6)  # [batch*heads, pixels (4x4), tokens]
    outside = inside.clone()
    inside[0, 0, 2:4] = 1.0  # pixel (0, 0) of the 4x4 map lies in the object
    outside[0, 15, 2:4] = 1.0  # pixel (3, 3) does not
    caps = ["a red circle on the left"]
    assert grounding_loss([(1, inside)], caps, cover).item() < 0.01
    assert grounding_loss([(1, outside)], caps, cover).item() > 0.99
    assert grounding_loss([(1, inside)], [""], cover).item() == 0.0  # dropped captions are skipped


def test_grounding_term_changes_training_and_leaves_processors_as_they_were(tmp_path):
    plain = Trainer(tmp_path / "a", TrainConfig(vae_steps=1, steps=1, **TINY), "cpu")
    grounded = Trainer(tmp_path / "b", TrainConfig(vae_steps=1, steps=1, grounding_weight=1.0, **TINY), "cpu")
    before = {n: type(p) for n, p in grounded.unet.attn_processors.items()}
    for tr in (plain, grounded):
        tr.train_vae(progress=False)
    with torch.no_grad():
        assert grounded.diffusion_loss(0).item() > plain.diffusion_loss(0).item()
    assert {n: type(p) for n, p in grounded.unet.attn_processors.items()} == before


def test_fine_tune_starts_from_an_exported_model(tmp_path):
    import pytest

    src = Trainer(tmp_path / "src", TrainConfig(vae_steps=2, steps=2, **TINY), "cpu")
    src.train_vae(progress=False)
    src.train_diffusion(progress=False)
    model = src.export(tmp_path / "model", dtype=torch.float32)

    # sizes come from the exported model, not from the (default-sized) config passed in
    ft = Trainer(tmp_path / "ft", TrainConfig(grounding_weight=0.5), "cpu", init_from=model)
    assert ft.cfg.unet_channels == TINY["unet_channels"] and ft.cfg.grounding_weight == 0.5
    assert ft.step == 0 and ft.vae_step == ft.cfg.vae_steps and ft.scaling_factor == src.scaling_factor
    for k, v in ft.unet.state_dict().items():
        assert torch.equal(v, src.ema[f"unet.{k}"]), k  # the export holds the EMA weights
        assert torch.equal(ft.ema[f"unet.{k}"], v), k
    ft.cfg.steps = 1
    ft.train_diffusion(progress=False)
    assert ft.step == 1
    again = Trainer(tmp_path / "ft", None, "cpu", init_from=model)  # a checkpoint wins over init_from
    assert again.step == 1

    with pytest.raises(ValueError, match="init_from"):
        Trainer(tmp_path / "bad", None, "cpu", init_from=tmp_path / "src")


def test_unet_trainable_limits_training_to_the_named_parameters(tmp_path):
    tr = Trainer(tmp_path / "run", TrainConfig(vae_steps=1, steps=2, unet_trainable=("attn2.",), **TINY), "cpu")
    before = {k: v.clone() for k, v in tr.unet.state_dict().items()}
    tr.train_vae(progress=False)
    tr.train_diffusion(progress=False)
    after = tr.unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".attn2." in k for k in changed), sorted(changed)[:5]


def test_export_can_blend_with_another_model(tmp_path):
    import json

    import pytest
    from safetensors.torch import load_file

    a = Trainer(tmp_path / "a", TrainConfig(vae_steps=1, steps=1, **TINY), "cpu")
    a.train_vae(progress=False)
    a.train_diffusion(progress=False)
    base = a.export(tmp_path / "base", dtype=torch.float32)
    b = Trainer(tmp_path / "b", None, "cpu", init_from=base)
    b.cfg.steps = 2
    b.train_diffusion(progress=False)
    half = b.export(tmp_path / "half", dtype=torch.float32, blend_with=base, blend_alpha=0.5)
    w = {n: load_file(str(d / "unet" / "diffusion_pytorch_model.safetensors")) for n, d in (("base", base), ("half", half))}
    mine = {k[5:]: v for k, v in b.ema.items() if k.startswith("unet.")}
    key = next(k for k in mine if mine[k].dtype.is_floating_point and not torch.equal(mine[k], w["base"][k]))
    assert torch.allclose(w["half"][key], (w["base"][key] + mine[key]) / 2, atol=1e-6)
    info = json.loads((half / "training.json").read_text())
    assert info["blend"]["alpha"] == 0.5 and info["history"][0]["stage2_steps"] == 1
    assert (half / "tokenizer" / "vocab.json").exists() and (half / "tokenizer" / "merges.txt").exists()
    with pytest.raises(ValueError, match="blend_alpha"):
        b.export(tmp_path / "bad", blend_with=base, blend_alpha=1.5)
