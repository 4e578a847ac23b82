"""Conversation tokens through the tokenizer's own chat template (``apply_chat_template(tools=...)``).

The opening prompt is the template's rendering of the environment's messages and tools. The student's
turns are kept as the very tokens it sampled (never re-rendered: Qwen3's template rewrites earlier turns,
e.g. drops their thinking). A tool turn is what the template writes between the end of an assistant turn
and the next generation prompt: rendered after a stand-in assistant turn, it is the text after that turn's
end-of-turn token, so a real Qwen3 checkpoint gets exactly the tokens its template would write.
"""

from __future__ import annotations

from typing import Any

SENTINEL = "\x00assistant-turn\x00"  # stand-in assistant text, found again in the rendering


class ChatRenderer:
    """Renders prompts and tool turns to token ids with ``tokenizer``'s chat template.

    ``end_tokens``: the token strings that end an assistant turn (the EOS tokens of the engine);
    ``template_kwargs``: extra template variables, e.g. ``{"enable_thinking": True}`` for Qwen3.
    """

    def __init__(self, tokenizer: Any, end_tokens: list[str], template_kwargs: dict[str, Any] | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("The tokenizer has no chat_template; multi-turn rollouts render tool turns through it.")
        self.tokenizer, self.end_tokens = tokenizer, end_tokens
        self.template_kwargs = dict(template_kwargs or {})

    def text(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
             generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                                  add_generation_prompt=generation_prompt, **self.template_kwargs)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        """Token ids of the opening messages with the generation prompt."""
        return self.encode(self.text(messages, tools, generation_prompt=True))

    def tool_turn(self, tool_messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        """Token ids the template writes after an assistant turn's end token for ``tool_messages``, up to
        and including the next generation prompt. Only the text after that end token is used, so a template
        that re-renders earlier turns (Qwen3 drops their thinking) still gives the right tool turn."""
        base = [{"role": "user", "content": "?"}, {"role": "assistant", "content": SENTINEL}]
        text = self.text(base + tool_messages, tools, generation_prompt=True)
        return self.encode(text[self._after_end_token(text):])

    def _after_end_token(self, text: str) -> int:
        start = text.rfind(SENTINEL)
        ends = [(i, t) for t in self.end_tokens if start >= 0 and (i := text.find(t, start)) >= 0]
        if not ends:
            raise ValueError(f"The chat template does not end an assistant turn with any of {self.end_tokens}, "
                             "the tokens the engine stops at; pass the template's end-of-turn token as EOS.")
        i, token = min(ends)
        return i + len(token)
