"""Tiny, offline fixtures: a character tokenizer and 2-layer Qwen3/Llama models saved as HF directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N`: N workers share the cores, one thread each
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"  # and the processes they start
    torch.set_num_threads(1)

CHARS = list("0123456789+-*/=()., abcdefghijklmnopqrstuvwxyz?\n\\{}")
TOKENIZER_SIZE = len(CHARS) + 3  # + <pad>, <s>, </s>
MODEL_VOCAB = TOKENIZER_SIZE + 5  # padded embedding rows, as Qwen's 151936 vs 151669
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}answer:{% if enable_thinking %} think{% endif %}{% endif %}"
)


def build_tokenizer(out: Path, chat_template: bool = False, extra: list[str] = ()) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", *CHARS, *extra])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return out


def build_model(out: Path, arch: str = "qwen3", hidden: int = 32, layers: int = 2, seed: int = 0,
                vocab: int = MODEL_VOCAB, tie: bool = False) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                  tie_word_embeddings=tie, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=hidden // 2, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, str]:
    """Paths of a tokenizer (with a chat template), a Qwen3 teacher and student, and a Llama student."""
    root = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer(root / "tok", chat_template=True)
    paths = {"tokenizer": str(tok)}
    for name, arch, hidden, seed in (("teacher", "qwen3", 48, 1), ("student", "qwen3", 32, 2),
                                     ("llama", "llama", 32, 3)):
        d = build_model(root / name, arch, hidden, seed=seed)
        build_tokenizer(d, chat_template=True)
        paths[name] = str(d)
    return paths


# Qwen3-0.6B's layer widths (hidden 1024, 16 x 128 query heads, 8 key/value heads, MLP 3072), one layer
QWEN3_0P6B_WIDTHS = dict(hidden_size=1024, intermediate_size=3072, num_attention_heads=16, num_key_value_heads=8,
                         head_dim=128)


@pytest.fixture(scope="session")
def packable(tmp_path_factory) -> dict[str, str]:
    """Models whose layer widths bitsandbytes' CPU 4-bit kernel packs (multiples of 64 in and 32 out, as every
    real model's are): a Qwen3 teacher and student (hidden 128 and 64), a one-layer teacher at Qwen3-0.6B's
    widths, and the shared test tokenizer (``tiny``'s 32- and 48-wide layers are refused in 4 bits)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    root = tmp_path_factory.mktemp("packable")
    paths = {"tokenizer": str(build_tokenizer(root / "tok", chat_template=True))}
    for name, hidden, seed in (("teacher", 128, 1), ("student", 64, 2)):
        paths[name] = str(build_model(root / name, "qwen3", hidden, seed=seed))
    torch.manual_seed(3)
    config = Qwen3Config(vocab_size=MODEL_VOCAB, num_hidden_layers=1, max_position_embeddings=256, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, **QWEN3_0P6B_WIDTHS)
    Qwen3ForCausalLM(config).save_pretrained(root / "qwen3_0p6b_width")
    paths["qwen3_0p6b_width"] = str(root / "qwen3_0p6b_width")
    for name in ("teacher", "student", "qwen3_0p6b_width"):
        build_tokenizer(paths[name], chat_template=True)
    return paths


@pytest.fixture(scope="session")
def tied(tmp_path_factory) -> dict[str, str]:
    """A Qwen3 teacher and student whose lm_head is their input embedding (as Qwen3-4B, Qwen2.5-1.5B)."""
    root = tmp_path_factory.mktemp("tied")
    paths = {}
    for name, hidden, seed in (("teacher", 48, 1), ("student", 32, 2)):
        paths[name] = str(build_tokenizer(build_model(root / name, "qwen3", hidden, seed=seed, tie=True),
                                          chat_template=True))
    return paths


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory) -> str:
    import json

    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    rows = [{"id": f"p{i}", "problem": f"what is {i}+{i + 1}?", "answer": str(2 * i + 1)} for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
