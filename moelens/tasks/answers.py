"""Free-answer extraction and comparison: GSM8K numbers, MATH ``\\boxed{}`` answers.

GSM8K solutions end with ``#### <number>``; a model's answer is the number after ``####`` if it
wrote one, else the last number in its text. Numbers are compared after removing thousands
commas, a trailing ``.0``, a leading ``+`` and ``$``; fractions ``a/b`` stay as written.
MATH answers are the content of the last ``\\boxed{...}`` (braces balanced), else the first line;
they are compared after a light LaTeX normalisation (``\\dfrac`` -> ``\\frac``, no spaces, no
``\\left``/``\\right``, no surrounding ``$``, no trailing period).

>>> extract_number("so 1,250 + 3 = 1,253 eggs.\\n#### 1,253")
'1253'
>>> extract_number("it loses -4.50 dollars")
'-4.5'
>>> last_boxed(r"so $x = \\boxed{\\frac{1}{2}}$.")
'\\\\frac{1}{2}'
>>> math_answers_match(r"\\dfrac{9}{7}", r"\\frac{9}{7}")
True
"""

from __future__ import annotations

import re

__all__ = [
    "extract_math_answer",
    "extract_number",
    "last_boxed",
    "math_answers_match",
    "normalize_math_answer",
    "normalize_number",
    "numbers_match",
]

# An optional sign, digits with optional thousands commas, an optional decimal part, an optional /denominator.
_NUMBER = re.compile(r"[-+]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|[-+]?\.\d+")


def normalize_number(text: str) -> str:
    """A number as a canonical string: no commas, ``$`` or ``+``; ``2.50`` -> ``2.5``; ``3.0`` -> ``3``.

    >>> [normalize_number(x) for x in ["1,000", "+7", "$3.50", "-0.0", "3/4"]]
    ['1000', '7', '3.5', '0', '3/4']
    """
    value = text.strip().replace(",", "").replace("$", "").lstrip("+")
    if "/" in value:
        return value
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    if value in ("-0", "", "-"):
        return "0" if value == "-0" else value
    return value


def extract_number(text: str) -> str | None:
    """The answer number of a GSM8K-style text: after ``####`` if present, else the last number.

    >>> extract_number("She makes 9 * 2 = $18 every day.")
    '18'
    >>> extract_number("no number") is None
    True
    """
    tail = text.rsplit("####", 1)[-1] if "####" in text else text
    found = _NUMBER.findall(tail)
    return normalize_number(found[-1]) if found else None


def numbers_match(predicted: str | None, gold: str) -> bool:
    """Equal after :func:`normalize_number` (or numerically equal, e.g. ``0.5`` and ``1/2``).

    >>> numbers_match("1,000", "1000"), numbers_match("0.5", "1/2"), numbers_match(None, "1")
    (True, True, False)
    """
    if predicted is None:
        return False
    a, b = normalize_number(predicted), normalize_number(gold)
    if a == b:
        return True
    try:
        return abs(_as_float(a) - _as_float(b)) < 1e-9
    except (ValueError, ZeroDivisionError):
        return False


def _as_float(value: str) -> float:
    if "/" in value:
        num, den = value.split("/", 1)
        return float(num) / float(den)
    return float(value)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), the MATH answer convention."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def extract_math_answer(text: str) -> str:
    """A model's MATH answer: the last ``\\boxed{}`` if any, else its first line.

    >>> extract_math_answer("  7.\\nbecause ...")
    '7.'
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


_LATEX_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "$", " ")


def normalize_math_answer(answer: str) -> str:
    """Light LaTeX normalisation for comparing MATH answers (see the module docstring).

    >>> normalize_math_answer(r"$\\left( 3, \\dfrac{\\pi}{2} \\right)$.")
    '(3,\\\\frac{\\\\pi}{2})'
    """
    text = answer.strip()
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", text)
    for token in _LATEX_DROP:
        text = text.replace(token, "")
    text = text.replace("^\\circ", "").replace("^{\\circ}", "")
    return text.rstrip(".")


def math_answers_match(predicted: str | None, gold: str) -> bool:
    """Equal after :func:`normalize_math_answer`, or as numbers."""
    if predicted is None:
        return False
    a, b = normalize_math_answer(predicted), normalize_math_answer(gold)
    return a == b or (bool(_NUMBER.fullmatch(a)) and bool(_NUMBER.fullmatch(b)) and numbers_match(a, b))
