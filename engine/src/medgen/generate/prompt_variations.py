"""Prompt variations: spread a request's variants over a list of adjectives to diversify a dataset.

Variant v is prompted with variation ``v mod n``: the prompt's ``{}`` replaced by it, or, when the
prompt has no ``{}``, the variation put in front ("lobulated" + "liver lesion" -> "lobulated liver
lesion"). Seeds stay seed + v, so a variant's prompt and seed together reproduce it.
"""

from __future__ import annotations

from pathlib import Path

from medgen.errors import InputError

PLACEHOLDER = "{}"


def read_prompt_variations(value: str) -> list[str]:
    """``--prompt-variations``: a text file with one variation per line (blank lines and lines starting
    with '#' skipped), or a comma-separated list such as "small,large,lobulated"."""
    path = Path(value).expanduser()
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(path, f"cannot read the prompt variations: {error}") from None
        variations = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not variations:
            raise InputError(path, "no prompt variation in the file (one per line)")
        return variations
    if path.suffix in (".txt", ".csv") or "/" in value:
        raise InputError(path, "--prompt-variations: no such file")
    variations = [part.strip() for part in value.split(",")]
    if not all(variations):
        raise InputError(None, f"--prompt-variations {value!r}: an empty item in the comma-separated list")
    return variations


def check_prompt_variations(prompt: str, variations: list[str] | None) -> None:
    if variations is None:
        return
    if not variations:
        raise InputError(None, "prompt variations: the list is empty (leave it out instead)")
    for variation in variations:
        if not isinstance(variation, str) or not variation.strip() or "\n" in variation:
            raise InputError(None, f"prompt variations: {variation!r} is not a one-line word or phrase")
    if prompt.count(PLACEHOLDER) > 1:
        raise InputError(None, f"the prompt may hold '{PLACEHOLDER}' once for the variation, got {prompt!r}")


def variant_prompts(prompt: str, variations: list[str] | None, num_variants: int) -> list[str]:
    """The prompt of each of ``num_variants`` variants."""
    if not variations:
        return [prompt] * num_variants
    chosen = [variations[v % len(variations)].strip() for v in range(num_variants)]
    if PLACEHOLDER in prompt:
        return [prompt.replace(PLACEHOLDER, word) for word in chosen]
    return [f"{word} {prompt}" for word in chosen]
