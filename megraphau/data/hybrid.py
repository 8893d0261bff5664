"""OpenGraphAU's hybrid lists (41 AUs) from the raw labels of six data sets, as the release made them.

The release's ``OpenGraphAU/tool/dataset_process.py`` (commit 878dcae; "release line N" below is a
line of that file) reads BP4D, DISFA, CK+, RAF-AU, CASME II and Aff-Wild2 from its working
directory and writes ``hybrid_{train,val,test}_img_path.txt`` / ``hybrid_{train,val,test}_label.txt``;
``OpenGraphAU/tool/calculate_AU_class_weights.py`` then writes ``hybrid_train_weight.txt``. This
module rewrites both (one reader per data set, one writer) so that the files come out byte for
byte the same, quirks included; every quirk is kept where the reader does it, with a comment.
Where the release iterates a directory listing (CK+, Aff-Wild2), the listing is sorted here (the
release's order was the file system's). Errors the release would crash on are DatasetErrors
naming the file and line.

Raw layout (the release's working directory, ``--raw-root``):

    BP4D/AUCoding/AU_OCC/{subject}_{task}.csv
    DISFA/ActionUnit_Labels/{SN}/{SN}_au{k}.txt
    CK+/FACS/{subject}/{sequence}/{name}_facs.txt   (+ the images, see read_ckplus)
    RAF-AU/RAFAU_label.txt and RAF-AU-{train,val,test}_ids.txt beside RAF-AU/
    CASME2/CASME2-coding-20140508.xlsx
    AFFW-2/list/AU_Set/{TrainFromTrain_Set,ValFromTrain_Set,Validation_Set}/{video}.txt

A data set that is not there is skipped (:func:`prepare_hybrid` reports it): the lists are the
hybrid of those present. This module is a little over 500 lines: six readers, each with the
release's quirks spelled out, and a stdlib reader of CASME II's .xlsx (no pandas dependency).
"""
from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path
from typing import Callable, Optional
from xml.etree import ElementTree

import numpy as np

from megraphau.data.lists import DatasetError

MAIN_AUS = ("1 2 4 5 6 7 9 10 11 12 13 14 15 16 17 18 19 20 22 23 24 25 26 27 32 38 39").split()
SIDE_AUS = ("L1 R1 L2 R2 L4 R4 L6 R6 L10 R10 L12 R12 L14 R14").split()
HYBRID_AUS = tuple(MAIN_AUS + SIDE_AUS)  # release lines 5-7: 27 main AUs, then 14 left/right ones
# Release line 895: side pair k (columns 27+2k, 28+2k) -> main column SIDE_TO_MAIN[k]. Index 8 is
# AU11, not AU12: L12/R12 set AU11 (node 8), as the release's model reads the AU12 pair from node 8.
SIDE_TO_MAIN = (0, 1, 2, 4, 7, 8, 11)
SPLITS = ("train", "val", "test")

# Subject splits, in the release's order (release lines 20-23, 147-149, 311-313, 629-631).
BP4D_SPLITS = {
    "train": ("F001 M007 F018 F008 F002 M004 F009 M012 M001 F020 M014 F014 F023 M008 M010 M002 F005 F022 "
              "M018 M017 F013 M013").split(),
    "val": "F003 M016 F011 M005 F016 M011".split(),
    "test": "F007 F015 F006 F019 M006 M009 F012 M003 F004 F021 F017 M015 F010".split(),
}
BP4D_TASKS = tuple(f"T{t}" for t in range(1, 9))
DISFA_SPLITS = {
    "train": "SN002 SN010 SN027 SN032 SN030 SN009 SN016 SN013 SN018 SN011 SN028 SN024 SN003 SN029".split(),
    "val": "SN012 SN006 SN031 SN021".split(),
    "test": "SN023 SN025 SN008 SN005 SN007 SN017 SN004 SN001 SN026".split(),
}
DISFA_AUS = "1 2 4 5 6 9 12 15 17 20 25 26".split()  # release line 155
CKPLUS_SPLITS = {
    "train": ("S034 S147 S149 S502 S046 S061 S037 S115 S076 S506 S080 S067 S096 S134 S092 S137 S073 S086 S099 "
              "S104 S042 S129 S059 S139 S106 S110 S085 S111 S053 S113 S503 S103 S093 S077 S069 S094 S108 S074 "
              "S505 S131 S062 S116 S097 S151 S126 S101 S088 S075 S082 S127 S136 S130 S098 S044 S029 S045 S054 "
              "S057 S133 S999 S032 S072 S064 S135 S084 S117 S079 S078 S122 S091 S119 S022 S089 S014 S050 S125 "
              "S107").split(),
    "val": "S102 S895 S011 S056 S109 S026 S028 S051 S148 S055 S154 S128 S118 S504".split(),
    "test": ("S068 S060 S105 S070 S090 S157 S087 S156 S155 S095 S071 S066 S058 S160 S121 S501 S112 S035 S083 "
             "S005 S063 S120 S100 S124 S065 S158 S052 S138 S081 S132 S010 S114").split(),
}
CKPLUS_AUS = "1 2 4 5 6 7 9 10 11 12 13 14 15 16 17 18 20 22 23 24 25 26 27 38 39".split()  # release line 315
RAFAU_AUS = ("1 2 4 5 6 7 9 10 12 14 15 16 17 18 19 20 22 23 24 25 26 27 32 39".split()
             + SIDE_AUS)  # release line 474
# Release line 629 spells "sub7": subject 7 ("sub07") is in no list and lands in test (lines 673-675).
CASME2_SPLITS = {
    "train": "sub01 sub02 sub04 sub06 sub7 sub11 sub12 sub17 sub19 sub20 sub21 sub24 sub25".split(),
    "val": "sub03 sub05 sub16 sub22".split(),
}
CASME2_AUS = "1 2 4 5 6 7 9 10 12 14 15 17 18 20 24 25 26 38".split() + SIDE_AUS  # release line 633
CASME2_SHEET = "CASME2-coding-20140508.xlsx"
AFFW_AUS = "1 2 4 6 7 10 12 15 23 24 25 26".split()  # release line 744
AFFW_SPLIT_DIRS = {"train": "TrainFromTrain_Set", "val": "ValFromTrain_Set", "test": "Validation_Set"}

#: {split: (image paths relative to img/, labels int8 (M, 41) with -1 = not coded)}
Splits = dict


def _place(labels: np.ndarray, aus) -> np.ndarray:
    """Labels (M, len(aus)) of a data set's own AU order -> (M, 41): -1 where it codes no AU."""
    out = np.full((labels.shape[0], len(HYBRID_AUS)), -1, dtype=np.int8)
    out[:, [HYBRID_AUS.index(a) for a in aus]] = labels
    return out


def _splits(rows: dict, aus) -> Splits:
    """{split: ([path], [label row])} -> Splits (labels placed into the 41 columns)."""
    return {s: (paths, _place(np.asarray(labels, dtype=np.int8).reshape(len(labels), len(aus)), aus))
            for s, (paths, labels) in rows.items()}


def _int(text: str, where: str, what: str) -> int:
    try:
        return int(text)  # int() ignores surrounding whitespace, as the release's int() calls did
    except ValueError:
        raise DatasetError(f"{where}: {what} {text.strip()!r} is not an integer") from None


def _readlines(path: Path) -> list[str]:
    """Lines as the release's text-mode readlines() gave them (CRLF read as LF; a BOM dropped)."""
    with open(path, encoding="utf-8-sig") as f:
        return f.readlines()


# ----------------------------------------------------------------------------- BP4D
def read_bp4d(root: Path) -> Splits:
    """BP4D/AUCoding/AU_OCC: every subject's tasks T1..T8 (release lines 18-137).

    First column the frame number, AU columns by header name; 9 ("not coded") becomes -1
    (release line 54); the 14 left/right columns are -1. Frames as written, repeated ones kept.
    """
    label_dir = root / "BP4D" / "AUCoding" / "AU_OCC"
    rows = {}
    for split, subjects in BP4D_SPLITS.items():
        paths, labels = [], []
        for subject in subjects:
            for task in BP4D_TASKS:
                path = label_dir / f"{subject}_{task}.csv"
                if not path.is_file():
                    raise DatasetError(f"{path}: missing sequence file of subject {subject}, task {task}")
                _read_bp4d_file(path, f"BP4D/{subject}/{task}", paths, labels)
        rows[split] = (paths, labels)
    return _splits(rows, MAIN_AUS)


def _read_bp4d_file(path: Path, prefix: str, paths: list, labels: list) -> None:
    with open(path, newline="", encoding="utf-8-sig") as f:
        table = list(csv.reader(f))
    header = [h.strip() for h in table[0]] if table else []
    # The release picks these columns by name (pandas usecols) in file order; BP4D's header is in
    # ascending AU order, so taking them by name in MAIN_AUS order is the same.
    missing = [a for a in MAIN_AUS if a not in header[1:]]
    if missing:
        raise DatasetError(f"{path}:1: no column for AU {', '.join(missing)} in the header "
                           f"(the release reads AUs {' '.join(MAIN_AUS)})")
    columns = [header.index(a, 1) for a in MAIN_AUS]
    for line_no, row in enumerate(table[1:], start=2):
        if not any(c.strip() for c in row):
            continue  # pandas skips blank lines
        where = f"{path}:{line_no}"
        if len(row) != len(header):
            raise DatasetError(f"{where}: {len(row)} fields, the header has {len(header)}")
        values = [_int(row[c], where, f"AU{a} value") for a, c in zip(MAIN_AUS, columns)]
        bad = [v for v in values if v not in (0, 1, 9)]
        if bad:
            raise DatasetError(f"{where}: value {bad[0]} is not 0, 1 or 9 (not coded)")
        # Path: the frame number as pandas parsed it, str(int) (release lines 34-35, 68-70).
        paths.append(f"{prefix}/{_int(row[0], where, 'frame number')}.jpg")
        labels.append([-1 if v == 9 else v for v in values])  # release line 54: 9 -> -1


# ----------------------------------------------------------------------------- DISFA
def read_disfa(root: Path) -> Splits:
    """DISFA/ActionUnit_Labels (release lines 140-296): 12 AUs, occurrence = intensity >= 1.

    Quirks kept: intensity >= 1 counts (release line 178; the 8-AU lists use >= 2); the frame
    count is the number of lines of the AU1 file (line 167); rows follow the lines of each file,
    not its frame numbers (line 182); an AU file that is missing leaves its column 0, not -1
    (lines 171-172); image i of subject SN is {SN}/{i}.png (line 184).
    """
    label_dir = root / "DISFA" / "ActionUnit_Labels"
    rows = {}
    for split, subjects in DISFA_SPLITS.items():
        paths, labels = [], []
        for subject in subjects:
            au1 = label_dir / subject / f"{subject}_au1.txt"
            if not au1.is_file():
                raise DatasetError(f"{au1}: missing (the release counts a subject's frames in its AU1 file)")
            num_frames = len(_readlines(au1))
            table = np.zeros((num_frames, len(DISFA_AUS)), dtype=np.int8)
            for column, au in enumerate(DISFA_AUS):
                path = label_dir / subject / f"{subject}_au{au}.txt"
                if not path.is_file():
                    continue  # release lines 171-172: the column stays 0 (absent), not unknown
                lines = _readlines(path)
                if len(lines) > num_frames:
                    raise DatasetError(f"{path}: {len(lines)} lines but {au1.name} has {num_frames}")
                for t, line in enumerate(lines):
                    where = f"{path}:{t + 1}"
                    fields = line.split(",")
                    if len(fields) != 2:
                        raise DatasetError(f"{where}: expected 'frame,intensity', got {line.strip()!r}")
                    _int(fields[0], where, "frame number")
                    table[t, column] = 1 if _int(fields[1], where, "intensity") >= 1 else 0  # line 178
            paths.extend(f"DISFA/{subject}/{i}.png" for i in range(num_frames))
            labels.extend(table.tolist())
        rows[split] = (paths, labels)
    return _splits(rows, DISFA_AUS)


# ----------------------------------------------------------------------------- CK+
def ckplus_image_root(root: Path, img_dir: Optional[Path]) -> Path:
    """Where CK+ frames are looked for: {img_dir}/CK+ (the release's crops, release line 309)
    when that folder exists, else CK+'s own cohn-kanade-images/ (same names, .png)."""
    if img_dir is not None and (Path(img_dir) / "CK+").is_dir():
        return Path(img_dir) / "CK+"
    return root / "CK+" / "cohn-kanade-images"


def read_ckplus(root: Path, image_root: Path) -> Splits:
    """CK+/FACS (release lines 299-463): one labelled frame per FACS file.

    A FACS file counts only when its image {subject}/{sequence}/{name}.png exists under
    `image_root` (release line 333) and it names at least one of the 25 AUs (lines 336-337,
    345); its AUs are present when the intensity (4th field of the line split on single
    spaces, line 339) is above 1 (line 340: > 1, where DISFA uses >= 1): CK+'s 0 ("present,
    intensity not given") and 1 (A) count as absent. The other listed AUs are 0, AU19 and AU32
    and the left/right AUs -1. Sequences and files are taken in sorted order.
    """
    facs = root / "CK+" / "FACS"
    rows = {}
    for split, subjects in CKPLUS_SPLITS.items():
        paths, labels = [], []
        for subject in subjects:
            subject_dir = facs / subject
            if not subject_dir.is_dir():
                raise DatasetError(f"{subject_dir}: missing subject folder")
            for sequence in sorted(p.name for p in subject_dir.iterdir() if p.is_dir()):
                for entry in sorted(p for p in (subject_dir / sequence).iterdir() if p.is_file()):
                    rel = f"{subject}/{sequence}/{entry.name.split('_facs')[0]}.png"  # release line 332
                    if not (image_root / rel).is_file():
                        continue
                    row = _read_ckplus_file(entry)
                    if row is not None:
                        paths.append(f"CK+/{rel}")
                        labels.append(row)
        rows[split] = (paths, labels)
    return _splits(rows, CKPLUS_AUS)


def _read_ckplus_file(path: Path) -> Optional[list[int]]:
    row, coded = [0] * len(CKPLUS_AUS), False
    for line_no, line in enumerate(_readlines(path), start=1):
        fields = line.strip().split(" ")  # CK+ separates its numbers by three spaces
        if fields[0] == "":
            continue
        where = f"{path}:{line_no}"
        try:
            au = int(float(fields[0]))
        except ValueError:
            raise DatasetError(f"{where}: AU number {fields[0]!r} is not a number") from None
        if str(au) not in CKPLUS_AUS:
            continue  # an AU the release does not list: the line is ignored
        if len(fields) < 4:
            raise DatasetError(f"{where}: expected 'AU   intensity' (three spaces), got {line.strip()!r}")
        try:
            intensity = int(float(fields[3]))
        except ValueError:
            raise DatasetError(f"{where}: intensity {fields[3]!r} is not a number") from None
        coded = True
        row[CKPLUS_AUS.index(str(au))] = 1 if intensity > 1 else 0  # release line 340: > 1
    return row if coded else None


# ----------------------------------------------------------------------------- RAF-AU
def rafau_id_files(root: Path) -> dict[str, Path]:
    """The authors' RAF-AU split: line indices into RAFAU_label.txt (release lines 478-496)."""
    return {s: root / f"RAF-AU-{s}_ids.txt" for s in SPLITS}


def read_rafau(root: Path) -> Splits:
    """RAF-AU (release lines 468-618): RAFAU_label.txt lines "{image} {AU}+{AU}+...".

    Each id is a 0-based line index, repeated ids give repeated rows. An image counts when one of
    its AUs is one of the 38 listed (exact names: "L12", not "l12"; line 513); "null" has none.
    Image "12.jpg" is RAF-AU/0012_aligned.jpg (line 517). AU11, AU13, AU38 are -1.
    """
    label_path = root / "RAF-AU" / "RAFAU_label.txt"
    label_lines = _readlines(label_path)
    rows = {}
    for split, id_path in rafau_id_files(root).items():
        paths, labels = [], []
        for id_no, text in enumerate(_readlines(id_path), start=1):
            index = _int(text, f"{id_path}:{id_no}", "line index")
            if not 0 <= index < len(label_lines):
                raise DatasetError(f"{id_path}:{id_no}: line index {index} outside {label_path} "
                                   f"({len(label_lines)} lines, counted from 0)")
            items = label_lines[index].split(" ")
            if len(items) < 2:
                raise DatasetError(f"{label_path}:{index + 1}: expected '{{image}} {{AUs}}', got "
                                   f"{label_lines[index].strip()!r}")
            names = items[1].strip()
            row = [0] * len(RAFAU_AUS)
            listed = [n for n in names.split("+") if n in RAFAU_AUS] if names != "null" else []
            for name in listed:
                row[RAFAU_AUS.index(name)] = 1
            if listed:
                paths.append(f"RAF-AU/{items[0].split('.')[0].zfill(4)}_aligned.jpg")
                labels.append(row)
        rows[split] = (paths, labels)
    return _splits(rows, RAFAU_AUS)


# ----------------------------------------------------------------------------- CASME II
def read_casme2(root: Path) -> Splits:
    """CASME II (release lines 621-738): the coding sheet's rows, every frame onset..offset.

    Columns by position as the release takes them (line 636): subject (A), file name (B), onset
    (D), offset (F), action units (H, "4+L10"; "?" = none). Subject 7 -> "sub07", in no split
    list (the train list spells "sub7") -> test, as every unlisted subject (lines 673-675). Frames
    are {subject}/{file name}/reg_img{i}.jpg (line 666), all with the row's labels.
    """
    sheet = root / "CASME2" / CASME2_SHEET
    rows = {s: ([], []) for s in SPLITS}
    table = read_xlsx(sheet)
    for excel_row, cells in table[1:]:  # the first non-empty row is the header
        where = f"{sheet}: row {excel_row}"
        cells = cells + [None] * (8 - len(cells))
        subject, sequence, onset, offset, aus = (cells[i] for i in (0, 1, 3, 5, 7))
        if subject is None:
            raise DatasetError(f"{where}: empty subject cell")
        subject = "sub" + _cell_text(subject).zfill(2)  # release line 649
        names = _cell_text(aus).split("+") if _cell_text(aus) != "?" else []
        row = [0] * len(CASME2_AUS)
        listed = [n for n in names if n in CASME2_AUS]
        for name in listed:
            row[CASME2_AUS.index(name)] = 1
        if not listed:
            continue
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (onset, offset)):
            raise DatasetError(f"{where}: onset {onset!r} / offset {offset!r} are not frame numbers")
        split = next((s for s, subjects in CASME2_SPLITS.items() if subject in subjects), "test")
        for i in range(onset, offset + 1):
            rows[split][0].append(f"CASME2/{subject}/{_cell_text(sequence)}/reg_img{i}.jpg")
            rows[split][1].append(row)
    return _splits(rows, CASME2_AUS)


def _cell_text(value) -> str:
    """str() of a cell as pandas gave it: whole numbers as ints ("4", not "4.0"), empty "nan"."""
    return "nan" if value is None else str(value)


_XL = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_PKG_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"


def read_xlsx(path: Path) -> list[tuple[int, list]]:
    """Non-empty rows of the first sheet of an .xlsx: [(Excel row number, [cell values from A])].

    Values as pandas' openpyxl reader gives them: text, whole numbers as int, other numbers as
    float, empty cells None.
    """
    try:
        with zipfile.ZipFile(path) as book:
            workbook = ElementTree.fromstring(book.read("xl/workbook.xml"))
            first = workbook.find(f"{_XL}sheets/{_XL}sheet").get(_REL_ID)
            rels = ElementTree.fromstring(book.read("xl/_rels/workbook.xml.rels"))
            target = next(r.get("Target") for r in rels.iter(_PKG_REL) if r.get("Id") == first)
            target = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
            shared = []
            if "xl/sharedStrings.xml" in book.namelist():
                for item in ElementTree.fromstring(book.read("xl/sharedStrings.xml")).iter(f"{_XL}si"):
                    runs = [item.find(f"{_XL}t")] + [r.find(f"{_XL}t") for r in item.findall(f"{_XL}r")]
                    shared.append("".join(t.text or "" for t in runs if t is not None))
            sheet = ElementTree.fromstring(book.read(target))
    except (OSError, KeyError, StopIteration, AttributeError, zipfile.BadZipFile, ElementTree.ParseError) as err:
        raise DatasetError(f"{path}: not a readable .xlsx workbook ({err})") from None
    rows = []
    for number, row in enumerate(sheet.iter(f"{_XL}row"), start=1):
        number = int(row.get("r", number))
        cells = {}
        for position, cell in enumerate(row.findall(f"{_XL}c")):
            ref = re.match(r"[A-Z]+", cell.get("r", ""))
            column = _column_index(ref.group()) if ref else position
            cells[column] = _xlsx_value(cell, shared)
        values = [cells.get(c) for c in range(max(cells) + 1)] if cells else []
        if any(v is not None and v != "" for v in values):
            rows.append((number, values))
    return rows


def _column_index(letters: str) -> int:
    index = 0
    for letter in letters:
        index = index * 26 + ord(letter) - ord("A") + 1
    return index - 1


def _xlsx_value(cell, shared: list[str]):
    kind, v = cell.get("t", "n"), cell.find(f"{_XL}v")
    if kind == "inlineStr":
        return "".join(t.text or "" for t in cell.iter(f"{_XL}t"))
    if v is None or v.text is None:
        return None
    if kind == "s":
        return shared[int(v.text)]
    if kind in ("str", "e"):
        return v.text
    if kind == "b":
        return v.text == "1"
    number = float(v.text)
    return int(number) if number.is_integer() else number  # pandas: whole floats become ints


# ----------------------------------------------------------------------------- Aff-Wild2
def read_affwild2(root: Path) -> Splits:
    """Aff-Wild2 AU_Set (release lines 740-880): one file per video, a header line, then one
    line of 12 comma-separated 0/1 per frame.

    A frame with any -1 (no annotation) is skipped, but still counted: line j (from 0) after the
    header is image {video}/{j+1:05d}.jpg (release lines 796-799), whose folder prefix is "AFFW"
    (line 811), not "AFFW-2". Files in sorted order; names starting with "." are not labels.
    """
    set_dir = root / "AFFW-2" / "list" / "AU_Set"
    rows = {}
    for split, folder in AFFW_SPLIT_DIRS.items():
        paths, labels = [], []
        for path in sorted(p for p in (set_dir / folder).iterdir() if p.is_file() and not p.name.startswith(".")):
            video = path.name.split(".")[0]
            for j, line in enumerate(_readlines(path)[1:]):
                where = f"{path}:{j + 2}"
                values = [_int(v, where, "label") for v in line.rstrip("\n").split(",")]
                if len(values) != len(AFFW_AUS):
                    raise DatasetError(f"{where}: {len(values)} values, expected {len(AFFW_AUS)}")
                if -1 in values:
                    continue  # release line 796; j still counts the frame
                if any(v not in (0, 1) for v in values):
                    raise DatasetError(f"{where}: labels must be 0, 1 or -1, got {line.strip()!r}")
                paths.append(f"AFFW/{video}/{str(j + 1).zfill(5)}.jpg")
                labels.append(values)
        rows[split] = (paths, labels)
    return _splits(rows, AFFW_AUS)


# ----------------------------------------------------------------------------- the hybrid
def propagate_side_aus(labels: np.ndarray) -> np.ndarray:
    """A left or right AU above 0 sets its main AU to 1 (release lines 895-917): over the
    concatenated hybrid only (the release's per-data-set lists do not get it), even where the main
    AU was -1; L12/R12 set column 8, AU11 (SIDE_TO_MAIN)."""
    labels = labels.copy()
    for k, main in enumerate(SIDE_TO_MAIN):
        side = labels[:, 27 + 2 * k: 29 + 2 * k]  # (M, 2): L and R of pair k
        labels[(side > 0).any(axis=1), main] = 1
    return labels


def release_hybrid_weights(labels: np.ndarray) -> np.ndarray:
    """calculate_AU_class_weights.py (lines 15-24): r_i = #(label > 0) / #(label >= 0) over the
    training labels, w = (1/r) / sum(1/r) * N, in float64 and the same order of operations. An AU
    never present or never coded gives inf / nan, as the release would write."""
    labels = np.asarray(labels, dtype=np.float64)
    rate = np.zeros((1, labels.shape[1]))  # (1, N), as the release's array
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(labels.shape[1]):
            rate[0, i] = np.float64((labels[:, i] > 0).sum()) / float((labels[:, i] >= 0).sum())
        weight = 1.0 / rate
        weight = weight / weight.sum() * weight.shape[1]
    return weight[0]


def write_label_rows(path: Path, labels: np.ndarray) -> None:
    """Rows of ints joined by single spaces, each ending with a newline (numpy's '%d' format)."""
    with open(path, "w", newline="\n") as f:
        for start in range(0, labels.shape[0], 100_000):
            f.writelines(" ".join(map(str, row)) + "\n" for row in labels[start:start + 100_000].tolist())


def write_hybrid_lists(out_dir, splits: dict, weights: Optional[np.ndarray] = None) -> dict[str, Path]:
    """Write hybrid_{split}_img_path.txt / _label.txt for train, val, test and
    hybrid_train_weight.txt into `out_dir`. `splits`: {split: (paths, labels (M, 41))}, labels as
    written (after :func:`propagate_side_aus`). The weights are the release's formula over the
    train labels (:func:`release_hybrid_weights`) unless `weights` (41 values) are given, e.g. of
    lists that leave AUs uncoded everywhere (lists.compute_class_weights_coded). Returns {kind: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in SPLITS:
        paths, labels = splits[split]
        img_path = out_dir / f"hybrid_{split}_img_path.txt"
        with open(img_path, "w", newline="\n") as f:
            f.writelines(p + "\n" for p in paths)
        label_path = out_dir / f"hybrid_{split}_label.txt"
        write_label_rows(label_path, labels)
        written[f"{split}_img_path"], written[f"{split}_label"] = img_path, label_path
    weight_path = out_dir / "hybrid_train_weight.txt"
    if weights is None:
        weights = release_hybrid_weights(splits["train"][1])
    # savetxt(fmt="%f", delimiter="\t") of a (1, 41) array: one line (weights script lines 25-30)
    weight_path.write_text("\t".join(f"{w:f}" for w in weights) + "\n")
    written["train_weight"] = weight_path
    return written


# (name, what must exist under the raw root, reader) in the release's order of concatenation.
DATASETS: tuple[tuple[str, tuple[str, ...], Callable], ...] = (
    ("BP4D", ("BP4D/AUCoding/AU_OCC",), read_bp4d),
    ("DISFA", ("DISFA/ActionUnit_Labels",), read_disfa),
    ("CK+", ("CK+/FACS",), read_ckplus),
    ("RAF-AU", ("RAF-AU/RAFAU_label.txt", "RAF-AU-train_ids.txt", "RAF-AU-val_ids.txt", "RAF-AU-test_ids.txt"),
     read_rafau),
    ("CASME2", (f"CASME2/{CASME2_SHEET}",), read_casme2),
    ("Aff-Wild2", tuple(f"AFFW-2/list/AU_Set/{d}" for d in AFFW_SPLIT_DIRS.values()), read_affwild2),
)


def prepare_hybrid(raw_root, out_dir, img_dir=None) -> tuple[dict, list[str]]:
    """Read every data set present under `raw_root` and write the hybrid lists into `out_dir`.

    img_dir: the folder of the face crops (default: img/ beside `out_dir`, the release's
    Datasets/hybrid_dataset/{list,img}); CK+ frames are looked for in its CK+/ folder.
    Returns ({split: (paths, labels after propagation)}, notes): a note per data set read
    (frames per split) or skipped (what is missing). DatasetError when none is present.
    """
    root, out_dir = Path(raw_root), Path(out_dir)
    img_dir = Path(img_dir) if img_dir is not None else out_dir.parent / "img"
    if not root.is_dir():
        raise DatasetError(f"{root}: raw data folder not found")
    notes, parts = [], []
    for name, needed, reader in DATASETS:
        missing = [n for n in needed if not (root / n).exists()]
        if len(missing) == len(needed):
            notes.append(f"{name}: skipped ({root / needed[0]} not found)")
            continue
        if missing:
            notes.append(f"{name}: skipped (missing {', '.join(str(root / m) for m in missing)})")
            continue
        if reader is read_ckplus:
            image_root = ckplus_image_root(root, img_dir)
            splits = reader(root, image_root)
            notes.append(f"CK+: frames looked for in {image_root}")
        else:
            splits = reader(root)
        notes.append(f"{name}: " + ", ".join(f"{s} {len(splits[s][0])}" for s in SPLITS) + " frames")
        parts.append(splits)
    if not parts:
        raise DatasetError(f"{root}: none of the six data sets found (expected the release's layout, "
                           f"e.g. {root / DATASETS[0][1][0]})")
    merged = {}
    for split in SPLITS:
        paths = [p for part in parts for p in part[split][0]]
        labels = np.concatenate([part[split][1] for part in parts])  # (M, 41), data sets in the release's order
        merged[split] = (paths, propagate_side_aus(labels))
    write_hybrid_lists(out_dir, merged)
    return merged, notes
