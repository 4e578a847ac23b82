"""The toy world's character-level tokenizer (HF fast tokenizer, < 100 tokens).

Every character is one token, except ``\\boxed{`` which is a single token so the answer marker costs one
step. A BOS token is prepended to every encoding (a fixed first position for the tiny models); EOS ends
every reference solution during training so generation stops. No chat template: prompts are fed as is.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
BOXED = "\\boxed{"
# Letters are included (not only those of the prompt template) so prompt wording can change without
# retraining the tokenizer; the whole vocabulary stays below 100 entries.
CHARACTERS = string.digits + string.ascii_letters + " \n+-*/=()?{}\\.,:^_"


def vocabulary(words: tuple[str, ...] = (BOXED,)) -> dict[str, int]:
    """Token -> id; the special tokens come first (pad=0, bos=1, eos=2, unk=3), then ``words`` (multi-character
    tokens), then the characters."""
    tokens = [PAD, BOS, EOS, UNK, *words, *CHARACTERS]
    return {tok: i for i, tok in enumerate(tokens)}


def build_tokenizer(words: tuple[str, ...] = (BOXED,), chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """The toy tokenizer as a ``PreTrainedTokenizerFast`` (left padding, for batched generation). ``words``
    are single tokens (the math world's ``\\boxed{``; the agent world's tool-call pieces and item names),
    matched longest first; every other character is its own token."""
    vocab = vocabulary(words)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Split into a word or any single character (including spaces and newlines), kept verbatim.
    pattern = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{pattern}|[\\s\\S]" if words else r"[\s\S]"),
                                             behavior="isolated")
    tok.decoder = decoders.Fuse()  # concatenate tokens; no spaces are inserted between them
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=256,
        chat_template=chat_template,
    )


def save_tokenizer(out: Path) -> Path:
    """Write the tokenizer to ``out`` in the standard HF format (``AutoTokenizer`` loads it)."""
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save_pretrained(out)
    return out
