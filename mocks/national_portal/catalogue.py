"""The national procedure catalogue (CSDL quốc gia về TTHC) of the portal stand-in, contract §4.5, §4.6, §5.2,
§5.6, §6.4.

A deterministic generator: the same seed and the same seed file give the same ~3,000 procedures, with no
wall clock. The 15 procedures of the seed file come first (ID order), unchanged in code, name and domain;
the rest are drawn from the domain, agency and legal-basis tables below. The texts are realistic, not an
extract of the real national catalogue.

Every 500th generated procedure (the 500th, 1000th, … of the catalogue, never a seed procedure) carries one
defect for the dead-letter path, cycling through :data:`DEFECT_KINDS`.

Pure functions over plain dicts; ``app.py`` stores the result in SQLite and serves it.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mocks.server import DEFAULT_SEED_FILE, dumps, load_seed, seeded_rng

__all__ = [
    "DEFAULT_SIZE",
    "DEFECT_EVERY",
    "DEFECT_KINDS",
    "PUBLISHED",
    "WITHDRAWN",
    "Catalogue",
    "fee_text",
    "generate",
    "make_procedure",
]

DEFAULT_SIZE = 3000
DEFECT_EVERY = 500
#: ``empty_code``: MATTHC is "" in the LayThuTuc detail (the list row still carries the code);
#: ``unparsable_fee``: a PHILEPHI SOTIEN of "liên hệ"; ``unknown_agency``: COQUANTHUCHIEN names
#: a MADONVI that LayDanhMucCoQuan does not list.
DEFECT_KINDS = ("empty_code", "unparsable_fee", "unknown_agency")
UNKNOWN_AGENCY = ("000.00.99.H49", "Trung tâm Hành chính công huyện Nông Sơn")
PUBLISHED = 1
WITHDRAWN = 0  # TRANGTHAI of a withdrawn procedure (I: clients only know "1 = published")

CAP_NAMES = {"0": "Cấp Bộ", "1": "Cấp Tỉnh", "2": "Cấp Huyện", "3": "Cấp Xã"}
CAP_SUFFIX = {"0": "", "1": " (cấp tỉnh)", "2": " (cấp huyện)", "3": " (cấp xã)"}
CHANNEL_NAMES = {"1": "Trực tiếp", "2": "Trực tuyến", "3": "Dịch vụ bưu chính"}
APPLICANTS = {"1": "Công dân Việt Nam", "2": "Doanh nghiệp", "3": "Cơ quan nhà nước", "4": "Tổ chức (không bao gồm doanh nghiệp, HTX)"}
APPLICANT_OF = {"citizen": "1", "business": "2", "agency": "3", "organization": "4"}

# Ministries: code, name, short (the code form "000.00.00.Gnn" is I).
MINISTRIES = {
    "G02": ("Bộ Công Thương", "BCT"), "G03": ("Bộ Giáo dục và Đào tạo", "BGDĐT"),
    "G04": ("Bộ Nông nghiệp và Phát triển nông thôn", "BNNPTNT"), "G05": ("Bộ Nội vụ", "BNV"),
    "G06": ("Bộ Kế hoạch và Đầu tư", "BKHĐT"), "G07": ("Bộ Tài chính", "BTC"),
    "G08": ("Bộ Thông tin và Truyền thông", "BTTTT"), "G09": ("Bộ Tư pháp", "BTP"),
    "G10": ("Bộ Văn hóa, Thể thao và Du lịch", "BVHTTDL"), "G11": ("Bộ Lao động - Thương binh và Xã hội", "BLĐTBXH"),
    "G12": ("Bộ Tài nguyên và Môi trường", "BTNMT"), "G13": ("Bộ Y tế", "BYT"),
    "G14": ("Bộ Giao thông vận tải", "BGTVT"), "G15": ("Bộ Xây dựng", "BXD"),
    "G16": ("Bộ Khoa học và Công nghệ", "BKHCN"),
}

# Provincial departments beyond the seed units (codes 000.00.NN.H49).
EXTRA_DEPARTMENTS = [
    ("000.00.09.H49", "Sở Y tế tỉnh Quảng Nam"), ("000.00.10.H49", "Sở Giáo dục và Đào tạo tỉnh Quảng Nam"),
    ("000.00.11.H49", "Sở Xây dựng tỉnh Quảng Nam"),
    ("000.00.12.H49", "Sở Lao động - Thương binh và Xã hội tỉnh Quảng Nam"),
    ("000.00.13.H49", "Sở Công Thương tỉnh Quảng Nam"),
    ("000.00.14.H49", "Sở Nông nghiệp và Phát triển nông thôn tỉnh Quảng Nam"),
    ("000.00.15.H49", "Sở Nội vụ tỉnh Quảng Nam"), ("000.00.16.H49", "Sở Tài chính tỉnh Quảng Nam"),
    ("000.00.17.H49", "Sở Thông tin và Truyền thông tỉnh Quảng Nam"),
    ("000.00.18.H49", "Sở Văn hóa, Thể thao và Du lịch tỉnh Quảng Nam"),
    ("000.00.19.H49", "Sở Khoa học và Công nghệ tỉnh Quảng Nam"),
]
EXTRA_DISTRICTS = [("000.00.20.H49", "UBND huyện Thăng Bình"), ("000.00.21.H49", "UBND huyện Duy Xuyên"),
                   ("000.00.22.H49", "UBND huyện Đại Lộc")]
PROVINCE_PEOPLES_COMMITTEE = ("000.00.00.H49", "UBND tỉnh Quảng Nam")

# Domains: code, name, ministry, provincial department, objects of the procedure names, verbs, result stem,
# legal bases (number, title, issuer, issued, effective).
_LICENCE_VERBS = ["Cấp", "Cấp lại", "Cấp đổi", "Điều chỉnh nội dung", "Gia hạn", "Thu hồi", "Cấp bản sao"]
_REGISTER_VERBS = ["Đăng ký", "Đăng ký thay đổi", "Đăng ký lại", "Xác nhận", "Xóa đăng ký", "Cấp bản sao"]
DOMAINS: list[dict[str, Any]] = [
    {"code": "G09-TP03", "name": "Hộ tịch", "ministry": "G09", "dept": "000.00.01.H49", "verbs": _REGISTER_VERBS,
     "objects": ["khai sinh", "kết hôn", "khai tử", "nhận cha, mẹ, con", "giám hộ", "thay đổi, cải chính hộ tịch",
                 "chấm dứt giám hộ", "xác định lại dân tộc", "khai sinh kết hợp nhận cha, mẹ, con", "lại khai sinh"],
     "result": "Trích lục hộ tịch", "laws": [("60/2014/QH13", "Luật Hộ tịch", "Quốc hội", "20/11/2014", "01/01/2016"),
                                             ("123/2015/NĐ-CP", "Nghị định quy định chi tiết một số điều và biện pháp thi hành Luật Hộ tịch", "Chính phủ", "15/11/2015", "01/01/2016")]},
    {"code": "G09-TP04", "name": "Chứng thực", "ministry": "G09", "dept": "000.00.01.H49", "verbs": ["Chứng thực", "Sửa lỗi sai sót trong", "Cấp bản sao có chứng thực từ bản chính"],
     "objects": ["hợp đồng, giao dịch", "chữ ký người dịch", "chữ ký trong giấy tờ, văn bản", "di chúc",
                 "văn bản thỏa thuận phân chia di sản", "văn bản khai nhận di sản", "hợp đồng ủy quyền", "việc sửa đổi, bổ sung, hủy bỏ hợp đồng"],
     "result": "Văn bản được chứng thực", "laws": [("23/2015/NĐ-CP", "Nghị định về cấp bản sao từ sổ gốc, chứng thực bản sao từ bản chính, chứng thực chữ ký và chứng thực hợp đồng, giao dịch", "Chính phủ", "16/02/2015", "10/04/2015")]},
    {"code": "G09-TP01", "name": "Công chứng", "ministry": "G09", "dept": "000.00.01.H49", "verbs": _LICENCE_VERBS,
     "objects": ["Giấy đăng ký hoạt động Văn phòng công chứng", "Thẻ công chứng viên", "Quyết định bổ nhiệm công chứng viên",
                 "Giấy phép thành lập Văn phòng công chứng", "Giấy xác nhận đăng ký hành nghề công chứng"],
     "result": "Quyết định", "laws": [("46/2024/QH15", "Luật Công chứng", "Quốc hội", "26/11/2024", "01/07/2025")]},
    {"code": "G06-KH01", "name": "Thành lập và hoạt động của doanh nghiệp", "ministry": "G06", "dept": "000.00.02.H49",
     "verbs": _REGISTER_VERBS, "objects": ["thành lập công ty cổ phần", "thành lập công ty hợp danh", "thay đổi người đại diện theo pháp luật",
                                           "thay đổi vốn điều lệ", "thay đổi địa chỉ trụ sở chính", "hoạt động chi nhánh, văn phòng đại diện",
                                           "tạm ngừng kinh doanh", "giải thể doanh nghiệp", "thay đổi ngành, nghề kinh doanh"],
     "result": "Giấy chứng nhận đăng ký doanh nghiệp", "laws": [("59/2020/QH14", "Luật Doanh nghiệp", "Quốc hội", "17/06/2020", "01/01/2021"),
                                                               ("01/2021/NĐ-CP", "Nghị định về đăng ký doanh nghiệp", "Chính phủ", "04/01/2021", "04/01/2021")]},
    {"code": "G06-KH02", "name": "Thành lập và hoạt động của hộ kinh doanh", "ministry": "G06", "dept": "000.00.02.H49",
     "verbs": _REGISTER_VERBS, "objects": ["thay đổi nội dung đăng ký hộ kinh doanh", "tạm ngừng kinh doanh hộ kinh doanh",
                                           "chấm dứt hoạt động hộ kinh doanh", "hộ kinh doanh chuyển đổi thành doanh nghiệp"],
     "result": "Giấy chứng nhận đăng ký hộ kinh doanh", "laws": [("01/2021/NĐ-CP", "Nghị định về đăng ký doanh nghiệp", "Chính phủ", "04/01/2021", "04/01/2021")]},
    {"code": "G06-KH05", "name": "Đầu tư tại Việt Nam", "ministry": "G06", "dept": "000.00.02.H49", "verbs": _LICENCE_VERBS,
     "objects": ["Giấy chứng nhận đăng ký đầu tư", "Quyết định chấp thuận chủ trương đầu tư", "Giấy chứng nhận đầu tư dự án ngoài khu công nghiệp"],
     "result": "Giấy chứng nhận đăng ký đầu tư", "laws": [("61/2020/QH14", "Luật Đầu tư", "Quốc hội", "17/06/2020", "01/01/2021")]},
    {"code": "G12-TN01", "name": "Đất đai", "ministry": "G12", "dept": "000.00.03.H49", "verbs": _REGISTER_VERBS,
     "objects": ["biến động quyền sử dụng đất do đổi tên", "chuyển mục đích sử dụng đất", "tách thửa hoặc hợp thửa đất",
                 "quyền sử dụng đất lần đầu", "thế chấp quyền sử dụng đất", "xóa đăng ký thế chấp", "gia hạn sử dụng đất",
                 "đính chính Giấy chứng nhận đã cấp", "chuyển nhượng quyền sử dụng đất"],
     "result": "Giấy chứng nhận quyền sử dụng đất", "laws": [("31/2024/QH15", "Luật Đất đai", "Quốc hội", "18/01/2024", "01/08/2024"),
                                                            ("101/2024/NĐ-CP", "Nghị định quy định về điều tra cơ bản đất đai; đăng ký, cấp Giấy chứng nhận", "Chính phủ", "29/07/2024", "01/08/2024")]},
    {"code": "G12-TN03", "name": "Môi trường", "ministry": "G12", "dept": "000.00.03.H49", "verbs": _LICENCE_VERBS,
     "objects": ["giấy phép môi trường", "quyết định phê duyệt kết quả thẩm định báo cáo đánh giá tác động môi trường",
                 "giấy xác nhận hoàn thành công trình bảo vệ môi trường", "giấy phép xử lý chất thải nguy hại"],
     "result": "Giấy phép môi trường", "laws": [("72/2020/QH14", "Luật Bảo vệ môi trường", "Quốc hội", "17/11/2020", "01/01/2022")]},
    {"code": "G12-TN05", "name": "Tài nguyên nước", "ministry": "G12", "dept": "000.00.03.H49", "verbs": _LICENCE_VERBS,
     "objects": ["giấy phép khai thác nước mặt", "giấy phép khai thác nước dưới đất", "giấy phép xả nước thải vào nguồn nước",
                 "giấy phép thăm dò nước dưới đất"], "result": "Giấy phép tài nguyên nước",
     "laws": [("28/2023/QH15", "Luật Tài nguyên nước", "Quốc hội", "27/11/2023", "01/07/2024")]},
    {"code": "G14-GT03", "name": "Đường bộ", "ministry": "G14", "dept": "000.00.04.H49", "verbs": _LICENCE_VERBS,
     "objects": ["Giấy phép lái xe", "Giấy phép kinh doanh vận tải bằng xe ô tô", "phù hiệu xe ô tô kinh doanh vận tải",
                 "Giấy phép vận tải đường bộ quốc tế", "Giấy phép thi công công trình trên đường bộ đang khai thác",
                 "Giấy chứng nhận đăng ký xe máy chuyên dùng"], "result": "Giấy phép",
     "laws": [("35/2024/QH15", "Luật Đường bộ", "Quốc hội", "27/06/2024", "01/01/2025"),
              ("36/2024/QH15", "Luật Trật tự, an toàn giao thông đường bộ", "Quốc hội", "27/06/2024", "01/01/2025")]},
    {"code": "G14-GT05", "name": "Đường thủy nội địa", "ministry": "G14", "dept": "000.00.04.H49", "verbs": _LICENCE_VERBS,
     "objects": ["Giấy chứng nhận đăng ký phương tiện thủy nội địa", "Giấy phép hoạt động bến thủy nội địa",
                 "Chứng chỉ chuyên môn thuyền viên"], "result": "Giấy chứng nhận",
     "laws": [("23/2004/QH11", "Luật Giao thông đường thủy nội địa", "Quốc hội", "15/06/2004", "01/01/2005")]},
    {"code": "G15-XD03", "name": "Hoạt động xây dựng", "ministry": "G15", "dept": "000.00.11.H49", "verbs": _LICENCE_VERBS,
     "objects": ["giấy phép xây dựng công trình cấp đặc biệt, cấp I, cấp II", "giấy phép xây dựng có thời hạn",
                 "giấy phép sửa chữa, cải tạo công trình", "giấy phép di dời công trình", "chứng chỉ hành nghề hoạt động xây dựng",
                 "chứng chỉ năng lực hoạt động xây dựng hạng II, hạng III"], "result": "Giấy phép xây dựng",
     "laws": [("50/2014/QH13", "Luật Xây dựng", "Quốc hội", "18/06/2014", "01/01/2015"),
              ("175/2024/NĐ-CP", "Nghị định quy định chi tiết một số điều và biện pháp thi hành Luật Xây dựng về quản lý hoạt động xây dựng", "Chính phủ", "30/12/2024", "30/12/2024")]},
    {"code": "G15-XD06", "name": "Nhà ở", "ministry": "G15", "dept": "000.00.11.H49", "verbs": ["Thẩm định", "Phê duyệt", "Công nhận", "Cho thuê", "Bán"],
     "objects": ["nhà ở xã hội", "nhà ở công vụ", "chủ trương đầu tư dự án nhà ở", "giá bán nhà ở xã hội", "nhà ở thuộc sở hữu nhà nước"],
     "result": "Văn bản chấp thuận", "laws": [("27/2023/QH15", "Luật Nhà ở", "Quốc hội", "27/11/2023", "01/08/2024")]},
    {"code": "G03-GD06", "name": "Giáo dục mầm non", "ministry": "G03", "dept": "000.00.10.H49", "verbs": ["Thành lập", "Cho phép hoạt động", "Sáp nhập, chia, tách", "Giải thể", "Cho phép hoạt động giáo dục trở lại"],
     "objects": ["trường mầm non", "nhà trẻ", "nhóm trẻ độc lập", "lớp mẫu giáo độc lập"], "result": "Quyết định",
     "laws": [("43/2019/QH14", "Luật Giáo dục", "Quốc hội", "14/06/2019", "01/07/2020")]},
    {"code": "G03-GD09", "name": "Giáo dục trung học", "ministry": "G03", "dept": "000.00.10.H49", "verbs": ["Thành lập", "Cho phép hoạt động", "Sáp nhập, chia, tách", "Giải thể", "Chuyển trường cho học sinh"],
     "objects": ["trường trung học cơ sở", "trường trung học phổ thông", "trường phổ thông có nhiều cấp học", "trường phổ thông dân tộc nội trú"],
     "result": "Quyết định", "laws": [("43/2019/QH14", "Luật Giáo dục", "Quốc hội", "14/06/2019", "01/07/2020")]},
    {"code": "G03-GD10", "name": "Văn bằng, chứng chỉ", "ministry": "G03", "dept": "000.00.10.H49", "verbs": ["Cấp bản sao", "Chỉnh sửa nội dung", "Công nhận", "Xác nhận", "Cấp lại"],
     "objects": ["văn bằng tốt nghiệp", "chứng chỉ ngoại ngữ", "bằng tốt nghiệp trung học cơ sở", "văn bằng do cơ sở giáo dục nước ngoài cấp"],
     "result": "Văn bằng", "laws": [("21/2019/TT-BGDĐT", "Thông tư ban hành Quy chế quản lý bằng tốt nghiệp, chứng chỉ", "Bộ Giáo dục và Đào tạo", "29/11/2019", "14/01/2020")]},
    {"code": "G13-YT02", "name": "Khám bệnh, chữa bệnh", "ministry": "G13", "dept": "000.00.09.H49", "verbs": _LICENCE_VERBS,
     "objects": ["giấy phép hành nghề khám bệnh, chữa bệnh", "giấy phép hoạt động phòng khám đa khoa", "giấy phép hoạt động phòng khám chuyên khoa",
                 "giấy phép hoạt động cơ sở dịch vụ y tế", "giấy phép hoạt động trạm y tế"], "result": "Giấy phép",
     "laws": [("15/2023/QH15", "Luật Khám bệnh, chữa bệnh", "Quốc hội", "09/01/2023", "01/01/2024"),
              ("96/2023/NĐ-CP", "Nghị định quy định chi tiết một số điều của Luật Khám bệnh, chữa bệnh", "Chính phủ", "30/12/2023", "01/01/2024")]},
    {"code": "G13-YT05", "name": "Dược phẩm", "ministry": "G13", "dept": "000.00.09.H49", "verbs": _LICENCE_VERBS,
     "objects": ["Chứng chỉ hành nghề dược", "Giấy chứng nhận đủ điều kiện kinh doanh dược", "Giấy chứng nhận đạt Thực hành tốt cơ sở bán lẻ thuốc"],
     "result": "Giấy chứng nhận", "laws": [("105/2016/QH13", "Luật Dược", "Quốc hội", "06/04/2016", "01/01/2017")]},
    {"code": "G11-LD03", "name": "Bảo trợ xã hội", "ministry": "G11", "dept": "000.00.12.H49", "verbs": ["Trợ giúp", "Hỗ trợ", "Thôi hưởng", "Điều chỉnh mức hưởng", "Tiếp nhận"],
     "objects": ["xã hội thường xuyên tại cộng đồng", "kinh phí nhận chăm sóc, nuôi dưỡng đối tượng cần bảo vệ khẩn cấp",
                 "đối tượng vào cơ sở trợ giúp xã hội", "trợ cấp xã hội hằng tháng", "chi phí điều trị người bị thương nặng"],
     "result": "Quyết định", "laws": [("20/2021/NĐ-CP", "Nghị định quy định chính sách trợ giúp xã hội đối với đối tượng bảo trợ xã hội", "Chính phủ", "15/03/2021", "01/07/2021")]},
    {"code": "G11-LD01", "name": "Việc làm", "ministry": "G11", "dept": "000.00.12.H49", "verbs": _LICENCE_VERBS,
     "objects": ["giấy phép lao động cho người lao động nước ngoài", "giấy phép hoạt động dịch vụ việc làm", "trợ cấp thất nghiệp"],
     "result": "Giấy phép lao động", "laws": [("38/2013/QH13", "Luật Việc làm", "Quốc hội", "16/11/2013", "01/01/2015")]},
    {"code": "G02-CT04", "name": "Lưu thông hàng hóa trong nước", "ministry": "G02", "dept": "000.00.13.H49", "verbs": _LICENCE_VERBS,
     "objects": ["Giấy phép bán lẻ sản phẩm thuốc lá", "Giấy phép bán buôn rượu", "Giấy phép bán lẻ rượu",
                 "Giấy chứng nhận đủ điều kiện cửa hàng bán lẻ xăng dầu", "Giấy phép kinh doanh mua bán hàng hóa"],
     "result": "Giấy phép", "laws": [("105/2017/NĐ-CP", "Nghị định về kinh doanh rượu", "Chính phủ", "14/09/2017", "01/11/2017")]},
    {"code": "G04-NN05", "name": "Thú y", "ministry": "G04", "dept": "000.00.14.H49", "verbs": _LICENCE_VERBS,
     "objects": ["Giấy chứng nhận cơ sở an toàn dịch bệnh động vật", "Chứng chỉ hành nghề thú y", "Giấy chứng nhận đủ điều kiện vệ sinh thú y"],
     "result": "Giấy chứng nhận", "laws": [("79/2015/QH13", "Luật Thú y", "Quốc hội", "19/06/2015", "01/07/2016")]},
    {"code": "G05-NV02", "name": "Thi đua, khen thưởng", "ministry": "G05", "dept": "000.00.15.H49", "verbs": ["Tặng", "Xét tặng", "Công nhận danh hiệu"],
     "objects": ["Bằng khen của Chủ tịch Ủy ban nhân dân", "Giấy khen", "Chiến sĩ thi đua cơ sở", "Tập thể lao động xuất sắc"],
     "result": "Quyết định khen thưởng", "laws": [("06/2022/QH15", "Luật Thi đua, khen thưởng", "Quốc hội", "15/06/2022", "01/01/2024")]},
    {"code": "G10-VH01", "name": "Văn hóa cơ sở", "ministry": "G10", "dept": "000.00.18.H49", "verbs": _LICENCE_VERBS,
     "objects": ["Giấy phép tổ chức lễ hội", "giấy phép kinh doanh dịch vụ karaoke", "Giấy chứng nhận đủ điều kiện kinh doanh dịch vụ lữ hành nội địa",
                 "giấy phép triển lãm mỹ thuật"], "result": "Giấy phép",
     "laws": [("09/2009/QH12", "Luật Du lịch", "Quốc hội", "19/06/2017", "01/01/2018")]},
    {"code": "G08-TT03", "name": "Báo chí, xuất bản", "ministry": "G08", "dept": "000.00.17.H49", "verbs": _LICENCE_VERBS,
     "objects": ["giấy phép xuất bản bản tin", "giấy phép hoạt động in", "giấy phép xuất bản tài liệu không kinh doanh"],
     "result": "Giấy phép", "laws": [("19/2012/QH13", "Luật Xuất bản", "Quốc hội", "20/11/2012", "01/07/2013")]},
    {"code": "G16-KC02", "name": "Hoạt động khoa học và công nghệ", "ministry": "G16", "dept": "000.00.19.H49", "verbs": _LICENCE_VERBS,
     "objects": ["Giấy chứng nhận đăng ký hoạt động khoa học và công nghệ", "Giấy phép tiến hành công việc bức xạ", "Giấy chứng nhận doanh nghiệp khoa học và công nghệ"],
     "result": "Giấy chứng nhận", "laws": [("29/2013/QH13", "Luật Khoa học và công nghệ", "Quốc hội", "18/06/2013", "01/01/2014")]},
    {"code": "G07-TC02", "name": "Quản lý công sản", "ministry": "G07", "dept": "000.00.16.H49", "verbs": ["Mua sắm", "Thanh lý", "Điều chuyển", "Bán", "Xác lập quyền sở hữu toàn dân đối với"],
     "objects": ["tài sản công", "tài sản kết cấu hạ tầng", "xe ô tô công", "tài sản bị chôn giấu, bị vùi lấp"],
     "result": "Quyết định", "laws": [("15/2017/QH14", "Luật Quản lý, sử dụng tài sản công", "Quốc hội", "21/06/2017", "01/01/2018")]},
]

_STEPS = ["Tổ chức, cá nhân nộp hồ sơ tại Bộ phận Tiếp nhận và Trả kết quả hoặc trực tuyến trên Cổng Dịch vụ công quốc gia",
          "Bộ phận Tiếp nhận và Trả kết quả kiểm tra tính đầy đủ, hợp lệ của hồ sơ; tiếp nhận và hẹn ngày trả kết quả",
          "Cơ quan có thẩm quyền thẩm định hồ sơ; trường hợp hồ sơ chưa đầy đủ thì thông báo để bổ sung",
          "Lãnh đạo cơ quan xem xét, ký duyệt kết quả giải quyết",
          "Trả kết quả cho tổ chức, cá nhân tại Bộ phận Tiếp nhận và Trả kết quả hoặc qua dịch vụ bưu chính công ích"]
_FORMS = ["Tờ khai theo mẫu", "Đơn đề nghị theo mẫu", "Bản sao Căn cước công dân hoặc giấy tờ tùy thân", "Giấy ủy quyền (nếu nộp thay)",
          "Bản sao giấy tờ chứng minh quyền sử dụng hợp pháp địa điểm", "Báo cáo hoạt động theo mẫu", "Bản thuyết minh",
          "Bản chính giấy phép đã được cấp (trường hợp cấp lại)", "Danh sách kèm theo", "Văn bản xác nhận của cơ quan có liên quan"]
_CONDITIONS = ["Không", "Không", "Không", "Tổ chức, cá nhân đáp ứng đủ điều kiện theo quy định của pháp luật chuyên ngành",
               "Có đủ năng lực hành vi dân sự; không đang bị truy cứu trách nhiệm hình sự",
               "Cơ sở vật chất, trang thiết bị đáp ứng tiêu chuẩn theo quy định"]
_ADDRESS = ("Trung tâm Phục vụ hành chính công tỉnh Quảng Nam, số 6 Trần Hưng Đạo, phường Tân Thạnh, "
            "thành phố Tam Kỳ, tỉnh Quảng Nam")
_FILE_BASE = "https://csdl.dichvucong.gov.vn/web/jsp/download_file.jsp?ma="


def fee_text(rng: random.Random, amount: int) -> tuple[str, str]:
    """SOTIEN and DONVI as the portal writes them: free text. Forms (each is I, the mix is deliberate):
    ``"50.000"``, ``"50.000 đồng"``, ``"50.000 đồng/bản"``, ``"50000"`` for an amount; ``"Không"``,
    ``"0"``, ``"Miễn phí"`` for no fee."""
    if amount == 0:
        return rng.choice(("Không", "0", "Miễn phí")), "Đồng"
    dotted = f"{amount:,}".replace(",", ".")
    form = rng.random()
    if form < 0.45:
        return dotted, "Đồng"
    if form < 0.75:
        return f"{dotted} đồng", "Đồng"
    if form < 0.9:
        return f"{dotted} đồng/bản", "Đồng/bản"
    return str(amount), "VNĐ"


@dataclass(frozen=True)
class Catalogue:
    """A generated catalogue: rows ready for the store (records as JSON text) and the dictionaries."""

    rows: tuple[tuple[int, str, str, int, str | None, str], ...]  # (idx, code, name, trangthai, defect, record json)
    agencies: tuple[dict[str, str], ...]
    domains: tuple[dict[str, str], ...]
    seed_codes: tuple[str, ...]

    @property
    def codes(self) -> list[str]:
        return [r[1] for r in self.rows]


class _World:
    """Agencies and lookup tables derived from the seed file (shared by generate and make_procedure)."""

    def __init__(self, seed_data: dict[str, Any]):
        units = seed_data["units"]
        self.unit_names = {u["code"]: u["name"] for u in units}
        self.province_units = [u["code"] for u in units if int(u.get("level", 1)) == 1]
        self.districts = [u["code"] for u in units if int(u.get("level", 1)) == 2]
        agencies: list[dict[str, str]] = [{"MADONVI": PROVINCE_PEOPLES_COMMITTEE[0], "TENDONVI": PROVINCE_PEOPLES_COMMITTEE[1], "CAPDONVI": "1"}]
        for u in units:
            agencies.append({"MADONVI": u["code"], "TENDONVI": u["name"], "CAPDONVI": "1" if int(u.get("level", 1)) == 1 else "2"})
        for code, name in EXTRA_DEPARTMENTS:
            agencies.append({"MADONVI": code, "TENDONVI": name, "CAPDONVI": "1"})
            self.unit_names[code] = name
        for code, name in EXTRA_DISTRICTS:
            agencies.append({"MADONVI": code, "TENDONVI": name, "CAPDONVI": "2"})
            self.unit_names[code] = name
            self.districts.append(code)
        # communes: 000.CC.DD.H49 under the district DD
        self.communes: list[str] = []
        district_names = {d["name"]: d.get("communes", []) for d in seed_data.get("addresses", {}).get("districts", [])}
        for code in list(self.districts):
            district = self.unit_names[code].replace("UBND ", "")
            for n, commune in enumerate(district_names.get(district, [])[:4], start=21):
                ccode = f"000.{n}.{code.split('.')[2]}.H49"
                agencies.append({"MADONVI": ccode, "TENDONVI": f"UBND {commune}, {district}", "CAPDONVI": "3"})
                self.unit_names[ccode] = f"UBND {commune}, {district}"
                self.communes.append(ccode)
        for gcode, (name, _short) in MINISTRIES.items():
            agencies.append({"MADONVI": f"000.00.00.{gcode}", "TENDONVI": name, "CAPDONVI": "0"})
            self.unit_names[f"000.00.00.{gcode}"] = name
        self.unit_names[PROVINCE_PEOPLES_COMMITTEE[0]] = PROVINCE_PEOPLES_COMMITTEE[1]
        self.agencies = tuple(agencies)
        domains = {d["code"]: d for d in DOMAINS}
        for p in seed_data["procedures"]:  # seed domains not in the table get the Tư pháp/KHĐT defaults
            dom = p["domain"]
            if dom["code"] not in domains:
                ministry = dom["code"].split("-")[0]
                domains[dom["code"]] = {"code": dom["code"], "name": dom["name"], "ministry": ministry,
                                        "dept": p["units"][0], "verbs": [], "objects": [], "result": p["result"]["name"],
                                        "laws": []}
        self.domains = domains
        self.domain_rows = tuple({"MALINHVUC": d["code"], "TENLINHVUC": d["name"], "MANGANH": d["ministry"]}
                                 for d in domains.values())


def _agencies(world: _World, dom: dict[str, Any], cap: str, rng: random.Random) -> list[str]:
    if cap == "0":
        return [f"000.00.00.{dom['ministry']}"]
    if cap == "1":
        return [dom["dept"]]
    if cap == "2":
        return list(world.districts)
    return rng.sample(world.communes, k=min(len(world.communes), rng.randint(3, 8)))


def _unit(world: _World, code: str) -> dict[str, str]:
    return {"MADONVI": code, "TENDONVI": world.unit_names.get(code, code)}


def _record(world: _World, rng: random.Random, *, idx: int, code: str, name: str, dom: dict[str, Any], cap: str,
            agencies: list[str], days: int, fees: list[tuple[str, str, int]], papers: list[str], result: tuple[str, str],
            applicants: list[str]) -> dict[str, Any]:
    ministry_code = dom["ministry"]
    ministry_name, ministry_short = MINISTRIES.get(ministry_code, (f"Bộ {dom['name']}", ministry_code))
    decision_no = rng.randint(100, 4999)
    decision_year = rng.choice((2021, 2022, 2023, 2024, 2025))
    decision_day = f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{decision_year}"
    channels = ["1", "2", "3"] if rng.random() < 0.55 else (["1", "2"] if rng.random() < 0.6 else ["1"])
    unit_word = "Ngày làm việc" if rng.random() < 0.8 else "Ngày"
    ways = []
    for kenh in channels:
        philephi = []
        for fee_code, fee_name, amount in fees:
            sotien, donvi = fee_text(rng, amount)
            philephi.append({"MAPHILEPHI": fee_code, "SOTIEN": sotien, "DONVI": donvi, "MOTA": fee_name,
                             "TENTEP": "", "URL": ""})
        if not fees and rng.random() < 0.5:
            sotien, donvi = fee_text(rng, 0)
            philephi.append({"MAPHILEPHI": "", "SOTIEN": sotien, "DONVI": donvi, "MOTA": "Không quy định phí, lệ phí",
                             "TENTEP": "", "URL": ""})
        ways.append({"KENH": kenh, "THOIGIAN": [{
            "THOIGIANGIAIQUYET": str(days), "DONVITINH": unit_word,
            "MOTA": f"{days} {unit_word.lower()} kể từ ngày nhận đủ hồ sơ hợp lệ ({CHANNEL_NAMES[kenh].lower()})",
            "PHILEPHI": philephi}]})
    giayto = []
    for n, paper in enumerate(papers, start=1):
        form = paper.startswith(("Tờ khai", "Đơn", "Giấy đề nghị", "Văn bản đề nghị"))
        giayto.append({"MAGIAYTO": f"{code.split('.')[1]}.{n:02d}", "TENGIAYTO": paper,
                       "TENMAUDON": f"Mẫu số {n:02d}.docx" if form else "",
                       "URL": f"{_FILE_BASE}{code.split('.')[1]}_{n:02d}" if form else "",
                       "SOBANCHINH": "1", "SOBANSAO": "0" if form else rng.choice(("0", "1")), "MA_KQ_THAYTHE": ""})
    laws = [{"SOVANBAN": number, "TENVANBAN": title, "COQUANBANHANH": issuer, "NGAYBANHANH": issued,
             "NGAYHIEULUC": effective, "DIACHITRUYCAP": f"https://vbpl.vn/van-ban/{number.replace('/', '-')}"}
            for number, title, issuer, issued, effective in dom.get("laws", [])]
    laws.append({"SOVANBAN": f"{decision_no}/QĐ-{ministry_short}", "TENVANBAN": f"Quyết định công bố thủ tục hành chính lĩnh vực {dom['name'].lower()}",
                 "COQUANBANHANH": ministry_name, "NGAYBANHANH": decision_day, "NGAYHIEULUC": decision_day, "DIACHITRUYCAP": ""})
    implementing = [_unit(world, a) for a in agencies]
    return {
        "ID": str(70000 + idx),
        "MATTHC": code,
        "TENTTHC": name,
        "LOAITTHC": "1" if rng.random() < 0.9 else "2",
        "TRANGTHAI": PUBLISHED,
        "MACOQUANCONGBO": f"000.00.00.{ministry_code}",
        "IDQUYETDINHCONGBO": str(decision_no * 10 + decision_year % 10),
        "QUYETDINH": f"Quyết định số {decision_no}/QĐ-{ministry_short} ngày {decision_day} của {ministry_name}",
        "YEUCAU": rng.choice(_CONDITIONS),
        "TUKHOA": name.lower(),
        "MOTA": f"Thủ tục {name[0].lower()}{name[1:]} thuộc lĩnh vực {dom['name'].lower()}",
        "MOTADOITUONGTHUCHIEN": ", ".join(APPLICANTS[a] for a in applicants),
        "MOTACOQUANTHUCHIEN": "; ".join(u["TENDONVI"] for u in implementing[:3]),
        "MOTACOQUANTHAMQUYEN": implementing[0]["TENDONVI"] if cap != "3" else "Chủ tịch UBND cấp xã",
        "DIACHITIEPNHAN": _ADDRESS if cap in ("0", "1") else "Bộ phận Một cửa của cơ quan thực hiện",
        "LINHVUCTHUCHIEN": [{"MALINHVUC": dom["code"], "TENLINHVUC": dom["name"]}],
        "CAPTHUCHIEN": [{"CAPTHUCHIEN": cap, "TENCAP": CAP_NAMES[cap]}],
        "CACHTHUCTHUCHIEN": ways,
        "THANHPHANHOSO": [{"TRUONGHOP": "", "GIAYTO": giayto}],
        "TRINHTUTHUCHIEN": [{"TRUONGHOP": "", "TRINHTU": [{"TENTRINHTU": s} for s in _STEPS[: rng.randint(3, 5)]]}],
        "DOITUONGTHUCHIEN": [{"MADOITUONG": a, "TENDOITUONG": APPLICANTS[a]} for a in applicants],
        "KETQUATHUCHIEN": [{"MAKETQUA": result[0], "TENKETQUA": result[1], "TENTEP": "", "URL": ""}],
        "CANCUPHAPLY": laws,
        "COQUANTHUCHIEN": implementing,
        "COQUANCOTHAMQUYEN": [implementing[0]],
        "COQUANDUOCUYQUYEN": [],
        "COQUANPHOIHOP": [_unit(world, dom["dept"])] if cap in ("2", "3") else [],
        "TTHCLIENQUAN": [],
        "TTHCLIENTHONG": [],
    }


def _seed_record(world: _World, seed: int | str, idx: int, p: dict[str, Any]) -> dict[str, Any]:
    rng = seeded_rng(seed, "tthc-seed", p["code"])
    dom = dict(world.domains[p["domain"]["code"]])
    dom["name"] = p["domain"]["name"]
    cap = "1" if int(p.get("level", 1)) == 1 else "2"
    fees = [(f["code"], f["name"], int(f["amount"])) for f in p.get("fees", [])]
    applicants = [APPLICANT_OF.get(a, "1") for a in p.get("applicant_types", ["citizen"])]
    return _record(world, rng, idx=idx, code=p["code"], name=p["name"], dom=dom, cap=cap, agencies=list(p["units"]),
                   days=int(p.get("processing_days", 5)), fees=fees, papers=list(p.get("papers", [])),
                   result=(p["result"]["code"], p["result"]["name"]), applicants=applicants)


def make_procedure(world: _World, seed: int | str, idx: int, code: str, name: str, dom: dict[str, Any], cap: str,
                   salt: str = "tthc") -> dict[str, Any]:
    """One generated procedure (not a seed one) at catalogue position ``idx``."""
    rng = seeded_rng(seed, salt, idx)
    amounts = [0, 0, 0, 10000, 20000, 30000, 50000, 100000, 150000, 200000, 300000, 500000, 1000000]
    n_fees = rng.choice((0, 1, 1, 1, 2))
    fees = []
    for n in range(n_fees):
        amount = rng.choice(amounts) or 50000
        kind = rng.choice(("Lệ phí", "Phí thẩm định"))
        fees.append((f"{dom['code'].split('-')[1]}-{rng.randint(1, 99):02d}{n}", f"{kind} {name[0].lower()}{name[1:60]}", amount))
    if not n_fees and rng.random() < 0.3:
        fees.append(("", "Lệ phí", 0))
    applicants = sorted(rng.sample(["1", "2", "3", "4"], k=rng.choice((1, 1, 2, 3))))
    papers = ["Đơn đề nghị theo mẫu" if rng.random() < 0.5 else "Tờ khai theo mẫu"] + rng.sample(_FORMS[2:], k=rng.randint(1, 4))
    result = (f"KQ.{dom['ministry']}.{rng.randint(1, 999999):06d}", f"{dom['result']} ({name[0].lower()}{name[1:80]})")
    days = rng.choice((1, 3, 5, 7, 10, 15, 20, 30, 45))
    return _record(world, rng, idx=idx, code=code, name=name, dom=dom, cap=cap, agencies=_agencies(world, dom, cap, rng),
                   days=days, fees=fees, papers=papers, result=result, applicants=applicants)


def _names(world: _World, seed: int | str) -> list[tuple[str, dict[str, Any], str]]:
    combos = []
    for dom in DOMAINS:
        for verb in dom["verbs"]:
            for obj in dom["objects"]:
                for cap in ("0", "1", "2", "3"):
                    combos.append((f"{verb} {obj[0].lower() + obj[1:] if verb else obj}{CAP_SUFFIX[cap]}", dom, cap))
    seeded_rng(seed, "tthc-names").shuffle(combos)
    return combos


def _defect(record: dict[str, Any], kind: str) -> None:
    if kind == "empty_code":
        record["MATTHC"] = ""
    elif kind == "unparsable_fee":
        ways = record["CACHTHUCTHUCHIEN"]
        for way in ways:
            fees = way["THOIGIAN"][0]["PHILEPHI"]
            if fees:
                fees[0]["SOTIEN"] = "liên hệ"
            else:
                fees.append({"MAPHILEPHI": "", "SOTIEN": "liên hệ", "DONVI": "", "MOTA": "Phí thẩm định", "TENTEP": "", "URL": ""})
    elif kind == "unknown_agency":
        record["COQUANTHUCHIEN"] = [{"MADONVI": UNKNOWN_AGENCY[0], "TENDONVI": UNKNOWN_AGENCY[1]}]


def new_code(rng: random.Random, used: set[str], province: str = "H49") -> str:
    """A fresh full-form code ``{1|2|3}.NNNNNN.000.00.00.H49`` whose NNNNNN no code in ``used`` has."""
    numbers = {c.split(".")[1] for c in used if c.count(".") >= 1} | {"999999"}
    while True:
        number = f"{rng.randint(13000, 19999):06d}"
        if number not in numbers:
            prefix = rng.choices(("1", "2", "3"), weights=(50, 35, 15))[0]
            return f"{prefix}.{number}.000.00.00.{province}"


def generate(seed_data: dict[str, Any], seed: int | str, size: int = DEFAULT_SIZE) -> Catalogue:
    """The catalogue for ``seed``: the seed file's procedures (IDs 70000…), then generated ones."""
    world = _World(seed_data)
    rows = []
    seed_codes = tuple(p["code"] for p in seed_data["procedures"])
    for idx, p in enumerate(seed_data["procedures"]):
        rows.append((idx, p["code"], p["name"], PUBLISHED, None, dumps(_seed_record(world, seed, idx, p))))
    used_numbers = {c.split(".")[1] for c in seed_codes} | {"999999"}
    rng = seeded_rng(seed, "tthc-codes")
    pool = [n for n in range(1000, 13000) if f"{n:06d}" not in used_numbers]
    numbers = rng.sample(pool, k=max(0, size - len(rows)))
    combos = _names(world, seed)
    defect_no = 0
    for n, number in enumerate(numbers):
        idx = len(rows)
        name, dom, cap = combos[n % len(combos)]
        prefix = rng.choices(("1", "2", "3"), weights=(50, 35, 15))[0]
        code = f"{prefix}.{number:06d}.000.00.00.H49"
        record = make_procedure(world, seed, idx, code, name, dom, cap)
        defect = None
        if (idx + 1) % DEFECT_EVERY == 0:
            defect = DEFECT_KINDS[defect_no % len(DEFECT_KINDS)]
            defect_no += 1
            _defect(record, defect)
        rows.append((idx, code, name, PUBLISHED, defect, dumps(record)))
    return Catalogue(tuple(rows), world.agencies, world.domain_rows, seed_codes)


@functools.lru_cache(maxsize=4)
def _generate_cached(path: str, mtime_ns: int, seed: str, size: int) -> Catalogue:
    return generate(load_seed(path), seed, size)


def cached(seed_file: str | Path | None, seed: int | str, size: int = DEFAULT_SIZE) -> Catalogue:
    """:func:`generate`, computed once per process for a seed file, seed and size (the result is immutable)."""
    resolved = Path(seed_file or DEFAULT_SEED_FILE).resolve()
    return _generate_cached(str(resolved), resolved.stat().st_mtime_ns, str(seed), size)


def world_of(seed_data: dict[str, Any]) -> _World:
    return _World(seed_data)


def loads(text: str) -> dict[str, Any]:
    return json.loads(text)
