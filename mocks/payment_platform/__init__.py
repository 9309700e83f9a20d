"""Stand-in for DVCQG's national payment platform (protocol 1.0.6): see mocks/README.md."""

from mocks.payment_platform.app import (
    ANSWER_ORDERS,
    BAD_CHECKSUM,
    DEFAULT_PARTNER,
    DEFAULT_SECRET,
    REQUEST_ORDERS,
    PaymentPlatformMock,
    checksum,
    reference_for,
    seeded_payments,
)
from mocks.payment_platform.pdf import receipt_pdf

__all__ = ["ANSWER_ORDERS", "BAD_CHECKSUM", "DEFAULT_PARTNER", "DEFAULT_SECRET", "REQUEST_ORDERS",
           "PaymentPlatformMock", "checksum", "receipt_pdf", "reference_for",
           "seeded_payments"]
