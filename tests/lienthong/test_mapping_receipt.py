"""The payment receipt mappings: platform transaction → canonical receipt → ministry ledger record."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from lienthong.mapping import RecordInvalid, load_mapping
from lienthong.mapping.transforms import TransformError, datetime_from_portal, unit_of_dossier_code

REPO = Path(__file__).resolve().parents[2]
SAMPLE = json.loads((REPO / "fixtures/samples/payment_platform/receipt.paid-vcb.json").read_text(encoding="utf-8"))
SCHEMA = json.loads((REPO / "fixtures/schemas/canonical/receipt.schema.json").read_text(encoding="utf-8"))


def test_platform_transaction_to_canonical_receipt_exactly():
    record = load_mapping("payment_platform__canonical/receipt").apply(SAMPLE)
    assert record == json.loads((REPO / "fixtures/samples/canonical/receipt.paid-vcb.json").read_text(encoding="utf-8"))
    jsonschema.validate(record, SCHEMA)


def test_chain_gives_the_ledger_record_with_integer_amount_and_offset_time():
    record = load_mapping("payment_platform__ministry_ledger/receipt").apply(SAMPLE)
    assert record == {
        "ReceiptNumber": "BL2026-000001", "DossierCode": "000.00.01.H49-261102-0001",
        "PaymentReference": "dvc00000001H4926110200012026110209153", "AmountVND": 150000,
        "PaidAt": "2026-11-02T09:30:12+07:00", "PayerName": "Nguyễn Văn An", "AgencyCode": "000.00.01.H49",
        "PdfSha256": SAMPLE["bill"]["pdf_sha256"]}


def test_a_decomposed_payer_name_goes_to_the_ledger_in_nfc():
    """The one-stop may hold an applicant's name decomposed (NFD): the ledger gets it in NFC, so a
    resend of the same receipt is the same content there whatever form the one-stop held."""
    import unicodedata

    record = json.loads(json.dumps(SAMPLE))
    record["dossier"]["payer_name"] = unicodedata.normalize("NFD", "Nguyễn Văn An")
    sent = load_mapping("payment_platform__ministry_ledger/receipt").apply(record)
    assert sent["PayerName"] == "Nguyễn Văn An" == unicodedata.normalize("NFC", sent["PayerName"])


@pytest.mark.parametrize("path, value, field, rule", [
    (("transaction", "SoTien"), 0, "AmountVND", "format"),
    (("transaction", "SoTien"), "12.5", "AmountVND", "format"),
    (("transaction", "MaTienTe"), "USD", "AmountVND", None),
    (("dossier", "code"), "H49-1", "DossierCode", "format"),
    (("bill", "pdf_sha256"), "ABC", "PdfSha256", "format"),
    (("transaction", "ThoiGianGD"), "2026-11-02", "PaidAt", "format"),
    (("dossier", "payer_name"), "", "PayerName", "required"),
])
def test_a_broken_value_names_the_ledger_field_and_rule(path, value, field, rule):
    record = json.loads(json.dumps(SAMPLE))
    record[path[0]][path[1]] = value
    with pytest.raises(RecordInvalid) as caught:
        load_mapping("payment_platform__ministry_ledger/receipt").apply(record)
    errors = {(e.field, e.rule) for e in caught.value.errors}
    if rule is None:
        assert errors, "refused"
    else:
        assert (field, rule) in errors, errors
    assert caught.value.record_key == "dvc00000001H4926110200012026110209153"


def test_datetime_from_portal_and_unit_of_dossier_code():
    assert datetime_from_portal("20261102081500") == "2026-11-02T08:15:00+07:00"
    assert datetime_from_portal("20261231235959") == "2026-12-31T23:59:59+07:00"
    for bad in ("2026110208150", "20261302081500", "2026110208150x", "20260229120000"):
        with pytest.raises(TransformError):
            datetime_from_portal(bad)
    with pytest.raises(TransformError):
        datetime_from_portal(20261102081500)
    assert unit_of_dossier_code("000.00.01.H49-261102-0001") == "000.00.01.H49"
    assert unit_of_dossier_code("000.00.03.H49-261102-12345") == "000.00.03.H49"
    for bad in ("000.00.01.H49", "000.00.01.H49-2611-0001", " 000.00.01.H49-261102-0001"):
        with pytest.raises(TransformError):
            unit_of_dossier_code(bad)
