"""Rollouts with vLLM, colocated and in-process: paged KV cache, no padding to the longest row.

Choose it in YAML::

    model:
      engine:
        class_path: tiplight.vllm_engine.VLLMEngine
        init_args: {gpu_memory_utilization: 0.3}

The engine is built on first use from the student's config alone (dummy weights, no tokenizer: token ids go
in and come out), then loads the student's weights from memory, and again after every optimizer step
(``weights_updated``): full weights, LoRA merged on the fly, FSDP2 shards gathered parameter by parameter.
Sampling follows ``Sampling`` only; the checkpoint's generation_config is never read. Each rollout is a
request seeded from (seed, rollout key), so it does not depend on its batch or rank.
"""

from __future__ import annotations

import copy
import os
import tempfile

import torch
from torch import nn
from transformers import PretrainedConfig

from tiplight.padding import pad_right
from tiplight.rollout import Rollout, RolloutEngine, RolloutRequest, Sampling, rollout_seeds
from tiplight.weights import student_weights


class VLLMEngine(RolloutEngine):
    """vLLM rollouts for training and evaluation (``pip install tiplight[vllm]``, or the CPU recipe in the
    README).

    Args:
        gpu_memory_utilization: fraction of the GPU vLLM may take for its copy of the weights and its KV
            cache; the student, teacher, gradients and optimizer state share the rest.
        kv_cache_gib: KV cache size in GiB instead of ``gpu_memory_utilization``'s share (needed on CPU,
            where vLLM would otherwise size it from host memory).
        max_model_len: longest prompt + completion (default: the student's ``max_position_embeddings``).
        max_num_seqs: rollouts decoded together.
        enforce_eager: skip CUDA graph capture (faster start-up, slower decoding). Default: on CPU only.
        sleep: between rollouts, release vLLM's GPU memory (weights and KV cache; vLLM sleep mode level 2)
            so the update step has it; the weights are reloaded from the student on wake-up. CUDA only.
    """

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        kv_cache_gib: float | None = None,
        max_model_len: int | None = None,
        max_num_seqs: int = 256,
        enforce_eager: bool | None = None,
        sleep: bool = False,
    ):
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"engine.gpu_memory_utilization={gpu_memory_utilization} is not allowed; "
                             "use a fraction in (0, 1].")
        if sleep and not torch.cuda.is_available():
            raise ValueError("engine.sleep=True needs a CUDA GPU: vLLM's sleep mode frees GPU memory through "
                             "its CUDA allocator, and there is none here; set engine.sleep: false.")
        self.options = dict(gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs,
                            max_model_len=max_model_len, enable_sleep_mode=sleep)
        if kv_cache_gib is not None:
            self.options["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        self.enforce_eager = enforce_eager
        self.sleep = sleep
        self.llm = None
        self._built_for: tuple[dict, torch.dtype] | None = None  # the student config and dtype it was built for
        self._group_was_ours = True  # vLLM set up the process group itself (no trainer had one)
        self._config_dir: tempfile.TemporaryDirectory | None = None
        self._synced_from: nn.Module | None = None  # the model whose current weights vLLM holds

    # --- weights -------------------------------------------------------------------------------------
    def weights_updated(self) -> None:
        self._synced_from = None

    def sync(self, model: nn.Module) -> None:
        """Load ``model``'s weights into vLLM unless it holds them already (a collective under FSDP2). A
        model of another shape or dtype than the one the engine was built for rebuilds it (outside a trainer's
        process group only)."""
        config = engine_config(model)
        dtype = next(model.parameters()).dtype
        if self.llm is not None and (_shape(config), dtype) != self._built_for:
            self._shut_down()
        if self.llm is None:
            self._group_was_ours = not torch.distributed.is_initialized()  # else vLLM joined a trainer's group
            self.llm = self._build(config, dtype)
            self._built_for = (_shape(config), dtype)
        if self._synced_from is model:
            return
        if self.sleep:
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": student_weights(model)})
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self._synced_from = model

    def _wake(self, model: nn.Module) -> None:
        """Current weights and a KV cache, ready to generate."""
        self.sync(model)
        if self.sleep:
            self.llm.wake_up(tags=["kv_cache"])

    def _rest(self) -> None:
        """In sleep mode, hand the GPU memory back to training until the next call (weights reloaded then)."""
        if self.sleep:
            self.llm.sleep(level=2)
            self._synced_from = None

    def _build(self, config: PretrainedConfig, dtype: torch.dtype):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process: weights sync in memory
        from vllm import LLM

        self._config_dir = tempfile.TemporaryDirectory(prefix="tiplight-vllm-")
        config.save_pretrained(self._config_dir.name)
        distributed = _world_size() > 1
        eager = self.enforce_eager if self.enforce_eager is not None else not torch.cuda.is_available()
        return LLM(
            model=self._config_dir.name, runner="generate", load_format="dummy", skip_tokenizer_init=True,
            generation_config="vllm",  # never the checkpoint's sampling defaults
            dtype=str(dtype).removeprefix("torch."), enforce_eager=eager, seed=0,
            # one engine per rank, each generating its own rows (TRL's colocate mode)
            distributed_executor_backend="external_launcher" if distributed else None,
            **self.options,
        )

    def _shut_down(self) -> None:
        """Release the engine and the process group vLLM set up for itself (a training job's own group
        cannot be torn down, so an engine inside one refuses a second shape instead)."""
        if _world_size() > 1 or not self._group_was_ours:
            raise ValueError("VLLMEngine was handed a model of another shape or dtype than the student it was built for; "
                             "inside a training job's process group one engine serves one student: give each model its own engine.")
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        self.llm = self._built_for = self._synced_from = None
        cleanup_dist_env_and_memory()

    # --- generation ----------------------------------------------------------------------------------
    def _generate(self, model: nn.Module, request: RolloutRequest) -> Rollout:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=row[m.bool()].tolist())
                   for row, m in zip(request.input_ids, request.attention_mask)]
        self._wake(model)
        seeds = rollout_seeds(request.seed, request.keys)
        params = self._sampling_params(request.sampling, seeds, request.eos_token_ids, request.vocab_size)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        self._rest()
        completions = [list(o.outputs[0].token_ids) for o in outputs]
        return _to_rollout(request.input_ids, request.attention_mask, completions, request.pad_token_id)

    def _sampling_params(self, sampling: Sampling, seeds: list[int], eos_token_ids: list[int], vocab_size: int):
        from vllm import SamplingParams

        padded = self.llm.llm_engine.model_config.get_vocab_size() > vocab_size
        common = dict(
            temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            max_tokens=sampling.max_new_tokens, stop_token_ids=list(eos_token_ids), detokenize=False,
            # ids of padded embedding rows beyond the tokenizer are never sampled
            allowed_token_ids=list(range(vocab_size)) if padded else None,
        )
        return [SamplingParams(seed=s, **common) for s in seeds]

    def logprobs(self, model: nn.Module, sequences: list[list[int]]) -> list[torch.Tensor]:
        """vLLM's log-probabilities ``[L - 1]`` of tokens ``1..L-1`` of each sequence given the tokens before
        (full vocabulary, no temperature): the check that its weights follow ``model``'s."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._wake(model)
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)
        self._rest()
        return [torch.tensor([entry[token].logprob for token, entry in zip(seq[1:], o.prompt_logprobs[1:])])
                for seq, o in zip(sequences, outputs)]


def _shape(config: PretrainedConfig) -> dict:
    """What vLLM builds from: the config without the directory it was read from."""
    return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}


def _world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def engine_config(model: nn.Module) -> PretrainedConfig:
    """A copy of the student's HF config that names its architecture: a model built from a config has
    ``architectures`` unset, and vLLM would then guess a pooling model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    config = copy.deepcopy(base.config)
    config.architectures = [type(base).__name__]
    return config


def _to_rollout(input_ids: torch.Tensor, attention_mask: torch.Tensor, completions: list[list[int]],
                pad_token_id: int) -> Rollout:
    """Left-padded prompts ``[R, P]`` and completions of any length -> a ``Rollout`` (pads after EOS)."""
    width = max(len(c) for c in completions)
    device = input_ids.device
    rows = [torch.tensor(c, dtype=torch.long) for c in completions]
    completion = torch.stack([pad_right(r[None], width, pad_token_id)[0] for r in rows]).to(device)  # [R, C]
    lengths = torch.tensor([len(c) for c in completions], device=device)
    mask = torch.arange(width, device=device)[None, :] < lengths[:, None]  # [R, C]; vLLM stops at the first EOS
    return Rollout.from_completions(input_ids, attention_mask, completion, mask)
