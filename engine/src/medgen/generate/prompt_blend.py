"""Prompt blending: `a [healthy:0.3|diseased:0.7] liver` encodes the prompt once per alternative and mixes
the text-encoder outputs with the (normalised) weights, to ask for something between two learned tokens.

Several groups in one prompt blend every combination, weighted by the product of their weights.
"""

from __future__ import annotations

import itertools
import re

import torch

from medgen.errors import InputError

_GROUP = re.compile(r"\[([^\[\]]*\|[^\[\]]*)\]")
"""A bracketed group holding at least one '|'; other brackets are ordinary prompt text."""
_ALTERNATIVE = re.compile(
    r"\s*(.*?)\s*(?::\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?))?\s*"
)
MAX_COMBINATIONS = 16


def parse_blend(prompt: str) -> list[tuple[str, float]]:
    """The plain prompts to encode and their weights (summing to 1); [(prompt, 1.0)] without any group."""
    groups = []
    for match in _GROUP.finditer(prompt):
        alternatives = []
        for part in match.group(1).split("|"):
            text, weight = _ALTERNATIVE.fullmatch(part).groups()
            if not text:
                raise InputError(
                    None, f"prompt blend {match.group(0)!r} has an empty alternative"
                )
            alternatives.append((text, 1.0 if weight is None else float(weight)))
        weights = [w for _, w in alternatives]
        if min(weights) < 0 or sum(weights) <= 0:
            raise InputError(
                None,
                f"prompt blend {match.group(0)!r}: weights must be >= 0 and not all 0",
            )
        groups.append([(text, w / sum(weights)) for text, w in alternatives])
    if not groups:
        return [(prompt, 1.0)]

    combinations = list(itertools.product(*groups))
    if len(combinations) > MAX_COMBINATIONS:
        raise InputError(
            None,
            f"the prompt blends {len(combinations)} combinations; at most {MAX_COMBINATIONS}",
        )
    pieces = _GROUP.split(prompt)  # text, group, text, group, …, text
    blended = []
    for combination in combinations:
        texts = iter(text for text, _ in combination)
        parts = [piece if i % 2 == 0 else next(texts) for i, piece in enumerate(pieces)]
        weight = 1.0
        for _, w in combination:
            weight *= w
        blended.append(("".join(parts), weight))
    return blended


def has_blend(prompt: str) -> bool:
    return _GROUP.search(prompt) is not None


def encode_blended_prompt(pipe, prompt: str, device: torch.device) -> torch.Tensor:
    """The weighted sum of the text encoder's outputs (1, tokens, width) for every blended prompt."""
    embeds = None
    for text, weight in parse_blend(prompt):
        encoded = pipe.encode_prompt(text, device, 1, False)[0]
        embeds = encoded * weight if embeds is None else embeds + encoded * weight
    return embeds
