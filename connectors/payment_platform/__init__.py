"""The national payment platform of DVCQG (protocol 1.0.6): QUERY, GET_BILL and INIT with checksums."""

from connectors.payment_platform.client import (
    PEER,
    Bill,
    PaymentPlatformClient,
    Transaction,
    checksum,
)

__all__ = ["PEER", "Bill", "PaymentPlatformClient", "Transaction", "checksum"]
