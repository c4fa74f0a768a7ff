"""Reports how many generated inputs the importer fuzz tests tried, and how they ended."""

from __future__ import annotations

import pytest

from .fuzz_cases import TALLY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY:
        return
    tried = sum(TALLY.values())
    terminalreporter.write_line(
        f"importer fuzz: {tried} generated inputs tried, {TALLY['valid']} valid loads, "
        f"{TALLY['clean']} clean DataFormatErrors, {TALLY['other']} other exceptions, "
        f"{TALLY['bad_error'] + TALLY['bad_valid']} wrong answers"
    )
