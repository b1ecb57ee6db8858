"""School check-up sheets as a school sends them: one row per student, Chinese headers.

`make_school_sheet` writes a valid sheet (deterministic for a seed) for tests, the demo and bench/chronic.py; with
`bad_rows` some rows carry the mistakes real sheets have (an impossible blood pressure, an unknown sex, a mistyped
resident ID, an impossible vision score), each on a known row.
"""

from __future__ import annotations

import csv
import io
import random
from datetime import date, timedelta

from healthrelay.patients.identity import make_resident_id

COLUMNS = ("学校", "年级", "班级", "姓名", "性别", "出生日期", "身份证号", "身高cm", "体重kg", "视力左", "视力右",
           "龋齿", "血压")
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
GIVEN = "子涵浩宇欣怡梓轩雨桐俊杰思彤晨阳佳琪一诺嘉怡天佑可馨博文雅婷宇航紫萱明轩诗涵泽宇若曦家豪梦瑶"
SCHOOLS = ("城关镇中心小学", "城关镇第一中学", "青石镇小学", "青石镇中学", "河口乡小学")
REGIONS = ("421023", "421022", "421024", "421081", "421083")
GRADES = ("一年级", "二年级", "三年级", "四年级", "五年级", "六年级", "初一", "初二", "初三")
# (column, bad value): every kind of mistake the import must name: an impossible systolic, an unknown sex, a wrong
# check digit, an impossible vision score, an empty name, a diastolic above the systolic.
MISTAKES = (("血压", "400/80"), ("性别", "X"), ("身份证号", "mistyped"), ("视力左", "9.9"), ("姓名", ""),
            ("血压", "80/120"))


def bad_row_numbers(rows: int, bad_rows: int) -> list[int]:
    """The spreadsheet row numbers (header = row 1) that carry a mistake: spread evenly through the sheet."""
    if bad_rows <= 0 or rows <= 0:
        return []
    step = max(1, rows // bad_rows)
    return [2 + i * step for i in range(min(bad_rows, rows))]


def student_rows(rows: int, *, seed: int, bad_rows: int = 0, today: date | None = None) -> list[list[object]]:
    """Header and `rows` students; the rows in `bad_row_numbers` carry MISTAKES in turn."""
    rng = random.Random(seed)
    today = today or date(2026, 9, 1)
    region = REGIONS[seed % len(REGIONS)]
    bad = set(bad_row_numbers(rows, bad_rows))
    out: list[list[object]] = [list(COLUMNS)]
    mistake = 0
    for i in range(rows):
        age_days = 6 * 365 + (i * 7919 + seed) % (9 * 365)  # 6 to 15 years old, spread by a stride
        born = today - timedelta(days=age_days)
        sex = "M" if rng.random() < 0.52 else "F"
        # Unique per index: birth day varies fastest, then the sequence digits.
        rid = make_resident_id(region, born, (i // (9 * 365)) % 100 + (seed % 7) * 10, sex)
        age = age_days / 365.25
        height = round(110 + (age - 6) * 6.2 + rng.gauss(0, 5), 1)
        weight = round(max(15.0, 18 + (age - 6) * 3.6 + rng.gauss(0, 4)), 1)
        if rng.random() < 0.04:
            weight = round(height * height / 10000 * 29.5, 1)  # obese: BMI over 28
        left = round(min(5.3, max(3.6, rng.choice((5.0, 5.0, 5.1, 5.2, 5.0, 5.1, 4.9, 4.8, 4.6, 5.0)))), 1)
        right = round(min(5.3, max(3.6, left + rng.choice((0.0, 0.0, 0.1, -0.1)))), 1)
        caries = rng.choice((0, 0, 0, 0, 1, 2))
        bp = f"{rng.randint(92, 128)}/{rng.randint(55, 82)}" if rng.random() < 0.5 else ""
        name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
        row: list[object] = [SCHOOLS[i % len(SCHOOLS)], GRADES[int(age - 6) % len(GRADES)], f"{i % 6 + 1}班", name,
                             "男" if sex == "M" else "女", born.isoformat(), rid, height, weight, left, right, caries,
                             bp]
        if i + 2 in bad:
            column, value = MISTAKES[mistake % len(MISTAKES)]
            mistake += 1
            index = COLUMNS.index(column)
            if value == "mistyped":
                value = rid[:-1] + ("0" if rid[-1] != "0" else "1")
            row[index] = value
        out.append(row)
    return out


def make_school_sheet(rows: int, *, seed: int, fmt: str = "xlsx", bad_rows: int = 0) -> bytes:
    """A school's check-up sheet with `rows` students as .xlsx (default) or .csv (UTF-8 with BOM, or "csv-gb18030")."""
    data = student_rows(rows, seed=seed, bad_rows=bad_rows)
    if fmt == "xlsx":
        from openpyxl import Workbook

        book = Workbook(write_only=True)
        sheet = book.create_sheet("体检表")
        for row in data:
            sheet.append(row)
        out = io.BytesIO()
        book.save(out)
        return out.getvalue()
    if fmt in ("csv", "csv-gb18030"):
        text = io.StringIO()
        csv.writer(text).writerows(data)
        return text.getvalue().encode("utf-8-sig" if fmt == "csv" else "gb18030")
    raise ValueError(f"unknown format {fmt!r}: xlsx, csv or csv-gb18030")


_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL_NS = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"


def _column_index(ref: str) -> int:
    """"C12" -> 2 (zero-based column of a cell reference)."""
    index = 0
    for ch in ref:
        if not ch.isalpha():
            break
        index = index * 26 + (ord(ch.upper()) - 64)
    return index - 1


def read_xlsx_fast(content: bytes, *, max_rows: int | None = None) -> list[list[object]]:
    """The first worksheet's cell values, read straight from the XML with lxml's iterparse; at most `max_rows` rows
    (the caller refuses a sheet that reaches its limit, so the rest need not be read).

    openpyxl takes about 3.5 s for a 12,000-row school sheet; this takes a fraction of that. Numbers come back as
    floats and strings as text; dates stay Excel serial numbers (the import reads those). Raises on anything
    unexpected, and the caller then falls back to openpyxl.
    """
    import zipfile

    from lxml import etree

    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        names = set(archive.namelist())
        workbook = etree.fromstring(archive.read("xl/workbook.xml"))
        first = workbook.find(f"{_NS}sheets/{_NS}sheet")
        rel_id = first.get(f"{_REL_NS}id") if first is not None else None
        target = "xl/worksheets/sheet1.xml"
        if rel_id and "xl/_rels/workbook.xml.rels" in names:
            for rel in etree.fromstring(archive.read("xl/_rels/workbook.xml.rels")):
                if rel.get("Id") == rel_id:
                    path = rel.get("Target", "").lstrip("/")
                    target = path if path.startswith("xl/") else f"xl/{path}"
        shared: list[str] = []
        if "xl/sharedStrings.xml" in names:
            for item in etree.fromstring(archive.read("xl/sharedStrings.xml")).iter(f"{_NS}si"):
                shared.append("".join(t.text or "" for t in item.iter(f"{_NS}t")))
        rows: list[list[object]] = []
        with archive.open(target) as sheet:
            for _, row in etree.iterparse(sheet, tag=f"{_NS}row"):
                cells: list[object] = []
                for cell in row.iter(f"{_NS}c"):
                    ref = cell.get("r")
                    position = _column_index(ref) if ref else len(cells)
                    kind = cell.get("t", "n")
                    if kind == "inlineStr":
                        value: object = "".join(t.text or "" for t in cell.iter(f"{_NS}t"))
                    else:
                        raw = cell.findtext(f"{_NS}v")
                        if raw is None:
                            value = None
                        elif kind == "s":
                            value = shared[int(raw)]
                        elif kind == "n":
                            value = float(raw)
                        elif kind == "b":
                            value = raw == "1"
                        else:
                            value = raw
                    while len(cells) < position:
                        cells.append(None)
                    cells.append(value)
                rows.append(cells)
                row.clear()
                if max_rows is not None and len(rows) >= max_rows:
                    break
        return rows
