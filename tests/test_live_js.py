"""The live page's plain-JS parts, run by Node against their Python references.

- ``SDXLive.CLIPTokenizer`` (static/tokenizer.js) against ``transformers.CLIPTokenizer`` loaded from
  ``assets/toy/tokenizer``, called as diffusers' ``encode_prompt`` calls it, on the toy's captions and
  several hundred other strings (unknown words, punctuation, numbers, accents and other scripts, odd white
  space, special tokens written out, over-long prompts, the empty string);
- ``SDXLive.DDIMScheduler`` (static/scheduler.js) against diffusers' ``DDIMScheduler`` from the toy's
  ``scheduler_config.json`` (and variants of it): ᾱ, timesteps, step outputs;
- ``SDXLive.randn`` (static/random.js) against ``torch.randn`` with a seeded CPU generator;
- ``SDXLive.cfg`` against the pipelines' guidance formula.

All cases go to Node in one invocation (inputs and outputs as JSON files). Without ``node`` these tests
skip, and under ``CI=true`` they fail.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from explainer.live.js_data import scheduler_payload, tokenizer_payload

from _browser import require_node

REPO = Path(__file__).resolve().parent.parent
STATIC = REPO / "explainer" / "live" / "static"
TOKENIZER_DIR = REPO / "assets" / "toy" / "tokenizer"
SCHEDULER_DIR = REPO / "assets" / "toy" / "scheduler"
SCHEDULER_CONFIG = json.loads((SCHEDULER_DIR / "scheduler_config.json").read_text())
STEP_COUNTS = (1, 2, 3, 7, 10, 25, 30, 50, 100, 999, 1000)
SEEDS_AND_SIZES = ((0, 1024), (42, 1024), (1234, 17), (7, 15), (3, 16), (5, 1), (9, 2), (11, 33), (2**53 - 1, 1024),
                   (2**32 + 5, 40), (-1, 20), (123456789, 4 * 16 * 16 * 2))  # fmt: skip
# Variants of the toy's config that exercise the other supported branches.
SCHEDULER_VARIANTS = {
    "toy": {},
    "epsilon_leading": {"prediction_type": "epsilon", "timestep_spacing": "leading", "rescale_betas_zero_snr": False},
    "sample_linspace": {"prediction_type": "sample", "timestep_spacing": "linspace", "rescale_betas_zero_snr": False,
                        "clip_sample": True, "set_alpha_to_one": True},
    "linear_epsilon_trailing": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                                "prediction_type": "epsilon", "rescale_betas_zero_snr": False},
    "cosine_v": {"beta_schedule": "squaredcos_cap_v2"},
}  # fmt: skip

NODE_SCRIPT = r"""
const fs = require('fs');
const path = require('path');
const vm = require('vm');
const [staticDir, inPath, outPath] = process.argv.slice(2);
const T = require(path.join(staticDir, 'tokenizer.js'));
const S = require(path.join(staticDir, 'scheduler.js'));
const R = require(path.join(staticDir, 'random.js'));
const inp = JSON.parse(fs.readFileSync(inPath, 'utf8'));
const out = {};

const tok = new T.CLIPTokenizer(inp.tokenizer);
out.tokens = inp.strings.map((s) => { const e = tok.encode(s, {padding: 'max_length', truncation: true}); return [e.input_ids, e.attention_mask, e.tokens]; });
out.words = inp.strings.map((s) => tok.words(tok.encode(s).tokens));
out.tokenText = inp.strings.map((s) => tok.encode(s).tokens.map((t) => tok.tokenText(t)));

out.sched = {};
for (const [name, c] of Object.entries(inp.schedulers)) {
  const r = out.sched[name] = {timesteps: {}, steps: {}, stepsExact: {}};
  const s = new S.DDIMScheduler(c.config);
  const exact = new S.DDIMScheduler(c.config, {alphasCumprod: c.alphas_cumprod});
  r.alphasCumprod = Array.from(s.alphasCumprod);
  const sch = s.schedule();
  r.sigma = Array.from(sch.sigma); r.snr = Array.from(sch.snr);
  for (const n of inp.stepCounts) r.timesteps[n] = Array.from(s.setTimesteps(n));
  for (const [n, cases] of Object.entries(inp.stepCases)) {
    // the page's loop: step through setTimesteps(n) in order, one (modelOutput, sample) pair per step
    const ts = Array.from(s.setTimesteps(Number(n))); exact.setTimesteps(Number(n));
    r.steps[n] = cases.map(([mo, x], i) => { const o = s.step(Float32Array.from(mo), ts[i], Float32Array.from(x)); return [ts[i], Array.from(o.prevSample), Array.from(o.predOriginalSample)]; });
    r.stepsExact[n] = cases.map(([mo, x], i) => { const o = exact.step(Float32Array.from(mo), ts[i], Float32Array.from(x)); return [ts[i], Array.from(o.prevSample), Array.from(o.predOriginalSample)]; });
  }
}
out.errors = inp.badConfigs.map((c) => { try { new S.DDIMScheduler(c); return null; } catch (e) { return e.message; } });
const fresh = new S.DDIMScheduler(inp.schedulers.toy.config);
const misuse = {
  stepBeforeSetTimesteps: () => fresh.step(new Float32Array(4), 999, new Float32Array(4)),
  tooManySteps: () => fresh.setTimesteps(inp.schedulers.toy.config.num_train_timesteps + 1),
  lengths: () => { fresh.setTimesteps(10); return fresh.step(new Float32Array(4), 999, new Float32Array(5)); },
  badAlphas: () => new S.DDIMScheduler(inp.schedulers.toy.config, {alphasCumprod: [0.5]}),
  cfgLengths: () => S.cfg(new Float32Array(3), new Float32Array(4), 7.5),
  padding: () => tok.encode('a', {padding: 'longest'}),
  kernel: () => R.randn(0, 16, {kernel: 'neon'}),
  seed: () => R.randn(0.5, 16),
};
out.misuse = {};
for (const [k, fn] of Object.entries(misuse)) { try { fn(); out.misuse[k] = null; } catch (e) { out.misuse[k] = e.message; } }

out.randn = inp.randn.map(([seed, n]) => Array.from(R.randn(typeof seed === 'string' ? BigInt(seed) : seed, n)));
out.randnScalar = inp.randn.map(([seed, n]) => Array.from(R.randn(typeof seed === 'string' ? BigInt(seed) : seed, n, {kernel: 'scalar'})));
out.cfg = inp.cfg.map(([u, c, g]) => Array.from(S.cfg(Float32Array.from(u), Float32Array.from(c), g)));

// As classic scripts in one global (what the page does): everything lands on self.SDXLive.
const sandbox = {TextEncoder, TextDecoder};
sandbox.self = sandbox;
vm.createContext(sandbox);
for (const f of ['random.js', 'scheduler.js', 'tokenizer.js']) vm.runInContext(fs.readFileSync(path.join(staticDir, f), 'utf8'), sandbox, {filename: f});
out.globalNames = Object.keys(sandbox.SDXLive).sort();
out.globalEncode = new sandbox.SDXLive.CLIPTokenizer(inp.tokenizer).encode(inp.strings[0]).input_ids;

fs.writeFileSync(outPath, JSON.stringify(out));
"""


def _strings() -> list[str]:
    """≥ 200 prompts: the toy's captions and strings aimed at every stage of the tokenizer."""
    from explainer.toy.world import all_captions

    captions = all_captions()
    hand = [
        "", " ", "   \t\n  ", "a", "A RED CIRCLE ON THE LEFT", "  a red   circle\ton the\nleft  ",
        "a purple hexagon above a gold trapezoid", "a zorblax frumious snark", "antidisestablishmentarianism",
        "Hello, world!!!", "what?!... (really) [yes] {no} <maybe>", "e-mail: someone@example.com #tag $5 100%",
        "it's I'LL don't we're they've I'm he'd 'quoted' \"double\"", "rock'n'roll o'clock ''s",
        "123 4567 3.14159 1,000,000 2nd 21st 1e-5", "x²³ ½ ① Ⅻ ٣ ४",
        "Café naïve résumé façade jalapeño Ångström", "cafe\u0301 (combining accent)", "Straße ΣΑΣ σ İstanbul",
        "日本語 テスト 中文 한국어", "Здравствуй мир", "مرحبا بالعالم", "שלום עולם", "ไทย", "emoji 😀🎨🐱‍👤 ❤️",
        "ﬁ ligature ＡＢＣ fullwidth", "tab\there", "nbsp\u00a0here", "nel\u0085here", "bom\ufeffhere",
        "zwsp\u200bhere", "ideographic\u3000space", "line\u2028sep\u2029para", "thin\u2009space", "\x1c\x1d\x1e\x1f fs",
        "control\x00\x07chars", "a<|endoftext|>b", "<|startoftext|>a red circle<|endoftext|>", "A <|ENDOFTEXT|> b",
        "<|endoftext", "aaaa bbbb cccccccc", "!!!!!!!!!!!!!!!!!!!!!!", "--- ___ ... ,,, ;;;", "a,b.c;d:e",
        "ʼapostrophe’s curly ‘quotes’ “double”", "snake_case camelCase kebab-case PascalCase",
        "http://example.com/path?x=1&y=2", "C++ C# F# .NET node.js", "the the the the",
        "a red circle on the left " * 12, "word " * 80, ", ".join(["a red circle"] * 30),
        "supercalifragilisticexpialidocious " * 10, "x" * 300, "1" * 100,
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    pool = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789   .,!?'\"-()&;:/\\") + list(
        "éèüößçñøåæœ∂π∑≈€£¥©®™°•…—–«»¿¡αβγΔΩжЖ漢字カナ한😀\u0301\u00a0\t\n"
    )
    words = ["red", "circle", "left", "square", "blue", "zorblax", "a", "the", "on", "above", "and", "glorp", "'s"]
    randoms = []
    for i in range(160):
        if i % 2:
            randoms.append("".join(rng.choice(pool, size=int(rng.integers(1, 60)))))
        else:
            randoms.append(" ".join(rng.choice(words, size=int(rng.integers(1, 40)))))
    return captions[::3] + hand + randoms


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """Run every JS case in one Node process; returns the inputs and Node's outputs."""
    return run_cases(require_node(), tmp_path_factory.mktemp("live_js"))


def run_cases(node: str, folder: Path) -> dict:
    """Write every case to ``folder/in.json``, run them in Node, return ``{"in": inputs, "out": outputs}``."""
    rng = np.random.default_rng(1)
    strings = _strings()
    schedulers, step_cases = {}, {}
    from diffusers import DDIMScheduler

    for name, over in SCHEDULER_VARIANTS.items():
        config = {**SCHEDULER_CONFIG, **over}
        schedulers[name] = {"config": config,
                            "alphas_cumprod": DDIMScheduler.from_config(config).alphas_cumprod.tolist()}  # fmt: skip
    for n in (1, 3, 10, 25):
        step_cases[str(n)] = [[rng.standard_normal(64).astype(np.float32).tolist(),
                               rng.standard_normal(64).astype(np.float32).tolist()] for _ in range(n)]  # fmt: skip
    bad = [{**SCHEDULER_CONFIG, "thresholding": True}, {**SCHEDULER_CONFIG, "prediction_type": "flow"},
           {**SCHEDULER_CONFIG, "timestep_spacing": "karras"}, {**SCHEDULER_CONFIG, "_class_name": "EulerDiscreteScheduler"},
           {**SCHEDULER_CONFIG, "beta_schedule": "sigmoid", "trained_betas": None}]  # fmt: skip
    cfg_cases = [[rng.standard_normal(1024).astype(np.float32).tolist(), rng.standard_normal(1024).astype(np.float32).tolist(), g]
                 for g in (0.0, 1.0, 3.5, 7.5, 12.0)]  # fmt: skip
    randn = [[str(s) if abs(s) > 2**53 - 1 else s, n] for s, n in SEEDS_AND_SIZES]
    inp = {"tokenizer": tokenizer_payload(TOKENIZER_DIR), "strings": strings, "schedulers": schedulers,
           "stepCounts": list(STEP_COUNTS), "stepCases": step_cases, "badConfigs": bad, "randn": randn, "cfg": cfg_cases}  # fmt: skip
    (folder / "in.json").write_text(json.dumps(inp))
    (folder / "run.js").write_text(NODE_SCRIPT)
    proc = subprocess.run([node, str(folder / "run.js"), str(STATIC), str(folder / "in.json"), str(folder / "out.json")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return {"in": inp, "out": json.loads((folder / "out.json").read_text())}


# ------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_matches_transformers(results):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    strings = results["in"]["strings"]
    assert len(strings) >= 200
    mismatches = []
    for text, (ids, mask, tokens) in zip(strings, results["out"]["tokens"], strict=True):
        # diffusers' encode_prompt: padding="max_length", max_length=model_max_length, truncation=True
        ref = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True)
        if ids != ref["input_ids"] or mask != ref["attention_mask"] or tokens != tok.convert_ids_to_tokens(ref["input_ids"]):
            mismatches.append((text, ids, ref["input_ids"]))
    assert not mismatches, f"{len(mismatches)} of {len(strings)} differ; first: {mismatches[0]}"


def test_tokenizer_truncates_keeping_eos_and_pads(results):
    tok = tokenizer_payload(TOKENIZER_DIR)
    size = tok["config"]["model_max_length"]
    eos = tok["vocab"][tok["config"]["eos_token"]]
    bos = tok["vocab"][tok["config"]["bos_token"]]
    lengths = []
    for text, (ids, mask, _tokens) in zip(results["in"]["strings"], results["out"]["tokens"], strict=True):
        assert len(ids) == len(mask) == size
        n = sum(mask)
        assert ids[0] == bos and ids[n - 1] == eos and all(i == eos for i in ids[n:])
        lengths.append(n)
    assert max(lengths) == size and min(lengths) == 2  # over-long prompts filled the window; "" is bos + eos


def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable character -> byte table (the inverse of bytes_to_unicode)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + len(cs) - 188)
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


BYTE_DECODER = _byte_decoder()


def _text(pieces: list[str]) -> str:
    """The readable text of some pieces: their bytes as UTF-8, the end-of-word marker dropped."""
    body = "".join(pieces).replace("</w>", "")
    return bytes(BYTE_DECODER[c] for c in body).decode("utf-8", errors="replace")


def test_tokenizer_words_group_pieces(results):
    strings = results["in"]["strings"]
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    for text, words, texts in zip(strings, results["out"]["words"], results["out"]["tokenText"], strict=True):
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True)["input_ids"]
        pieces = tok.convert_ids_to_tokens(ids)
        indices = [i for w in words for i in w["indices"]]
        assert indices == [i for i, p in enumerate(pieces) if p not in tok.all_special_tokens]
        for w in words:
            last = w["indices"][-1]  # a word ends with "</w>", or where truncation cut it (eos follows)
            assert pieces[last].endswith("</w>") or pieces[last + 1] in tok.all_special_tokens
            assert w["word"] == _text([pieces[i] for i in w["indices"]])
        assert [t for t in texts if t not in tok.all_special_tokens] == [
            _text([p]) for p in pieces if p not in tok.all_special_tokens
        ]
    assert any(len(w["indices"]) > 1 for ws in results["out"]["words"] for w in ws)  # some word is several pieces


# ------------------------------------------------------------------------------------------- scheduler


def _diffusers(name: str):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config({**SCHEDULER_CONFIG, **SCHEDULER_VARIANTS[name]})


@pytest.mark.parametrize("name", list(SCHEDULER_VARIANTS))
def test_scheduler_alphas_and_timesteps_match_diffusers(results, name):
    out = results["out"]["sched"][name]
    ref = _diffusers(name)
    ac = ref.alphas_cumprod.numpy()
    js = np.asarray(out["alphasCumprod"], dtype=np.float32)
    # float32 steps as PyTorch takes them; PyTorch's CPU sqrt is 1 ulp off for some inputs, hence not exact.
    np.testing.assert_allclose(js, ac, rtol=2e-6, atol=1e-7)
    for n in STEP_COUNTS:
        ref.set_timesteps(n)
        assert out["timesteps"][str(n)] == ref.timesteps.tolist(), f"{name}: timesteps for {n} steps"
    a = js.astype(np.float64)
    sigma = np.array([np.inf if v is None else v for v in out["sigma"]])  # ᾱ = 0 (zero terminal SNR): σ = ∞
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(sigma, np.sqrt((1 - a) / a), rtol=1e-12)
        np.testing.assert_allclose(out["snr"], a / (1 - a), rtol=1e-12)


@pytest.mark.parametrize("name", list(SCHEDULER_VARIANTS))
def test_scheduler_steps_match_diffusers(results, name):
    out = results["out"]["sched"][name]
    for n, cases in results["in"]["stepCases"].items():
        ref = _diffusers(name)
        ref.set_timesteps(int(n))
        for i, ((mo, x), js, exact) in enumerate(zip(cases, out["steps"][n], out["stepsExact"][n], strict=True)):
            t = ref.timesteps[i]
            assert js[0] == exact[0] == int(t)
            r = ref.step(torch.tensor(mo), t, torch.tensor(x), eta=0.0)
            # With diffusers' ᾱ: float32 rounding only (PyTorch's sqrt of ᾱ can be 1 ulp off).
            for got, want in ((exact[1], r.prev_sample), (exact[2], r.pred_original_sample)):
                np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{name} n={n} t={t}")
            # With ᾱ recomputed in JS: near the zero-SNR end ᾱ is a difference of nearly equal square roots,
            # so last-bit differences there move √ᾱ by up to ~1e-5 (the cosine schedule is the worst case).
            for got, want in ((js[1], r.prev_sample), (js[2], r.pred_original_sample)):
                np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=5e-5, err_msg=f"{name} n={n} t={t}")


def test_scheduler_refuses_what_it_does_not_support(results):
    errors = results["out"]["errors"]
    assert all(errors), errors
    for message, word in zip(errors, ("thresholding", "flow", "karras", "EulerDiscreteScheduler", "sigmoid"), strict=True):
        assert word in message


def test_js_misuse_is_refused_with_a_message(results):
    misuse = results["out"]["misuse"]
    expected = {"stepBeforeSetTimesteps": "setTimesteps", "tooManySteps": "numInferenceSteps=1001",
                "lengths": "has 4 values", "badAlphas": "alphasCumprod has 1", "cfgLengths": "uncond has 3",
                "padding": "longest", "kernel": "neon", "seed": "seed=0.5"}  # fmt: skip
    for case, words in expected.items():
        assert misuse[case] is not None and words in misuse[case], (case, misuse[case])


def test_scheduler_payload_is_diffusers_alphas():
    payload = scheduler_payload(SCHEDULER_DIR)
    assert payload["config"] == SCHEDULER_CONFIG
    assert np.array_equal(np.float32(payload["alphas_cumprod"]), _diffusers("toy").alphas_cumprod.numpy())


# ------------------------------------------------------------------------------------------- randn, cfg


def test_randn_matches_torch(results):
    """Bit for bit with the kernel this PyTorch build runs; within float rounding of log/cos with the other."""
    avx2 = torch.backends.cpu.get_cpu_capability() == "AVX2"
    exact, close = ("randn", "randnScalar") if avx2 else ("randnScalar", "randn")
    for i, (seed, n) in enumerate(SEEDS_AND_SIZES):
        want = torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32).numpy()
        assert len(results["out"][exact][i]) == len(results["out"][close][i]) == n
        got = np.float32(results["out"][exact][i])
        if avx2 or n < 16:  # below 16 values both kernels draw in double precision, the same way
            np.testing.assert_array_equal(got, want, err_msg=f"seed={seed} n={n}")
        else:  # PyTorch's scalar kernel calls libm's logf/cosf/sinf; Math.log/cos/sin may round differently
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"seed={seed} n={n}")
        np.testing.assert_allclose(results["out"][close][i], want, rtol=0, atol=5e-6, err_msg=f"seed={seed} n={n}")


def test_randn_is_the_traced_starting_latent(results):
    """explainer.trace's generator is torch.Generator(device).manual_seed(seed); diffusers draws the latent from it."""
    from diffusers.utils.torch_utils import randn_tensor

    seed, n = SEEDS_AND_SIZES[0]
    latent = randn_tensor((1, 4, 16, 16), generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
    np.testing.assert_allclose(results["out"]["randn"][0], latent.flatten().numpy(), rtol=0, atol=5e-6)
    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        np.testing.assert_array_equal(np.float32(results["out"]["randn"][0]), latent.flatten().numpy())


def test_cfg_is_the_pipelines_guidance(results):
    for (u, c, g), got in zip(results["in"]["cfg"], results["out"]["cfg"], strict=True):
        uncond, cond = torch.tensor(u), torch.tensor(c)
        want = uncond + g * (cond - uncond)  # diffusers: noise_pred_uncond + guidance_scale * (text - uncond)
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- as classic scripts


def test_scripts_share_one_global_namespace(results):
    out = results["out"]
    assert {"CLIPTokenizer", "DDIMScheduler", "cfg", "randn"} <= set(out["globalNames"])
    assert out["globalEncode"] == out["tokens"][0][0]


def test_payloads_are_json_and_refuse_bad_folders(tmp_path):
    payload = tokenizer_payload(TOKENIZER_DIR)
    assert json.loads(json.dumps(payload)) == payload
    assert payload["config"]["model_max_length"] == json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())["model_max_length"]
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        tokenizer_payload(tmp_path)
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        scheduler_payload(tmp_path)
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "EulerDiscreteScheduler"}))
    with pytest.raises(ValueError, match="EulerDiscreteScheduler"):
        scheduler_payload(tmp_path)
