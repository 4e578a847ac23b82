"""Find the final answer in a model's output.

Order of evidence: every `\\boxed{}`/`\\fbox{}` and every explicit answer sentence ("the final answer
is", "The answer is", "Answer:") is a candidate at its position, and the *last* one wins, so a later
self-correction overrides an earlier box. Boxes joined only by ",", "and", "or" or
`\\quad\\text{and}\\quad` form one list answer (joined by `\\text{ or }` after "or": alternatives,
which may be one value written twice); an answer sentence in prose ("The largest $n$ is 34") gives
the value after its verb. Without candidates, a short response that is just an expression is its
own answer; then a final `**bold**`; the last number (or the comma list it ends) is the last resort.
All scans are linear (brace matching, bounded gaps, and regexes without adjacent quantifiers over the
same characters) so a huge input is safe; this reader runs in-process, so it must be. Math-Verify's
extraction reads the response again in a worker (`mathverify.py`).
"""

from __future__ import annotations

import re

MAX_SCAN = 200_000  # characters from the end of a response that are searched
_STOP_TOKENS = (
    "<|im_end|>", "<|im_start|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>",
    "</s>", "<|end|>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<end_of_turn>",
)  # fmt: skip
_BOX = re.compile(r"\\(?:boxed|fbox)\s*(\{)?")
_BRACE = re.compile(r"(?<!\\)[{}]")
# no two adjacent quantifiers over the same characters: `\s*\**\s*` backtracks quadratically on a
# whitespace run ("final answer" + 30000 spaces took 41 s)
_SENTENCE = re.compile(
    r"(?:\bfinal\s+answer(?:\s*\*+)?\s*(?:is|:|=)|\banswer\s+is(?:\s*:)?|(?:^|\n)[ \t*#]*answer(?:\s*\*+)?\s*:)",
    re.I,
)
_BARE_TOKEN = re.compile(r"\s*([^\s$.,]{1,200})")
_HOPE = re.compile(r"\.?\s*I hope it is correct\.?\s*$", re.I)
_DOLLAR = re.compile(r"(?<!\\)\$\$?")
_PAREN_MATH = re.compile(r"\\\((.{1,300}?)\\\)")
_BOLD = re.compile(r"\*\*([^*\n]{1,80})\*\*")
_NUMBER = re.compile(r"(?<![\w./])-?\d+(?:(?:,|,\\!|\{,\})\d{3})*(?:\.\d+)?(?:/\d+)?(?![\w./]\d)")
_NUMBER_LIST_GAP = re.compile(r",[ \t]?$")  # "1, 1, 1": a list, not its last number
_VERB = re.compile(r"\b(?:is|are|equals|be|was|were|gives|becomes|get)\b")
_PROSE_WORD = re.compile(r"(?<!\\)\b[A-Za-z]{3,}\b")
_JOIN_NOISE = re.compile(r"\\(?:q?quad|text|mbox|mathrm|[,;:! ])|[${}()\\\s.]|\b[a-zA-Z](?:_\d+)?\s*=")
_JOIN_WORDS = {"", ",", ";", "and", "or", "andalso", ",and", ",or", "&", "&&"}
MAX_JOIN_GAP = 80
OR_JOINT = " \\text{ or } "


def cut_template_tail(text: str) -> str:
    """Cut at the first end-of-turn / chat-template token: what follows is not the model's answer."""
    cut = len(text)
    for tok in _STOP_TOKENS:
        i = text.find(tok)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def brace_pairs(text: str) -> dict[int, int]:
    """Index of the matching `}` for every `{` (escaped `\\{`/`\\}` ignored), in one linear pass.

    One pass for the whole text keeps `\\boxed{\\boxed{...` repeated a million times linear too; the
    regex skips everything between braces at C speed.
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text):
        i = m.start()
        if text[i] == "{":
            stack.append(i)
        elif stack:
            pairs[stack.pop()] = i
    return pairs


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every box; adjacent boxes joined by ","/"and" merge into a list."""
    out: list[tuple[int, int, str]] = []
    pairs = brace_pairs(text) if "\\boxed" in text or "\\fbox" in text else {}
    for m in _BOX.finditer(text):
        if m.group(1):
            close = pairs.get(m.end() - 1)
            if close is None:
                continue
            content, end = text[m.end() : close], close + 1
        else:  # `\boxed 5`
            tok = _BARE_TOKEN.match(text, m.end())
            if not tok:
                continue
            content, end = tok.group(1), tok.end()
        joint = _box_joint(text[out[-1][1] : m.start()]) if out and out[-1][1] <= m.start() else None
        if joint is not None:
            start, _, prev = out.pop()
            out.append((start, end, f"{prev}{joint}{content}"))
        elif not out or m.start() >= out[-1][1]:  # skip boxes nested in the previous one
            out.append((m.start(), end, content))
    return out


def scan_window(text: str) -> str:
    """The last `MAX_SCAN` characters, reaching back to the last box that opened before them when it is
    still open where they begin: its content is the answer, not a number inside it."""
    start = len(text) - MAX_SCAN
    if start <= 0:
        return text
    box = max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))
    m = _BOX.match(text, box) if box >= 0 else None
    if m is None or not m.group(1) or _closes_before(text, m.end() - 1, start):
        return text[start:]
    return text[box:]


def _closes_before(text: str, open_at: int, stop: int) -> bool:
    """Does the `{` at `open_at` close before `stop` (escaped braces ignored, as in `brace_pairs`)?
    Blocks where the depth cannot reach zero are skipped with `str.count`, so this runs at C speed."""
    depth, i = 1, open_at + 1
    while i < stop:
        j = min(stop, i + 4096)
        j += j < stop and text[j - 1] == "\\"  # never split an escaped brace
        block = text[i:j]
        closes = block.count("}") - block.count("\\}")
        if depth > closes:
            depth += block.count("{") - block.count("\\{") - closes
        else:
            for k in range(i, j):
                if text[k] in "{}" and text[k - 1] != "\\":
                    depth += 1 if text[k] == "{" else -1
                    if depth == 0:
                        return True
        i = j
    return False


def _box_joint(gap: str) -> str | None:
    """How the text between two boxes joins them, when it is only a list separator (",", "and", "or",
    `\\quad\\text{and}\\quad`, `$ or $x =`): ", ", or `\\text{ or }` for "or", which may also offer
    the same value twice (`\\boxed{15\\frac{39}{40}}, or \\boxed{\\frac{639}{40}}`). None otherwise.
    Only short gaps are looked at, so this stays linear in the response."""
    if len(gap) > MAX_JOIN_GAP:
        return None
    word = _JOIN_NOISE.sub("", gap).lower()
    if word not in _JOIN_WORDS:
        return None
    return OR_JOINT if word in ("or", ",or") else ", "


def _sentence_answer(text: str, start: int) -> str | None:
    """The answer stated right after an answer phrase: math in delimiters, or up to the sentence end."""
    rest = text[start : start + 1000].lstrip().lstrip("*: \t").lstrip()
    if rest.startswith(("\\boxed", "\\fbox")):
        return None  # the box itself is a candidate
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if rest.startswith(left):
            end = _unescaped(rest, right, len(left))
            return rest[len(left) : end].strip() if end > 0 else None
    m = re.match(r"(.+?)(?:\.\s|\.$|\n|$)", rest)
    answer = _HOPE.sub("", m.group(1)).strip().strip("*").rstrip("?!").strip() if m else ""
    return _statement_value(answer) or None


def _statement_value(answer: str) -> str:
    """The value stated in an answer sentence: "The largest $n$ is 34" -> "34", "the area equals
    $\\frac{9}{2}$ square units" -> "\\frac{9}{2}"; an answer without prose is kept whole."""
    if len(_PROSE_WORD.findall(_strip_text_commands(answer))) < 2:
        return answer
    verbs = list(_VERB.finditer(answer))
    tail = answer[verbs[-1].end() :].strip() if verbs else answer
    math = _last_inline_math(tail)  # "the largest $n$ is 34": not the $n$ before the verb
    if math:
        return math[2]
    if tail and len(_PROSE_WORD.findall(tail)) <= 1 and len(tail) <= 80:
        return tail
    numbers = list(_NUMBER.finditer(answer))
    return numbers[-1].group(0) if numbers else answer


def _mathy(answer: str) -> bool:
    """A short statement with mathematics in it (a digit, a command, a relation) or a choice letter."""
    return len(answer) <= 80 and bool(
        re.search(r"[\d\\=<>]", answer) or re.fullmatch(r"\(?[A-Ea-e]\)?", answer)
    )


def _unescaped(text: str, token: str, start: int) -> int:
    """Index of the first `token` at or after `start` not preceded by a backslash (`\\$` is currency)."""
    i = text.find(token, start)
    while i > 0 and token == "$" and text[i - 1] == "\\":
        i = text.find(token, i + 1)
    return i


def extract_answer(text: str) -> str | None:
    """The final answer in `text` (a full model output or a bare answer), or None when there is none."""
    if not isinstance(text, str):
        return None
    text = scan_window(cut_template_tail(text)).strip()
    if not text:
        return None
    candidates = [(start, content) for start, _, content in _boxes(text)]
    after = candidates[-1][0] if candidates else -1
    for tries, m in enumerate(reversed(list(_SENTENCE.finditer(text, max(after, 0))))):
        if tries >= 20:  # only a sentence after the last box can override it
            break
        answer = _sentence_answer(text, m.end())
        if answer and (after < 0 or _mathy(answer)):  # "...so the answer is correct." keeps the box
            candidates.append((m.start(), answer))
            break
    if candidates:
        return max(candidates, key=lambda c: c[0])[1].strip()
    if _looks_like_expression(text):
        return text
    bold = list(_BOLD.finditer(text[-2000:]))
    if bold:
        return bold[-1].group(1).strip()
    tail = text[-5000:]
    math = _last_inline_math(tail)
    numbers = list(_NUMBER.finditer(tail))
    if math and (not numbers or numbers[-1].start() < math[1]):
        return math[2]  # "It equals $\\frac{1}{2}$.": the last number would be the denominator
    return _last_number_or_list(tail, numbers) if numbers else None


def _last_number_or_list(text: str, numbers: list[re.Match]) -> str:
    """The last number, or the whole comma list it ends ("the values are 1, 1, 1" -> "1, 1, 1")."""
    first = len(numbers) - 1
    while first > 0 and _NUMBER_LIST_GAP.search(text[numbers[first - 1].end() : numbers[first].start()]):
        first -= 1
    if first == len(numbers) - 1:
        return numbers[-1].group(0)
    return ", ".join(m.group(0) for m in numbers[first:])


def _strip_text_commands(text: str) -> str:
    return re.sub(r"\\(?:text|mathrm|mbox|textbf|begin|end)\{[^{}]*\}", "", text)


def _last_inline_math(text: str) -> tuple[int, int, str] | None:
    """(start, end, content) of the last `$...$` or `\\(...\\)`, pairing `$` signs left to right."""
    dollars = list(_DOLLAR.finditer(text))  # `$$` counts as one delimiter
    spans = [(a.start(), b.end(), text[a.end() : b.start()]) for a, b in zip(dollars[::2], dollars[1::2])]
    spans += [(m.start(), m.end(), m.group(1)) for m in _PAREN_MATH.finditer(text)]
    spans = [sp for sp in spans if sp[2].strip() and len(sp[2]) <= 300]
    if not spans:
        return None
    start, end, content = max(spans)
    return start, end, content.strip()


def _looks_like_expression(text: str) -> bool:
    """A short answer without prose: `x = 5`, `\\frac{1}{2}`, `\\text{Evelyn}`, `1, 2 and 3`."""
    if len(text) > 4000 or "\n\n" in text:
        return False
    if _DOLLAR.search(text) and not (text.startswith("$") and text.endswith("$")):
        return False  # prose around math mode: "So $$\\frac{1}{2}$$"
    prose = _PROSE_WORD.findall(_strip_text_commands(text))
    if not [w for w in prose if w.lower() not in ("and", "or")]:
        return True
    # a few words without a full stop: "Evelyn", "no solution", "5 apples"; not "Therefore x = 5."
    return len(text.split()) <= 3 and not text.endswith(".")
