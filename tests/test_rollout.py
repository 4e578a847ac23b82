"""Rollouts: the completion mask, sampling filters, and rollouts that do not depend on their batch."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tiplight.rollout import (
    HFGenerate,
    Sampling,
    completion_mask,
    counter_uniform,
    filter_logits,
    inverse_cdf_sample,
)


def test_completion_mask_includes_first_eos_only():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [2, 0, 0, 0, 0]])
    mask = completion_mask(ids, [2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert completion_mask(torch.tensor([[5, 9, 6]]), [2, 9]).tolist() == [[1, 1, 0]]


def test_counter_uniform_is_one_draw_per_row_and_a_pure_function_of_its_key():
    a = counter_uniform(0, torch.tensor([3, 4, 5]), position=7)
    assert a.shape == (3,) and a.dtype == torch.float64  # one draw per row, not one per vocabulary entry
    torch.testing.assert_close(a[2:], counter_uniform(0, torch.tensor([5]), position=7), rtol=0, atol=0)
    assert not torch.equal(a, counter_uniform(1, torch.tensor([3, 4, 5]), 7))
    assert not torch.equal(a, counter_uniform(0, torch.tensor([3, 4, 5]), 8))
    # all positions at once are the same draws as one position at a time
    table = counter_uniform(0, torch.tensor([3, 4, 5]), torch.arange(10))  # [R, C]
    assert torch.equal(table[:, 7], a) and table.shape == (3, 10)
    # roughly uniform over keys and positions, strictly inside (0, 1), and no two draws alike
    big = torch.stack([counter_uniform(0, torch.arange(1000), position=p) for p in range(20)])  # [20, 1000]
    assert big.min() > 0 and big.max() < 1 and len(big.unique()) == big.numel()
    assert abs(big.mean().item() - 0.5) < 0.01 and abs((big < 0.1).double().mean().item() - 0.1) < 0.01


def test_inverse_cdf_sample_follows_the_softmax_and_never_picks_a_removed_token():
    scores = torch.log(torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]])).expand(20000, -1)  # [R, V], -inf at 0s
    u = counter_uniform(0, torch.arange(20000), position=0)
    counts = torch.bincount(inverse_cdf_sample(scores, u), minlength=6)
    assert counts[[0, 2, 5]].sum() == 0
    torch.testing.assert_close(counts[[1, 3, 4]] / 20000, torch.tensor([0.5, 0.3, 0.2]), atol=0.015, rtol=0)
    # the extremes of u pick the first and the last token that can be drawn
    assert inverse_cdf_sample(scores[:2], torch.tensor([2.0**-52, 1.0], dtype=torch.float64)).tolist() == [1, 4]


def test_filter_logits_top_k_and_top_p():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    top_k = filter_logits(scores, Sampling(top_k=2))
    assert torch.isinf(top_k[0, 2:]).all() and torch.isfinite(top_k[0, :2]).all()
    top_p = filter_logits(scores, Sampling(top_p=0.7))  # 0.5 + 0.3 reaches 0.7: keep two
    assert torch.isfinite(top_p[0, :2]).all() and torch.isinf(top_p[0, 2:]).all()
    assert torch.isfinite(filter_logits(scores, Sampling(top_p=0.4))[0, 0])  # the first token always stays


@pytest.mark.parametrize("field,value", [("temperature", -1.0), ("top_p", 0.0), ("top_k", -1), ("max_new_tokens", 0)])
def test_bad_sampling_is_one_clear_error(field, value):
    with pytest.raises(ValueError, match=f"sampling.{field}="):
        Sampling(**{field: value})


def _generate(model, ids, keys, sampling, vocab=53):
    return HFGenerate().generate(model, ids, torch.ones_like(ids), sampling=sampling, seed=0, keys=keys,
                                 eos_token_ids=[2], pad_token_id=0, vocab_size=vocab)


def test_rollouts_do_not_depend_on_batch_composition(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["student"]).eval()
    ids = torch.randint(3, 40, (4, 6), generator=torch.Generator().manual_seed(0))
    sampling = Sampling(max_new_tokens=10)
    together = _generate(model, ids, torch.arange(4), sampling)
    alone = _generate(model, ids[2:3], torch.tensor([2]), sampling)
    width = alone.completion_ids.shape[1]
    assert torch.equal(together.completion_ids[2, :width], alone.completion_ids[0])
    assert not torch.equal(together.completion_ids[0], together.completion_ids[1])
    # ids beyond the tokenizer's vocabulary (padded embedding rows) are never sampled
    assert together.completion_ids.max() < 53
    # after EOS only padding, and the attention mask follows the completion mask
    comp_att = together.attention_mask[:, together.prompt_length :].bool()
    assert torch.equal(comp_att, together.completion_mask)


def test_greedy_equals_hf_greedy(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["student"]).eval()
    ids = torch.randint(3, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    ours = _generate(model, ids, torch.arange(2), Sampling(temperature=0, max_new_tokens=6), vocab=58)
    ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
                         eos_token_id=2, pad_token_id=0)
    width = ours.completion_ids.shape[1]
    assert torch.equal(ours.completion_ids[ours.completion_mask], ref[:, 5 : 5 + width][ours.completion_mask])


@pytest.mark.parametrize("sampling", [Sampling(max_new_tokens=8, temperature=0.7, top_k=20),
                                      Sampling(temperature=0, max_new_tokens=8)], ids=["sampled", "greedy"])
def test_hf_sampler_logprobs_equal_a_full_forward_of_the_sampled_tokens(tiny, sampling):
    """The sampler's log-probability of each generated token is log softmax of the raw logits (before
    temperature and top-k, as vLLM reports them), from a fresh full forward; 0 outside the completion."""
    model = AutoModelForCausalLM.from_pretrained(tiny["student"]).eval()
    ids = torch.randint(3, 40, (3, 5), generator=torch.Generator().manual_seed(2))
    rollout = _generate(model, ids, torch.arange(3), sampling)
    with torch.no_grad():
        logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits.float()
    width, mask = rollout.completion_ids.shape[1], rollout.completion_mask
    direct = logits[:, 4 : 4 + width, :53].log_softmax(-1).gather(2, rollout.completion_ids[..., None])[..., 0]
    assert rollout.sampler_logprobs is not None and rollout.sampler_logprobs.shape == mask.shape
    torch.testing.assert_close(rollout.sampler_logprobs[mask], direct[mask], atol=1e-4, rtol=0)
    assert bool((rollout.sampler_logprobs[~mask] == 0).all()) and bool((rollout.sampler_logprobs[mask] < 0).all())
