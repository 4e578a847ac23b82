"""The prompt DataModule: formatting, the length policy, the seeded stream, and bad input."""

import json
from types import SimpleNamespace

import pytest

from tiplight.data import PromptDataModule, PromptStream, format_prompt, read_rows
from tiplight.models import load_tokenizer


def setup_data(tiny, path, **kwargs) -> PromptDataModule:
    dm = PromptDataModule(train_files=[str(path)], **kwargs)
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(tokenizer_source=tiny["student"],
                                                                  tokenizer_field="model.student"))
    dm.setup("fit")
    return dm


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_chat_template_instruction_and_template_kwargs(tiny):
    tok = load_tokenizer(tiny["student"])
    assert format_prompt(tok, "1+1?", "box it") == "<s>1+1?\nbox it\nanswer:"
    assert format_prompt(tok, "1+1?", template_kwargs={"enable_thinking": True}).endswith("answer: think")
    assert format_prompt(tok, "1+1?", chat_template=False) == "1+1?"


def test_overlong_prompts_are_truncated_or_skipped_and_counted(tiny, tmp_path):
    rows = [{"problem": "a" * n, "answer": "1"} for n in (5, 80, 10, 200)]
    path = write(tmp_path / "p.jsonl", rows)
    truncated = setup_data(tiny, path, max_prompt_tokens=40)
    assert truncated.counts == {"truncated": 2, "skipped": 0}
    assert all(len(p.input_ids) <= 40 for p in truncated.train_prompts)
    assert all(p.text.endswith("\nanswer:") for p in truncated.train_prompts)  # the template survives
    skipped = setup_data(tiny, path, max_prompt_tokens=40, overlong="skip")
    assert skipped.counts == {"truncated": 0, "skipped": 2} and len(skipped.train_prompts) == 2


def test_stream_is_seeded_and_ranks_split_the_global_batch(tiny, prompts_file):
    dm = setup_data(tiny, prompts_file, val_size=4)
    assert len(dm.val_prompts) == 4 and len(dm.train_prompts) == 20
    assert not {p.id for p in dm.val_prompts} & {p.id for p in dm.train_prompts}
    prompts = dm.train_prompts

    def batches(start, rank=0, world=1, n=3):
        it = iter(PromptStream(prompts, 4, 2, 0, seed=0, start=start, rank=rank, world_size=world))
        return [next(it) for _ in range(n)]

    single = batches(0, n=8)
    assert [b["batch_index"] for b in single] == list(range(8))
    # an epoch (5 batches of 4 out of 20) covers every prompt once
    assert sorted(i for b in single[:5] for i in b["ids"][::2]) == sorted(p.id for p in prompts)
    # resuming at batch 5 continues with exactly that batch
    assert batches(5, n=1)[0]["ids"] == single[5]["ids"]
    # two ranks together see the single-process batch, with the same rollout keys
    r0, r1 = batches(2, 0, 2, 1)[0], batches(2, 1, 2, 1)[0]
    assert r0["ids"] + r1["ids"] == single[2]["ids"]
    assert r0["keys"].tolist() + r1["keys"].tolist() == single[2]["keys"].tolist()
    assert single[2]["ids"][0] == single[2]["ids"][1]  # G = 2 rollouts per prompt


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"problem": "x"}, {"question": "y"}])
    with pytest.raises(ValueError, match=r"p.jsonl:2 has no field 'problem' \(data.prompt_field\); its fields are \['question'\]"):
        read_rows(str(path), "problem")


def test_empty_dataset_and_bad_options(tiny, tmp_path):
    path = write(tmp_path / "empty.jsonl", [])
    with pytest.raises(ValueError, match="hold no usable prompt"):
        setup_data(tiny, path)
    with pytest.raises(ValueError, match="is neither a registered source .* nor an existing JSONL file"):
        read_rows(str(tmp_path / "nope.jsonl"), "problem")
    with pytest.raises(ValueError, match="data.rollouts_per_prompt=0"):
        PromptDataModule(train_files=[str(path)], rollouts_per_prompt=0)


def test_prompt_longer_than_template_budget_is_a_clear_error(tiny, tmp_path):
    path = write(tmp_path / "p.jsonl", [{"problem": "a" * 50}])
    with pytest.raises(ValueError, match="data.max_prompt_tokens=3 is shorter than the template"):
        setup_data(tiny, path, max_prompt_tokens=3)


def test_padding_against_direct_lists():
    import torch

    from tiplight.padding import left_pad, pad_right, right_pad

    ids, mask = left_pad([[5, 6, 7], [], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 0], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 1]]
    assert right_pad([[5, 6, 7], [8]], -100).tolist() == [[5, 6, 7], [8, -100, -100]]
    assert pad_right(torch.tensor([[True], [False]]), 3).tolist() == [[True, False, False], [False, False, False]]
