"""String-level clean-up of an extracted answer, before any structure or sympy parsing.

Everything here is plain string work (regexes without nested quantifiers), so it is safe and fast on
any input; nothing is evaluated. The output is a canonical LaTeX-ish string: no display wrappers, no
`\\left`/`\\right`, no spacing commands, no thousands separators, no trailing units, degrees or percent.
"""

from __future__ import annotations

import re

_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_SPACING = re.compile(r"(?<!\\)\\[!,;:> ]|\\q?quad\b|\\(?:display|text|script)style\b|~")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])\.?")
_FRAC_VARIANTS = re.compile(r"\\[dtc]frac(?![a-zA-Z])")
_BINOM_VARIANTS = re.compile(r"\\[dt]binom(?![a-zA-Z])")
_DEGREE_SIGN = r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°"  # ^{\circ}, ^\circ or °
_DEGREES = re.compile(_DEGREE_SIGN + r"|\\degree\b|\{\}\^\\circ")
_TRIG = re.compile(r"\\(?:sin|cos|tan|sec|csc|cot)(?![a-z])")
_TRIG_DEGREES = re.compile(r"(\d+(?:\.\d+)?)\s*(?:" + _DEGREE_SIGN + ")")
_REPEATING = re.compile(r"(\d*)\.(\d{0,20})\\overline\{(\d{1,20})\}")
_PERCENT = re.compile(r"\\?%|(?<=\d)\s?(?:pct|percentage|percent)\b\.?")
_EXPLICIT_THOUSANDS = re.compile(r"(?<=\d)(?:\s*\{,\}\s*|\s*,\s*\\!\s*|\\,|,\{\})(?=\d{3}(?!\d))")
_THOUSANDS = re.compile(r"^-?\d{1,3}([, ])\d{3}(?:\1\d{3})*(?:\.\d+)?$")  # one separator throughout
_RELATION_ALIASES = {
    ">=": "\\ge",
    "<=": "\\le",
    "!=": "\\ne",
    "=<": "\\le",
    "\\leqslant": "\\le",
    "\\geqslant": "\\ge",
    "\\leq": "\\le",
    "\\geq": "\\ge",
    "\\neq": "\\ne",
    "≤": "\\le",
    "≥": "\\ge",
    "≠": "\\ne",
    "\\lt": "<",
    "\\gt": ">",
    "∞": "\\infty",
    "−": "-",
    "\\varnothing": "\\emptyset",
    "\\dots": "\\ldots",
    "\\cdots": "\\ldots",
    "\\mathrm{e}": "e",
    "\\mathrm{i}": "i",
    "\\mathbb{R}": "(-\\infty,\\infty)",
    "\\{\\}": "\\emptyset",
    "\\{ \\}": "\\emptyset",
    "\\operatorname{e}": "e",
    "\\times": "\\cdot",
}
_UNIT_WORDS = (
    "square units|square feet|square inches|square meters|square centimeters|square miles|square yards|"
    "sq units|cubic feet|cubic inches|cubic meters|cubic centimeters|cubic units|units|unit|"
    "degrees|degree|cm|centimeters|centimeter|mm|millimeters|meters|meter|m|km|kilometers|inches|inch|in|"
    "feet|foot|ft|yards|yard|miles|mile|mph|miles per hour|hours|hour|minutes|minute|seconds|second|"
    "days|day|weeks|week|months|month|years|year|dollars|dollar|cents|cent|pounds|pound|ounces|ounce|"
    "grams|gram|kg|liters|liter|gallons|gallon|people|students|ways|times|points|marbles|coins|"
    "percent|sq|cups|cup|pages|page|handshakes|games|boxes|books|tiles|apples|eggs|stamps|steps|"
    "edges|faces|vertices|diagonals|numbers|integers|outfits|rounds|rows|seats|squares|triangles"
)
_TEXT_CMD = r"\\(?:text|textrm|textnormal|textbf|textit|mbox|mathrm|mathbf|mathit|rm|textsf)"
_TRAILING_TEXT_UNIT = re.compile(
    # any words in a trailing \text{} after a number are a unit or a noun ("5 \text{ apples}")
    rf"(?<=[\d}}) ])\s*{_TEXT_CMD}\s*\{{\s*[A-Za-z][A-Za-z .]*\}}(?:\s*\^\s*\{{?[23]\}}?)?\s*$"
)
# bare unit words need a space before them and at least two letters: "4m" and "2 x" keep their symbols
_TRAILING_WORD_UNIT = re.compile(
    rf"(?<=[\d}}])\s+(?:(?!(?:m|in)\b)(?:{_UNIT_WORDS}))(?:\s*\^\s*\{{?[23]\}}?)?\s*$", re.I
)
_TEXT_WRAP = re.compile(_TEXT_CMD + r"\s*\{([^{}]*)\}")
_FRAC_SHORT = (
    (re.compile(r"\\frac\s*(\d)\s*(\d)"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac\s*(\d)\s*\{"), r"\\frac{\1}{"),
    (re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d)"), r"\\frac\1{\2}"),
    (re.compile(r"\\frac\s*(\{[^{}]*\})\s*\\(pi|sqrt\d)"), r"\\frac\1{\\\2}"),
    (re.compile(r"\\sqrt\s*(\d+)"), r"\\sqrt{\1}"),
    (re.compile(r"\\sqrt\s*\(([^()]*)\)"), r"\\sqrt{\1}"),
    (re.compile(r"\\sqrt\s*([a-zA-Z])"), r"\\sqrt{\1}"),
)
# plain-text (sympy/Python-style) answers: `exp(16)`, `pi/2`, `-2*pi`, `sqrt(3)/2`, `x**2`
_PLAIN_FUNCTION = re.compile(
    r"(?<![\\A-Za-z])(sqrt|exp|sin|cos|tan|sec|csc|cot|arcsin|arccos|arctan|ln|log|pi)(?![A-Za-z])"
)
_STAR = re.compile(r"(?<!\*)\*(?!\*)")
_AND_OR = re.compile(r"\s*(?:\\text\{\s*(?:and|or)\s*\}|\band\b|\bor\b|&&)\s*")


def strip_wrappers(s: str) -> str:
    """Remove math-mode delimiters, a whole-string `\\boxed{}` and a trailing full stop."""
    s = s.strip()
    changed = True
    while changed and s:
        changed = False
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s, changed = s[len(left) : len(s) - len(right)].strip(), True
        for cmd in ("\\boxed", "\\fbox"):
            if s.startswith(cmd + "{") and s.endswith("}") and _matching_brace(s, len(cmd)) == len(s) - 1:
                s, changed = s[len(cmd) + 1 : -1].strip(), True
        if s.endswith("."):
            s, changed = s[:-1].rstrip(), True
    return s


def _matching_brace(s: str, start: int) -> int:
    """Index of the `}` that closes the `{` at `start`, or -1."""
    depth = 0
    for i in range(start, len(s)):
        if s[i] == "{" and (i == 0 or s[i - 1] != "\\"):
            depth += 1
        elif s[i] == "}" and (i == 0 or s[i - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return i
    return -1


def clean(s: str) -> str:
    """Canonical form of an answer string; see the module docstring. Never raises."""
    s = strip_wrappers(s.replace("\\$", "").replace("\n", " "))
    s = s.replace("\\\\", "\\") if "\\\\" in s and "matrix" not in s and "array" not in s else s
    s = _LEFT_RIGHT.sub("", s)
    s = _EXPLICIT_THOUSANDS.sub("", s)
    s = _SPACING.sub(" ", s)
    s = _FRAC_VARIANTS.sub(r"\\frac", s)
    s = _BINOM_VARIANTS.sub(r"\\binom", s)
    for old, new in _RELATION_ALIASES.items():
        s = s.replace(old, new)
    if _TRIG.search(s):  # degrees inside trig functions are angles: cos 15° = cos(15π/180)
        s = _TRIG_DEGREES.sub(r"(\1\\cdot\\frac{\\pi}{180})", s)
    s = _DEGREES.sub("", s)
    s = _PERCENT.sub("", s)
    s = s.replace("$", "")
    s = _drop_units(s)
    s = re.sub(r",\s*,", ",", _AND_OR.sub(", ", s))
    s = _TEXT_WRAP.sub(lambda m: m.group(1).strip(), s)
    s = _REPEATING.sub(_repeating_as_fraction, s)
    s = plain_to_latex(s)
    for pattern, repl in _FRAC_SHORT:
        s = pattern.sub(repl, s)
    s = " ".join(s.split()).rstrip("\\").rstrip()  # a stray trailing backslash is noise
    s = strip_wrappers(s)
    if _THOUSANDS.match(s):
        s = s.replace(",", "").replace(" ", "")
    return s


def plain_to_latex(s: str) -> str:
    """Plain-text math as LaTeX: `exp(16)` -> `e^(16)`, `pi/2` -> `\\pi/2`, `2*x**2` -> `2\\cdot x^2`."""
    s = _PLAIN_FUNCTION.sub(lambda m: "e^" if m.group(1) == "exp" else "\\" + m.group(1) + " ", s)
    s = s.replace("e^ (", "e^(").replace("**", "^")
    return _STAR.sub(lambda _: "\\cdot ", s)


def _repeating_as_fraction(m: re.Match) -> str:
    """`0.1\\overline{6}` -> `\\frac{15}{90}`, exactly."""
    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3)
    den = 10 ** len(fixed) * (10 ** len(rep) - 1)
    num = int(whole + fixed + rep) - int(whole + fixed)
    return f"\\frac{{{num}}}{{{den}}}"


def _drop_units(s: str) -> str:
    """Remove trailing unit words (in `\\text{}` or bare) after a number or a closing brace."""
    for _ in range(2):  # e.g. "5 \text{ cm}^2" then nothing, or "12 square feet"
        s2 = _TRAILING_TEXT_UNIT.sub("", s).rstrip()
        s2 = _TRAILING_WORD_UNIT.sub("", s2).rstrip()
        if s2 == s or not s2:
            break
        s = s2
    return s


def is_text_answer(raw: str) -> bool:
    """True when the answer is words (e.g. `\\text{Evelyn}`, `\\text{(C)}`), not mathematics."""
    s = strip_wrappers(raw)
    inner = _TEXT_WRAP.fullmatch(s)
    if inner:
        return bool(re.search(r"[A-Za-z]", inner.group(1)))
    words = re.fullmatch(r"[A-Za-z]+(?: [A-Za-z]+)+", s)  # "no solution", "Monday"
    return bool(words) or bool(re.fullmatch(r"[A-Za-z]{4,}", s))


def text_key(s: str) -> str:
    """Case- and punctuation-insensitive key of a word answer: `\\text{(C)}` -> `c`."""
    s = re.sub(r"\\[A-Za-z]+", "", clean(s))  # leftover commands such as \displaystyle
    return re.sub(r"[^a-z0-9]", "", s.lower())


def text_key_raw(s: str) -> str:
    """The answer with wrappers, `\\text`-like commands and spaces removed, case kept: `\\text{(C)}` -> `(C)`."""
    s = _TEXT_WRAP.sub(lambda m: m.group(1), strip_wrappers(s))
    return re.sub(r"\\[A-Za-z]+|\s", "", s)
