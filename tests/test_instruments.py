"""The instrument master: identifiers, sessions, symbol history (Lean map files), references."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from mdstream.core.instruments import (
    CLOSED,
    POST,
    PRE,
    REFERENCE_FILE,
    REGULAR,
    Instrument,
    InstrumentMaster,
    UnknownInstrument,
    check_identifiers,
    classify_sessions,
    load_master,
    parse_lean_map_file,
    parse_reference_csv,
    regular_sessions,
)
from mdstream.core.simulate import INSTRUMENTS
from tests.shared_data import shared_path

NS = 1_000_000_000


def _ns(text: str) -> int:
    """An ISO time with offset → epoch ns."""
    return int(dt.datetime.fromisoformat(text).timestamp()) * NS


# --------------------------------------------------------------------------------------------
# identifiers


def test_valid_identifiers_pass_and_bad_check_digits_are_named() -> None:
    assert check_identifiers("US0378331005", "037833100", "BBG000B9XRY4") == []
    issues = check_identifiers("US0378331006", "037833109", "BBG000B9XRY5")
    assert [f for f, _, _ in issues] == ["isin", "cusip", "figi"]
    assert all("invalid" in reason for _, _, reason in issues)


def test_isin_must_embed_the_cusip() -> None:
    ((field, _, reason),) = check_identifiers("US0378331005", "594918104")
    assert field == "isin" and "does not embed" in reason


def test_shipped_reference_file_covers_the_simulator_with_valid_identifiers() -> None:
    instruments, issues = parse_reference_csv(REFERENCE_FILE.read_text())
    assert issues == []
    by_symbol = {i.symbol: i for i in instruments}
    for spec in INSTRUMENTS:
        inst = by_symbol[spec.symbol]
        assert (inst.mic, inst.isin) == (spec.exchange, spec.isin)
        assert check_identifiers(inst.isin, inst.cusip, inst.figi) == []
        assert inst.instrument_id == inst.figi and inst.tick_size == 0.01
    assert by_symbol["SPY"].instrument_type == "ETF"


def test_reference_loader_drops_and_reports_bad_identifiers() -> None:
    text = (
        "symbol,name,currency,mic,isin,cusip,figi,composite_figi\n"
        "GOOD,Good,USD,XNYS,US0378331005,037833100,BBG000B9XRY4,\n"
        "BAD,Bad,USD,XNYS,US0378331006,,BBG000B9XRY4,\n"
        "NOID,No ids,USD,XNYS,,,,\n"
    )
    instruments, issues = parse_reference_csv(text)
    by_symbol = {i.symbol: i for i in instruments}
    assert by_symbol["GOOD"].isin == "US0378331005"
    assert by_symbol["BAD"].isin is None  # not kept, but reported
    assert [(i.instrument, i.field) for i in issues] == [("BAD", "isin")]
    assert by_symbol["NOID"].instrument_id == "XNYS:NOID"


@pytest.mark.realdata
def test_real_reference_file_identifiers(capsys: pytest.CaptureFixture[str]) -> None:
    text = shared_path("identifiers", "NYQ.csv").read_text()
    instruments, issues = parse_reference_csv(text)
    counts = {
        kind: sum(getattr(i, kind) is not None for i in instruments)
        for kind in ("isin", "cusip", "figi")
    }
    with capsys.disabled():
        print(
            f"\nNYQ.csv: {len(instruments)} instruments; valid ISIN {counts['isin']}, "
            f"CUSIP {counts['cusip']}, FIGI {counts['figi']}; {len(issues)} identifier issues"
        )
    assert len(instruments) > 3000
    # CATALOG.md: 963 ISINs, 2,178 CUSIPs, 2,230 FIGIs are present; nearly all must validate.
    assert counts["isin"] >= 950 and counts["cusip"] >= 2100 and counts["figi"] >= 2200
    bac = next(i for i in instruments if i.symbol == "BAC")
    assert bac.cusip and bac.isin is None  # a CUSIP but no ISIN: kept as it is, not guessed


# --------------------------------------------------------------------------------------------
# sessions


@pytest.mark.parametrize(
    ("at", "mic", "want"),
    [
        ("2013-10-07T09:29:59-04:00", "ARCX", PRE),
        ("2013-10-07T09:30:00-04:00", "ARCX", REGULAR),
        ("2013-10-07T15:59:59-04:00", "XNYS", REGULAR),
        ("2013-10-07T16:00:00-04:00", "XNAS", POST),
        ("2013-10-07T20:00:00-04:00", "XNAS", CLOSED),
        ("2013-10-07T03:59:59-04:00", "XNAS", CLOSED),
        ("2013-10-05T12:00:00-04:00", "XNAS", CLOSED),  # a Saturday
        ("2013-12-25T12:00:00-05:00", "XNYS", CLOSED),  # Christmas
        ("2013-11-29T13:30:00-05:00", "XNYS", POST),  # day after Thanksgiving: closes 13:00
        ("2025-11-24T16:00:00+00:00", "XNAS", REGULAR),  # the simulator's feed start
    ],
)
def test_sessions_follow_the_exchange_calendar(at: str, mic: str, want: str) -> None:
    assert classify_sessions(np.array([_ns(at)]), mic)[0] == want


def test_regular_sessions_give_opens_and_closes() -> None:
    opens, closes, days = regular_sessions("XNYS", "2013-10-07", "2013-10-11")
    assert days == [f"2013-10-{d:02d}" for d in range(7, 12)]
    assert opens[0] == _ns("2013-10-07T09:30:00-04:00")
    assert closes[0] == _ns("2013-10-07T16:00:00-04:00")


# --------------------------------------------------------------------------------------------
# symbol history


def _master_with_history() -> InstrumentMaster:
    master = InstrumentMaster()
    for iid, symbol in (("ID_QQQ", "QQQ"), ("ID_GOOG", "GOOG"), ("ID_GOOGL", "GOOGL")):
        master.add(Instrument(iid, symbol, "XNAS"))
    for iid, stem in (("ID_QQQ", "qqq"), ("ID_GOOG", "goog"), ("ID_GOOGL", "googl")):
        path = shared_path("lean", "equity", "usa", "map_files", f"{stem}.csv")
        master.add_history(iid, parse_lean_map_file(path.read_text()))
    return master


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("symbol", "day", "want"),
    [
        ("QQQ", "2004-11-30", "ID_QQQ"),
        ("QQQQ", "2004-12-01", "ID_QQQ"),
        ("QQQQ", "2011-03-22", "ID_QQQ"),
        ("QQQ", "2011-03-23", "ID_QQQ"),
        ("GOOG", "2014-04-02", "ID_GOOGL"),  # Alphabet class A, until the share split
        ("GOOGL", "2014-04-03", "ID_GOOGL"),
        ("GOOG", "2014-04-03", "ID_GOOG"),  # the ticker reused by class C
        ("GOOCV", "2014-03-27", "ID_GOOG"),  # class C when-issued
        ("GOOCV", "2014-04-02", "ID_GOOG"),
    ],
)
def test_lean_map_files_resolve_renames_and_reuse(symbol: str, day: str, want: str) -> None:
    at = _ns(f"{day}T12:00:00-04:00")
    assert _master_with_history().resolve(symbol, at).instrument_id == want


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("symbol", "day"),
    [
        ("QQQ", "2005-06-01"),  # it was QQQQ then
        ("QQQQ", "2012-01-03"),  # renamed back
        ("GOOGL", "2014-04-01"),  # not yet
        ("GOOCV", "2014-04-03"),  # gone
        ("GOOG", "2004-08-18"),  # before the listing
        ("NOPE", "2014-04-03"),
    ],
)
def test_symbols_outside_their_periods_are_unknown_not_guessed(symbol: str, day: str) -> None:
    with pytest.raises(UnknownInstrument, match=symbol):
        _master_with_history().resolve(symbol, _ns(f"{day}T12:00:00-04:00"))


def test_map_file_periods() -> None:
    text = "19990310,qqq,Q\n20041130,qqq,Q\n20110322,qqqq,Q\n20501231,qqq,Q\n"
    periods = [
        (p.symbol, p.start.isoformat(), p.end.isoformat()) for p in parse_lean_map_file(text)
    ]
    assert periods == [
        ("QQQ", "1999-03-10", "2004-11-30"),
        ("QQQQ", "2004-12-01", "2011-03-22"),
        ("QQQ", "2011-03-23", "2050-12-31"),
    ]


def test_shipped_master_resolves_every_simulated_symbol() -> None:
    master = load_master()
    for spec in INSTRUMENTS:
        assert master.resolve(spec.symbol, 1_764_000_000 * NS).isin == spec.isin
