"""The toy tokenizer: small, lossless on every toy text, and loadable by AutoTokenizer from a directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tiplight.toy import load_problems, tokenizer_dir
from tiplight.toy.tokenizer import build_tokenizer, save_tokenizer


def test_vocabulary_is_small_with_special_tokens_set() -> None:
    tok = build_tokenizer()
    assert len(tok) < 100
    assert None not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert tok.padding_side == "left" and tok.chat_template is None


def test_round_trips_every_problem_and_solution() -> None:
    tok = build_tokenizer()
    texts = [p["prompt"] + p["solution"] for p in load_problems("test") + load_problems("train", 2000)]
    encoded = tok(texts).input_ids
    for text, ids in zip(texts, encoded):
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok("\\boxed{7}", add_special_tokens=False).input_ids == tok.convert_tokens_to_ids(
        ["\\boxed{", "7", "}"]
    )


def test_saved_directory_loads_with_auto_tokenizer(tmp_path: Path) -> None:
    loaded = AutoTokenizer.from_pretrained(save_tokenizer(tmp_path / "tok"))
    text = load_problems("test", 1)[0]["prompt"]
    assert loaded(text).input_ids == build_tokenizer()(text).input_ids
    assert loaded.eos_token == build_tokenizer().eos_token


@pytest.mark.skipif(not (tokenizer_dir() / "tokenizer.json").exists(), reason="toy assets not built")
def test_shipped_tokenizer_matches_the_code() -> None:
    shipped = AutoTokenizer.from_pretrained(tokenizer_dir())
    assert shipped.get_vocab() == build_tokenizer().get_vocab()
