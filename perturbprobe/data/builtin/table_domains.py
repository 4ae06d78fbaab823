"""Factual domains generated from the shipped fact tables (``tables/*.csv``).

Each builder returns the :class:`~.facts.Fact` list of one domain. Wrong answers come from
the same table: decoy columns first (famous non-capital cities, former currencies), then
rows of the same group (capitals of the same continent, authors of the same period),
in an order seeded by the fact, so they are plausible and reproducible.
"""

from __future__ import annotations

from .facts import (
    Fact,
    contains_words,
    display,
    near_numbers,
    number_aliases,
    pick_wrong,
    rng_for,
    shuffled,
    slug,
)
from .tables import load_table

__all__ = [
    "animal_classes",
    "animal_young",
    "book_authors",
    "country_capitals",
    "country_continents",
    "country_currencies",
    "element_numbers",
    "element_symbols",
]

# Plausible confusions, most plausible first (a whale is not a fish, a bat not a bird).
_CONTINENT_MIXUPS = {
    "Africa": ("Asia", "Europe", "South America"),
    "Asia": ("Europe", "Africa", "Oceania"),
    "Europe": ("Asia", "North America", "Africa"),
    "North America": ("South America", "Europe", "Asia"),
    "South America": ("North America", "Africa", "Europe"),
    "Oceania": ("Asia", "South America", "Africa"),
}
_CLASS_ALIASES = {
    "mammal": ("mammal", "mammals", "Mammalia"),
    "bird": ("bird", "birds", "Aves"),
    "reptile": ("reptile", "reptiles", "Reptilia"),
    "amphibian": ("amphibian", "amphibians", "Amphibia"),
    "fish": ("fish", "fishes"),
    "insect": ("insect", "insects", "Insecta"),
    "arachnid": ("arachnid", "arachnids", "Arachnida"),
}
_CLASS_MIXUPS = {
    "mammal": ("fish", "bird", "reptile"),
    "bird": ("mammal", "reptile", "insect"),
    "reptile": ("amphibian", "mammal", "fish"),
    "amphibian": ("reptile", "fish", "mammal"),
    "fish": ("mammal", "amphibian", "reptile"),
    "insect": ("arachnid", "bird", "reptile"),
    "arachnid": ("insect", "reptile", "amphibian"),
}
# Element symbols that are also common words or contraction fragments ("in", "it's" → "s"):
# as gold answers the contains grader would find them in almost any response.
_WORDLIKE = {"a", "i", "s", "t", "d", "m", "re", "in", "as", "at", "be", "he", "no", "am", "so"}


def _grouped(rows, group_of, value_of) -> dict[str, list[str]]:
    """``{group: [value, ...]}`` over ``rows``, skipping rows without a value."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        value = value_of(row)
        if value:
            groups.setdefault(group_of(row), []).append(value)
    return groups


def _pool(rng, first, same_group, everything) -> list[str]:
    """Wrong-answer candidates: ``first`` in order, then the group and the rest, shuffled."""
    return [*first, *shuffled(same_group, rng), *shuffled(everything, rng)]


def _continent(row) -> str:
    return row["continent"][0]


def _inside_another(names: tuple[str, ...], rows) -> bool:
    """True if a name in ``names`` occurs in another country's name ("Guinea", "Sudan")."""
    others = [other for row in rows if row["country"] != names for other in row["country"]]
    return any(contains_words(other, name) for name in names for other in others)


def country_capitals() -> list[Fact]:
    """ "What is the capital of Peru?" and "Lima is the capital of which country?"."""
    rows = [row for row in load_table("countries") if row["capital"]]
    capitals = _grouped(rows, _continent, lambda row: row["capital"][0])
    countries = _grouped(rows, _continent, lambda row: row["country"][0])
    facts = []
    for row in rows:
        names, capital = row["country"], row["capital"]
        country, city = names[0], capital[0]
        rng = rng_for("country_capitals", country)
        pool = _pool(rng, row["capital_decoys"], capitals[_continent(row)], [])
        facts.append(
            Fact(
                "country_capitals",
                f"capital-{slug(country)}",
                f"What is the capital of {country}?",
                capital,
                pick_wrong(capital, pool),
                f"the capital of {country} is {{}}",
                (f"Which city is the capital of {country}?", f"Name the capital of {country}."),
            )
        )
        if _inside_another(names, load_table("countries")):
            continue  # "Conakry is the capital of which country?" would accept "Equatorial Guinea"
        facts.append(
            Fact(
                "country_capitals",
                f"country-{slug(city)}",
                f"{city} is the capital of which country?",
                names,
                pick_wrong(names, _pool(rng, (), countries[_continent(row)], [])),
                f"{city} is the capital of {{}}",
                (f"Which country has {city} as its capital?",),
            )
        )
    return facts


def country_continents() -> list[Fact]:
    """ "On which continent is Peru?"."""
    facts = []
    for row in load_table("countries"):
        country, continents = row["country"][0], row["continent"]
        facts.append(
            Fact(
                "country_continents",
                f"continent-{slug(country)}",
                f"On which continent is {country}?",
                continents,
                pick_wrong(continents, _CONTINENT_MIXUPS[continents[0]] + tuple(_CONTINENT_MIXUPS)),
                f"{country} is in {{}}",
                (f"Which continent is {country} in?", f"{country} lies on which continent?"),
            )
        )
    return facts


def country_currencies() -> list[Fact]:
    """ "What is the official currency of Japan?"."""
    rows = [row for row in load_table("countries") if row["currency"]]
    by_continent = _grouped(rows, _continent, lambda row: row["currency"][0])
    everything = [currency for values in by_continent.values() for currency in values]
    facts = []
    for row in rows:
        country, currency = row["country"][0], row["currency"]
        rng = rng_for("country_currencies", country)
        same = by_continent[_continent(row)]
        facts.append(
            Fact(
                "country_currencies",
                f"currency-{slug(country)}",
                f"What is the official currency of {country}?",
                currency,
                pick_wrong(currency, _pool(rng, row["currency_decoys"], same, everything)),
                f"the official currency of {country} is the {{}}",
                (f"Which currency is used in {country}?", f"What currency does {country} use?"),
            )
        )
    return facts


def element_symbols() -> list[Fact]:
    """ "What is the chemical symbol for iron?" and "Which element has the symbol Fe?"."""
    rows = load_table("elements")
    symbols = _grouped(rows, lambda row: row["symbol"][0], lambda row: row["symbol"])
    names_by_initial = _grouped(rows, lambda row: row["symbol"][0], lambda row: row["name"][0])
    facts = []
    for row in rows:
        symbol, names, number = row["symbol"], row["name"], row["atomic_number"]
        name = names[0]
        rng = rng_for("element_symbols", symbol)
        neighbours = [r for r in rows if 0 < abs(r["atomic_number"] - number) <= 2]
        if symbol.lower() not in _WORDLIKE:
            # "So" for sodium, "Ir" for iron: symbols made from the name, then look-alikes
            naive = [name[0].upper() + letter for letter in name[1:] if letter.isalpha()]
            same = symbols.get(name[0].upper(), []) + symbols[symbol[0]]
            pool = _pool(rng, naive[:1], same, naive[1:] + [r["symbol"] for r in neighbours])
            facts.append(
                Fact(
                    "element_symbols",
                    f"symbol-{slug(name)}",
                    f"What is the chemical symbol for {name}?",
                    (symbol,),
                    pick_wrong((symbol,), (s for s in pool if s.lower() not in _WORDLIKE)),
                    f"the chemical symbol for {name} is {{}}",
                    (f"Which chemical symbol does {name} have?",),
                )
            )
        facts.append(
            Fact(
                "element_symbols",
                f"element-{slug(symbol)}",
                f"Which chemical element has the symbol {symbol}?",
                names,
                pick_wrong(
                    names,
                    _pool(rng, (), names_by_initial[symbol[0]], [r["name"][0] for r in neighbours]),
                ),
                f"{symbol} is the chemical symbol for {{}}",
                (f"The chemical symbol {symbol} stands for which element?",),
            )
        )
    return facts


def element_numbers() -> list[Fact]:
    """ "What is the atomic number of carbon?" and "Which element has atomic number 6?"."""
    rows = load_table("elements")
    name_of = {row["atomic_number"]: row["name"][0] for row in rows}
    facts = []
    for row in rows:
        number, names = row["atomic_number"], row["name"]
        rng = rng_for("element_numbers", number)
        offsets = shuffled((1, -1, 2, -2), rng)
        facts.append(
            Fact(
                "element_numbers",
                f"number-{slug(names[0])}",
                f"What is the atomic number of {names[0]}?",
                number_aliases(number),
                near_numbers(number, [number + offset for offset in (*offsets, 3, 4)]),
                f"the atomic number of {names[0]} is {{}}",
                (f"How many protons does an atom of {names[0]} have?",),
                numeric=True,
            )
        )
        neighbours = [name_of[number + o] for o in (*offsets, 3, -3) if number + o in name_of]
        facts.append(
            Fact(
                "element_numbers",
                f"element-{number}",
                f"Which chemical element has the atomic number {number}?",
                names,
                pick_wrong(names, neighbours),
                f"the element with atomic number {number} is {{}}",
                (f"Which element has {number} protons in its nucleus?",),
            )
        )
    return facts


def book_authors() -> list[Fact]:
    """ "Who wrote the novel 'Emma'?"."""
    rows = load_table("books")
    by_group = _grouped(rows, lambda row: row["group"], lambda row: display(row["author"]))
    everything = [author for authors in by_group.values() for author in authors]
    facts = []
    for row in rows:
        title, kind, author = row["title"], row["kind"], row["author"]
        rng = rng_for("book_authors", title)
        facts.append(
            Fact(
                "book_authors",
                f"author-{slug(title)}",
                f"Who wrote the {kind} '{title}'?",
                author,
                pick_wrong(author, _pool(rng, (), by_group[row["group"]], everything)),
                f"the {kind} '{title}' was written by {{}}",
                (f"Who is the author of the {kind} '{title}'?", f"Which writer wrote '{title}'?"),
            )
        )
    return facts


def animal_classes() -> list[Fact]:
    """ "Which class of animals does the whale belong to?"."""
    facts = []
    for row in load_table("animals"):
        animal, group = row["animal"], row["class"]
        answers = _CLASS_ALIASES[group]
        facts.append(
            Fact(
                "animal_classes",
                f"class-{slug(animal)}",
                f"Which class of animals does the {animal} belong to?",
                answers,
                pick_wrong(answers, _CLASS_MIXUPS[group]),
                f"the {animal} is {{a}} {{}}",
                (f"Biologically, what kind of animal is the {animal}?",),
            )
        )
    return facts


def animal_young() -> list[Fact]:
    """ "What is a baby cat called?"."""
    rows = [row for row in load_table("animals") if row["young"]]
    by_class = _grouped(rows, lambda row: row["class"], lambda row: row["young"][0])
    everything = [young for names in by_class.values() for young in names]
    facts = []
    for row in rows:
        animal, young = row["animal"], row["young"]
        rng = rng_for("animal_young", animal)
        facts.append(
            Fact(
                "animal_young",
                f"young-{slug(animal)}",
                f"What is a baby {animal} called?",
                young,
                pick_wrong(young, _pool(rng, (), by_class[row["class"]], everything)),
                f"a baby {animal} is called {{a}} {{}}",
                (f"What is the name for a young {animal}?", f"What do you call a young {animal}?"),
            )
        )
    return facts
