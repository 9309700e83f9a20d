"""A ministry's receipt ledger over SOAP 1.1 (zeep, local WSDL, hardened parsing, WS-Security)."""

from connectors.ministry_ledger.client import (
    PEER,
    ReceiptInvalid,
    ReceiptLedgerClient,
    SubmitResult,
)

__all__ = ["PEER", "ReceiptInvalid", "ReceiptLedgerClient", "SubmitResult"]
