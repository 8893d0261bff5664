"""Tests of the OpenGraphAU hybrid lists (megraphau/data/hybrid.py, prepare_lists.py --dataset OpenGraphAU).

A small fake raw tree of all six data sets in their real file formats (make_raw_tree) covers every
quirk of the release's tool; the tests check exact bytes derived by hand for those inputs, and the
whole output against `release_oracle`, the release's algorithm restated here for testing.
"""
import csv
import hashlib
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest

from megraphau.data import hybrid
from megraphau.data.lists import DatasetError
from tool.prepare_lists import main as prepare_main

# ----------------------------------------------------------------------------- fake raw tree
BP4D_HEADER = [str(i) for i in range(41)]  # BP4D's AU_OCC header: '0' (frame), then AU numbers ascending


def _bp4d_value(si, ti, f, au):
    return (0, 1, 9)[(si + ti + f + au) % 3]


def write_xlsx(path, rows):
    """A minimal .xlsx (one sheet, shared strings, numbers as numbers) as Excel writes them."""
    strings = []

    def cell(ref, value):
        if value is None:
            return ""
        if isinstance(value, str):
            if value not in strings:
                strings.append(value)
            return f'<c r="{ref}" t="s"><v>{strings.index(value)}</v></c>'
        return f'<c r="{ref}"><v>{value}</v></c>'

    xml_rows = "".join(
        f'<row r="{r + 1}">' + "".join(cell(f"{chr(65 + c)}{r + 1}", v) for c, v in enumerate(row)) + "</row>"
        for r, row in enumerate(rows))
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    pkg = "http://schemas.openxmlformats.org/package/2006/relationships"
    files = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
            'content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
            'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName='
            '"/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.'
            'main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.'
            'openxmlformats-officedocument.spreadsheetml.worksheet+xml"/><Override PartName="/xl/'
            'sharedStrings.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.'
            'sharedStrings+xml"/></Types>'),
        "_rels/.rels": (f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{pkg}"><Relationship '
                        f'Id="rId1" Type="{rel}/officeDocument" Target="xl/workbook.xml"/></Relationships>'),
        "xl/workbook.xml": (f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{main}" xmlns:r="{rel}">'
                            f'<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'),
        "xl/_rels/workbook.xml.rels": (
            f'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="{pkg}"><Relationship Id="rId1" '
            f'Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/><Relationship Id="rId2" '
            f'Type="{rel}/sharedStrings" Target="sharedStrings.xml"/></Relationships>'),
        "xl/worksheets/sheet1.xml": (f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{main}">'
                                     f'<sheetData>{xml_rows}</sheetData></worksheet>'),
    }
    files["xl/sharedStrings.xml"] = (
        f'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="{main}" count="{len(strings)}" '
        f'uniqueCount="{len(strings)}">' + "".join(f"<si><t>{escape(s)}</t></si>" for s in strings) + "</sst>")
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)


CASME2_ROWS = [
    ["Subject", "Filename", "Unnamed: 2", "OnsetFrame", "ApexFrame", "OffsetFrame", "Unnamed: 6",
     "Action Units", "Estimated Emotion"],
    [1, "EP02_01f", None, 46, 59, 47, None, "1+R12", "happiness"],  # sub01: train, frames 46 47
    [7, "EP03_02", None, 10, 10, 10, None, 4, "disgust"],  # sub07: the train list says "sub7" -> test
    [3, "EP01_1", None, 5, 6, 7, None, "L10+25", "others"],  # sub03: val, 3 frames
    [13, "EP09", None, 1, 1, 2, None, "?", "others"],  # no AUs: no frames
    [13, "EP10", None, 3, 3, 3, None, "L14+23", "others"],  # sub13 is in no list -> test; 23 not coded
    [2, "EP11", None, 20, 20, 21, None, "11+13", "others"],  # neither AU listed for CASME II: no frames
]
RAFAU_LINES = ["1.jpg 1+2+L12", "2.jpg null", "3.jpg 11+13", "4.jpg R14+l2+4", "5.jpg 25+26", "10.jpg 6+12",
               "123.jpg 38+9", "77.jpg L1+R1+L2+R2+L4+R4+L6+R6+L10+R10+L14"]
RAFAU_IDS = {"train": [0, 3, 3, 4, 7], "val": [1, 2, 5], "test": [6, 0]}
AFFW_HEADER = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
AFFW_FILES = {
    "TrainFromTrain_Set": {"video2.txt": ["1,0,0,0,0,0,1,0,0,0,1,0", "-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1",
                                          "0,1,0,1,0,1,0,1,0,1,0,1"],
                           "10-60-1280x720.txt": ["0,0,1,0,0,0,0,0,0,0,0,0"]},
    "ValFromTrain_Set": {"video9.txt": ["0,0,0,0,1,0,0,0,0,0,0,1"]},
    "Validation_Set": {"video5_left.txt": ["1,1,1,1,1,1,1,1,1,1,1,1", "0,0,0,0,0,0,0,0,0,0,0,0"]},
}
CK_LINE = "   {:.7e}   {:.7e}\n"


def make_raw_tree(root, img_dir, datasets=("BP4D", "DISFA", "CK+", "RAF-AU", "CASME2", "Aff-Wild2")):
    """The release's working directory with small fakes of the six data sets (img_dir: CK+ crops)."""
    root = Path(root)
    if "BP4D" in datasets:
        d = root / "BP4D" / "AUCoding" / "AU_OCC"
        d.mkdir(parents=True)
        subjects = [s for split in hybrid.BP4D_SPLITS.values() for s in split]
        for si, subject in enumerate(subjects):
            for ti, task in enumerate(hybrid.BP4D_TASKS):
                frames = [10 * ti + 1, 10 * ti + 2]
                if (subject, task) == ("F001", "T1"):
                    frames = [7, 7]  # a repeated frame: both rows kept
                lines = [",".join(BP4D_HEADER)]
                for f, frame in enumerate(frames):
                    values = [str(_bp4d_value(si, ti, f, int(a))) if a in hybrid.MAIN_AUS else "5"
                              for a in BP4D_HEADER[1:]]  # "5" in the columns the release does not read
                    lines.append(",".join([str(frame)] + values))
                (d / f"{subject}_{task}.csv").write_text("\n".join(lines) + "\n")
    if "DISFA" in datasets:
        subjects = [s for split in hybrid.DISFA_SPLITS.values() for s in split]
        for si, subject in enumerate(subjects):
            d = root / "DISFA" / "ActionUnit_Labels" / subject
            d.mkdir(parents=True)
            for ci, au in enumerate(hybrid.DISFA_AUS):
                if (subject, au) == ("SN002", "9"):
                    continue  # a missing AU file: its column is 0
                n = 2 if (subject, au) == ("SN012", "20") else 3  # fewer lines: the rest stays 0
                (d / f"{subject}_au{au}.txt").write_text("".join(f"{i + 1},{(si + ci + i) % 4}\n" for i in range(n)))
    if "CK+" in datasets:
        for si, subject in enumerate(s for split in hybrid.CKPLUS_SPLITS.values() for s in split):
            files = {("001", f"{subject}_001_00000003"): [(12, 2), (19, 4), (si % 3 + 1, si % 4)]}
            if subject == "S034":
                files = {("002", "S034_002_00000009"): [(1, 3)],
                         ("001", "S034_001_00000012"): [(1, 3), (2, 1), (4, 0), (62, 4)],
                         ("001", "S034_001_00000005"): [(27, 5)],
                         ("003", "S034_003_00000002"): [(5, 5)]}  # no image: skipped
            if subject == "S147":
                files = {("001", "S147_001_00000007"): [(8, 3), (43, 2)]}  # no listed AU: skipped
            for (sequence, name), aus in files.items():
                d = root / "CK+" / "FACS" / subject / sequence
                d.mkdir(parents=True, exist_ok=True)
                (d / f"{name}_facs.txt").write_text("".join(CK_LINE.format(a, v) for a, v in aus) + "   \n")
                if sequence != "003":
                    image = Path(img_dir) / "CK+" / subject / sequence / f"{name}.png"
                    image.parent.mkdir(parents=True, exist_ok=True)
                    image.write_bytes(b"")
    if "RAF-AU" in datasets:
        (root / "RAF-AU").mkdir(parents=True)
        (root / "RAF-AU" / "RAFAU_label.txt").write_text("\n".join(RAFAU_LINES) + "\n")
        for split, ids in RAFAU_IDS.items():
            (root / f"RAF-AU-{split}_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    if "CASME2" in datasets:
        (root / "CASME2").mkdir(parents=True)
        write_xlsx(root / "CASME2" / hybrid.CASME2_SHEET, CASME2_ROWS)
    if "Aff-Wild2" in datasets:
        for folder, files in AFFW_FILES.items():
            d = root / "AFFW-2" / "list" / "AU_Set" / folder
            d.mkdir(parents=True)
            for name, lines in files.items():
                (d / name).write_text("\n".join([AFFW_HEADER] + lines) + "\n")
    return root


# ----------------------------------------------------------------------------- the oracle
def _readlines(path):
    with open(path) as f:
        return f.readlines()


def release_oracle(raw, ck_images):
    """The release's dataset_process.py and calculate_AU_class_weights.py, restated for testing
    (written from their logic, not copied; directory listings sorted): {file name: bytes}."""
    raw = Path(raw)
    total = [str(a) for a in hybrid.MAIN_AUS] + list(hybrid.SIDE_AUS)
    out = {s: ([], []) for s in ("train", "val", "test")}

    def add(split, prefix, path, aus, values):
        row = [-1.0] * 41
        for au, v in zip(aus, values):
            row[total.index(str(au))] = float(v)
        out[split][0].append(prefix + "/" + path)
        out[split][1].append(row)

    for split, subjects in hybrid.BP4D_SPLITS.items():
        for s in subjects:
            for t in hybrid.BP4D_TASKS:
                table = list(csv.reader(_readlines(raw / "BP4D/AUCoding/AU_OCC" / f"{s}_{t}.csv")))
                head = table[0]
                for r in table[1:]:
                    vals = [int(r[head.index(a)]) for a in hybrid.MAIN_AUS]
                    add(split, "BP4D", f"{s}/{t}/{int(r[0])}.jpg", hybrid.MAIN_AUS, [-1 if v == 9 else v for v in vals])
    for split, subjects in hybrid.DISFA_SPLITS.items():
        for s in subjects:
            n = len(_readlines(raw / "DISFA/ActionUnit_Labels" / s / f"{s}_au1.txt"))
            table = [[0] * 12 for _ in range(n)]
            for k, au in enumerate(hybrid.DISFA_AUS):
                p = raw / "DISFA/ActionUnit_Labels" / s / f"{s}_au{au}.txt"
                if p.exists():
                    for t, line in enumerate(_readlines(p)):
                        table[t][k] = int(int(line.split(",")[1]) >= 1)
            for i in range(n):
                add(split, "DISFA", f"{s}/{i}.png", hybrid.DISFA_AUS, table[i])
    for split, subjects in hybrid.CKPLUS_SPLITS.items():
        for s in subjects:
            for q in sorted((raw / "CK+/FACS" / s).iterdir()):
                for tx in sorted(q.iterdir()):
                    rel = f"{s}/{q.name}/{tx.name.split('_facs')[0]}.png"
                    if not (Path(ck_images) / rel).exists():
                        continue
                    vals, any_au = [0] * 25, False
                    for line in _readlines(tx):
                        f = line.strip().split(" ")
                        if f[0] != "" and str(int(float(f[0]))) in hybrid.CKPLUS_AUS:
                            any_au = True
                            vals[hybrid.CKPLUS_AUS.index(str(int(float(f[0]))))] = int(int(float(f[3])) > 1)
                    if any_au:
                        add(split, "CK+", rel, hybrid.CKPLUS_AUS, vals)
    lines = _readlines(raw / "RAF-AU/RAFAU_label.txt")
    for split in ("train", "val", "test"):
        for i in _readlines(raw / f"RAF-AU-{split}_ids.txt"):
            name, labels = lines[int(i)].split(" ")[0], lines[int(i)].split(" ")[1].strip()
            hits = [x for x in labels.split("+") if x in hybrid.RAFAU_AUS] if labels != "null" else []
            if hits:
                add(split, "RAF-AU", name.split(".")[0].zfill(4) + "_aligned.jpg", hybrid.RAFAU_AUS,
                    [int(a in hits) for a in hybrid.RAFAU_AUS])
    casme = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for row in CASME2_ROWS[1:]:  # the sheet's rows, as written by make_raw_tree
        subject = "sub" + str(row[0]).zfill(2)
        hits = [x for x in str(row[7]).split("+") if x in hybrid.CASME2_AUS] if str(row[7]) != "?" else []
        split = "train" if subject in hybrid.CASME2_SPLITS["train"] else (
            "val" if subject in hybrid.CASME2_SPLITS["val"] else "test")
        for i in range(row[3], row[5] + 1) if hits else []:
            casme[split][0].append(f"{subject}/{row[1]}/reg_img{i}.jpg")
            casme[split][1].append([int(a in hits) for a in hybrid.CASME2_AUS])
    for split, (paths, rows) in casme.items():
        for p, r in zip(paths, rows):
            add(split, "CASME2", p, hybrid.CASME2_AUS, r)
    for split, folder in hybrid.AFFW_SPLIT_DIRS.items():
        for tx in sorted((raw / "AFFW-2/list/AU_Set" / folder).iterdir()):
            for j, line in enumerate(_readlines(tx)[1:]):
                vals = [int(v) for v in line.rstrip("\n").split(",")]
                if -1 not in vals:
                    add(split, "AFFW", f"{tx.name.split('.')[0]}/{str(j + 1).zfill(5)}.jpg", hybrid.AFFW_AUS, vals)
    files = {}
    for split, (paths, rows) in out.items():
        rows = np.array(rows).reshape(-1, 41)
        for i in range(rows.shape[0]):
            for j in range(27, 41):
                if rows[i, j] > 0:
                    rows[i, [0, 1, 2, 4, 7, 8, 11][(j - 27) // 2]] = 1
        files[f"hybrid_{split}_img_path.txt"] = "".join(p + "\n" for p in paths).encode()
        files[f"hybrid_{split}_label.txt"] = "".join(" ".join(str(int(v)) for v in r) + "\n" for r in rows).encode()
        if split == "train":
            rate = np.zeros((1, 41))
            for i in range(41):
                rate[0, i] = sum(rows[:, i] > 0) / float(sum(rows[:, i] >= 0))
            w = 1.0 / rate
            w = w / w.sum() * w.shape[1]
            files["hybrid_train_weight.txt"] = ("\t".join(f"{v:f}" for v in w[0]) + "\n").encode()
    return files


# ----------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def full_tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("hybrid")
    raw = make_raw_tree(base / "raw", base / "data" / "img")
    out = base / "data" / "list"
    assert prepare_main(["--dataset", "OpenGraphAU", "--raw-root", str(raw), "--output", str(out)]) == 0
    return raw, base / "data" / "img", out


def _rows(out, split):
    paths = (out / f"hybrid_{split}_img_path.txt").read_text().splitlines()
    labels = (out / f"hybrid_{split}_label.txt").read_text().splitlines()
    assert len(paths) == len(labels)
    return dict(zip(paths, labels)), paths, labels


def _expected(values: dict) -> str:
    """A hand-written 41-column row: {AU name: value}, everything else -1."""
    return " ".join(str(values.get(a, -1)) for a in hybrid.HYBRID_AUS)


def test_release_constants_as_read():
    """Split lists and AU lists hash to the values computed from the release's text
    (OpenGraphAU/tool/dataset_process.py, commit 878dcae)."""
    parts = [hybrid.MAIN_AUS, hybrid.SIDE_AUS, hybrid.SIDE_TO_MAIN, *hybrid.BP4D_SPLITS.values(),
             *hybrid.DISFA_SPLITS.values(), hybrid.DISFA_AUS, *hybrid.CKPLUS_SPLITS.values(), hybrid.CKPLUS_AUS,
             hybrid.RAFAU_AUS, *hybrid.CASME2_SPLITS.values(), hybrid.CASME2_AUS, hybrid.AFFW_AUS]
    text = "|".join(",".join(map(str, p)) for p in parts)
    assert hashlib.sha256(text.encode()).hexdigest() == RELEASE_CONSTANTS_SHA256
    assert len(hybrid.HYBRID_AUS) == 41 and hybrid.HYBRID_AUS[8] == "11" and hybrid.HYBRID_AUS[37] == "L12"


def test_matches_restated_release_byte_for_byte(full_tree):
    raw, img, out = full_tree
    want = release_oracle(raw, img / "CK+")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("hybrid_")) == sorted(want)
    for name, data in want.items():
        assert (out / name).read_bytes() == data, name


def test_bp4d_rows_by_hand(full_tree):
    _, _, out = full_tree
    _, paths, labels = _rows(out, "train")
    assert paths[:3] == ["BP4D/F001/T1/7.jpg", "BP4D/F001/T1/7.jpg", "BP4D/F001/T2/11.jpg"]  # repeat kept
    # F001 (subject 0), T1, rows f = 0, 1: AU a is (0, 1, 9)[(a + f) % 3], 9 -> -1; side AUs -1
    for f in (0, 1):
        assert labels[f] == _expected({a: (0, 1, -1)[(int(a) + f) % 3] for a in hybrid.MAIN_AUS})
    assert _rows(out, "val")[1][0] == "BP4D/F003/T1/1.jpg"
    assert _rows(out, "test")[1][0] == "BP4D/F007/T1/1.jpg"
    assert sum(p.startswith("BP4D/") for p in paths) == 22 * 8 * 2


def test_disfa_quirks_by_hand(full_tree):
    _, _, out = full_tree
    rows, paths, _ = _rows(out, "train")
    # SN002 is subject 0: AU k (column ci) of line i has intensity (ci + i) % 4, present when >= 1;
    # its AU9 file is missing -> 0 (not -1). Image i is SN002/{i}.png.
    assert [p for p in paths if p.startswith("DISFA/SN002/")] == ["DISFA/SN002/0.png", "DISFA/SN002/1.png",
                                                                  "DISFA/SN002/2.png"]
    want = {a: int((ci + 1) % 4 >= 1) for ci, a in enumerate(hybrid.DISFA_AUS)}
    want["9"] = 0
    assert rows["DISFA/SN002/1.png"] == _expected(want)
    assert want["1"] == 1 and want["5"] == 0  # AU1 at intensity 1 counts (the 8-AU lists need 2); AU5 is at 0
    val = _rows(out, "val")[0]
    si = [s for split in hybrid.DISFA_SPLITS.values() for s in split].index("SN012")
    assert val["DISFA/SN012/2.png"].split()[hybrid.HYBRID_AUS.index("20")] == "0"  # its AU20 file stops at line 2
    assert val["DISFA/SN012/2.png"].split()[hybrid.HYBRID_AUS.index("25")] == str(int((si + 10 + 2) % 4 >= 1))


def test_ckplus_quirks_by_hand(full_tree):
    _, _, out = full_tree
    rows, paths, _ = _rows(out, "train")
    ck = [p for p in paths if p.startswith("CK+/")]
    # S034: sequences and files sorted; 003 has no image; S147 names no listed AU -> no frame
    assert ck[:4] == ["CK+/S034/001/S034_001_00000005.png", "CK+/S034/001/S034_001_00000012.png",
                      "CK+/S034/002/S034_002_00000009.png", "CK+/S149/001/S149_001_00000003.png"]
    zeros = {a: 0 for a in hybrid.CKPLUS_AUS}  # AU19, AU32 and the sides stay -1
    # 1 at 3 -> 1 (> 1); 2 at 1 -> 0; 4 at 0 -> 0 ("present, intensity not given"); AU62 ignored
    assert rows["CK+/S034/001/S034_001_00000012.png"] == _expected({**zeros, "1": 1})
    assert rows["CK+/S034/001/S034_001_00000005.png"] == _expected({**zeros, "27": 1})
    # AU12 at 2 -> 1, AU19 at 4 is not a CK+ AU of the release (stays -1); S149 is subject 2: AU3 at 2
    assert rows["CK+/S149/001/S149_001_00000003.png"] == _expected({**zeros, "12": 1})


def test_rafau_quirks_by_hand(full_tree):
    _, _, out = full_tree
    rows, paths, _ = _rows(out, "train")
    raf = [p for p in paths if p.startswith("RAF-AU/")]
    assert raf == ["RAF-AU/0001_aligned.jpg", "RAF-AU/0004_aligned.jpg", "RAF-AU/0004_aligned.jpg",
                   "RAF-AU/0005_aligned.jpg", "RAF-AU/0077_aligned.jpg"]  # ids 0 3 3 4 7: the repeat is kept
    zeros = {a: 0 for a in hybrid.RAFAU_AUS}  # AU11, AU13, AU38 are -1 for RAF-AU ...
    # ... but L12 sets AU11 (node 8) to 1 in the hybrid; R14 sets AU14; "l2" is not a name
    assert rows["RAF-AU/0001_aligned.jpg"] == _expected({**zeros, "1": 1, "2": 1, "L12": 1, "11": 1})
    assert rows["RAF-AU/0004_aligned.jpg"] == _expected({**zeros, "R14": 1, "4": 1, "14": 1})
    val_paths = _rows(out, "val")[1]
    assert [p for p in val_paths if p.startswith("RAF-AU/")] == ["RAF-AU/0010_aligned.jpg"]  # null, 11+13 out
    test = _rows(out, "test")[0]
    assert test["RAF-AU/0123_aligned.jpg"] == _expected({**zeros, "9": 1})  # 38 is not RAF-AU's


def test_casme2_quirks_by_hand(full_tree):
    _, _, out = full_tree
    zeros = {a: 0 for a in hybrid.CASME2_AUS}
    train = _rows(out, "train")[0]
    casme_train = [p for p in train if p.startswith("CASME2/")]
    assert casme_train == ["CASME2/sub01/EP02_01f/reg_img46.jpg", "CASME2/sub01/EP02_01f/reg_img47.jpg"]
    # R12 sets AU11 (column 8), not AU12
    assert train[casme_train[0]] == _expected({**zeros, "1": 1, "R12": 1, "11": 1})
    val = _rows(out, "val")[1]
    assert [p for p in val if p.startswith("CASME2/")] == [f"CASME2/sub03/EP01_1/reg_img{i}.jpg" for i in (5, 6, 7)]
    test_rows, test_paths, _ = _rows(out, "test")
    assert [p for p in test_paths if p.startswith("CASME2/")] == ["CASME2/sub07/EP03_02/reg_img10.jpg",
                                                                  "CASME2/sub13/EP10/reg_img3.jpg"]
    assert test_rows["CASME2/sub07/EP03_02/reg_img10.jpg"] == _expected({**zeros, "4": 1})  # a number cell
    assert test_rows["CASME2/sub13/EP10/reg_img3.jpg"] == _expected({**zeros, "L14": 1, "14": 1})


def test_affwild2_quirks_by_hand(full_tree):
    _, _, out = full_tree
    rows, paths, _ = _rows(out, "train")
    # sorted files; the -1 frame is skipped but counted (00002 missing); folder prefix AFFW
    assert [p for p in paths if p.startswith("AFFW")] == ["AFFW/10-60-1280x720/00001.jpg", "AFFW/video2/00001.jpg",
                                                          "AFFW/video2/00003.jpg"]
    assert rows["AFFW/video2/00003.jpg"] == _expected(dict(zip(hybrid.AFFW_AUS, (0, 1) * 6)))
    assert paths[-1] == "AFFW/video2/00003.jpg"  # Aff-Wild2 is the last data set


def test_weight_file_format(full_tree):
    _, _, out = full_tree
    text = (out / "hybrid_train_weight.txt").read_text()
    fields = text.rstrip("\n").split("\t")
    assert text.endswith("\n") and text.count("\n") == 1 and len(fields) == 41
    assert all(len(f.split(".")[1]) == 6 for f in fields)
    labels = np.loadtxt(out / "hybrid_train_label.txt")
    rate = (labels > 0).sum(0) / (labels >= 0).sum(0)
    np.testing.assert_allclose([float(f) for f in fields], (1 / rate) / (1 / rate).sum() * 41, atol=1e-6)


def test_release_weights_tiny_by_hand():
    labels = np.array([[1, 0, -1], [0, 1, -1], [1, 1, -1], [1, -1, -1]])
    # rates 3/4, 2/3, 0/0 -> nan everywhere after the sum, as the release writes for an AU never coded
    assert np.isnan(hybrid.release_hybrid_weights(labels)).all()
    w = hybrid.release_hybrid_weights(labels[:, :2])  # 1/r = 4/3, 3/2; sum 17/6 -> *2
    np.testing.assert_allclose(w, [16 / 17, 18 / 17])


def test_side_aus_set_their_main_au():
    labels = np.full((2, 41), -1, dtype=np.int8)
    labels[0, hybrid.HYBRID_AUS.index("R12")] = 1
    labels[1, hybrid.HYBRID_AUS.index("L10")] = 0  # 0 does not propagate
    got = hybrid.propagate_side_aus(labels)
    assert got[0, 8] == 1 and got[0, 9] == -1  # AU11 (node 8), not AU12
    assert (got[1] == labels[1]).all()


def test_partial_hybrid_and_notes(tmp_path, capsys):
    raw = make_raw_tree(tmp_path / "raw", tmp_path / "img", datasets=("RAF-AU", "CASME2"))
    out = tmp_path / "list"
    assert prepare_main(["--dataset", "OpenGraphAU", "--raw-root", str(raw), "--output", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("BP4D", "DISFA", "CK+", "Aff-Wild2"):
        assert f"{name}: skipped" in text
    assert "RAF-AU: train 5, val 1, test 2 frames" in text and "CASME2: train 2, val 3, test 2 frames" in text
    paths = (out / "hybrid_train_img_path.txt").read_text().splitlines()
    assert paths == ["RAF-AU/0001_aligned.jpg", "RAF-AU/0004_aligned.jpg", "RAF-AU/0004_aligned.jpg",
                     "RAF-AU/0005_aligned.jpg", "RAF-AU/0077_aligned.jpg", "CASME2/sub01/EP02_01f/reg_img46.jpg",
                     "CASME2/sub01/EP02_01f/reg_img47.jpg"]
    # AUs no training frame has: the release's formula gives nan; the note says which
    assert "nan" in (out / "hybrid_train_weight.txt").read_text()
    assert "never present" in text


def test_rafau_without_split_files_is_skipped(tmp_path, capsys):
    raw = make_raw_tree(tmp_path / "raw", tmp_path / "img", datasets=("RAF-AU", "Aff-Wild2"))
    (raw / "RAF-AU-val_ids.txt").unlink()
    assert prepare_main(["--dataset", "OpenGraphAU", "--raw-root", str(raw), "--output", str(tmp_path / "l")]) == 0
    assert "RAF-AU: skipped (missing" in capsys.readouterr().out


def test_ckplus_images_from_raw_when_no_crops(tmp_path):
    raw = make_raw_tree(tmp_path / "raw", tmp_path / "crops", datasets=("CK+",))
    (tmp_path / "crops" / "CK+").rename(raw / "CK+" / "cohn-kanade-images")  # CK+'s own frames, no crops
    assert hybrid.ckplus_image_root(raw, tmp_path / "nothing") == raw / "CK+" / "cohn-kanade-images"
    merged, notes = hybrid.prepare_hybrid(raw, tmp_path / "list", img_dir=tmp_path / "nothing")
    assert merged["train"][0][0] == "CK+/S034/001/S034_001_00000005.png"


def test_errors_name_file_and_line(tmp_path):
    raw = make_raw_tree(tmp_path / "raw", tmp_path / "img", datasets=("DISFA", "Aff-Wild2"))
    bad = raw / "DISFA" / "ActionUnit_Labels" / "SN010" / "SN010_au4.txt"
    bad.write_text("1,0\n2;1\n3,0\n")
    with pytest.raises(DatasetError, match=r"SN010_au4\.txt:2: expected 'frame,intensity'"):
        hybrid.read_disfa(raw)
    bad.write_text("1,0\n2,1\n3,0\n4,0\n")
    with pytest.raises(DatasetError, match=r"SN010_au4\.txt: 4 lines but SN010_au1\.txt has 3"):
        hybrid.read_disfa(raw)
    f = raw / "AFFW-2" / "list" / "AU_Set" / "Validation_Set" / "video5_left.txt"
    f.write_text(AFFW_HEADER + "\n1,1,1\n")
    with pytest.raises(DatasetError, match=r"video5_left\.txt:2: 3 values, expected 12"):
        hybrid.read_affwild2(raw)
    with pytest.raises(DatasetError, match="none of the six data sets"):
        hybrid.prepare_hybrid(raw / "DISFA", tmp_path / "l")  # a folder without any data set


def test_xlsx_reader_cells(tmp_path):
    path = tmp_path / "s.xlsx"
    write_xlsx(path, [["a", None, 3], [], [None, "x&y", 2.5]])
    assert hybrid.read_xlsx(path) == [(1, ["a", None, 3]), (3, [None, "x&y", 2.5])]
    (tmp_path / "bad.xlsx").write_text("no zip")
    with pytest.raises(DatasetError, match=r"bad\.xlsx: not a readable \.xlsx"):
        hybrid.read_xlsx(tmp_path / "bad.xlsx")


RELEASE_CONSTANTS_SHA256 = "6bcf3491bdb4a10676a31442ae5b3e91326f9055abff51e7de714948edb5ab57"


def test_fold1_lists_for_the_training(full_tree):
    """Beside the release's files: fold 1 in this repository's format (train = hybrid train,
    test = hybrid test), which AUDataset reads with the OpenGraphAU config."""
    from megraphau.data.dataset import AUDataset, load_dataset_config

    _, _, out = full_tree
    for split in ("train", "test"):
        for kind in ("img_path", "label"):
            assert (out / f"OpenGraphAU_{split}_{kind}_fold1.txt").read_bytes() == \
                (out / f"hybrid_{split}_{kind}.txt").read_bytes()
    assert not (out / "OpenGraphAU_train_AU_relation_fold1.txt").exists()
    weights = [float(w) for w in (out / "OpenGraphAU_weight_fold1.txt").read_text().split("\t")]
    release = [float(w) for w in (out / "hybrid_train_weight.txt").read_text().split("\t")]
    np.testing.assert_allclose(weights, release, atol=2e-6)  # every AU coded: the same formula
    ds = AUDataset(load_dataset_config("OpenGraphAU"), fold=1, split="train", stage=2, dataset_path=out.parent,
                   validate=False)
    assert len(ds) == len((out / "hybrid_train_img_path.txt").read_text().splitlines()) and ds.relations is None


def test_partial_hybrid_without_fold1_when_an_au_is_never_present(tmp_path, capsys):
    raw = make_raw_tree(tmp_path / "raw", tmp_path / "img", datasets=("CASME2",))
    assert prepare_main(["--dataset", "OpenGraphAU", "--raw-root", str(raw), "--output", str(tmp_path / "l")]) == 0
    text = capsys.readouterr().out
    assert "fold-1 lists (OpenGraphAU_*_fold1.txt) not written" in text and "coded but never present" in text
    assert not list((tmp_path / "l").glob("OpenGraphAU_*"))
