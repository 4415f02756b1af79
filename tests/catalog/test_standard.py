"""Standard municipal datasets, the pure parts: encodings, codes, checks and the clerk's report."""

from __future__ import annotations

import codecs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cityos.catalog.standard import codes
from cityos.catalog.standard.importer import build_entity, csv_bytes
from cityos.catalog.standard.report import Outcome, problem_lines, render
from cityos.catalog.standard.schemas import (
    AED,
    EVACUATION_SPACE,
    KINDS,
    PUBLIC_FACILITY,
    PUBLIC_TOILET,
)
from cityos.catalog.standard.sniff import EncodingError, sniff
from cityos.catalog.standard.validate import Validation, validate, validate_text

HAZARD_HEADERS = (
    "災害種別_洪水,災害種別_崖崩れ、土石流及び地滑り,災害種別_高潮,災害種別_地震,"
    "災害種別_津波,災害種別_大規模な火事,災害種別_内水氾濫,災害種別_火山現象"
)
#: the old 推奨データセット header of 指定緊急避難場所一覧
OLD_SHELTERS = (
    "都道府県コード又は市区町村コード,NO,都道府県名,市区町村名,名称,名称_カナ,住所,方書,"
    f"緯度,経度,標高,電話番号,内線番号,{HAZARD_HEADERS},指定避難所との重複,想定収容人数,"
    "対象となる町会・自治会,URL,備考"
)
AED_HEADER = (
    "全国地方公共団体コード,ID,地方公共団体名,名称,名称_カナ,所在地_連結表記,緯度,経度,"
    "設置位置,電話番号,開始時間,終了時間,小児対応設備の有無"
)


def csv_text(header: str, *rows: str) -> str:
    return "\r\n".join((header, *rows)) + "\r\n"


def aed_rows() -> list[str]:
    return [
        "092045,1,佐野市,佐野市役所,サノシヤクショ,栃木県佐野市高砂町1,36.3144,139.5783,"
        "1階ロビー,0283-24-5111,08:30,17:15,有",
        "092045,2,佐野市,城北地区公民館,ジョウホクチクコウミンカン,栃木県佐野市若松町1-1,"
        "36.3201,139.5902,玄関,0283-22-0000,09:00,21:00,無",
        "092045,3,佐野市,佐野市運動公園,サノシウンドウコウエン,栃木県佐野市赤坂町1,"
        "36.2990,139.5700,管理棟,0283-23-0000,09:00,17:00,",
    ]


def check_aed(*rows: str) -> Validation:
    return validate_text(csv_text(AED_HEADER, *rows), AED)


def where(v: Validation, severity: str = "error") -> list[tuple[int | None, str | None]]:
    return [(p.line, p.column) for p in v.problems if p.severity == severity]


# -- sniff -----------------------------------------------------------------------------------------
TEXT = "名称,緯度\r\n佐野市役所,36.3144\r\n"


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (codecs.BOM_UTF8 + TEXT.encode("utf-8"), "utf-8-sig"),
        (TEXT.encode("utf-8"), "utf-8"),
        (codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"), "utf-16-le-bom"),
        (codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), "utf-16-be-bom"),
        (TEXT.encode("utf-16-le"), "utf-16-le"),
        (TEXT.encode("utf-16-be"), "utf-16-be"),
        (TEXT.encode("cp932"), "cp932"),
    ],
)
def test_sniff_finds_each_encoding_municipal_files_come_in(data: bytes, encoding: str) -> None:
    found = sniff(data)
    assert found.encoding == encoding
    assert found.text == TEXT


def test_sniff_reads_cp932_only_characters() -> None:
    text = "名称\r\n髙橋医院①\r\n"  # 髙 and ① exist in cp932, not in plain Shift_JIS
    assert sniff(text.encode("cp932")).text == text


def test_sniff_names_the_line_it_cannot_read() -> None:
    data = "名称\r\n佐野\r\n".encode("cp932") + b"\x81\x20\r\n"
    with pytest.raises(EncodingError) as info:
        sniff(data)
    assert info.value.line == 3
    assert "3行目" in info.value.message_ja
    assert "cannot be read as Shift_JIS (cp932)" in info.value.message_en


def test_sniff_names_the_stray_byte_of_a_mostly_utf8_file() -> None:
    good = csv_text(AED_HEADER, *aed_rows()).encode()
    data = good + "佐野\r\n".encode("cp932")  # one line pasted from a Shift_JIS file
    with pytest.raises(EncodingError) as info:
        sniff(data)
    assert info.value.line == 5
    assert "line 5 (byte" in info.value.message_en
    assert "cannot be read as UTF-8" in info.value.message_en


# -- codes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("five", "digit"),
    [("13101", "6"), ("01100", "2"), ("09201", "1"), ("09208", "8"), ("09204", "5")],
)
def test_check_digit_of_known_codes(five: str, digit: str) -> None:
    assert codes.check_digit(five) == digit


@pytest.mark.parametrize(
    ("raw", "code", "repair"),
    [
        ("092045", "092045", None),
        ("92045", "092045", "leading zero restored"),
        ("09204", "092045", "check digit added"),
        ("13101", "131016", "check digit added"),
        ("９２０４５", "092045", "full-width digits made half-width; leading zero restored"),
        ("92045.0", "092045", "decimal point removed; leading zero restored"),
        ("9204", "092045", "leading zero restored and check digit added"),
    ],
)
def test_repair_restores_lost_zeros_and_check_digits(
    raw: str, code: str, repair: str | None
) -> None:
    fix = codes.repair(raw)
    assert fix.code == code
    assert fix.repair_en == repair


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("092046", "wrong check digit (if 09204 is right the code is 092045)"),
        ("92046", "with a leading zero the check digit is wrong"),
        ("482001", "not a prefecture"),
        ("佐野市", "not a 6-digit number"),
        ("0920451", "7 digits"),
    ],
)
def test_repair_refuses_what_it_cannot_know(raw: str, says: str) -> None:
    with pytest.raises(codes.CodeError) as info:
        codes.repair(raw)
    assert says in info.value.message_en


def test_an_ambiguous_five_digit_code_is_decided_by_the_file_or_refused() -> None:
    # 11002: Sapporo 011002 without its zero, or a 5-digit code 11002 + check digit
    with pytest.raises(codes.CodeError) as info:
        codes.repair("11002")
    assert "011002" in info.value.message_en
    assert "110027" in info.value.message_en
    assert codes.repair("11002", hints={"011002"}).code == "011002"


valid_codes = st.builds(
    lambda pref, city: f"{pref:02d}{city:03d}",
    st.integers(min_value=1, max_value=47),
    st.integers(min_value=0, max_value=999),
).map(lambda five: five + codes.check_digit(five))


@given(valid_codes)
def test_every_valid_code_round_trips_unchanged(code: str) -> None:
    assert codes.is_valid(code)
    fix = codes.repair(code)
    assert (fix.code, fix.repaired) == (code, False)


@given(valid_codes)
def test_a_damaged_code_is_repaired_to_itself_or_refused(code: str) -> None:
    damaged = [code[:5]]  # check digit missing
    if code.startswith("0"):
        damaged += [code[1:], code[1:5]]  # leading zero lost (and check digit missing)
    for raw in damaged:
        try:
            fix = codes.repair(raw)
        except codes.CodeError:
            continue
        assert fix.code == code, f"{raw} was repaired to {fix.code}, not {code}"
        assert codes.repair(raw, hints={code}).code == code


@given(st.text(alphabet="0123456789", min_size=1, max_size=8))
def test_repair_never_returns_a_code_that_fails_its_check(raw: str) -> None:
    try:
        fix = codes.repair(raw)
    except codes.CodeError:
        return
    assert codes.is_valid(fix.code)


# -- schemas ---------------------------------------------------------------------------------------
def test_the_complete_lists_have_the_standards_39_columns() -> None:
    assert len(EVACUATION_SPACE.columns) == 39
    assert len(PUBLIC_TOILET.columns) == 39
    assert EVACUATION_SPACE.names[:3] == ("全国地方公共団体コード", "ID", "名称")
    assert PUBLIC_TOILET.names[-1] == "備考"
    assert set(KINDS) == {
        "evacuation_space", "aed", "public_facility", "hospital", "care_service",
        "public_toilet",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("header", "current"),
    [
        ("住所", "所在地_連結表記"),
        ("No.", "ID"),
        (" 方書 ", "建物名等(方書)"),
        ("連絡先備考(その他、SNSなど)", "連絡先備考（その他、SNSなど）"),
        ("建物名等（方書）", "建物名等(方書)"),
        ("都道府県コード又は市区町村コード", "全国地方公共団体コード"),
    ],
)
def test_old_and_variant_headers_resolve_to_current_ones(header: str, current: str) -> None:
    assert AED.resolve(header) == current


# -- validate --------------------------------------------------------------------------------------
def test_old_format_shelters_in_cp932_are_read_under_current_headers() -> None:
    row = (
        "92045,1,栃木県,佐野市,佐野小学校,サノショウガッコウ,栃木県佐野市高砂町2,,"
        "36.3150,139.5790,38.5,0283-22-1111,,1,,,1,,1,1,,1,５００,高砂町;大橋町,,"
    )
    v = validate(csv_text(OLD_SHELTERS, row).encode("cp932"), EVACUATION_SPACE)
    assert v.encoding == "cp932"
    assert not v.errors, v.errors
    assert v.importable(partial=False)
    record = v.record(v.rows[0])
    assert record["全国地方公共団体コード"] == "092045"
    assert record["市区町村コード"] == "092045"  # filled from the publisher's code
    assert record["所在地_連結表記"] == "栃木県佐野市高砂町2"
    assert record["想定収容人数"] == 500
    assert record["緯度"] == 36.315
    assert record["災害種別_洪水"] == "1"
    assert record["災害種別_高潮"] is None
    assert record["対象となる町会・自治会"] == "高砂町;大橋町"
    assert v.columns == list(EVACUATION_SPACE.names)
    notes = " ".join(p.message_en for p in v.problems)
    assert "old-format headers" in notes
    assert "住所 -> 所在地_連結表記" in notes
    assert 'no column "市区町村コード": filled from "都道府県コード又は市区町村コード"' in notes


def test_a_file_without_a_required_column_is_refused_naming_it() -> None:
    header = AED_HEADER.replace("名称,", "施設名称,", 1)
    v = validate_text(csv_text(header, *aed_rows()), AED)
    assert v.fatal
    assert not v.importable(partial=True)
    missing = [p for p in v.errors if p.column == "名称"]
    assert len(missing) == 1
    assert missing[0].line == 1
    assert 'the required column "名称" (name) is missing' in missing[0].message_en
    assert '(if "施設名称" is meant, rename it "名称")' in missing[0].message_en


def test_swapped_coordinates_are_an_error_with_the_fix() -> None:
    rows = aed_rows()
    rows[1] = rows[1].replace("36.3201,139.5902", "139.5902,36.3201")
    v = check_aed(*rows)
    assert where(v) == [(3, "緯度")]
    problem = v.errors[0]
    assert problem.value == "139.5902"
    assert "latitude and longitude look swapped (write 緯度 36.3201, 経度 139.5902)" in (
        problem.message_en
    )
    assert [r.ok for r in v.rows] == [True, False, True]
    assert not v.importable(partial=False)
    assert v.importable(partial=True)


@pytest.mark.parametrize(
    ("lat", "lon", "column", "says"),
    [
        ("51.5007", "139.5783", "緯度", "latitude 51.5007 is outside Japan"),
        ("36.3144", "-0.1246", "経度", "longitude -0.1246 is outside Japan"),
        ("36.3144", "", "経度", "one of them is empty"),
        ("36°18'52\"", "139.5783", "緯度", "not decimal degrees"),
    ],
)
def test_coordinates_outside_japan_or_half_given_are_errors(
    lat: str, lon: str, column: str, says: str
) -> None:
    quoted = '"' + lat.replace('"', '""') + '"'
    v = check_aed(aed_rows()[0].replace("36.3144,139.5783", f"{quoted},{lon}"))
    assert where(v) == [(2, column)]
    assert says in v.errors[0].message_en


def test_a_bad_time_names_its_line_and_column() -> None:
    rows = aed_rows()
    rows[2] = rows[2].replace("17:00", "25:00")
    v = check_aed(*rows)
    assert where(v) == [(4, "終了時間")]
    assert v.errors[0].message_ja == "「25:00」はありえない時刻です（00:00〜24:00）"


def test_line_numbers_count_lines_of_the_file_not_records() -> None:
    rows = aed_rows()
    rows[0] = rows[0].replace("1階ロビー", '"1階ロビー\r\n（受付の横）"')
    rows[1] = rows[1].replace("09:00", "9時")
    v = check_aed(*rows)
    assert where(v) == [(4, "開始時間")]  # row 2 starts on line 4: row 1 spans lines 2-3
    assert v.record(v.rows[0])["設置位置"] == "1階ロビー\r\n（受付の横）"


def test_duplicate_ids_and_empty_required_values_are_errors() -> None:
    rows = aed_rows()
    rows[2] = rows[2].replace("092045,3,佐野市,佐野市運動公園", "092045,1,佐野市,")
    v = check_aed(*rows)
    assert where(v) == [(4, "ID"), (4, "名称")]
    assert 'ID "1" is already used on line 2' in v.errors[0].message_en


def test_an_unquoted_comma_is_reported_with_the_fix() -> None:
    rows = aed_rows()
    rows[0] = rows[0].replace("高砂町1", "高砂町1,2")
    v = check_aed(*rows)
    assert where(v) == [(2, None)]
    assert "14 values but 13 columns; quote values that contain a comma" in (v.errors[0].message_en)


def test_repairs_are_warnings_that_keep_the_row() -> None:
    rows = aed_rows()
    rows[0] = rows[0].replace("092045,1", "92045,１").replace("08:30", "8:30")
    rows[1] = rows[1].replace(",無", ",なし").replace("0283-22-0000", "０２８３－２２－００００")
    v = check_aed(*rows)
    assert not v.errors
    repaired = {(p.line, p.column): p.repaired for p in v.repairs}
    assert repaired == {
        (2, "全国地方公共団体コード"): "092045",
        (2, "ID"): "1",
        (2, "開始時間"): "08:30",
        (3, "電話番号"): "0283-22-0000",
        (3, "小児対応設備の有無"): "無",
    }


def test_unknown_columns_are_kept_with_a_warning() -> None:
    header = AED_HEADER + ",外部利用不可"
    v = validate_text(csv_text(header, *(r + ",1" for r in aed_rows())), AED)
    assert not v.errors
    assert v.columns[-1] == "外部利用不可"
    assert v.record(v.rows[0])["外部利用不可"] == "1"
    assert (1, "外部利用不可") in where(v, "warning")


def test_two_headers_meaning_one_column_are_refused() -> None:
    header = AED_HEADER.replace("所在地_連結表記", "住所") + ",所在地_連結表記"
    v = validate_text(csv_text(header, *(r + ",x" for r in aed_rows())), AED)
    assert v.fatal
    assert 'columns "住所" and "所在地_連結表記" both mean "所在地_連結表記"' in (
        v.errors[0].message_en
    )


def test_a_tab_separated_utf16_file_from_excel_is_read() -> None:
    text = csv_text(AED_HEADER, *aed_rows()).replace(",", "\t")
    v = validate(codecs.BOM_UTF16_LE + text.encode("utf-16-le"), AED)
    assert v.encoding == "utf-16-le-bom"
    assert not v.errors
    assert [r.values["名称"] for r in v.rows] == ["佐野市役所", "城北地区公民館", "佐野市運動公園"]


def test_the_datastore_fields_are_typed() -> None:
    v = check_aed(*aed_rows())
    types = {f["id"]: f["type"] for f in v.fields()}
    assert types["全国地方公共団体コード"] == "text"  # the leading zero must survive
    assert types["緯度"] == "numeric"
    assert v.fields()[1]["info"]["label"] == "ID"


# -- report ----------------------------------------------------------------------------------------
def test_the_report_gives_japanese_then_english_with_line_and_column() -> None:
    rows = aed_rows() * 4
    rows = [r.replace(",1,", f",{i},", 1) for i, r in enumerate(rows, start=1)]
    rows = [r.replace(",2,", f",{i + 20},", 1) for i, r in enumerate(rows, start=1)]
    rows = [r.replace(",3,", f",{i + 40},", 1) for i, r in enumerate(rows, start=1)]
    rows[10] = rows[10].replace("36.3201,139.5902", "139.5902,36.3201")
    v = check_aed(*rows)
    lines = problem_lines(v.errors)
    assert lines == [
        "エラー 12行目 「緯度」: 「139.5902」は経度の値です。緯度と経度が入れ替わっているようです"
        "（緯度 36.3201、経度 139.5902 に直してください）",
        '  error: line 12, column 緯度 (lat): "139.5902" is a longitude: latitude and longitude '
        "look swapped (write 緯度 36.3201, 経度 139.5902)",
    ]
    report = render(v, Outcome(0, refused=True))
    assert report[-2:] == [
        "取り込みを中止しました。エラーを直すか、--partial で正しい行だけを取り込めます",
        "refused: nothing was imported; fix the errors, or import the good rows with --partial",
    ]
    assert "read 12 rows, imported 0, skipped 12; 1 errors, 0 repairs" in report[-3]


def test_the_same_repair_on_many_lines_is_one_entry() -> None:
    rows = [r.replace("092045", "92045", 1) for r in aed_rows()]
    v = check_aed(*rows)
    lines = problem_lines(v.repairs)
    assert lines == [
        "修復 2〜4行目 「全国地方公共団体コード」: 「92045」→「092045」（先頭の0を補完）",
        "  repaired: lines 2-4, column 全国地方公共団体コード (local government code): "
        '"92045" -> "092045" (leading zero restored)',
    ]


def test_a_title_above_the_header_is_skipped_with_a_note() -> None:
    text = "AED設置箇所一覧（令和8年4月1日現在）,,\r\n,,\r\n" + csv_text(AED_HEADER, *aed_rows())
    v = validate_text(text, AED)
    assert not v.errors
    assert [r.line for r in v.rows] == [4, 5, 6]
    assert "the 2 line(s) above the header (a title?) were skipped" in v.problems[0].message_en


@pytest.mark.parametrize(
    ("old", "new", "column", "message"),
    [
        ("0283-24-5111", "受付に確認", "電話番号", '"受付に確認": not a phone number'),
        (",有", ",不明", "小児対応設備の有無", '"不明": write 有 (yes) or 無 (no)'),
        ("08:30", "8時半", "開始時間", '"8時半" is not a time (hh:mm, e.g. 09:00)'),
        ("092045,1,", "092045,No.1,", "ID", '"No.1": an ID is half-width letters and digits'),
        ("092045,", "佐野市,", "全国地方公共団体コード", '"佐野市": not a 6-digit number'),
    ],
)
def test_a_bad_cell_is_reported_with_its_value(
    old: str, new: str, column: str, message: str
) -> None:
    v = check_aed(aed_rows()[0].replace(old, new, 1))
    assert where(v) == [(2, column)]
    assert v.errors[0].message_en.startswith(message)
    assert not v.importable(partial=True)


def test_the_published_csv_reads_back_without_a_single_problem() -> None:
    rows = [r.replace("092045", "92045", 1).replace("08:30", "8:30") for r in aed_rows()]
    v = check_aed(*rows)
    assert v.repairs  # the source needed repairs...
    published = csv_bytes(v, v.good_rows)
    again = validate(published, AED)
    assert again.encoding == "utf-8-sig"
    assert again.problems == []  # ...the published file needs none
    assert [again.record(r) for r in again.rows] == [v.record(r) for r in v.rows]


def test_public_facilities_become_points_of_interest_and_toilets_stay_in_the_catalog() -> None:
    header = "全国地方公共団体コード,ID,名称,名称_英字,所在地_連結表記,緯度,経度,説明"
    row = "092045,F1,佐野市文化会館,Sano Cultural Hall,栃木県佐野市高砂町2,36.3160,139.5810,ホール"
    v = validate_text(csv_text(header, row), PUBLIC_FACILITY)
    entity = build_entity(PUBLIC_FACILITY, "092045-public-facility", v.rows[0])
    assert entity is not None
    assert entity["id"] == "urn:ngsi-ld:PointOfInterest:092045-public-facility-F1"
    assert entity["category"]["value"] == ["publicFacility"]
    assert entity["name"]["languageMap"] == {"ja": "佐野市文化会館", "en": "Sano Cultural Hall"}
    assert entity["description"]["value"] == "ホール"
    assert entity["location"]["value"]["coordinates"] == [139.581, 36.316]
    toilets = validate_text(csv_text(header.replace(",説明", ",設置位置"), row), PUBLIC_TOILET)
    assert build_entity(PUBLIC_TOILET, "092045-public-toilet", toilets.rows[0]) is None


@given(st.binary(max_size=400))
def test_any_bytes_give_a_report_never_a_crash(data: bytes) -> None:
    v = validate(data, AED)
    if not v.importable(partial=True):
        assert v.errors
    for p in v.problems:
        assert p.message_ja
        assert p.message_en


cell_text = st.text(alphabet=st.sampled_from("0123456789:.-;,\"'\r\n 　１：ー有無○×abc佐野"))


def quoted(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


@given(st.lists(st.lists(cell_text, min_size=13, max_size=15), min_size=1, max_size=4))
def test_any_cells_give_line_precise_problems_or_good_rows(rows: list[list[str]]) -> None:
    v = validate_text(csv_text(AED_HEADER, *(",".join(map(quoted, r)) for r in rows)), AED)
    if v.rows:  # else the one error is "no data rows"
        for p in v.errors:
            assert p.line is not None
            assert p.line > 1
    for row in v.good_rows:
        record = v.record(row)  # every good row types cleanly
        assert record["名称"]
        assert record["所在地_連結表記"]
