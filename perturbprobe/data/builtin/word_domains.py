"""Domains over the shipped word list (``tables/words.csv``): letter counts and spelling.

Each word gets one question of each domain, the kind cycling with its position in the list:
letter counts ask for the length or for how often its most frequent letter occurs; spelling
asks for the first letter, the last letter, or the word backwards.
"""

from __future__ import annotations

from collections import Counter

from .facts import Fact, near_numbers, number_aliases, pick_wrong
from .tables import load_table

__all__ = ["letter_counts", "spelling"]

# One-letter answers the contains grader cannot hold: "a" is an article, "i" a pronoun, and
# "s", "t", "d", "m" are left over from "it's", "isn't", "I'd", "I'm".
_UNSAFE_LETTERS = set("adimst")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def _words() -> list[str]:
    return [row["word"] for row in load_table("words")]


def letter_counts() -> list[Fact]:
    """ "How many letters are in the word 'garden'?" or "How many times does the letter 'e'
    appear in the word 'elephant'?" (words with a repeated letter, every other word)."""
    facts = []
    for index, word in enumerate(_words()):
        letter, count = Counter(word).most_common(1)[0]
        if index % 2 and count >= 2:
            facts.append(
                Fact(
                    "letter_counts",
                    f"count-{letter}-{word}",
                    f"How many times does the letter '{letter}' appear in the word '{word}'?",
                    number_aliases(count),
                    near_numbers(count, (count + 1, count - 1, count + 2, count + 3)),
                    f"the number of times the letter '{letter}' appears in '{word}' is {{}}",
                    (f"How often does '{letter}' occur in the word '{word}'?",),
                    numeric=True,
                )
            )
            continue
        length = len(word)
        facts.append(
            Fact(
                "letter_counts",
                f"length-{word}",
                f"How many letters are in the word '{word}'?",
                number_aliases(length),
                near_numbers(length, (length + 1, length - 1, length + 2)),
                f"the word '{word}' has {{}} letters",
                (
                    f"How many letters does the word '{word}' have?",
                    f"Count the letters in '{word}'.",
                ),
                numeric=True,
            )
        )
    return facts


def spelling() -> list[Fact]:
    """First letter, last letter or backwards, cycling; a word whose first or last letter
    is unsafe as an answer is asked backwards instead."""
    facts = []
    for index, word in enumerate(_words()):
        kind = ("first", "last", "backwards")[index % 3]
        letter = word[0] if kind == "first" else word[-1]
        if kind != "backwards" and letter not in _UNSAFE_LETTERS:
            facts.append(_letter_fact(word, kind, letter))
        else:
            facts.append(_backwards_fact(word))
    return facts


def _letter_fact(word: str, position: str, letter: str) -> Fact:
    """ "What is the first (last) letter of the word 'orange'?"."""
    verb = "start" if position == "first" else "end"
    near = _ALPHABET.index(letter)
    neighbours = [_ALPHABET[(near + offset) % 26] for offset in (1, -1, 2, -2)]
    return Fact(
        "spelling",
        f"{position}-letter-{word}",
        f"What is the {position} letter of the word '{word}'?",
        (letter,),
        pick_wrong((letter,), [*word[:: -1 if position == "first" else 1], *neighbours]),
        f"the {position} letter of the word '{word}' is '{{}}'",
        (f"Which letter does the word '{word}' {verb} with?",),
    )


def _backwards_fact(word: str) -> Fact:
    """ "Spell the word 'cat' backwards." (accepts "tac" and "t-a-c")."""
    reverse = word[::-1]
    slips = [word, reverse[1] + reverse[0] + reverse[2:], reverse[:-2] + reverse[-1] + reverse[-2]]
    middle = len(word) // 2
    slips.append(
        reverse[: middle - 1] + reverse[middle] + reverse[middle - 1] + reverse[middle + 1 :]
    )
    return Fact(
        "spelling",
        f"backwards-{word}",
        f"Spell the word '{word}' backwards.",
        (reverse, "-".join(reverse)),
        pick_wrong((reverse, "-".join(reverse)), slips),
        f"the word '{word}' spelled backwards is '{{}}'",
        (f"What is '{word}' written backwards?", f"Reverse the letters of '{word}'."),
    )


def _swap(text: str, i: int) -> str:
    """``text`` with the letters at ``i`` and ``i + 1`` swapped."""
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]
