"""`stats_scope: micro`: a micro-batch's random selection depends on its own rollouts, not on how many
micro-batches (on this rank, or on other ranks) were drawn before it."""

import torch
from helpers import make_data, make_module, make_trainer

from tiplight.args import Memory
from tiplight.selection import RandomTokens


def test_a_micro_batch_draws_the_same_tokens_whatever_comes_before_it(tiny, prompts_file, tmp_path):
    module = make_module(
        tiny,
        selector=RandomTokens(0.5),
        stats_scope="micro",
        memory=Memory(micro_batch_size=2),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
    )
    make_trainer(tmp_path, max_steps=1).fit(module, make_data(prompts_file))
    with torch.no_grad():
        parts = module.score(module.last_step.rollout)  # 4 micro-batches of 2 rollouts
    keys = torch.arange(100, 100 + 2 * len(parts))
    _, alone, _ = module.select(parts, 0, keys)
    _, after_others, _ = module.select(parts[2:], 0, keys[4:])  # what a second rank would hold
    assert len(parts) == 4 and all(torch.equal(a, b) for a, b in zip(alone[2:], after_others))
    _, next_step, _ = module.select(parts, 1, keys)
    assert any(not torch.equal(a, b) for a, b in zip(alone, next_step))  # each step draws afresh
