"""The demo model's tokenizer: CLIP's byte-level BPE with whole-word merges for the phantom prompts.

The byte alphabet keeps every text encodable (an unknown word falls apart into pieces, as in a real
CLIP tokenizer), and merges learned on the vocabulary words make each of them a single token. The files are the standard CLIPTokenizer ones, so `from_pretrained` loads them.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from transformers import CLIPTokenizer

from medgen.generate.clip_alphabet import byte_alphabet
from medgen.generate.tiny import write_bpe_files

TEXT_MAX_LENGTH = 77  # CLIP's context length: prompt truncation behaves as with a real SD model
BOS, EOS = "<|startoftext|>", "<|endoftext|>"



def build_tokenizer(words: list[str]) -> CLIPTokenizer:
    """A CLIPTokenizer whose merges turn each of ``words`` (lower-case letters) into one token."""
    vocab: dict[str, int] = {}
    alphabet = byte_alphabet()
    for symbol in [BOS, EOS, *alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(symbol, len(vocab))
    merges = learn_merges(words)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TEXT_MAX_LENGTH, unk_token=EOS, pad_token=EOS)


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair merges learned on the word list until every word is one symbol.

    Learning (rather than writing one merge chain per word) keeps the merges consistent: BPE applies
    merges by rank, and a hand-made chain of one word can break another ("en" of "enhancing" splitting
    "hypodense"). Applying learned merges to a training word always ends in that whole word.
    """
    # Each word once, as CLIP splits it: letters, the last one carrying the end-of-word mark.
    sequences = [[*word[:-1], word[-1] + "</w>"] for word in sorted(set(words))]
    merges: list[tuple[str, str]] = []
    while any(len(seq) > 1 for seq in sequences):
        counts: dict[tuple[str, str], int] = {}
        for seq in sequences:
            for pair in pairwise(seq):
                counts[pair] = counts.get(pair, 0) + 1
        best = min(counts, key=lambda pair: (-counts[pair], pair))  # most frequent, then alphabetical
        merges.append(best)
        sequences = [_merge(seq, best) for seq in sequences]
    return merges


def _merge(seq: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
            out.append(seq[i] + seq[i + 1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def save_tokenizer(tokenizer: CLIPTokenizer, folder: Path) -> None:
    """save_pretrained plus vocab.json and merges.txt, which transformers 4.x's slow tokenizer reads."""
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    write_bpe_files(tokenizer, folder)
