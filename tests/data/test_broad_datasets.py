"""``builtin:broad``: fact tables, rule-generated domains, formats, options, graders."""

from __future__ import annotations

import calendar
import re
from collections import Counter, defaultdict

import pytest

from perturbprobe.data import load_dataset
from perturbprobe.data.builtin import BuiltinDomain, describe_builtin, load_builtin
from perturbprobe.data.builtin.broad import DOMAINS, broad_rows
from perturbprobe.data.builtin.facts import contains_words
from perturbprobe.data.builtin.tables import TABLES, Column, load_table, read_table
from perturbprobe.data.graders import grader_name_for, normalize_answer, resolve_grader
from perturbprobe.data.schema import ANSWER_FORMATS
from perturbprobe.errors import DatasetError

WEEKDAYS = list(calendar.day_name)
MONTHS = list(calendar.month_name)[1:]


@pytest.fixture(scope="module")
def broad():
    return load_dataset("builtin:broad")


def by_domain(dataset) -> dict[str, list]:
    groups = defaultdict(list)
    for example in dataset:
        groups[example.domain].append(example)
    return groups


def grade(example, response: str) -> bool:
    return resolve_grader(grader_name_for(example))[1](response, example)


# --------------------------------------------------------------------------- size and shape


def test_size_domains_and_formats(broad):
    assert broad.name == "builtin:broad"
    assert len(broad) >= 5000
    domains = by_domain(broad)
    assert list(domains) == list(DOMAINS)
    assert len(domains) >= 10
    assert {example.format for example in broad} == set(ANSWER_FORMATS)
    for domain, examples in domains.items():
        assert len({example.format for example in examples}) >= 3, domain
        assert len(examples) >= 100, domain
    assert len({example.id for example in broad}) == len(broad)


def test_every_row_names_its_domain_format_grader_and_wrong_answers():
    graders = {"short": "contains", "number": "numeric", "mc": "choice"}
    graders["truefalse"] = "truefalse"
    for where, row in load_builtin("broad"):
        assert where.startswith("builtin:broad row ")
        assert row["domain"] in DOMAINS, row["id"]
        assert row["category"] == row["domain"]
        assert row["grader"] == graders[row["format"]], row["id"]
        assert row["fact"] in row["id"]
        assert len(row["wrong_answers"]) >= 2, row["id"]
        assert len({normalize_answer(w) for w in row["wrong_answers"]}) == len(
            row["wrong_answers"]
        ), row["id"]
        aliases = {normalize_answer(alias) for alias in row["answers"]}
        assert all(normalize_answer(alias) for alias in row["answers"]), row["id"]
        assert not aliases & {normalize_answer(w) for w in row["wrong_answers"]}, row["id"]
        assert row["question"] not in row.get("paraphrases", []), row["id"]


def test_mc_rows_have_the_gold_among_four_shuffled_choices(broad):
    mc = [example for example in broad if example.format == "mc"]
    assert len(mc) >= 1000
    letters = Counter()
    for example in mc:
        assert len(example.choices) == 4, example.id
        letter, text = example.answers
        assert example.choices["ABCD".index(letter)] == text
        assert example.wrong_answers == tuple(x for x in "ABCD" if x != letter)
        assert "A) " in example.messages[-1]["content"]
        letters[letter] += 1
    assert min(letters.values()) > 0.2 * len(mc), letters


def test_truefalse_rows_are_about_half_true_in_every_domain(broad):
    for domain, examples in by_domain(broad).items():
        rows = [example for example in examples if example.format == "truefalse"]
        assert rows, domain
        true = sum(example.answers == ("True", "Yes") for example in rows)
        assert 0.35 <= true / len(rows) <= 0.65, (domain, true, len(rows))
        for example in rows:
            assert example.question.startswith("True or false: "), example.id
            assert set(example.answers + example.wrong_answers) == {"True", "Yes", "False", "No"}


def test_short_questions_do_not_contain_their_answer(broad):
    # Echoing the question must not be graded correct.
    for example in broad:
        if example.format == "short":
            assert not any(contains_words(example.question, a) for a in example.answers), example.id


# --------------------------------------------------------------------------- graders


def responses(example) -> tuple[list[str], list[str]]:
    """(responses that must be graded correct, responses that must be graded wrong)."""
    if example.format == "mc":
        letter, text = example.answers
        others = [choice for choice in example.choices if choice != text]
        right = [letter, f"({letter})", f"The answer is {letter}.", text, f"The answer is {text}."]
        wrong = [*example.wrong_answers, *others, *(f"The answer is {o}." for o in others)]
        return right, wrong
    if example.format == "truefalse":
        right = [*example.answers, f"{example.answers[0]}. {example.question}"]
        right.append(f"That is {example.answers[0].lower()}.")
        wrong = [*example.wrong_answers, f"{example.wrong_answers[0]}. {example.question}"]
        return right, wrong
    right = [*example.answers, *(f"The answer is {alias}." for alias in example.answers)]
    wrong = [*example.wrong_answers, *(f"The answer is {w}." for w in example.wrong_answers)]
    return right, wrong


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_graders_accept_every_alias_and_reject_every_wrong_answer(broad, domain):
    failures = []
    for example in by_domain(broad)[domain]:
        right, wrong = responses(example)
        failures += [(example.id, "rejected", r) for r in right if not grade(example, r)]
        failures += [(example.id, "accepted", w) for w in wrong if grade(example, w)]
    assert failures == []


# --------------------------------------------------------------------------- facts are right


def test_spot_checked_facts(broad):
    answers = {example.id: example.answers for example in broad if example.format != "mc"}
    assert answers["country_capitals-capital-peru-short"] == ("Lima",)
    assert "Canberra" in answers["country_capitals-capital-australia-short"]
    assert answers["element_symbols-element-fe-short"] == ("iron",)
    assert answers["element_numbers-number-carbon-number"][0] == "6"
    assert answers["book_authors-author-pride-and-prejudice-short"][0] == "Jane Austen"
    assert answers["calendar-after-tuesday-short"] == ("Wednesday",)
    assert answers["calendar-month-3-short"] == ("March",)
    assert answers["animal_young-young-cat-short"][0] == "kitten"


def test_elements_table_is_complete():
    rows = load_table("elements")
    assert [row["atomic_number"] for row in rows] == list(range(1, 119))
    assert len({row["symbol"].lower() for row in rows}) == 118
    assert rows[25]["symbol"] == "Fe" and rows[78]["name"][0] == "gold"


_UNIT_RE = re.compile(r"How many (\w+) are in ([\d.]+) (\w+)\?")


def test_unit_conversions_agree_with_the_factors(broad):
    factors = {("metres", "millimetres"): 1000, ("hours", "seconds"): 3600}
    factors |= {("feet", "inches"): 12, ("days", "hours"): 24, ("weeks", "days"): 7}
    factors |= {("kilograms", "grams"): 1000, ("miles", "yards"): 1760}
    factors |= {("centimetres", "millimetres"): 10, ("metres", "centimetres"): 100}
    checked = 0
    for example in by_domain(broad)["unit_conversion"]:
        if example.format == "truefalse":
            continue
        target, quantity, unit = _UNIT_RE.fullmatch(example.question).groups()
        quantity = float(quantity)
        if (unit, target) in factors:
            expected = quantity * factors[unit, target]
        elif (target, unit) in factors:
            expected = quantity / factors[target, unit]
        else:
            continue
        checked += 1
        assert float(example.answers[-1 if example.format == "mc" else 0]) == expected
    assert checked >= 50


def test_calendar_answers_agree_with_the_standard_library(broad):
    checked = 0
    for example in by_domain(broad)["calendar"]:
        if example.format == "truefalse":
            continue
        gold = example.answers[-1] if example.format == "mc" else example.answers[0]
        question = example.question
        if match := re.fullmatch(r"If today is (\w+), what day .* in (\d+) days\?", question):
            day, n = match.groups()
            assert gold == WEEKDAYS[(WEEKDAYS.index(day) + int(n)) % 7], question
        elif match := re.fullmatch(r"How many days are there in the year (\d+)\?", question):
            assert int(gold) == (366 if calendar.isleap(int(match.group(1))) else 365), question
        elif match := re.fullmatch(r"How many days are there in (\w+)\?", question):
            month = MONTHS.index(match.group(1)) + 1
            assert int(gold) == calendar.monthrange(2023, month)[1], question
        elif match := re.fullmatch(r"Which month is (\d) months (after|before) (\w+)\?", question):
            n, word, month = match.groups()
            step = int(n) if word == "after" else -int(n)
            assert gold == MONTHS[(MONTHS.index(month) + step) % 12], question
        else:
            continue
        checked += 1
    assert checked >= 150


def test_letter_counts_and_spelling_are_right(broad):
    for example in by_domain(broad)["letter_counts"] + by_domain(broad)["spelling"]:
        if example.format == "truefalse":
            continue
        gold = example.answers[-1] if example.format == "mc" else example.answers[0]
        word = re.search(r"'(\w+)'(?:\?| backwards)", example.question).group(1)
        if example.question.startswith("How many letters"):
            assert int(gold) == len(word)
        elif example.question.startswith("How many times"):
            letter = re.search(r"letter '(\w)'", example.question).group(1)
            assert int(gold) == word.count(letter)
        elif "backwards" in example.question:
            assert gold == word[::-1]
        else:
            assert gold == (word[0] if "first" in example.question else word[-1])


# --------------------------------------------------------------------------- options


def test_is_deterministic():
    first = load_dataset("builtin:broad", per_domain=20, seed=4)
    second = load_dataset("builtin:broad", seed=4, per_domain=20)
    assert list(first) == list(second)
    assert [e.to_row() for e in first] == [e.to_row() for e in second]
    assert broad_rows() == broad_rows()


def test_another_seed_gives_another_sample():
    ids = {
        seed: [e.id for e in load_dataset("builtin:broad", per_domain=20, seed=seed)]
        for seed in (0, 1)
    }
    assert ids[0] != ids[1]
    assert len(ids[0]) == len(ids[1]) == 20 * len(DOMAINS)


def test_per_domain_is_balanced_over_domains_and_formats():
    dataset = load_dataset("builtin:broad", per_domain=30)
    for domain, examples in by_domain(dataset).items():
        assert len(examples) == 30, domain
        formats = Counter(example.format for example in examples)
        assert max(formats.values()) - min(formats.values()) <= 1, (domain, formats)
        assert len(formats) >= 3, domain


def test_domains_and_formats_options():
    dataset = load_dataset("builtin:broad?domains=spelling,calendar&formats=mc,truefalse")
    assert {example.domain for example in dataset} == {"calendar", "spelling"}
    assert {example.format for example in dataset} == {"mc", "truefalse"}
    same = load_dataset("builtin:broad?domains=calendar,spelling&formats=truefalse,mc")
    assert list(dataset) == list(same)
    sample = load_dataset("builtin:broad?domains=country_capitals&formats=mc,short", per_domain=9)
    assert sorted(Counter(example.format for example in sample).items()) in (
        [("mc", 4), ("short", 5)],
        [("mc", 5), ("short", 4)],
    )


def test_per_domain_larger_than_the_domain_keeps_it_whole():
    whole = load_dataset("builtin:broad?domains=animal_young")
    assert len(load_dataset("builtin:broad?domains=animal_young", per_domain=100000)) == len(whole)


def test_every_domain_loads_alone():
    for domain in DOMAINS:
        dataset = load_dataset(f"builtin:broad?domains={domain}", limit=5)
        assert {example.domain for example in dataset} == {domain}


def test_broad_renders_as_multiple_choice():
    dataset = load_dataset("builtin:broad", per_domain=8, format="mc")
    assert all(example.format == "mc" and example.choices for example in dataset)


@pytest.mark.parametrize(
    ("query", "pattern"),
    [
        ("domains=nope", r"unknown domain 'nope' for builtin:broad; available: country_capitals,"),
        ("domains=calendar,Spelling", r"unknown domain 'Spelling'.*available: .*spelling"),
        ("domains=", r"unknown domain '' for builtin:broad"),
        ("formats=essay", r"unknown format 'essay'.*available: short, mc, truefalse, number"),
        ("n=5", r"options are domains, formats, got \['n'\]"),
        ("domains=book_authors&formats=number", r"no questions in these domains and formats"),
    ],
)
def test_bad_options(query, pattern):
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(f"builtin:broad?{query}")


# --------------------------------------------------------------------------- tables


def test_shipped_tables_read():
    sizes = {name: len(load_table(name)) for name in TABLES}
    assert sizes["countries"] >= 190
    assert sizes["elements"] == 118
    assert sizes["books"] >= 80
    assert sizes["words"] >= 200


def test_read_table_parses_cells(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('n,name,aliases\n1,"Washington, D.C.",a | b\n2,x,\n', encoding="utf-8")
    columns = (Column("n", "int"), Column("name"), Column("aliases", "list", required=False))
    assert read_table(path, columns) == [
        {"n": 1, "name": "Washington, D.C.", "aliases": ("a", "b")},
        {"n": 2, "name": "x", "aliases": ()},
    ]


ELEMENT_COLUMNS = TABLES["elements"]


@pytest.mark.parametrize(
    ("body", "line", "cause"),
    [
        ("1,H,hydrogen\n2,He\n", 3, "expected 3 fields, got 2"),
        ("1,H,hydrogen,extra\n", 2, "expected 3 fields, got 4"),
        ("1,H,hydrogen\n2,,helium\n", 3, "required cell 'symbol' is empty"),
        ("1,H,hydrogen\nsix,C,carbon\n", 3, "'atomic_number' must be an integer, got 'six'"),
        ("1,H,hydrogen||hydrogenium\n", 2, "'name' has an empty alias"),
        ("1,H,hydrogen\n\n1,He,helium\n", 4, "'atomic_number' 1 repeats line 2"),
    ],
)
def test_malformed_table_row_names_file_line_and_cause(tmp_path, body, line, cause):
    path = tmp_path / "elements.csv"
    path.write_text("atomic_number,symbol,name\n" + body, encoding="utf-8")
    with pytest.raises(DatasetError) as error:
        read_table(path, ELEMENT_COLUMNS)
    message = str(error.value)
    assert message.startswith(f"{path} line {line}: ")
    assert cause in message
    assert "\n" not in message


def test_table_header_and_missing_file(tmp_path):
    path = tmp_path / "elements.csv"
    path.write_text("number,symbol,name\n1,H,hydrogen\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"elements.csv line 1: the header must be"):
        read_table(path, ELEMENT_COLUMNS)
    with pytest.raises(DatasetError, match=r"missing.csv: cannot read the table"):
        read_table(tmp_path / "missing.csv", ELEMENT_COLUMNS)
    path.write_text("atomic_number,symbol,name\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"the table has no rows"):
        read_table(path, ELEMENT_COLUMNS)


# --------------------------------------------------------------------------- description


def test_describe_builtin(broad):
    rows = describe_builtin()
    assert all(isinstance(row, BuiltinDomain) for row in rows)
    assert {row.dataset for row in rows} == {"easy-qa", "arithmetic", "broad"}
    described = [row for row in rows if row.dataset == "broad"]
    assert [row.domain for row in described] == list(DOMAINS)
    assert sum(row.questions for row in described) == len(broad)
    for row in described:
        assert set(row.formats) <= set(ANSWER_FORMATS) and len(row.formats) >= 3
        assert row.source.startswith(("tables/", "rules"))
        examples = by_domain(broad)[row.domain]
        assert row.questions == len(examples)
        assert set(row.formats) == {example.format for example in examples}


def test_datasets_command_lists_every_domain_with_its_measured_accuracy(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import perturbprobe.data.builtin as builtin
    from perturbprobe.cli import cli

    accuracy = tmp_path / "accuracy.json"
    accuracy.write_text(
        '{"model": "m", "decoding": "greedy", "measured": "2026-12-04", "note": "",'
        ' "accuracy": {"broad": {"calendar": {"n": 60, "correct": 15}}}}'
    )
    monkeypatch.setattr(builtin, "ACCURACY_FILE", accuracy)
    result = CliRunner().invoke(cli, ["datasets"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    calendar = next(line for line in lines if " calendar " in line)
    assert "25.0% (60)" in calendar and "short,mc,truefalse,number" in calendar
    assert sum(1 for line in lines if line.startswith("broad ")) == len(DOMAINS)
    assert any(line.startswith("easy-qa ") and " colours " in line for line in lines)
    assert "4 answer formats" in result.output and "SOURCES.md" in result.output
