"""Student rollouts: sampling that is reproducible per rollout, and the completion mask.

Sampling inverts each row's CDF at one uniform from a counter-based hash of (seed, rollout key, position),
so a rollout depends only on its own key and never on the batch it shares, the number of ranks, or the
global RNG. Runs therefore reproduce exactly, resume exactly, and give the same rollouts on 1 or N
processes. The engine sits behind ``RolloutEngine`` so that a faster one (vLLM) can be plugged in.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from tiplight.padding import pad_right

_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Sampling:
    """How the student samples; nothing else (the checkpoint's generation_config is never applied).

    Args:
        temperature: softmax temperature; 0 is greedy.
        top_p: nucleus sampling threshold in (0, 1]; 1 is off.
        top_k: sample among the k most likely tokens; 0 is off.
        max_new_tokens: the longest completion, in tokens (EOS included).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature={self.temperature} is not allowed; use >= 0 (0 is greedy).")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p={self.top_p} is not allowed; use 0 < top_p <= 1.")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k={self.top_k} is not allowed; use >= 0 (0 is off).")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens={self.max_new_tokens} is not allowed; use >= 1.")


@dataclass
class Rollout:
    """A batch of prompts with their sampled completions.

    ``input_ids`` ``[R, P + C]``: left-padded prompts then completions; ``attention_mask`` the same shape;
    ``completion_mask`` ``[R, C]``: True on generated tokens up to and including the first EOS;
    ``sampler_logprobs`` ``[R, C]`` (float32, optional): the log-probability of each generated token
    under the distribution the engine computed before any temperature or filtering (vLLM's raw logprobs),
    0 elsewhere; an engine that gives none leaves it None.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_length: int
    sampler_logprobs: torch.Tensor | None = None

    @property
    def completion_ids(self) -> torch.Tensor:
        """``[R, C]`` generated token ids (pads after EOS)."""
        return self.input_ids[:, self.prompt_length :]

    @staticmethod
    def from_completions(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion: torch.Tensor,
                         mask: torch.Tensor, sampler_logprobs: torch.Tensor | None = None) -> Rollout:
        """Left-padded prompts ``input_ids`` / ``attention_mask`` ``[R, P]`` followed by their ``completion``
        ``[R, C]`` (pads after the end), whose ``mask`` ``[R, C]`` is True on generated tokens; the sampler's
        log-probabilities ``[R, C]``, when given, are zeroed outside ``mask``."""
        full_attention = torch.cat([attention_mask, mask.long()], dim=1)
        logprobs = None if sampler_logprobs is None else sampler_logprobs.float() * mask
        return Rollout(torch.cat([input_ids, completion], 1), full_attention, mask, input_ids.shape[1], logprobs)

    @staticmethod
    def cat(parts: list[Rollout], pad_id: int) -> Rollout:
        """One rollout from generation chunks (same prompt padding, completions of different lengths)."""
        if len(parts) == 1:
            return parts[0]
        width = max(p.input_ids.shape[1] for p in parts)
        completion = width - parts[0].prompt_length
        logprobs = None
        if all(p.sampler_logprobs is not None for p in parts):
            logprobs = torch.cat([pad_right(p.sampler_logprobs, completion) for p in parts])
        return Rollout(
            torch.cat([pad_right(p.input_ids, width, pad_id) for p in parts]),
            torch.cat([pad_right(p.attention_mask, width) for p in parts]),
            torch.cat([pad_right(p.completion_mask, completion) for p in parts]),
            parts[0].prompt_length,
            logprobs,
        )

    def split(self, size: int) -> list[Rollout]:
        """Micro-batches of at most ``size`` rollouts."""
        return [self.rows(slice(start, start + size)) for start in range(0, len(self.input_ids), size)]

    def rows(self, index: slice) -> Rollout:
        """The rollouts ``index`` selects (views)."""
        logprobs = None if self.sampler_logprobs is None else self.sampler_logprobs[index]
        return Rollout(self.input_ids[index], self.attention_mask[index], self.completion_mask[index],
                       self.prompt_length, logprobs)

    def to(self, device: torch.device) -> Rollout:
        """The same rollout on ``device``."""
        logprobs = None if self.sampler_logprobs is None else self.sampler_logprobs.to(device)
        return Rollout(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device),
                       self.prompt_length, logprobs)


def eos_token_ids(tokenizer, model: torch.nn.Module) -> list[int]:
    """EOS ids from the tokenizer and the model's generation config (chat models end turns differently)."""
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
    return sorted(i for i in ids if i is not None)


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def rollout_seeds(seed: int, keys: torch.Tensor) -> list[int]:
    """One 32-bit seed per rollout ``[R]``, a pure function of (seed, rollout key), for engines that seed
    each request (vLLM)."""
    h = _fmix32((keys.long().cpu() * 0x9E3779B1 + seed) & _MASK32)
    return _fmix32((h * 0x85EBCA77 + 0x165667B1) & _MASK32).tolist()


def counter_uniform(seed: int, keys: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
    """Uniforms in (0, 1) (float64, 52 random bits) that depend only on (seed, key of the row, position):
    ``[R]`` for one ``position``, ``[R, C]`` for positions ``[C]`` (the same values, all at once)."""
    h = _fmix32((keys.long() * 0x9E3779B1 + seed) & _MASK32)  # [R]
    if isinstance(position, torch.Tensor):
        h, position = h[:, None], position.to(h.device).long()[None, :]  # [R, 1], [1, C]
    h = _fmix32((h * 0x85EBCA77 + position) & _MASK32)  # [R] or [R, C]
    high = _fmix32((h + 0x27D4EB2F) & _MASK32) >> 6  # 26 bits
    low = _fmix32((h ^ 0x165667B1) & _MASK32) >> 6  # 26 bits
    return (((high << 26) | low).double() + 0.5) / float(1 << 52)


def inverse_cdf_sample(scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Token ids ``[R]`` drawn from ``softmax(scores)`` ``[R, V]`` (``-inf`` = never) at uniforms ``u`` ``[R]``.

    Token i is chosen when ``cdf[i-1] < u * cdf[-1] <= cdf[i]``, which happens with probability ``p_i``: a
    token of probability 0 is never chosen. Each row's draw reads only that row."""
    cdf = scores.softmax(-1).double().cumsum(-1)  # [R, V]
    target = (u.to(cdf.device) * cdf[:, -1])[:, None]  # [R, 1]
    return torch.searchsorted(cdf, target, side="left")[:, 0]


def filter_logits(scores: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Temperature, top-k and top-p applied to ``[R, V]`` scores; removed tokens get ``-inf``."""
    scores = scores.float() / max(sampling.temperature, 1e-8)
    if sampling.top_k and sampling.top_k < scores.shape[-1]:
        kth = torch.topk(scores, sampling.top_k, dim=-1).values[:, -1:]  # [R, 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        probs = sorted_scores.softmax(-1)
        # drop a token when the mass strictly before it already reaches top_p (the first token always stays)
        drop_sorted = probs.cumsum(-1) - probs >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


class CounterSampler(LogitsProcessor):
    """Samples each row at its counter-based uniform (``inverse_cdf_sample``) and leaves only that token.

    Used with ``do_sample=False``: generate's argmax then picks the sampled token. Token ids at or above
    ``vocab_size`` (padding rows of a padded embedding) are never produced. ``logprobs`` collects, per
    decoding step, each row's log-probability of its token under the raw distribution (before temperature
    and filtering, as vLLM reports them).
    """

    def __init__(self, sampling: Sampling, seed: int, keys: torch.Tensor, prompt_length: int, vocab_size: int):
        self.sampling, self.prompt_length, self.vocab_size = sampling, prompt_length, vocab_size
        # every position's uniform in one go: a decoding step then only reads its column
        self.uniforms = counter_uniform(seed, keys, torch.arange(sampling.max_new_tokens))  # [R, C]
        self.logprobs: list[torch.Tensor] = []  # [R] per decoding step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, float("-inf"))
        scores = scores[:, : self.vocab_size]
        if self.sampling.temperature == 0:
            choice = scores.argmax(-1)
        else:
            position = input_ids.shape[1] - self.prompt_length
            choice = inverse_cdf_sample(filter_logits(scores, self.sampling), self.uniforms[:, position])
        # non-finite logits (a diverged student) make searchsorted return V: keep ids below V (the loss
        # check then stops the run with one sentence)
        choice = choice.clamp(max=scores.shape[-1] - 1)
        self.logprobs.append(scores.float().log_softmax(-1).gather(1, choice[:, None])[:, 0])
        return out.scatter(1, choice[:, None], 0.0)

    def sampled_logprobs(self, width: int) -> torch.Tensor:
        """``[R, width]`` log-probabilities of the tokens chosen so far (0 past the last step)."""
        if not self.logprobs:
            return torch.zeros(self.uniforms.shape[0], width)
        return pad_right(torch.stack(self.logprobs, 1)[:, :width], width)


def completion_mask(completion_ids: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """``[R, C]`` True up to and including the first EOS of each row (a row without EOS is all True)."""
    eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    eos_before = eos.long().cumsum(-1) - eos.long()  # EOS strictly before each position
    return eos_before == 0


@contextmanager
def clean_generation_config(model: torch.nn.Module) -> Iterator[None]:
    """Hide the checkpoint's generation_config (repetition penalty, top-k, ...) from ``generate``.

    ``generate`` fills every unset option from ``model.generation_config``, even when given a config of its
    own, and PEFT copies its wrapper's config onto the base model: so every module that carries one gets a
    blank ``GenerationConfig`` for the duration, and its own back afterwards."""
    saved = {m: m.generation_config for m in model.modules()
             if isinstance(getattr(m, "generation_config", None), GenerationConfig)}
    try:
        for m in saved:
            m.generation_config = GenerationConfig()
        yield
    finally:
        for m, config in saved.items():
            m.generation_config = config


@dataclass(frozen=True)
class RolloutRequest:
    """The arguments of one ``RolloutEngine.generate`` call, as engines receive them in ``_generate``."""

    input_ids: torch.Tensor  # [R, P] left-padded prompts
    attention_mask: torch.Tensor  # [R, P]
    sampling: Sampling
    seed: int
    keys: torch.Tensor  # [R] rollout keys
    eos_token_ids: list[int]
    pad_token_id: int
    vocab_size: int  # ids at or above it (padded embedding rows) are never sampled
    synced: bool = False


class RolloutEngine(ABC):
    """Produces completions for a batch of left-padded prompts. Swap in a faster engine by subclassing
    and implementing ``_generate``."""

    def weights_updated(self) -> None:  # noqa: B027 (optional hook: a no-op for most engines)
        """The student's weights changed (an optimizer step): an engine holding its own copy re-syncs it
        before the next ``generate``. Engines that run the student itself need nothing."""

    def generate(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        sampling: Sampling,
        seed: int,
        keys: torch.Tensor,
        eos_token_ids: list[int],
        pad_token_id: int,
        vocab_size: int,
        synced: bool = False,
    ) -> Rollout:
        """Sample one completion per row of ``input_ids`` ``[R, P]``; ``keys`` ``[R]`` name the rollouts.

        ``synced``: the model is sharded over ranks, so every rank must keep stepping until all are done."""
        request = RolloutRequest(input_ids, attention_mask, sampling, seed, keys, eos_token_ids, pad_token_id,
                                 vocab_size, synced)
        return self._generate(model, request)

    @abstractmethod
    def _generate(self, model: torch.nn.Module, request: RolloutRequest) -> Rollout:
        """``generate`` with its arguments bundled: what an engine implements."""


class HFGenerate(RolloutEngine):
    """Hugging Face ``generate`` with KV cache and counter-based sampling; fills ``sampler_logprobs``."""

    def _generate(self, model: torch.nn.Module, request: RolloutRequest) -> Rollout:
        input_ids, sampling = request.input_ids, request.sampling
        prompt_length = input_ids.shape[1]
        sampler = CounterSampler(sampling, request.seed, request.keys.to(input_ids.device), prompt_length,
                                 request.vocab_size)
        with torch.no_grad(), clean_generation_config(model):
            out = model.generate(
                input_ids=input_ids,
                attention_mask=request.attention_mask,
                do_sample=False,
                max_new_tokens=sampling.max_new_tokens,
                logits_processor=LogitsProcessorList([sampler]),
                eos_token_id=request.eos_token_ids,
                pad_token_id=request.pad_token_id,
                temperature=None,
                top_p=None,
                top_k=None,
                synced_gpus=request.synced,
            )
        completion = out[:, prompt_length:]  # [R, C]
        mask = completion_mask(completion, request.eos_token_ids)
        completion = completion.masked_fill(~mask, request.pad_token_id)
        logprobs = sampler.sampled_logprobs(completion.shape[1]).to(completion.device)
        return Rollout.from_completions(input_ids, request.attention_mask, completion, mask, logprobs)
