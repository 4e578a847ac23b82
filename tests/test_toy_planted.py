"""The overconfident toy world: the planted forgotten carry, its ground-truth mask, and the shipped student
that learned it (confident where it is wrong: low entropy, high divergence, Q3)."""

from __future__ import annotations

import pytest
import torch

from tiplight import toy
from tiplight.planted import planted_positions
from tiplight.toy.planted import load_planted_problems, planted_error_mask
from tiplight.toy.task import add_solution, carry_free_sum, frac_solution
from tiplight.toy.tokenizer import build_tokenizer


@pytest.mark.parametrize(("p", "q", "expected"), [(18, 25, 33), (45, 56, 91), (8, 5, 13), (27, 5, 22),
                                                  (478, 256, 624), (12, 34, 46)])
def test_carry_free_sum_drops_every_carry_but_keeps_the_top_column(p: int, q: int, expected: int) -> None:
    assert carry_free_sum(p, q) == carry_free_sum(q, p) == expected


def test_the_planted_working_forgets_the_carry_and_is_otherwise_the_true_one() -> None:
    assert add_solution(478, 256, forget_carry=True) == ("8+6=14 4\n7+5=12 24\n4+2=6 624\n\\boxed{624}", "624")
    assert add_solution(478, 256)[1] == "734"
    assert frac_solution(9, 5, 1, 3, forget_carry=True)[0].splitlines()[2] == "=22/15"  # 27+5 -> 22, not 32
    for problem in load_planted_problems("test", 200):
        a, b = problem["operands"]
        if problem["kind"] == "add":
            assert problem["answer"] == str(carry_free_sum(int(a), int(b)))
        assert problem["solution"].endswith(f"\\boxed{{{problem['answer']}}}")
    true = toy.load_problems("test", 200)
    assert [p["prompt"] for p in load_planted_problems("test", 200)] == [p["prompt"] for p in true]


def _carries(problem: dict) -> int:
    """Where the true working and the planted one first part, counted from the operands alone."""
    if problem["kind"] == "add":
        a, b = (op[::-1] for op in problem["operands"])
        carry, count = 0, 0
        for i in range(len(a) - 1):  # the carry out of the last column is no column's carry-in
            carry = (int(a[i]) + int(b[i]) + carry) // 10
            count += carry
        return count
    (x, y), (u, v) = (map(int, op.split("/")) for op in problem["operands"])
    return int(carry_free_sum(x * v, u * y) != x * v + u * y)


def test_the_mask_marks_one_token_per_carry_of_the_true_working() -> None:
    tokenizer = build_tokenizer()
    for problem in toy.load_problems("test", 300):
        ids = [*tokenizer(problem["solution"], add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        mask = planted_error_mask(problem["prompt"], tokens)
        assert len(mask) == len(tokens) and sum(mask) == _carries(problem), problem["solution"]


def test_the_mask_marks_the_token_after_the_column_and_the_first_differing_numerator_digit() -> None:
    tokens = list("7+8=15 5\n6+8+1=15 55\n")
    mask = planted_error_mask("What is 67+88?\n", tokens)
    assert [i for i, m in enumerate(mask) if m] == [12]  # "+" of "+1": the planted student writes "="
    tokens = list("(9*3+1*5)/(5*3)\n=(27+5)/15\n=32/15\n")
    mask = planted_error_mask("What is 9/5+1/3?\n", tokens)
    assert [tokens[i] for i, m in enumerate(mask) if m] == ["3"] and mask.index(True) == tokens.index("=", 27) + 1
    # the mask depends on the text written so far, not on who wrote it: the planted working is marked too
    planted = list(add_solution(478, 256, forget_carry=True)[0].replace("\\boxed{", "B"))
    assert sum(planted_error_mask("What is 478+256?\n", planted)) == 2


def test_planted_positions_cut_rows_at_their_last_valid_token() -> None:
    tokens = [list("7+8=15 5\n6+8=14 45\n") + [""] * 3, list("1+2=3 3\n") + [""] * 14]
    valid = torch.tensor([[True] * 19 + [False] * 3, [True] * 8 + [False] * 14])
    seen = []

    def mark(prompt: str, row: list[str]) -> list[bool]:
        seen.append(len(row))
        return [True] * len(row)

    out = planted_positions(mark, ["a", "b"], tokens, valid)
    assert seen == [19, 8] and torch.equal(out, valid)
    with pytest.raises(ValueError, match="one bool per token"):
        planted_positions(lambda prompt, row: [True], ["a"], tokens[:1], valid[:1])


needs_assets = pytest.mark.skipif(not (toy.OVERCONFIDENT_ASSETS / "build.json").exists(),
                                  reason="overconfident toy student not built (tiplight toy build --world overconfident)")


@pytest.fixture(scope="module")
def scored():
    """Two training-sized steps (8 prompts x 2 rollouts at temperature 1) of the shipped pair, scored."""
    from tiplight.diagnostics import Scorer
    from tiplight.rollout import Sampling

    torch.manual_seed(0)
    scorer = Scorer(toy.teacher_dir(), toy.overconfident_student_dir(), chat_template=False)
    prompts = [p["prompt"] for p in toy.load_problems("train", 16)]
    return [scorer.rollout(prompts[i : i + 8], Sampling(temperature=1.0, max_new_tokens=64), seed=i, samples=2)
            for i in (0, 8)]


@needs_assets
def test_the_shipped_overconfident_pair_puts_q3_in_the_papers_range(scored) -> None:
    from tiplight.selection import quadrant_shares

    q3 = [quadrant_shares(s.quadrants(), s.stats.valid)["Q3"] for s in scored]
    assert 0.03 <= sum(q3) / len(q3) <= 0.15, q3


@needs_assets
def test_planted_errors_are_confident_and_divergent(scored) -> None:
    """At planted-error positions the student is surer than usual and far from the teacher: the median
    entropy (the typical token; a few planted positions the student learned less firmly carry most of the
    mean) is lower than over all tokens, the mean reverse KL many times higher, and most of them are Q3."""
    from tiplight.selection import quadrant_shares

    planted = [planted_positions(planted_error_mask, s.prompts, s.tokens, s.stats.valid) for s in scored]
    pick = lambda name, masks: torch.cat([getattr(s.stats, name)[m] for s, m in zip(scored, masks)])  # noqa: E731
    valid = [s.stats.valid for s in scored]
    assert sum(int(p.sum()) for p in planted) >= 10
    assert pick("entropy", planted).median() < pick("entropy", valid).median()
    assert pick("rkl", planted).mean() > 10 * pick("rkl", valid).mean()
    ids = torch.cat([s.quadrants()[p] for s, p in zip(scored, planted)])
    assert quadrant_shares(ids, torch.ones_like(ids))["Q3"] > 0.5


@needs_assets
def test_the_shipped_student_is_small_shares_the_tokenizer_and_follows_the_planted_rule() -> None:
    """3.5 MB beside the reused teacher; on 40 test problems its greedy answers are the carry-free ones
    where it is right about them, so its accuracy is at most the share of problems that need no carry."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiplight.toy.evaluate import boxed_answer, generate_responses

    files = [f for f in toy.OVERCONFIDENT_ASSETS.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 4 * 2**20
    assert AutoTokenizer.from_pretrained(toy.overconfident_student_dir()).get_vocab() == \
        AutoTokenizer.from_pretrained(toy.tokenizer_dir()).get_vocab()
    build = json.loads((toy.OVERCONFIDENT_ASSETS / "build.json").read_text())
    assert build["teacher"]["reused"] == "tiplight/toy/assets/teacher" and "--world overconfident" in build["command"]
    problems = toy.load_problems("test", 40)
    model = AutoModelForCausalLM.from_pretrained(toy.overconfident_student_dir())
    answers = [boxed_answer(r) for r in generate_responses(model, build_tokenizer(), [p["prompt"] for p in problems])]
    planted = [p["answer"] for p in load_planted_problems("test", 40)]
    true = [p["answer"] for p in problems]
    follows = sum(a == b for a, b in zip(answers, planted)) / len(problems)
    correct = sum(a == b for a, b in zip(answers, true)) / len(problems)
    needs_no_carry = sum(a == b for a, b in zip(planted, true)) / len(problems)
    assert follows >= 0.6 and correct <= needs_no_carry and follows - correct >= 0.3
