"""What the toy model draws for captions with words it never learned: the teacher's kit's "break the toy".

For each prompt and each of ``--seeds`` noise seeds, it generates an image (25 steps, guidance 7.5, as
the model card) and lists the objects the toy world's checker finds: every palette colour covering at
least ``MIN_AREA_FRACTION`` of the image, with the shape of its largest blob. Writes
``docs/data/break_the_toy.json``::

    python scripts/break_the_toy.py --seeds 16
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import time
from pathlib import Path

import numpy as np

PROMPTS = {
    # the three failures reported in issue 14, then in-vocabulary controls
    "purple_star": "a purple star on the left",
    "cat": "a cat",
    "right_of": "a blue square to the right of a red circle",
    "control_red_square": "a red square on the left",
    "control_pair": "a red circle and a blue square",
}
STEPS = 25
GUIDANCE = 7.5


def known_words() -> set[str]:
    """Every word of every caption the toy was trained on."""
    from explainer.toy.world import all_captions

    return {w for c in all_captions() for w in c.split()}


def objects_found(image: np.ndarray) -> list[str]:
    """``["red square", ...]``: each palette colour present, with the shape of its largest blob (sorted)."""
    from explainer.toy.checker import MIN_AREA_FRACTION, classify_shape, colour_masks, largest_component

    found = []
    for colour, mask in colour_masks(image).items():
        if mask.mean() >= MIN_AREA_FRACTION:
            found.append(f"{colour} {classify_shape(largest_component(mask))}")
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16, help="noise seeds per prompt (default 16)")
    parser.add_argument("--out", default="docs/data/break_the_toy.json")
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm

    import explainer

    torch.set_num_threads(1)
    pipe = explainer.load_pipeline(device="cpu")
    pipe.set_progress_bar_config(disable=True)
    vocab = known_words()
    start = time.perf_counter()
    result = {}
    with tqdm(total=len(PROMPTS) * args.seeds, desc="break the toy") as bar:
        for key, prompt in PROMPTS.items():
            scenes = []
            for seed in range(args.seeds):
                g = torch.Generator().manual_seed(seed)
                image = pipe(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=g).images[0]
                scenes.append(" + ".join(objects_found(np.asarray(image.convert("RGB")))) or "nothing")
                bar.update()
            counts = collections.Counter(scenes)
            per_object = collections.Counter(o for s in scenes for o in set(s.split(" + ")))
            top, top_n = counts.most_common(1)[0]
            result[key] = {
                "prompt": prompt,
                "unknown_words": [w for w in prompt.split() if w not in vocab],
                "n": args.seeds,
                "scenes": dict(counts.most_common()),  # what was found -> in how many images
                "most_common_scene": top,
                "most_common_scene_count": top_n,
                # "red_square" -> share of the images with a red blob shaped like a square
                "objects": {o.replace(" ", "_"): round(c / args.seeds, 4) for o, c in per_object.most_common()},
            }
    payload = {
        "what": "objects the toy world's checker finds in the toy model's images (colour with the shape of its largest blob)",
        "steps": STEPS,
        "guidance_scale": GUIDANCE,
        "seeds": list(range(args.seeds)),
        "machine": f"{platform.machine()} CPU, torch threads 1",
        "seconds": round(time.perf_counter() - start, 1),
        "prompts": result,
    }
    Path(args.out).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    for key, r in result.items():
        print(f"{r['prompt']!r}: unknown {r['unknown_words']}; {r['scenes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
