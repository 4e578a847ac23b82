"""A stand-in for ``vllm serve`` on the loopback address (stdlib ``http.server`` in a thread), answering
from a local Hugging Face teacher as vLLM does: ``/v1/models``, ``/tokenize``, ``/v1/completions`` with
``prompt_logprobs`` (top-k plus the prompt's token, over the model's whole padded vocabulary), and
``/pooling`` with token pooling (final hidden states, base64 float32). ``script`` injects failures, one
per step request (``/v1/completions`` and ``/pooling``), so the error paths run without vLLM."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from tiplight.chunked_stats import position_ids

STEP_PATHS = ("/v1/completions", "/pooling")


class FakeVLLM:
    """``url`` serves ``name`` from ``teacher`` (an HF causal LM) and ``tokenizer``. ``script``: behaviours
    consumed one per step request: ``"503"`` (HTTP 503), ``"slow"`` (answers after ``slow_s``), ``"garbage"``
    (not JSON), ``"short"`` (JSON missing rows), ``"nan"`` (a non-finite log-probability); empty: answer."""

    def __init__(self, teacher, tokenizer, name: str = "teacher", slow_s: float = 2.0) -> None:
        self.teacher, self.tokenizer, self.name, self.slow_s = teacher.eval(), tokenizer, name, slow_s
        self.max_model_len = 256
        self.script: deque[str] = deque()
        self.step_requests = 0
        self.bodies: list[dict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- answers as vLLM gives them ------------------------------------------------------------------
    def answer(self, path: str, body: dict) -> dict:
        if path == "/tokenize" and "messages" in body:  # as vLLM: the chat template, then its tokens
            if getattr(self.tokenizer, "chat_template", None) is None:
                raise ValueError("this model has no chat template")
            text = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
            return {"count": 0, "tokens": self.tokenizer(text, add_special_tokens=False)["input_ids"]}
        if path == "/tokenize":
            return {"count": 0, "tokens": self.tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]}
        if path == "/v1/completions":
            return {"choices": [{"index": i, "prompt_logprobs": self.prompt_logprobs(p, body["prompt_logprobs"])}
                                for i, p in enumerate(body["prompt"])]}
        if path == "/pooling":
            dtype = getattr(torch, body.get("embed_dtype", "float32"))
            return {"data": [{"index": i, "data": self.hidden(ids, dtype)} for i, ids in enumerate(body["input"])]}
        raise KeyError(path)

    @torch.no_grad()
    def logits(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids])
        return self.teacher(input_ids=x, position_ids=position_ids(torch.ones_like(x))).logits[0]  # [L, V_model]

    def prompt_logprobs(self, ids: list[int], k: int) -> list:
        vocab = self.teacher.get_output_embeddings().weight.shape[0]
        if max(ids) >= vocab:
            raise ValueError(f"Token id {max(ids)} is out of vocabulary")
        logp = self.logits(ids).log_softmax(-1)  # [L, V_model]
        out: list = [None]
        for j in range(1, len(ids)):
            top = logp[j - 1].topk(k)
            entry = {str(int(t)): {"logprob": float(v), "rank": r + 1} for r, (v, t) in enumerate(zip(*top))}
            entry.setdefault(str(ids[j]), {"logprob": float(logp[j - 1, ids[j]]), "rank": 0})
            out.append(entry)
        return out

    @torch.no_grad()
    def hidden(self, ids: list[int], dtype: torch.dtype) -> str:
        x = torch.tensor([ids])
        h = self.teacher.get_decoder()(input_ids=x, position_ids=position_ids(torch.ones_like(x))).last_hidden_state
        return base64.b64encode(h[0].to(dtype).contiguous().view(torch.uint8).numpy().tobytes()).decode()

    # --- the HTTP side -------------------------------------------------------------------------------
    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": fake.name, "max_model_len": fake.max_model_len}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                behaviour = ""
                if self.path in STEP_PATHS:
                    fake.step_requests += 1
                    fake.bodies.append(body)
                    behaviour = fake.script.popleft() if fake.script else ""
                if behaviour == "503":
                    return self._send(503, b'{"error": "overloaded"}')
                if behaviour == "slow":
                    time.sleep(fake.slow_s)
                if behaviour == "garbage":
                    return self._send(200, b"<html>proxy error</html>")
                try:
                    answer = fake.answer(self.path, body)
                except ValueError as error:
                    return self._send(400, json.dumps({"error": {"message": str(error)}}).encode())
                if behaviour == "short":
                    answer = {"choices": [], "data": []}
                if behaviour == "nan":
                    entry = answer["choices"][0]["prompt_logprobs"][-1]
                    next(iter(entry.values()))["logprob"] = float("nan")
                self._send(200, json.dumps(answer).encode())

            def _send(self, code: int, data: bytes) -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a time-out test)
                    pass

        return Handler
