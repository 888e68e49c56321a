"""Train the toy Stable Diffusion on the shapes world.

Stage 1 trains the VAE (an ``AutoencoderKL`` at f=4 with 4 latent channels) and measures its
``scaling_factor``. Stage 2 trains the text encoder (a 2-layer ``CLIPTextModel``) and the UNet
together with SD's scaled-linear betas rescaled to zero terminal SNR, v-prediction, min-SNR
weighting and ~10 % caption dropout (so that classifier-free guidance works).

Every batch is drawn from ``(seed, step)`` and every checkpoint holds the full training state, so a
run is deterministic given its seed and can be stopped and resumed::

    python -m explainer.toy.train --out runs/toy --minutes 60          # the quick CPU recipe
    python -m explainer.toy.train --out runs/toy --minutes 60          # run again: resumes
    python -m explainer.toy.train --out runs/toy --export assets/toy   # write the diffusers folder

The shipped model was then fine-tuned for attention grounding (its cross-attention and text encoder
only) and interpolated half-way back to the model it started from (see docs/toy_model.md)::

    python -m explainer.toy.train --out runs/ground --init-from assets/toy --grounding-weight 0.1 \
        --unet-trainable attn2. --unet-lr 1e-4 --text-lr 2e-4 --batch 32 --warmup 50 --ema-decay 0.995 --minutes 40
    python -m explainer.toy.train --out runs/ground --export my_toy --blend-with assets/toy --blend-alpha 0.5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import clip_keys
from .world import IMAGE_SIZE, sample_scenes, render

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "assets" / "toy" / "tokenizer"


@dataclass
class TrainConfig:
    """Every knob of the recipe; saved with each checkpoint."""

    seed: int = 0
    image_size: int = IMAGE_SIZE
    # Stage 1: VAE
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # Stage 2: text encoder + UNet
    steps: int = 200_000  # an upper bound; --minutes usually ends a run first
    batch: int = 32
    unet_lr: float = 4e-4
    text_lr: float = 1e-3
    warmup: int = 300
    lr_decay_steps: int = 20_000  # cosine decay to lr_floor over this many steps, then constant
    lr_floor: float = 0.1
    caption_dropout: float = 0.1
    high_noise_fraction: float = 0.5  # this share of each batch draws t >= high_noise_min_t
    high_noise_min_t: int = 400
    min_snr_gamma: float = 5.0
    grounding_weight: float = 0.0  # attention grounding of object words (TokenCompose-style); 0: off
    unet_trainable: tuple[str, ...] = ()  # train only UNet parameters whose name contains one of these (empty: all)
    ema_decay: float = 0.999
    pad_to: int | None = None  # pad captions to this many tokens in training (None: the tokenizer's max)
    # Model sizes
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_heads: int = 2
    text_width: int = 64
    text_layers: int = 2
    vae_channels: tuple[int, ...] = (32, 64, 64)
    # Bookkeeping
    checkpoint_every: int = 1000
    eval_every: int = 0  # stage-2 steps between fidelity evaluations (0: none)
    eval_n: int = 128
    keep_snapshots: tuple[int, ...] = field(default_factory=tuple)  # stage-2 steps whose EMA weights are kept

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**d)


# ----------------------------------------------------------------------------------------- models
def make_tokenizer(path: str | Path = TOKENIZER_DIR):
    """The real CLIP BPE tokenizer (SD 1.x vocabulary)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path))


def make_models(cfg: TrainConfig, tokenizer) -> dict:
    """Build fresh VAE, text encoder and UNet from the recipe's sizes (seeded)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed)
    n_vae = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_vae,
        up_block_types=("UpDecoderBlock2D",) * n_vae,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=cfg.image_size,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=cfg.text_width,
            intermediate_size=4 * cfg.text_width,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=2,
            max_position_embeddings=tokenizer.model_max_length,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    latent = cfg.image_size // 2 ** (n_vae - 1)
    n_unet = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (n_unet - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n_unet - 1),
        cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.unet_heads,  # diffusers' name for the number of heads
        norm_num_groups=16,
    )
    return {"vae": vae, "text_encoder": text, "unet": unet}


def make_scheduler(kind: str = "ddim"):
    """SD's scaled-linear betas rescaled to zero terminal SNR, v-prediction.

    ``kind="ddim"`` is the shipped sampler (``timestep_spacing="trailing"`` so sampling starts at
    t=999); ``kind="ddpm"`` is the one used for training.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        clip_sample=False,
        timestep_spacing="trailing",
    )
    if kind == "ddpm":
        return DDPMScheduler(**common)
    return DDIMScheduler(**common, set_alpha_to_one=False, steps_offset=1)


def assemble_pipeline(vae, text_encoder, unet, tokenizer):
    """A ``StableDiffusionPipeline`` around the toy components (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler("ddim"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# ---------------------------------------------------------------------------------------- helpers
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    ss = np.random.SeedSequence([seed, stage, step])
    return torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))


def _lr_factor(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, cfg.lr_decay_steps - cfg.warmup))
    return cfg.lr_floor + (1 - cfg.lr_floor) * 0.5 * (1 + math.cos(math.pi * p))


class _TokenCache:
    """Token ids per caption (the world has a few hundred captions; tokenize each once)."""

    def __init__(self, tokenizer, length: int):
        self.tok, self.length, self.cache = tokenizer, length, {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        for c in captions:
            if c not in self.cache:
                self.cache[c] = self.tok(
                    c, padding="max_length", max_length=self.length, truncation=True, return_tensors="pt"
                ).input_ids[0]
        return torch.stack([self.cache[c] for c in captions])


class _Log:
    def __init__(self, path: Path):
        self.path = path

    def write(self, **row) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------- grounding
class _RecordingAttnProcessor:
    """Cross-attention processor that keeps the attention probabilities for a loss.

    The layer's output comes from diffusers' classic ``AttnProcessor``; the probabilities
    (``[batch * heads, pixels, tokens]``) are computed beside it with ``attn.get_attention_scores``.
    """

    def __init__(self, store: list):
        from diffusers.models.attention_processor import AttnProcessor

        self.store, self.inner = store, AttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        self.store.append((attn.heads, attn.get_attention_scores(q, k, None)))
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class _attention_recorder:
    """Context manager: record the UNet's cross-attention probabilities (``enabled``) for one call,
    then put the original processors back."""

    def __init__(self, unet, enabled: bool):
        self.unet, self.enabled, self.probs = unet, enabled, []

    def __enter__(self) -> list:
        if self.enabled:
            self.saved = dict(self.unet.attn_processors)
            procs = {n: (_RecordingAttnProcessor(self.probs) if ".attn2." in n else p) for n, p in self.saved.items()}
            self.unet.set_attn_processor(procs)
        return self.probs

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.unet.set_attn_processor(dict(self.saved))


def object_token_indices(caption: str) -> list[tuple[int, int]]:
    """Token positions ``(colour, shape)`` of each object named in a world caption.

    Every colour and shape word is one CLIP BPE token, so word ``i`` of the caption is token ``i + 1``
    (after BOS): ``a red circle above a blue square`` → ``[(2, 3), (6, 7)]``.
    """
    from .world import parse_caption

    n = len(parse_caption(caption))
    return [(2, 3)] if n == 1 else [(2, 3), (6, 7)]


def grounding_loss(probs: list, captions: list[str], cover: torch.Tensor) -> torch.Tensor:
    """Mean share of each object word's cross-attention that falls outside its object.

    Args:
        probs: ``(heads, [batch * heads, pixels, tokens])`` per cross-attention call.
        captions: the batch's captions (``""`` for dropped ones, which are skipped).
        cover: ``[batch, K, H, W]`` object coverage at image resolution.

    Returns:
        A scalar in [0, 1] (0 when no caption names an object).
    """
    rows, tokens, objects = [], [], []
    for i, c in enumerate(captions):
        if c:
            for j, (tc, ts) in enumerate(object_token_indices(c)):
                rows += [i, i]
                tokens += [tc, ts]
                objects += [j, j]
    if not rows:
        return cover.new_zeros(())
    rows_t = torch.tensor(rows, device=cover.device)
    tok_t = torch.tensor(tokens, device=cover.device)
    obj_t = torch.tensor(objects, device=cover.device)
    terms = []
    for heads, p in probs:
        b = p.shape[0] // heads
        side = int(round(p.shape[1] ** 0.5))
        a = p.float().view(b, heads, p.shape[1], p.shape[2]).mean(1)  # [batch, pixels, tokens]
        m = F.adaptive_avg_pool2d(cover, (side, side)).flatten(2)  # [batch, K, pixels]
        att = a[rows_t, :, tok_t]  # [word, pixels]
        inside = (att * m[rows_t, obj_t]).sum(-1) / att.sum(-1).clamp_min(1e-8)
        terms.append(1 - inside.mean())
    return torch.stack(terms).mean()


# ------------------------------------------------------------------------------------------ train
class Trainer:
    """Two-stage trainer with full-state checkpoints in ``out/``.

    Args:
        out: run folder (checkpoints, logs, snapshots).
        cfg: the recipe; ignored in favour of the saved one when resuming.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, out: str | Path, cfg: TrainConfig | None = None, device: str = "auto",
                 overrides: dict | None = None, init_from: str | Path | None = None):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = _device(device)
        ckpt = self.out / "checkpoint.pt"
        state = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt.exists() else None
        init = None
        if state is None and init_from is not None:
            init = _read_init(init_from)
            cfg = TrainConfig.from_dict({**asdict(cfg or TrainConfig()), **init["sizes"]})
        self.cfg = TrainConfig.from_dict(json.loads(state["config"])) if state else (cfg or TrainConfig())
        for k, v in (overrides or {}).items():  # e.g. more steps for a resumed run
            setattr(self.cfg, k, v)
        self.tokenizer = make_tokenizer()
        m = make_models(self.cfg, self.tokenizer)
        self.vae, self.text, self.unet = m["vae"], m["text_encoder"], m["unet"]
        self.noise = make_scheduler("ddpm")
        if self.cfg.unet_trainable:  # e.g. ("attn2.",): a fine-tune of the cross-attention only
            for name, prm in self.unet.named_parameters():
                prm.requires_grad_(any(pat in name for pat in self.cfg.unet_trainable))
        self.vae_step, self.step, self.minutes = 0, 0, 0.0
        self.scaling_factor: float | None = None
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=self.cfg.vae_lr)
        self.opt = torch.optim.AdamW(
            [
                {"params": self.unet.parameters(), "lr": self.cfg.unet_lr},
                {"params": self.text.parameters(), "lr": self.cfg.text_lr},
            ],
            weight_decay=1e-2,
        )
        self.ema = self._live_copy()
        if state:
            self._load(state)
        elif init is not None:
            self._init_from(init)
        for mod in (self.vae, self.text, self.unet):
            mod.to(self.device)
        self.ema = {k: v.to(self.device) for k, v in self.ema.items()}
        self.log = _Log(self.out / "train_log.jsonl")
        self.eval_log = _Log(self.out / "eval_log.jsonl")
        length = self.cfg.pad_to or self.tokenizer.model_max_length
        self.tokens = _TokenCache(self.tokenizer, length)

    def _live_copy(self) -> dict[str, torch.Tensor]:
        """A copy of the live text encoder and UNet weights, keyed as the EMA is."""
        ema = {f"unet.{k}": v.detach().clone() for k, v in self.unet.state_dict().items()}
        ema.update({f"text_encoder.{k}": v.detach().clone() for k, v in self.text.state_dict().items()})
        return ema

    # -- checkpoints
    def _init_from(self, init: dict) -> None:
        """Start stage 2 from an exported model: its VAE (stage 1 counts as done), its scaling factor,
        and its text encoder and UNet as both the live and the EMA weights."""
        self.vae.load_state_dict(init["vae"])
        self.unet.load_state_dict(init["unet"])
        self.text.load_state_dict(clip_keys.fit_to(init["text_encoder"], self.text))
        self.vae_step, self.scaling_factor = self.cfg.vae_steps, init["scaling_factor"]
        self.ema = self._live_copy()

    def _load(self, s: dict) -> None:
        self.vae.load_state_dict(s["vae"])
        self.unet.load_state_dict(s["unet"])
        self.text.load_state_dict(clip_keys.fit_to(s["text_encoder"], self.text))
        self.vae_opt.load_state_dict(s["vae_opt"])
        self.opt.load_state_dict(s["opt"])
        self.ema = dict(s["ema"])
        self.vae_step, self.step, self.minutes = int(s["vae_step"]), int(s["step"]), float(s["minutes"])
        sf = float(s["scaling_factor"])
        self.scaling_factor = sf if sf > 0 else None

    def save(self) -> Path:
        """Write the full training state to ``out/checkpoint.pt`` (atomically)."""
        state = {
            "config": json.dumps(asdict(self.cfg)),
            "vae": self.vae.state_dict(),
            "unet": self.unet.state_dict(),
            "text_encoder": self.text.state_dict(),
            "vae_opt": self.vae_opt.state_dict(),
            "opt": self.opt.state_dict(),
            "ema": self.ema,
            "vae_step": self.vae_step,
            "step": self.step,
            "minutes": self.minutes,
            "scaling_factor": self.scaling_factor or -1.0,
        }
        tmp = self.out / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "checkpoint.pt")
        return self.out / "checkpoint.pt"

    # -- data
    def images(self, n: int, stage: int, step: int) -> tuple[torch.Tensor, list[str]]:
        x, captions, _ = self.images_and_masks(n, stage, step)
        return x, captions

    def images_and_masks(self, n: int, stage: int, step: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """The batch of ``(stage, step)``: images ``[N, 3, H, W]`` in [-1, 1], captions, and each
        object's coverage ``[N, K, H, W]``."""
        scenes = sample_scenes(n, self.cfg.seed * 1000 + stage, step)
        x, cover = render(scenes, self.cfg.image_size, device=self.device, masks=True)
        return x * 2 - 1, [s.caption for s in scenes], cover

    # -- stage 1
    def train_vae(self, deadline: float | None = None, progress: bool = True) -> None:
        """Train the VAE for ``cfg.vae_steps`` (resumes), then measure its scaling factor."""
        cfg = self.cfg
        self.vae.train()
        bar = tqdm(total=cfg.vae_steps, initial=self.vae_step, desc="stage 1: VAE", disable=not progress)
        t0 = time.time()
        while self.vae_step < cfg.vae_steps:
            loss = self.vae_loss(self.vae_step)
            self.vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.vae_opt.step()
            self.vae_step += 1
            bar.update(1)
            if self.vae_step % 50 == 0 or self.vae_step == cfg.vae_steps:
                bar.set_postfix(loss=f"{loss.item():.5f}")
                self.log.write(stage=1, step=self.vae_step, loss=loss.item(), minutes=self.minutes + (time.time() - t0) / 60)
            if self.vae_step % cfg.checkpoint_every == 0 or (deadline and time.time() > deadline):
                self.minutes += (time.time() - t0) / 60
                t0 = time.time()
                self.save()
                if deadline and time.time() > deadline:
                    break
        bar.close()
        self.minutes += (time.time() - t0) / 60
        if self.vae_step >= cfg.vae_steps and self.scaling_factor is None:
            self.scaling_factor = self.measure_scaling_factor()
            self.save()

    @torch.no_grad()
    def measure_scaling_factor(self, n: int = 2048) -> float:
        """1 / std of the VAE's posterior means over ``n`` fresh images (as SD measured 0.18215)."""
        self.vae.eval()
        zs = []
        for i in range(0, n, 256):
            x, _ = self.images(min(256, n - i), 3, i)
            zs.append(self.vae.encode(x).latent_dist.mean.float())
        return float(1.0 / torch.cat(zs).std())

    # -- stage 2
    def train_diffusion(self, deadline: float | None = None, progress: bool = True) -> None:
        """Train text encoder + UNet (resumes) until ``cfg.steps`` or the deadline."""
        cfg = self.cfg
        if self.scaling_factor is None:
            raise RuntimeError("train the VAE (stage 1) before stage 2")
        self.vae.eval().requires_grad_(False)
        self.unet.train()
        self.text.train()
        bar = tqdm(total=cfg.steps, initial=self.step, desc="stage 2: UNet + text", disable=not progress)
        t0, loss_avg = time.time(), None
        while self.step < cfg.steps:
            for i, g in enumerate(self.opt.param_groups):
                g["lr"] = (cfg.unet_lr if i == 0 else cfg.text_lr) * _lr_factor(cfg, self.step)
            loss = self.diffusion_loss(self.step)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(self.unet.parameters()) + list(self.text.parameters()), 1.0)
            self.opt.step()
            self._ema_update()
            self.step += 1
            bar.update(1)
            loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
            if self.step % 50 == 0 or self.step == cfg.steps:
                bar.set_postfix(loss=f"{loss_avg:.4f}")
                self.log.write(stage=2, step=self.step, loss=loss_avg, minutes=self.minutes + (time.time() - t0) / 60)
            stop = deadline is not None and time.time() > deadline
            if self.step in cfg.keep_snapshots:
                self.snapshot()
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self.minutes += (time.time() - t0) / 60
                t0 = time.time()
                self.evaluate()
                t0 = time.time()  # evaluation time is not training time
            if self.step % cfg.checkpoint_every == 0 or stop:
                self.minutes += (time.time() - t0) / 60
                t0 = time.time()
                self.save()
            if stop:
                break
        bar.close()
        self.minutes += (time.time() - t0) / 60
        self.save()

    def diffusion_loss(self, step: int) -> torch.Tensor:
        """Stage 2's weighted v-prediction loss on the batch of ``step`` (its data, t and noise are
        all drawn from ``(seed, step)``)."""
        cfg = self.cfg
        alphas = self.noise.alphas_cumprod.to(self.device)
        snr = alphas / (1 - alphas).clamp_min(1e-8)  # [T]; 0 at t=T-1 under zero terminal SNR
        # min-SNR-γ weighting in x0 units, floored at 1 so that pure noise (SNR 0) still trains.
        weight = snr.clamp(1.0, cfg.min_snr_gamma) / (snr + 1)  # [T], for the v-prediction loss
        T = self.noise.config.num_train_timesteps
        x, captions, cover = self.images_and_masks(cfg.batch, 2, step)
        gen = _step_generator(cfg.seed, 2, step)
        drop = torch.rand(cfg.batch, generator=gen) < cfg.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        n_high = int(round(cfg.batch * cfg.high_noise_fraction))
        t = torch.cat(
            [
                torch.randint(0, T, (cfg.batch - n_high,), generator=gen),
                torch.randint(cfg.high_noise_min_t, T, (n_high,), generator=gen),
            ]
        ).to(self.device)
        with torch.no_grad():
            lat = self.vae.encode(x).latent_dist.mean * self.scaling_factor  # posterior means, [N, 4, h, w]
        noise = torch.randn(lat.shape, generator=gen).to(self.device)
        noisy = self.noise.add_noise(lat, noise, t)
        target = self.noise.get_velocity(lat, noise, t)
        ids = self.tokens(captions).to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            cond = self.text(ids)[0]
            with _attention_recorder(self.unet, cfg.grounding_weight > 0) as probs:
                pred = self.unet(noisy, t, cond).sample
        per = ((pred.float() - target) ** 2).mean(dim=(1, 2, 3))
        loss = (per * weight[t]).mean()
        if cfg.grounding_weight > 0:
            loss = loss + cfg.grounding_weight * grounding_loss(probs, captions, cover)
        return loss

    def vae_loss(self, step: int) -> torch.Tensor:
        """Stage 1's loss (MSE reconstruction + a small KL) on the batch of ``step``."""
        x, _ = self.images(self.cfg.vae_batch, 1, step)
        post = self.vae.encode(x).latent_dist
        g = _step_generator(self.cfg.seed, 1, step)
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(self.device)
        rec = self.vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        return F.mse_loss(rec, x) + self.cfg.vae_kl_weight * kl

    @torch.no_grad()
    def _ema_update(self) -> None:
        d = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        if not hasattr(self, "_ema_pairs"):
            live = {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
            live.update({f"text_encoder.{k}": v for k, v in self.text.state_dict().items()})
            self._ema_pairs = [(self.ema[k], v) for k, v in live.items() if v.dtype.is_floating_point]
        ema, cur = zip(*self._ema_pairs)
        torch._foreach_lerp_(list(ema), list(cur), 1 - d)

    def fit(self, minutes: float | None = None, vae_minutes: float = 6.0, progress: bool = True) -> None:
        """Run what is left of both stages, within ``minutes`` of wall time if given.

        Stage 1 gets at most ``vae_minutes`` of the budget. On a fresh stage 2 with a time budget,
        the step rate is measured over the first 20 s and the cosine learning-rate decay is sized
        to end with the budget.
        """
        start = time.time()
        deadline = start + 60 * minutes if minutes else None
        vae_deadline = min(deadline, start + 60 * vae_minutes) if deadline else None
        self.train_vae(vae_deadline, progress)
        if self.scaling_factor is None:  # the time box ended stage 1 early: measure what we have
            self.scaling_factor = self.measure_scaling_factor()
            self.save()
        if deadline is None or time.time() >= deadline:
            return
        if self.step == 0:
            t0 = time.time()
            self.train_diffusion(min(deadline, t0 + 20.0), progress)
            rate = self.step / max(1e-6, time.time() - t0)
            self.cfg.lr_decay_steps = int(self.step + rate * (deadline - time.time()))
        self.train_diffusion(deadline, progress)

    # -- outputs
    def pipeline(self, ema: bool = True):
        """A pipeline of the current (EMA) weights on the training device, fp32."""
        m = make_models(self.cfg, self.tokenizer)
        m["vae"].load_state_dict(self.vae.state_dict())
        m["vae"].register_to_config(scaling_factor=self.scaling_factor or 1.0)
        if ema:
            m["unet"].load_state_dict({k[5:]: v for k, v in self.ema.items() if k.startswith("unet.")})
            text = {k[13:]: v for k, v in self.ema.items() if k.startswith("text_encoder.")}
            m["text_encoder"].load_state_dict(clip_keys.fit_to(text, m["text_encoder"]))
        else:
            m["unet"].load_state_dict(self.unet.state_dict())
            m["text_encoder"].load_state_dict(self.text.state_dict())
        pipe = assemble_pipeline(m["vae"], m["text_encoder"], m["unet"], self.tokenizer)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def snapshot(self) -> Path:
        """Keep this step's EMA weights in ``snapshots/`` as fp16 ``step_{N}_unet`` / ``step_{N}_text_encoder`` files."""
        from safetensors.torch import save_file

        d = self.out / "snapshots"
        d.mkdir(exist_ok=True)
        meta = {"step": str(self.step), "minutes": f"{self.minutes:.3f}"}
        for part in ("unet", "text_encoder"):
            tensors = {k[len(part) + 1 :]: v.detach().to("cpu", torch.float16).contiguous()
                       for k, v in self.ema.items() if k.startswith(part + ".") and v.dtype.is_floating_point}
            if part == "text_encoder":
                tensors = clip_keys.canonical(tensors)
            save_file(tensors, str(d / f"step_{self.step:06d}_{part}.safetensors"), metadata=meta)
        return d

    def evaluate(self, guidance_scales: tuple[float, ...] = (7.5,), n: int | None = None) -> dict:
        """Fidelity of the EMA weights on evaluation scenes (new seeds; captions seen in training); appended to ``eval_log.jsonl``."""
        from .evaluate import fidelity

        pipe = self.pipeline()
        row = {"step": self.step, "minutes": round(self.minutes, 3)}
        for g in guidance_scales:
            r = fidelity(pipe, n=n or self.cfg.eval_n, guidance_scale=g, progress=False)
            row[f"g{g}"] = {k: v for k, v in r.items() if k != "per_caption"}
        self.eval_log.write(**row)
        del pipe
        return row

    def export(self, path: str | Path, dtype: torch.dtype = torch.float16, *, blend_with: str | Path | None = None,
               blend_alpha: float = 1.0) -> Path:
        """Write the EMA model as a diffusers folder (``model_index.json`` + subfolders, safetensors).

        Args:
            path: the folder to write.
            dtype: weights dtype on disk.
            blend_with: an exported model to interpolate with (weight-space ensembling, as in WiSE-FT):
                text encoder and UNet become ``other + blend_alpha * (this - other)``.
            blend_alpha: 1 keeps this run's weights, 0 the other model's.

        Returns:
            ``path``.
        """
        import shutil

        pipe = self.pipeline().to("cpu")
        info = {"train_config": asdict(self.cfg), "stage2_steps": self.step, "vae_steps": self.vae_step,
                "train_minutes": round(self.minutes, 2), "scaling_factor": self.scaling_factor}
        if blend_with is not None:
            if not 0.0 <= blend_alpha <= 1.0:
                raise ValueError(f"blend_alpha must be in [0, 1], got {blend_alpha}")
            other = _read_init(blend_with)
            other["text_encoder"] = clip_keys.fit_to(other["text_encoder"], pipe.text_encoder)
            for part, module in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
                mine = module.state_dict()
                module.load_state_dict({k: other[part][k] + blend_alpha * (v - other[part][k]) if v.dtype.is_floating_point
                                        else v for k, v in mine.items()})
            info["blend"] = {"with": str(blend_with), "alpha": blend_alpha}
            prior = Path(blend_with) / "training.json"
            info["history"] = [json.loads(prior.read_text())]
        pipe.to(dtype=dtype)
        pipe.save_pretrained(str(path), safe_serialization=True)
        # the canonical text_model.* key layout, which transformers 4.x and 5.x both load
        clip_keys.rewrite_canonical(Path(path) / "text_encoder" / "model.safetensors")
        # ship the tokenizer as built (vocab.json + merges.txt), whatever format this transformers saves
        shutil.rmtree(Path(path) / "tokenizer")
        shutil.copytree(TOKENIZER_DIR, Path(path) / "tokenizer")
        (Path(path) / "training.json").write_text(json.dumps(info, indent=2) + "\n")
        return Path(path)


def _read_init(path: str | Path) -> dict:
    """Weights, model sizes and scaling factor of an exported toy model (a diffusers folder with the
    ``training.json`` that :meth:`Trainer.export` writes), in fp32."""
    from safetensors.torch import load_file

    path = Path(path)
    info_file = path / "training.json"
    if not info_file.is_file():
        raise ValueError(f"init_from={str(path)!r} is not an exported toy model: it has no training.json")
    info = json.loads(info_file.read_text())
    size_keys = ("image_size", "unet_channels", "unet_heads", "text_width", "text_layers", "vae_channels", "vae_steps")
    out = {"sizes": {k: info["train_config"][k] for k in size_keys}, "scaling_factor": float(info["scaling_factor"])}
    for part, fname in (("vae", "diffusion_pytorch_model"), ("unet", "diffusion_pytorch_model"), ("text_encoder", "model")):
        out[part] = {k: v.float() for k, v in load_file(str(path / part / f"{fname}.safetensors")).items()}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m explainer.toy.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/toy", help="run folder (resumes from its checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget for this invocation")
    p.add_argument("--vae-minutes", type=float, default=6.0, help="time box of stage 1 within --minutes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="stage-2 steps in total")
    p.add_argument("--vae-steps", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--grounding-weight", type=float, default=None,
                   help="weight of the attention-grounding term for object words (default 0: off)")
    p.add_argument("--init-from", default=None,
                   help="fine-tune: start a new run from an exported model folder (e.g. assets/toy)")
    p.add_argument("--unet-lr", type=float, default=None)
    p.add_argument("--text-lr", type=float, default=None)
    p.add_argument("--warmup", type=int, default=None, help="learning-rate warm-up steps")
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--unet-trainable", nargs="+", default=None, metavar="PATTERN",
                   help="train only UNet parameters whose name contains one of these (e.g. attn2.)")
    p.add_argument("--blend-with", default=None, help="with --export: interpolate with this exported model (WiSE-FT)")
    p.add_argument("--blend-alpha", type=float, default=0.5, help="with --blend-with: weight of this run (default 0.5)")
    p.add_argument("--export", default=None, help="write the EMA model as a diffusers folder here and exit")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    overrides = {}
    for name, val in (("batch", a.batch), ("steps", a.steps), ("vae_steps", a.vae_steps), ("eval_every", a.eval_every),
                      ("warmup", a.warmup)):
        if val is not None:
            if val < 0:
                p.error(f"--{name.replace('_', '-')} must be >= 0, got {val}")
            overrides[name] = val
    if a.grounding_weight is not None:
        if not a.grounding_weight >= 0:
            p.error(f"--grounding-weight must be >= 0, got {a.grounding_weight}")
        overrides["grounding_weight"] = a.grounding_weight
    for name, val in (("unet_lr", a.unet_lr), ("text_lr", a.text_lr)):
        if val is not None:
            if not val > 0:
                p.error(f"--{name.replace('_', '-')} must be > 0, got {val}")
            overrides[name] = val
    if a.ema_decay is not None:
        if not 0.0 <= a.ema_decay < 1.0:
            p.error(f"--ema-decay must be in [0, 1), got {a.ema_decay}")
        overrides["ema_decay"] = a.ema_decay
    if a.unet_trainable:
        overrides["unet_trainable"] = tuple(a.unet_trainable)
    try:
        tr = Trainer(a.out, TrainConfig(seed=a.seed), a.device, overrides, init_from=a.init_from)
    except ValueError as e:
        p.error(str(e))
    if a.export:
        try:
            print(tr.export(a.export, blend_with=a.blend_with, blend_alpha=a.blend_alpha))
        except ValueError as e:
            p.error(str(e))
        return
    tr.fit(a.minutes, vae_minutes=a.vae_minutes, progress=not a.no_progress)
    print(json.dumps({"vae_step": tr.vae_step, "step": tr.step, "minutes": round(tr.minutes, 2),
                      "scaling_factor": tr.scaling_factor}))


if __name__ == "__main__":
    main()
