"""What the toy model knows, from ``explainer.toy.vocabulary()`` (the shapes world's grammar).

Writes docs/data/toy_vocabulary.json (the word lists, their counts, and the unknown words of the
prompts the classroom review tried) and prints the "What the toy knows" section of docs/toy_model.md,
which tests/test_toy_vocabulary.py checks against this output.

    python scripts/toy_vocabulary.py [--out docs/data/toy_vocabulary.json] [--markdown]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from explainer.toy import unknown_words, vocabulary
from explainer.toy import world

REPO = Path(__file__).resolve().parent.parent
#: Prompts a class typed at the toy (explainer issue 14).
TRIED = ("a purple star on the left", "a cat", "a blue square to the right of a red circle")
DATA = "toy_vocabulary.json"


def data() -> dict:
    """The vocabulary, its counts and the unknown words of :data:`TRIED`."""
    vocab = vocabulary()
    counts = {k: len(v) for k, v in vocab.items()}
    counts["captions"] = len(world.all_captions())
    return {"vocabulary": vocab, "counts": counts, "tried": {p: unknown_words(p) for p in TRIED}}


def section(d: dict) -> str:
    """The markdown of the "What the toy knows" section (numbers marked for tests/test_docs_figures.py)."""
    v, c = d["vocabulary"], d["counts"]

    def mark(key: str) -> str:
        return f"<!--d {DATA}#counts/{key}-->{c[key]}"

    def code(words: list[str]) -> str:
        return ", ".join(f"`{w}`" for w in words)

    tried = "\n".join(f"| {p} | {code(u) if u else '(none)'} |" for p, u in d["tried"].items())
    return f"""\
The toy learned the words of its world's captions and nothing else: {mark("words")} distinct
words, in {mark("captions")} possible captions. `explainer.toy.vocabulary()` lists them, derived from
the grammar in `explainer/toy/world.py` (the code that drew the training data):

| kind | words |
| --- | --- |
| colours ({mark("colours")}) | {code(v["colours"])} |
| shapes ({mark("shapes")}) | {code(v["shapes"])} |
| places ({mark("places")}), one object | {code(v["places"])} |
| relations ({mark("relations")}), two objects | {code(v["relations"])} (`and`: left and right halves; `above`: top and bottom halves) |
| other words | {code(v["fillers"])} |

When the toy is the model, `explainer.trace()` records the prompt's other words in
`trace.metadata["unknown_words"]` (`{{"prompt": [...], "negative_prompt": [...]}}`) and gives one
`ToyVocabularyWarning` naming them; it is not an error, and the run goes ahead. The explorer greys
out their chips. The toy is recognised by its folder: a pipeline loaded from a folder holding the
toy trainer's `training.json` (the bundled `assets/toy` and every model that
`python -m explainer.toy.train` exports). A copy saved elsewhere with `save_pretrained` has no
`training.json` and is not checked. Silence the warning with
`warnings.simplefilter("ignore", explainer.toy.ToyVocabularyWarning)`.

| prompt | words the toy never saw |
| --- | --- |
{tried}

What the toy cannot do, even with known words: it has no `below`, `left of` or `right of`
between two objects, no counts, sizes or backgrounds, and never more than two objects (of two different
colours). "a blue square to the right of a red circle" uses only known words but for `to` and `of`, and
the relation it asks for is not one the toy learned: it draws the blue square and may drop the circle.
An unknown word is still tokenized (the tokenizer is CLIP's full vocabulary) and encoded, and the causal
text encoder mixes the words before it into its vector, so its attention map can look sharp: a good
thing to show a class."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "data" / DATA)
    parser.add_argument("--markdown", action="store_true", help="print the model card's section")
    args = parser.parse_args()
    d = data()
    args.out.write_text(json.dumps(d, indent=2) + "\n")
    print(section(d) if args.markdown else f"wrote {args.out}")


if __name__ == "__main__":
    main()
