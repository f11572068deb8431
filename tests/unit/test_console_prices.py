"""The console's price form, row by row, without a server."""

from __future__ import annotations

import logging

from infer.agent.console.logbook import Logbook
from infer.agent.console.prices import read_form, rows_for
from infer.agent.register import ModelPrice, RegistrationOptions

MODELS = ("a", "b", "c")


def test_a_row_left_empty_sets_no_price() -> None:
    rows, prices = read_form({"input-0": "0.1", "output-0": "0.2"}, MODELS)
    assert prices == (ModelPrice("a", "0.10", "0.20"),)
    assert [row.errors for row in rows] == [{}, {}, {}]


def test_one_bad_row_sets_nothing_and_keeps_what_was_typed() -> None:
    form = {"input-0": "1", "output-0": "2", "input-1": "-1", "output-1": "2", "input-2": "3"}
    rows, prices = read_form(form, MODELS)
    assert prices == ()
    assert rows[1].input == "-1"
    assert rows[1].errors == {"input": "amount must be a positive number of USD"}
    assert rows[2].errors == {"output": "Give both prices, or neither."}


def test_zero_is_a_price_and_above_1000_is_not() -> None:
    rows, prices = read_form({"input-0": "0", "output-0": "1000.000001"}, MODELS)
    assert prices == ()
    assert rows[0].errors == {"output": "a price is 0 to 1000 USD per million tokens"}


def test_the_form_shows_a_models_own_price_else_the_default() -> None:
    options = RegistrationOptions(
        prices=(ModelPrice("b", "1.00", "2.00"),), default_price=("0.10", "0.20")
    )
    rows = rows_for(MODELS, options)
    assert [(row.model, row.input, row.output) for row in rows] == [
        ("a", "0.10", "0.20"),
        ("b", "1.00", "2.00"),
        ("c", "0.10", "0.20"),
    ]


def test_the_logbook_keeps_the_newest_lines() -> None:
    logbook = Logbook(kept=2)
    logger = logging.Logger("t")
    logger.addHandler(logbook)
    for n in range(3):
        logger.warning("line %d", n)
    assert [line.split(" ", 1)[1] for line in logbook.lines()] == [
        "WARNING line 1",
        "WARNING line 2",
    ]
