#!/usr/bin/env bash
# One script for a session with one GPU (~5-8 min on an H100; untested: no GPU when written): Lightning's FSDPStrategy on one GPU,
# bf16-mixed over fp32 student weights, a 4-bit NF4 teacher, peak memory at several retain ratios on
# random-init Qwen3 shapes (student Qwen3-1.7B untied, teacher Qwen3-4B; one step of 8 rollouts of <= 512 + 1024
# tokens per step, micro-batch 4). No download. Results: $OUT/gpu_check/*.json and summary.md.
#   bash benchmarks/gpu_check.sh            (OUT defaults to ./runs)
set -euo pipefail
OUT="${OUT:-runs}/gpu_check"
MODELS="${TMPDIR:-/tmp}/tiplight_gpu_check"
mkdir -p "$OUT" "$MODELS"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, bitsandbytes as b; print('torch', torch.__version__, 'bnb', b.__version__)" | tee -a "$OUT/gpu.txt"
# Issue 15, the closed-form gradient path (untested on a GPU when written; ~5 min): step gradients vs the
# naive full-logit ones (Qwen3-0.6B/1.7B shapes, fp32 must agree), then time and peak memory of one update,
# tiplight vs naive, full fine-tuning and LoRA (frozen head), Qwen3-1.7B student / Qwen3-4B teacher, bf16.
timeout 300 python benchmarks/gpu_check.py grads "$OUT/grads.json" > "$OUT/grads.log" 2>&1 \
  || { echo "grads failed:"; tail -30 "$OUT/grads.log"; }
timeout 900 python benchmarks/step_memory.py --student qwen3-1.7b --teacher qwen3-4b --rollouts 8 --prompt 64 \
  --completion 1024 --chunk-size 512 --device cuda --dtype bfloat16 --checkpointing --impls tiplight,naive \
  --retains 1.0,0.1 --lora-retains 1.0 --steps 2 --no-rollout > "$OUT/step_memory.md" 2> "$OUT/step_memory.log" \
  || { echo "step_memory failed:"; tail -30 "$OUT/step_memory.log"; }
tail -8 "$OUT/step_memory.md"
# Issue 26 (~3 min): whole on-policy steps at Qwen3-0.6B's real shape (28 layers, vocabulary 151,936), tiplight vs
# the naive loop (and TRL's GKDTrainer where TRL_PYTHON names an interpreter that has trl), and the sampler's cost.
timeout 120 python benchmarks/sampler_speed.py --device cuda > "$OUT/sampler_speed.md" 2>&1 \
  || { echo "sampler_speed failed:"; tail -30 "$OUT/sampler_speed.md"; }
timeout 600 python benchmarks/peer_step.py --shape qwen3 --device cuda --steps 5 --warmup 1 --threads 4 \
  ${TRL_PYTHON:+--trl-python "$TRL_PYTHON"} > "$OUT/peer_step_qwen3.md" 2> "$OUT/peer_step.log" \
  || { echo "peer_step failed:"; tail -30 "$OUT/peer_step.log"; }
tail -6 "$OUT/peer_step_qwen3.md" "$OUT/sampler_speed.md"
[ -f "$MODELS/teacher/config.json" ] || python benchmarks/gpu_check.py build "$MODELS"
for retain in 1.0 0.5 0.2 0.1; do
  timeout 240 python benchmarks/gpu_check.py run "$MODELS" "$retain" "$OUT/retain_$retain.json" \
    > "$OUT/retain_$retain.log" 2>&1 || { echo "retain $retain failed:"; tail -30 "$OUT/retain_$retain.log"; }
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = [json.loads(p.read_text()) for p in sorted(out.glob("retain_*.json"))]
lines = ["| retain | peak allocated GB | peak reserved GB | s | loss | kept | device |", "|---|---|---|---|---|---|---|"]
lines += [f"| {r['retain']} | {r['peak_allocated_gb']:.2f} | {r['peak_reserved_gb']:.2f} | {r['seconds']:.0f} | "
          f"{r['loss']:.4g} | {r['kept_fraction']:.3f} | {r['device']} |" for r in rows]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
