"""The procedure-catalogue mappings: national_portal__canonical/procedure, canonical__onestop/procedure,
canonical__ministry_db/procedure; their transforms (vnd_from_text, max_level) and the engine's output
types (type / nullable) and list-of-lists each (outer[*].inner, _outer)."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
import requests

from connectors.errors import ConfigurationError
from lienthong.mapping import RecordInvalid, load_mapping
from lienthong.mapping.transforms import TRANSFORMS, TransformError

REPO = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((REPO / "fixtures" / "schemas" / "canonical" / "procedure.schema.json").read_text(encoding="utf-8"))
jsonschema.validators.validator_for(SCHEMA).check_schema(SCHEMA)
#: one validator for every record (``jsonschema.validate`` checks the schema itself again on each call)
SCHEMA_CHECK = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
NORMALISE = "national_portal__canonical/procedure"
TO_ONESTOP = "canonical__onestop/procedure"
TO_MINISTRY = "canonical__ministry_db/procedure"


@pytest.fixture(autouse=True)
def _repo_mappings(monkeypatch):
    monkeypatch.delenv("LIENTHONG_MAPPINGS_DIR", raising=False)


def rules(caught) -> list[tuple[str, str]]:
    return [(e.field, e.rule) for e in caught.value.errors]


SOURCE = {
    "listed": {"MATTHC": "1.000894.000.00.00.H49", "TENTTHC": "Đăng ký khai sinh"},
    "levels": [3, "Toàn trình", 2],
    "procedure": {
        "ID": "70001", "MATTHC": "1.000894.000.00.00.H49", "TENTTHC": "Đăng ky\u0301 khai sinh",
        "LOAITTHC": "1", "TRANGTHAI": 1, "MACOQUANCONGBO": "000.00.00.G09", "IDQUYETDINHCONGBO": "48371",
        "QUYETDINH": "Quyết định số 4837/QĐ-BTP", "YEUCAU": "", "TUKHOA": "khai sinh", "MOTA": "Thủ tục khai sinh",
        "DIACHITIEPNHAN": "Bộ phận Một cửa",
        "LINHVUCTHUCHIEN": [{"MALINHVUC": "G09-TP01", "TENLINHVUC": "Hộ tịch"}, {"MALINHVUC": "G09-TP02", "TENLINHVUC": "Chứng thực"}],
        "CAPTHUCHIEN": [{"CAPTHUCHIEN": "2", "TENCAP": "Cấp Huyện"}, {"CAPTHUCHIEN": 3, "TENCAP": "Cấp Xã"}],
        "CACHTHUCTHUCHIEN": [
            {"KENH": "1", "THOIGIAN": [
                {"THOIGIANGIAIQUYET": "5", "DONVITINH": "Ngày làm việc", "MOTA": "5 ngày làm việc",
                 "PHILEPHI": [{"MAPHILEPHI": "TP-01", "SOTIEN": "50.000 đồng", "DONVI": "Đồng", "MOTA": "Lệ phí", "TENTEP": "", "URL": ""},
                              {"MAPHILEPHI": "TP-02", "SOTIEN": "20.000 đồng/bản", "DONVI": "Đồng/bản", "MOTA": "Phí sao", "TENTEP": "", "URL": ""}]},
                {"THOIGIANGIAIQUYET": "0.5", "DONVITINH": "Ngày", "MOTA": "trong ngày", "PHILEPHI": []}]},
            {"KENH": 2, "THOIGIAN": [
                {"THOIGIANGIAIQUYET": 3, "DONVITINH": "Ngày", "MOTA": "",
                 "PHILEPHI": [{"MAPHILEPHI": "", "SOTIEN": "Miễn phí", "DONVI": "", "MOTA": "Không thu", "TENTEP": "", "URL": ""},
                              {"MAPHILEPHI": "TP-03", "SOTIEN": "", "DONVI": "", "MOTA": "", "TENTEP": "", "URL": ""}]}]},
            {"KENH": "3", "THOIGIAN": [{"THOIGIANGIAIQUYET": "", "DONVITINH": "", "MOTA": "",
                                        "PHILEPHI": [{"MAPHILEPHI": "TP-04", "SOTIEN": "50000", "DONVI": "VNĐ", "MOTA": "Phí gửi", "TENTEP": "", "URL": ""}]}]},
        ],
        "THANHPHANHOSO": [
            {"TRUONGHOP": "Khai sinh đúng hạn", "GIAYTO": [
                {"MAGIAYTO": "TP.01", "TENGIAYTO": "Tờ khai", "TENMAUDON": "Mẫu 01.docx", "URL": "https://x/01",
                 "SOBANCHINH": "1", "SOBANSAO": "0", "MA_KQ_THAYTHE": ""},
                {"MAGIAYTO": "TP.02", "TENGIAYTO": "Giấy chứng sinh", "TENMAUDON": "", "URL": "",
                 "SOBANCHINH": 1, "SOBANSAO": "", "MA_KQ_THAYTHE": "KQ.9"}]},
            {"TRUONGHOP": "Khai sinh quá hạn", "GIAYTO": [
                {"MAGIAYTO": "TP.03", "TENGIAYTO": "Văn bản cam đoan", "TENMAUDON": "", "URL": "",
                 "SOBANCHINH": "1", "SOBANSAO": "2", "MA_KQ_THAYTHE": ""}]}],
        "TRINHTUTHUCHIEN": [{"TRUONGHOP": "", "TRINHTU": [{"TENTRINHTU": "Nộp hồ sơ"}, {"TENTRINHTU": "Trả kết quả"}]}],
        "DOITUONGTHUCHIEN": [{"MADOITUONG": "1", "TENDOITUONG": "Công dân Việt Nam"}],
        "KETQUATHUCHIEN": [{"MAKETQUA": "KQ.1", "TENKETQUA": "Giấy khai sinh", "TENTEP": "", "URL": ""}],
        "CANCUPHAPLY": [{"SOVANBAN": "60/2014/QH13", "TENVANBAN": "Luật Hộ tịch", "COQUANBANHANH": "Quốc hội",
                         "NGAYBANHANH": "20/11/2014", "NGAYHIEULUC": "01/01/2016", "DIACHITRUYCAP": ""}],
        "COQUANTHUCHIEN": [{"MADONVI": "000.00.02.H49", "TENDONVI": "UBND huyện A"}],
        "COQUANCOTHAMQUYEN": [{"MADONVI": "000.00.02.H49", "TENDONVI": "UBND huyện A"}],
        "COQUANDUOCUYQUYEN": [],
        "COQUANPHOIHOP": [{"MADONVI": "000.00.10.H49", "TENDONVI": "Sở Tư pháp"}],
        "TTHCLIENQUAN": ["1.000001.000.00.00.H49", "1.000002.000.00.00.H49"],
        "TTHCLIENTHONG": [],
    },
}


CANONICAL = {'procedure_code': '1.000894.000.00.00.H49',
 'procedure_name': 'Đăng ký khai sinh',
 'procedure_type': '1',
 'publishing_agency_code': '000.00.00.G09',
 'decision_id': '48371',
 'decision': 'Quyết định số 4837/QĐ-BTP',
 'requirements': '',
 'description': 'Thủ tục khai sinh',
 'submission_address': 'Bộ phận Một cửa',
 'domain_code': 'G09-TP01',
 'domain_name': 'Hộ tịch',
 'domains': [{'code': 'G09-TP01', 'name': 'Hộ tịch'}, {'code': 'G09-TP02', 'name': 'Chứng thực'}],
 'levels': [{'code': '2', 'name': 'Cấp Huyện'}, {'code': '3', 'name': 'Cấp Xã'}],
 'online_level': 'full',
 'channels': [{'channel': 'counter',
               'times': [{'duration': '5',
                          'unit': 'working_day',
                          'description': '5 ngày làm việc',
                          'fees': [{'fee_code': 'TP-01',
                                    'amount_vnd': '50000',
                                    'raw_text': '50.000 đồng',
                                    'unit': 'Đồng',
                                    'description': 'Lệ phí'},
                                   {'fee_code': 'TP-02',
                                    'amount_vnd': '20000',
                                    'raw_text': '20.000 đồng/bản',
                                    'unit': 'Đồng/bản',
                                    'description': 'Phí sao'}]},
                         {'duration': '0.5', 'unit': 'day', 'description': 'trong ngày', 'fees': []}]},
              {'channel': 'online',
               'times': [{'duration': '3',
                          'unit': 'day',
                          'description': '',
                          'fees': [{'fee_code': '',
                                    'amount_vnd': '0',
                                    'raw_text': 'Miễn phí',
                                    'unit': '',
                                    'description': 'Không thu'},
                                   {'fee_code': 'TP-03',
                                    'amount_vnd': '0',
                                    'raw_text': '',
                                    'unit': '',
                                    'description': ''}]}]},
              {'channel': 'postal',
               'times': [{'duration': '',
                          'unit': '',
                          'description': '',
                          'fees': [{'fee_code': 'TP-04',
                                    'amount_vnd': '50000',
                                    'raw_text': '50000',
                                    'unit': 'VNĐ',
                                    'description': 'Phí gửi'}]}]}],
 'components': [{'case': 'Khai sinh đúng hạn',
                 'documents': [{'code': 'TP.01',
                                'name': 'Tờ khai',
                                'template_name': 'Mẫu 01.docx',
                                'template_url': 'https://x/01',
                                'originals': '1',
                                'copies': '0',
                                'replacing_result_code': ''},
                               {'code': 'TP.02',
                                'name': 'Giấy chứng sinh',
                                'template_name': '',
                                'template_url': '',
                                'originals': '1',
                                'copies': '',
                                'replacing_result_code': 'KQ.9'}]},
                {'case': 'Khai sinh quá hạn',
                 'documents': [{'code': 'TP.03',
                                'name': 'Văn bản cam đoan',
                                'template_name': '',
                                'template_url': '',
                                'originals': '1',
                                'copies': '2',
                                'replacing_result_code': ''}]}],
 'steps': [{'case': '', 'steps': [{'name': 'Nộp hồ sơ'}, {'name': 'Trả kết quả'}]}],
 'applicant_types': [{'code': '1', 'name': 'Công dân Việt Nam'}],
 'results': [{'code': 'KQ.1', 'name': 'Giấy khai sinh', 'file_name': '', 'url': ''}],
 'legal_basis': [{'number': '60/2014/QH13',
                  'title': 'Luật Hộ tịch',
                  'issuer': 'Quốc hội',
                  'issued_date': '20/11/2014',
                  'effective_date': '01/01/2016',
                  'url': ''}],
 'agencies': {'implementing': [{'code': '000.00.02.H49', 'name': 'UBND huyện A'}],
              'competent': [{'code': '000.00.02.H49', 'name': 'UBND huyện A'}],
              'delegated': [],
              'cooperating': [{'code': '000.00.10.H49', 'name': 'Sở Tư pháp'}]},
 'related': '1.000001.000.00.00.H49,1.000002.000.00.00.H49',
 'interconnected': ''}

ONESTOP = {'serviceCode': '1.000894.000.00.00.H49',
 'serviceName': 'Đăng ký khai sinh',
 'domainCode': 'G09-TP01',
 'domainName': 'Hộ tịch',
 'agencyCode': '000.00.02.H49',
 'agencyName': 'UBND huyện A',
 'level': 'full',
 'channels': [{'channel': 'counter',
               'processingDays': 5,
               'timeUnit': 'workingDay',
               'fees': [{'feeCode': 'TP-01', 'feeName': 'Lệ phí', 'amount': 50000, 'rawText': '50.000 đồng'},
                        {'feeCode': 'TP-02',
                         'feeName': 'Phí sao',
                         'amount': 20000,
                         'rawText': '20.000 đồng/bản'}]},
              {'channel': 'online',
               'processingDays': 3,
               'timeUnit': 'day',
               'fees': [{'feeCode': None, 'feeName': 'Không thu', 'amount': 0, 'rawText': 'Miễn phí'},
                        {'feeCode': 'TP-03', 'feeName': None, 'amount': 0, 'rawText': None}]},
              {'channel': 'postal',
               'processingDays': None,
               'timeUnit': None,
               'fees': [{'feeCode': 'TP-04', 'feeName': 'Phí gửi', 'amount': 50000, 'rawText': '50000'}]}],
 'components': [{'case': 'Khai sinh đúng hạn',
                 'docCode': 'TP.01',
                 'docName': 'Tờ khai',
                 'templateName': 'Mẫu 01.docx',
                 'templateUrl': 'https://x/01',
                 'originals': 1,
                 'copies': 0},
                {'case': 'Khai sinh đúng hạn',
                 'docCode': 'TP.02',
                 'docName': 'Giấy chứng sinh',
                 'templateName': None,
                 'templateUrl': None,
                 'originals': 1,
                 'copies': None},
                {'case': 'Khai sinh quá hạn',
                 'docCode': 'TP.03',
                 'docName': 'Văn bản cam đoan',
                 'templateName': None,
                 'templateUrl': None,
                 'originals': 1,
                 'copies': 2}],
 'steps': [{'case': None, 'name': 'Nộp hồ sơ'}, {'case': None, 'name': 'Trả kết quả'}],
 'results': [{'resultCode': 'KQ.1', 'resultName': 'Giấy khai sinh'}],
 'legalBasis': [{'number': '60/2014/QH13',
                 'title': 'Luật Hộ tịch',
                 'issuer': 'Quốc hội',
                 'issuedDate': '20/11/2014',
                 'effectiveDate': '01/01/2016'}],
 'status': 'active'}

MINISTRY = {'ma_tthc': '1.000894.000.00.00.H49',
 'ten_tthc': 'Đăng ký khai sinh',
 'ma_linh_vuc': 'G09-TP01',
 'ten_linh_vuc': 'Hộ tịch',
 'ma_co_quan_cong_bo': '000.00.00.G09',
 'cap_thuc_hien': '2,3',
 'muc_do_dvc': 'toan_trinh',
 'fees': [{'kenh': '1',
           'ma_phi_le_phi': 'TP-01',
           'so_tien_vnd': 50000,
           'so_tien_goc': '50.000 đồng',
           'mo_ta': 'Lệ phí'},
          {'kenh': '1',
           'ma_phi_le_phi': 'TP-02',
           'so_tien_vnd': 20000,
           'so_tien_goc': '20.000 đồng/bản',
           'mo_ta': 'Phí sao'},
          {'kenh': '2', 'ma_phi_le_phi': None, 'so_tien_vnd': 0, 'so_tien_goc': 'Miễn phí', 'mo_ta': 'Không thu'},
          {'kenh': '2', 'ma_phi_le_phi': 'TP-03', 'so_tien_vnd': 0, 'so_tien_goc': '', 'mo_ta': None},
          {'kenh': '3',
           'ma_phi_le_phi': 'TP-04',
           'so_tien_vnd': 50000,
           'so_tien_goc': '50000',
           'mo_ta': 'Phí gửi'}]}


# ---------------------------------------------------------------------------------------------
# Transforms

@pytest.mark.parametrize(("text", "amount"), [
    ("50.000", "50000"), ("50.000 đồng", "50000"), ("20.000 đồng/bản", "20000"), ("50000", "50000"),
    ("1.250.000 VNĐ", "1250000"), ("Không", "0"), ("0", "0"), ("Miễn phí", "0"), ("miễn phí", "0"), ("", "0"),
    ("  50.000 đồng ", "50000"), ("Mie\u0302\u0303n phí", "0"), (30000, "30000"),
])
def test_vnd_from_text_reads_the_published_forms(text, amount):
    assert TRANSFORMS["vnd_from_text"].bind(None)(text) == amount


@pytest.mark.parametrize("text", ["liên hệ", "50,5", "khoảng 50.000", "50.00", "-5000", "1.2345"])
def test_vnd_from_text_refuses_what_is_not_an_amount(text):
    with pytest.raises(TransformError) as caught:
        TRANSFORMS["vnd_from_text"].bind(None)(text)
    assert caught.value.rule == "format"


@pytest.mark.parametrize("text", [
    "20.000/bản chính; 10.000/bản sao",   # was read as 20000, the copy fee lost: no unit on either amount
    "20.000 đồng/bản; 5000/bản sao",      # 4 digits or more is an amount too
    "20.000 đồng/bản chính; 10.000 đồng/bản sao",
])
def test_vnd_from_text_refuses_two_amounts_with_or_without_a_unit(text):
    with pytest.raises(TransformError) as caught:
        TRANSFORMS["vnd_from_text"].function(text)
    assert caught.value.rule == "format" and "more than one amount" in caught.value.detail
    # a short number after the amount is part of the unit
    assert TRANSFORMS["vnd_from_text"].function("20.000/01 bản") == "20000"


@pytest.mark.parametrize("text", [
    "50.000 đồng/hồ sơ (theo Thông tư 85/2019/TT-BTC)",
    "100.000 đồng/hồ sơ; áp dụng từ 01/01/2025",
    "50.000 đồng/giấy phép (Quyết định 1234/QĐ-UBND)",
    "50.000 đồng/hồ sơ, áp dụng từ ngày 01.01.2025",
    "50.000 đồng/hồ sơ từ năm 2025",
])
def test_vnd_from_text_keeps_one_fee_whose_text_cites_its_legal_basis_or_a_date(text):
    """Fee texts cite their legal basis or the date they apply from: those numbers are not a second
    amount (a review found them refused, the procedure dead-lettered at normalisation)."""
    assert TRANSFORMS["vnd_from_text"].function(text) == text.split(" ")[0].replace(".", "")


def test_procedure_with_two_fees_in_one_text_is_refused():
    source = json.loads((REPO / "fixtures" / "samples" / "national_portal" / "procedure.full-three-channels.json")
                        .read_text(encoding="utf-8"))
    source["procedure"]["CACHTHUCTHUCHIEN"][2]["THOIGIAN"][0]["PHILEPHI"][0]["SOTIEN"] = \
        "20.000/bản chính; 10.000/bản sao"
    with pytest.raises(RecordInvalid) as caught:  # it mapped, amount_vnd "20000", the copy fee lost
        load_mapping(NORMALISE).apply(source)
    assert rules(caught) == [("channels[2].times[0].fees[0].amount_vnd", "format")]


@pytest.mark.parametrize(("levels", "highest"), [
    ([2, 3], "3"), ([3, "Toàn trình", 2], "Toàn trình"), (["Một phần", 2], "Một phần"), ([4, "Một phần"], "4"),
    (["Toàn trình", 4], "Toàn trình"), (["3"], "3"), ([], None), ([None, ""], None),
])
def test_max_level_takes_the_highest_of_both_vocabularies(levels, highest):
    assert TRANSFORMS["max_level"].bind(None)(levels) == highest


def test_max_level_refuses_an_unknown_level():
    with pytest.raises(TransformError) as caught:
        TRANSFORMS["max_level"].bind(None)(["cao"])
    assert caught.value.rule == "format"


# ---------------------------------------------------------------------------------------------
# The three mappings, one full record each, exactly

def test_normalise_maps_a_full_procedure_exactly():
    output = load_mapping(NORMALISE).apply(SOURCE)
    assert output == CANONICAL
    assert json.dumps(output, ensure_ascii=False) == json.dumps(CANONICAL, ensure_ascii=False)  # order too
    SCHEMA_CHECK.validate(output)


def test_to_onestop_maps_a_full_procedure_exactly():
    output = load_mapping(TO_ONESTOP).apply(CANONICAL)
    assert json.dumps(output, ensure_ascii=False) == json.dumps(ONESTOP, ensure_ascii=False)
    assert type(output["channels"][0]["fees"][0]["amount"]) is int
    assert "version" not in output


def test_to_ministry_maps_a_full_procedure_exactly():
    output = load_mapping(TO_MINISTRY).apply(CANONICAL)
    assert json.dumps(output, ensure_ascii=False) == json.dumps(MINISTRY, ensure_ascii=False)
    from connectors.ministry_db.replica import ProcedureRow

    row = ProcedureRow(**output, noi_dung=CANONICAL, ma_bam_noi_dung="0" * 64)
    assert row.cap_thuc_hien == "2,3" and row.muc_do_dvc == "toan_trinh"


@pytest.mark.parametrize(("levels", "canonical", "onestop", "ministry"), [
    ([], "", None, None), ([2], "none", None, None), ([3], "partial", "partial", "mot_phan"),
    (["Một phần"], "partial", "partial", "mot_phan"), ([4], "full", "full", "toan_trinh"),
    (["Toàn trình", 3], "full", "full", "toan_trinh"), ([2, "Một phần"], "partial", "partial", "mot_phan"),
])
def test_online_level_through_the_three_mappings(levels, canonical, onestop, ministry):
    record = load_mapping(NORMALISE).apply({**SOURCE, "levels": levels})
    assert record["online_level"] == canonical
    assert load_mapping(TO_ONESTOP).apply(record)["level"] == onestop
    assert load_mapping(TO_MINISTRY).apply(record)["muc_do_dvc"] == ministry


def test_the_list_row_names_a_procedure_whose_detail_has_no_name():
    source = copy.deepcopy(SOURCE)
    source["procedure"]["TENTTHC"] = ""
    assert load_mapping(NORMALISE).apply(source)["procedure_name"] == "Đăng ký khai sinh"


# ---------------------------------------------------------------------------------------------
# Defective records, exact errors

def test_an_empty_code_is_refused_naming_the_list_code():
    source = copy.deepcopy(SOURCE)
    source["procedure"]["MATTHC"] = ""
    with pytest.raises(RecordInvalid) as caught:
        load_mapping(NORMALISE).apply(source)
    assert caught.value.record_key == "1.000894.000.00.00.H49"
    assert [(e.field, e.rule, e.message) for e in caught.value.errors] == [
        ("procedure_code", "required", "procedure.MATTHC is empty; procedure_code is required")]


def test_a_fee_that_is_not_an_amount_is_refused_naming_field_and_value():
    source = copy.deepcopy(SOURCE)
    source["procedure"]["CACHTHUCTHUCHIEN"][1]["THOIGIAN"][0]["PHILEPHI"][1]["SOTIEN"] = "liên hệ"
    with pytest.raises(RecordInvalid) as caught:
        load_mapping(NORMALISE).apply(source)
    assert [(e.field, e.rule, e.message) for e in caught.value.errors] == [
        ("channels[1].times[0].fees[1].amount_vnd", "format",
         "procedure.CACHTHUCTHUCHIEN[1].THOIGIAN[0].PHILEPHI[1].SOTIEN 'liên hệ' is not an amount of đồng "
         "(\"50.000\", \"50.000 đồng\", \"Không\"…) (transform vnd_from_text)")]


def test_other_defects_are_refused_with_their_rules():
    source = copy.deepcopy(SOURCE)
    source["procedure"]["CACHTHUCTHUCHIEN"][0]["KENH"] = "9"
    source["procedure"]["CACHTHUCTHUCHIEN"][0]["THOIGIAN"][0]["DONVITINH"] = "Tuần"
    source["procedure"]["CACHTHUCTHUCHIEN"][0]["THOIGIAN"][1]["THOIGIANGIAIQUYET"] = "vài ngày"
    source["procedure"]["THANHPHANHOSO"][0]["GIAYTO"][1]["SOBANSAO"] = "hai"
    source["levels"] = ["cao"]
    with pytest.raises(RecordInvalid) as caught:
        load_mapping(NORMALISE).apply(source)
    assert rules(caught) == [
        ("online_level", "format"), ("channels[0].channel", "code_table"), ("channels[0].times[0].unit", "code_table"),
        ("channels[0].times[1].duration", "format"), ("components[0].documents[1].copies", "format")]


def test_a_canonical_amount_that_is_not_whole_is_refused_by_both_targets():
    record = copy.deepcopy(CANONICAL)
    record["channels"][2]["times"][0]["fees"][0]["amount_vnd"] = "12.5"
    with pytest.raises(RecordInvalid) as caught:
        load_mapping(TO_ONESTOP).apply(record)
    assert [(e.field, e.rule, e.message) for e in caught.value.errors] == [
        ("channels[2].fees[0].amount", "type",
         "channels[2].times[0].fees[0].amount_vnd '12.5' is not an integer, which amount must be")]
    with pytest.raises(RecordInvalid) as caught:
        load_mapping(TO_MINISTRY).apply(record)
    assert [(e.field, e.rule, e.message) for e in caught.value.errors] == [
        ("fees[4].so_tien_vnd", "type",
         "channels[2].times[0].fees[0].amount_vnd '12.5' is not an integer, which so_tien_vnd must be")]


def test_samples_behave_as_their_names_say():
    samples = REPO / "fixtures" / "samples"
    for path in sorted((samples / "national_portal").glob("procedure.*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        output, errors = load_mapping(NORMALISE).translate(record)
        assert bool(errors) == (".defective-" in path.name), path.name
        if not errors:
            SCHEMA_CHECK.validate(output)
            canonical = json.loads((samples / "canonical" / path.name).read_text(encoding="utf-8"))
            assert output == canonical, path.name
    for path in sorted((samples / "canonical").glob("procedure.*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if ".defective-" not in path.name:
            SCHEMA_CHECK.validate(record)
        for name in (TO_ONESTOP, TO_MINISTRY):
            assert bool(load_mapping(name).translate(record)[1]) == (".defective-" in path.name), (name, path.name)


# ---------------------------------------------------------------------------------------------
# The engine's output types and list-of-lists each

def _write(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "canonical__onestop"
    folder.mkdir(exist_ok=True)
    path = folder / "case.yaml"
    path.write_text(textwrap.dedent("""\
        name: canonical__onestop/case
        version: 1
        description: a test mapping
        source: {system: canonical, record: procedure}
        target: {system: onestop, record: procedure}
        record_key: code
        """) + textwrap.dedent(body), encoding="utf-8")
    return path


def test_typed_fields(tmp_path):
    mapping = load_mapping(_write(tmp_path, """\
        fields:
          code: {from: code}
          count: {from: count, type: integer}
          ratio: {from: ratio, type: number, nullable: true}
          flag: {from: flag, type: boolean}
          note: {from: note, nullable: true}
          fixed: {const: "7", type: integer}
        """))
    assert mapping.apply({"code": "a", "count": "12", "ratio": "1.5", "flag": "true", "note": "x"}) == {
        "code": "a", "count": 12, "ratio": 1.5, "flag": True, "note": "x", "fixed": 7}
    assert mapping.apply({"code": "a", "count": "0", "ratio": "", "flag": "false"}) == {
        "code": "a", "count": 0, "ratio": None, "flag": False, "note": None, "fixed": 7}
    with pytest.raises(RecordInvalid) as caught:
        mapping.apply({"code": "a", "count": "1.5", "ratio": "x", "flag": "yes"})
    assert [(e.field, e.rule, e.message) for e in caught.value.errors] == [
        ("count", "type", "count '1.5' is not an integer, which count must be"),
        ("ratio", "type", "ratio 'x' is not a number, which ratio must be"),
        ("flag", "type", "flag 'yes' is not a boolean, which flag must be")]
    with pytest.raises(RecordInvalid) as caught:
        mapping.apply({"code": "a", "flag": "true"})
    assert [(e.field, e.rule, e.message) for e in caught.value.errors] == [
        ("count", "type", "count has no value; count needs an integer")]


def test_a_required_typed_field_reports_required_only(tmp_path):
    mapping = load_mapping(_write(tmp_path, """\
        fields:
          count: {from: count, type: integer, required: true}
        """))
    with pytest.raises(RecordInvalid) as caught:
        mapping.apply({"code": "a"})
    assert rules(caught) == [("count", "required")]


@pytest.mark.parametrize(("body", "where", "rule"), [
    ("fields:\n  n: {from: n, type: float}\n", "fields.n.type", "enum"),
    ("fields:\n  n: {from: n, nullable: 1}\n", "fields.n.nullable", "type"),
    ("fields:\n  n: {each: {from: xs, fields: {a: {from: a}}}, type: integer}\n", "fields.n.type", "conflict"),
    ("fields:\n  n: {each: {from: 'xs[*]', fields: {a: {from: a}}}}\n", "fields.n.each.from", "path"),
])
def test_bad_output_types_are_file_errors(tmp_path, body, where, rule):
    with pytest.raises(ConfigurationError) as caught:
        load_mapping(_write(tmp_path, body))
    assert (where, rule) in [(p.path, p.rule) for p in caught.value.problems]


def test_each_over_a_list_of_lists(tmp_path):
    mapping = load_mapping(_write(tmp_path, """\
        fields:
          flat:
            each:
              from: groups[*].rows[*].cells
              where: {path: skip, not_in: [true]}
              fields:
                group: {from: _outer._outer.g}
                row: {from: _outer.r}
                cell: {from: c, required: true}
        """))
    record = {"code": "a", "groups": [
        {"g": "A", "rows": [{"r": "1", "cells": [{"c": "x"}, {"c": "y", "skip": True}]}, {"r": "2"}]},
        {"g": "B", "rows": []},
        {"g": "C", "rows": [{"r": "3", "cells": [{"c": "z"}]}]}]}
    assert mapping.apply(record) == {"flat": [
        {"group": "A", "row": "1", "cell": "x"}, {"group": "C", "row": "3", "cell": "z"}]}
    assert mapping.apply({"code": "a"}) == {"flat": []}
    record["groups"][2]["rows"][0]["cells"][0]["c"] = ""
    record["groups"][0]["rows"][1]["cells"] = "no"
    with pytest.raises(RecordInvalid) as caught:
        mapping.apply(record)
    assert [(e.field, e.rule, e.message) for e in caught.value.errors] == [
        ("flat", "type", "groups[0].rows[1].cells is text, expected a list"),
        ("flat[1].cell", "required", "groups[2].rows[0].cells[0].c is empty; cell is required")]


def test_required_is_enforced_on_a_list_of_lists(tmp_path):
    """required on each: {from: outer[*].inner} was accepted and never checked ({"flat": []} sent);
    it means what it means on a plain list: a list to go through is there (an empty one will do)."""
    mapping = load_mapping(_write(tmp_path, """\
        fields:
          flat:
            required: true
            each: {from: 'groups[*].rows', fields: {r: {from: r}}}
          when_done:
            required: {when: {path: status, in: [done]}}
            each: {from: 'groups[*].rows[*].cells', fields: {c: {from: c}}}
        """))

    def errors(record: dict) -> list[tuple[str, str, str]]:
        with pytest.raises(RecordInvalid) as caught:
            mapping.apply({"code": "a", **record})
        return [(e.field, e.rule, e.message) for e in caught.value.errors]

    assert errors({}) == [("flat", "required", "groups[*].rows is missing (groups is missing); flat is required")]
    assert errors({"groups": [{"g": "A"}], "status": "done"}) == [
        ("flat", "required", "groups[*].rows is missing (no item of groups has rows); flat is required"),
        ("when_done", "required", "groups[*].rows[*].cells is missing (no item of groups[*].rows has cells); "
                                  "when_done is required when status is one of [done] (status is 'done')")]
    assert mapping.apply({"code": "a", "groups": [{"g": "A"}, {"rows": []}]}) == {"flat": [], "when_done": []}
    assert mapping.apply({"code": "a", "groups": [{"rows": [{"r": "1", "cells": []}]}], "status": "done"}) == {
        "flat": [{"r": "1"}], "when_done": []}
    # a list that is not a list is a type error, not a required one as well
    assert errors({"groups": "no"}) == [("flat", "type", "groups is text, expected a list"),
                                        ("when_done", "type", "groups is text, expected a list")]


# ---------------------------------------------------------------------------------------------
# A generated national catalogue, end to end

@pytest.fixture(scope="module")
def catalogue():
    from mocks.national_portal.catalogue import cached

    return cached(None, "mapping-tests")


def _source(row) -> dict:
    _idx, code, name, _state, _defect, text = row
    levels = [[], [2], [3], [4], ["Một phần"], ["Toàn trình"], [3, "Toàn trình"]][_idx % 7]
    return {"procedure": json.loads(text), "listed": {"MATTHC": code, "TENTTHC": name}, "levels": levels}


EXPECTED_RULE = {"empty_code": ("procedure_code", "required"), "unparsable_fee": (None, "format")}


def test_every_generated_procedure_normalises_as_expected(catalogue):
    normalise, onestop, ministry = (load_mapping(n) for n in (NORMALISE, TO_ONESTOP, TO_MINISTRY))
    defects = set()
    for row in catalogue.rows:
        defect = row[4]
        output, errors = normalise.translate(_source(row))
        if defect in EXPECTED_RULE:
            field, rule = EXPECTED_RULE[defect]
            assert errors and all(e.rule == rule for e in errors), (row[1], defect, errors)
            if field:
                assert [e.field for e in errors] == [field]
            else:
                assert all(e.field.endswith(".amount_vnd") for e in errors)
            defects.add(defect)
            continue
        assert errors == [], (row[1], errors)  # unknown_agency too: the flow checks agencies
        onestop.apply(output)
        ministry.apply(output)
    assert defects == set(EXPECTED_RULE)
    for row in catalogue.rows[:300]:
        if not row[4]:
            SCHEMA_CHECK.validate(normalise.apply(_source(row)))


def test_the_one_stop_mock_accepts_every_mapped_procedure(tmp_path, catalogue):
    from mocks.one_stop import OneStopMock

    normalise, onestop = load_mapping(NORMALISE), load_mapping(TO_ONESTOP)
    rows = [r for r in catalogue.rows if r[4] in (None, "unknown_agency")]
    picked = rows[:60] + rows[60::max(1, len(rows) // 140)]
    mock = OneStopMock(state_dir=tmp_path / "onestop", port=0, api_key="k").start()
    try:
        session = requests.Session()
        statuses = set()
        for row in picked:
            body = onestop.apply(normalise.apply(_source(row)))
            response = session.put(f"{mock.url}/api/v1/procedures/{body['serviceCode']}", json=body,
                                   headers={"X-Api-Key": "k"}, timeout=10)
            assert response.status_code in (200, 201), (row[1], response.text)
            statuses.add(response.status_code)
        # a second PUT of the same record changes nothing
        response = session.put(f"{mock.url}/api/v1/procedures/{body['serviceCode']}", json=body,
                               headers={"X-Api-Key": "k"}, timeout=10)
        assert response.status_code == 200 and response.json()["version"] == 1
        state = session.get(mock.url + "/_state/procedures", timeout=10).json()
    finally:
        mock.stop()
    assert state["counts"]["procedures"] == len({r[1] for r in picked}) >= 190
    levels = {p["level"] for p in state["procedures"]}
    assert levels == {None, "partial", "full"}
