"""Stand-in for a ministry's receipt ledger over SOAP 1.1: see mocks/README.md."""

from mocks.ministry_ledger.app import (
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    LEDGER_NS,
    MAX_SOAP_BYTES,
    MinistryLedgerMock,
    hardened_parser,
)

__all__ = ["DEFAULT_PASSWORD", "DEFAULT_USERNAME", "LEDGER_NS", "MAX_SOAP_BYTES", "MinistryLedgerMock",
           "hardened_parser"]
