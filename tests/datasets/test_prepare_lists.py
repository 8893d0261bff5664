"""Tests of tool/prepare_lists.py: list formats, folds, weights, relations, raw-label parsing."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megraphau.data.lists import DatasetError, compute_class_weights, write_fold_lists
from megraphau.data.lists import relations_from_labels as compute_relations
from tool.prepare_lists import (
    BP4D_AUS,
    BP4D_PARTS,
    BP4D_TASKS,
    DISFA_AUS,
    DISFA_PARTS,
    ListPreparationError,
    read_bp4d_parts,
    read_disfa_parts,
)
from tool.prepare_lists import main as prepare_main

REPO = Path(__file__).resolve().parents[2]


def _read(path):
    return Path(path).read_text().splitlines()


# ----------------------------------------------------------------------------- write_fold_lists
def _tiny_parts():
    # 3 AUs; part sizes 2, 1, 2; one unknown label in part2.
    part1 = [("a/0.jpg", [1, 0, 0]), ("a/1.jpg", [1, 1, 0])]
    part2 = [("b/0.jpg", [0, -1, 1])]
    part3 = [("c/0.jpg", [0, 1, 1]), ("c/1.jpg", [1, 0, 0])]
    return [part1, part2, part3]


def test_write_fold_lists_membership_order_and_formats(tmp_path):
    write_fold_lists(tmp_path, "TINY", _tiny_parts())
    expect = {1: (["a/0.jpg", "a/1.jpg", "b/0.jpg"], ["c/0.jpg", "c/1.jpg"]),
              2: (["a/0.jpg", "a/1.jpg", "c/0.jpg", "c/1.jpg"], ["b/0.jpg"]),
              3: (["b/0.jpg", "c/0.jpg", "c/1.jpg"], ["a/0.jpg", "a/1.jpg"])}
    for k, (train, test) in expect.items():
        assert _read(tmp_path / f"TINY_train_img_path_fold{k}.txt") == train
        assert _read(tmp_path / f"TINY_test_img_path_fold{k}.txt") == test
    assert _read(tmp_path / "TINY_train_label_fold1.txt") == ["1 0 0", "1 1 0", "0 -1 1"]
    assert _read(tmp_path / "TINY_test_label_fold1.txt") == ["0 1 1", "1 0 0"]
    assert _read(tmp_path / "TINY_test_label_fold2.txt") == ["0 -1 1"]


def test_weights_exact_tiny_case_ignore_unknown(tmp_path):
    write_fold_lists(tmp_path, "TINY", _tiny_parts())
    # fold1 train: AU0 2/3 present, AU1 1/2 known present (one -1), AU2 1/3.
    inv = np.array([3 / 2, 2.0, 3.0])
    expected = inv / inv.sum() * 3  # 0.692308 0.923077 1.384615
    line = _read(tmp_path / "TINY_weight_fold1.txt")
    assert len(line) == 1
    fields = line[0].split("\t")
    assert fields == ["0.692308", "0.923077", "1.384615"]
    np.testing.assert_allclose([float(f) for f in fields], expected, atol=1e-6)


def test_relation_values(tmp_path):
    write_fold_lists(tmp_path, "TINY", _tiny_parts())
    rows = [list(map(int, r.split())) for r in _read(tmp_path / "TINY_train_AU_relation_fold1.txt")]
    assert len(rows) == 3 and all(len(r) == 9 for r in rows)
    # frame [1, 1, 0]: pair (i, j) -> 2*a_i + a_j at i*3 + j
    assert rows[1] == [3, 3, 2, 3, 3, 2, 1, 1, 0]
    # frame [0, -1, 1]: anything touching AU1 is -1
    assert rows[2] == [0, -1, 1, -1, -1, -1, 2, -1, 3]


def test_compute_relations_matches_formula():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 2, size=(7, 5))
    rel = compute_relations(labels)
    for m in range(7):
        for i in range(5):
            for j in range(5):
                a, b = labels[m, i], labels[m, j]
                assert rel[m, i * 5 + j] == (-1 if a < 0 or b < 0 else 2 * a + b)


def test_weights_formula_random():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=(50, 6))
    labels[0] = 1
    w = compute_class_weights(labels)
    r = labels.mean(axis=0)
    np.testing.assert_allclose(w, (1 / r) / (1 / r).sum() * 6)
    assert w.sum() == pytest.approx(6)


def test_au_never_present_is_an_error(tmp_path):
    parts = _tiny_parts()
    parts = [[(p, [l[0], l[1], 0]) for p, l in part] for part in parts]
    with pytest.raises(DatasetError, match="never present"):
        write_fold_lists(tmp_path, "TINY", parts)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_bad_label_value_and_part_count(tmp_path):
    parts = _tiny_parts()
    parts[0][0] = ("a/0.jpg", [1, 9, 0])
    with pytest.raises(DatasetError, match="a/0.jpg"):
        write_fold_lists(tmp_path, "TINY", parts)
    with pytest.raises(DatasetError, match="3 subject parts"):
        write_fold_lists(tmp_path, "TINY", _tiny_parts()[:2])


# ----------------------------------------------------------------------------- fake raw trees

BP4D_HEADER = ["", "1", "2", "3", "4", "5", "6", "7", "9", "10", "11", "12", "13", "14", "15",
               "16", "17", "18", "23", "24", "27"]


def _bp4d_rows(subject_index, task_index):
    """Two frames per sequence; AU values depend on position so every AU occurs somewhere."""
    rows = []
    for f in range(2):
        frame = 10 * task_index + f + 1
        values = []
        for c, _ in enumerate(BP4D_HEADER[1:]):
            values.append(str((subject_index + task_index + f + c) % 2))
        rows.append([str(frame)] + values)
    return rows


def make_bp4d_tree(root, uncoded=(), header=BP4D_HEADER):
    """AU_OCC tree for every protocol subject; `uncoded`: (subject, task, row, au) set to 9."""
    root.mkdir(parents=True, exist_ok=True)
    subjects = [s for part in BP4D_PARTS for s in part]
    for si, subject in enumerate(subjects):
        for ti, task in enumerate(BP4D_TASKS):
            rows = _bp4d_rows(si, ti)
            for (us, ut, ur, au) in uncoded:
                if (us, ut) == (subject, task):
                    rows[ur][header.index(str(au))] = "9"
            text = ",".join(header) + "\n" + "\n".join(",".join(r) for r in rows) + "\n"
            (root / f"{subject}_{task}.csv").write_text(text)
    return root


def make_disfa_tree(root, frames=3):
    subjects = [s for part in DISFA_PARTS for s in part]
    for si, subject in enumerate(subjects):
        d = root / subject
        d.mkdir(parents=True)
        for ci, au in enumerate(DISFA_AUS):
            lines = [f"{i + 1},{(si + ci + i) % 6}" for i in range(frames)]
            (d / f"{subject}_au{au}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_bp4d_cli_lists_exact(tmp_path, capsys):
    raw = make_bp4d_tree(tmp_path / "AU_OCC", uncoded=[("F007", "T1", 0, 4), ("F007", "T1", 0, 23),
                                                        ("M011", "T3", 1, 1)])
    out = tmp_path / "list"
    assert prepare_main(["--dataset", "BP4D", "--label-dir", str(raw), "--list-dir", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "3 labels in 2 frames written as -1" in summary
    assert "fold1: train 448 frames, test 208 frames" in summary
    test_paths = _read(out / "BP4D_test_img_path_fold1.txt")
    # part3 in subject order, tasks T1..T8, frames in file order, frame number as written
    assert test_paths[:4] == ["F007/T1/1.jpg", "F007/T1/2.jpg", "F007/T2/11.jpg", "F007/T2/12.jpg"]
    assert test_paths[-1] == "F014/T8/72.jpg"
    train2 = _read(out / "BP4D_train_img_path_fold2.txt")
    assert train2[0] == "F001/T1/1.jpg" and train2[14 * 16] == "F007/T1/1.jpg"
    train3 = _read(out / "BP4D_train_img_path_fold3.txt")
    assert train3[0] == "M011/T1/1.jpg" and train3[14 * 16] == "F007/T1/1.jpg"
    # label columns taken by header name: AUs 1 2 4 6 7 10 12 14 15 17 23 24
    cols = [BP4D_HEADER.index(str(a)) - 1 for a in BP4D_AUS]
    si = [s for p in BP4D_PARTS for s in p].index("F007")
    row0 = [(si + 0 + 0 + c) % 2 for c in cols]
    row0[BP4D_AUS.index(4)] = -1
    row0[BP4D_AUS.index(23)] = -1
    labels = _read(out / "BP4D_test_label_fold1.txt")
    assert labels[0] == " ".join(map(str, row0))
    assert all(len(l.split()) == 12 for l in labels)
    # relation file mirrors the -1s
    rel = np.loadtxt(out / "BP4D_train_AU_relation_fold2.txt", dtype=np.int64)
    lab = np.loadtxt(out / "BP4D_train_label_fold2.txt", dtype=np.int64)
    np.testing.assert_array_equal(rel, compute_relations(lab))
    assert (lab == -1).sum() == 2  # the F007 frame is in fold2's training set
    w = np.loadtxt(out / "BP4D_weight_fold2.txt")
    np.testing.assert_allclose(w, compute_class_weights(lab), atol=1e-6)


def test_bp4d_drop_uncoded(tmp_path, capsys):
    raw = make_bp4d_tree(tmp_path / "AU_OCC", uncoded=[("F007", "T1", 0, 4), ("F007", "T1", 0, 23),
                                                        ("M011", "T3", 1, 1)])
    parts, stats = read_bp4d_parts(raw, drop_uncoded=True)
    assert stats["dropped_frames"] == 2
    assert [len(p) for p in parts] == [224, 223, 207]
    assert parts[2][0][0] == "F007/T1/2.jpg"
    assert all(-1 not in labels for part in parts for _, labels in part)


def test_bp4d_errors(tmp_path):
    raw = make_bp4d_tree(tmp_path / "AU_OCC")
    (raw / "M008_T5.csv").unlink()
    with pytest.raises(ListPreparationError, match=r"M008_T5\.csv: missing sequence file"):
        read_bp4d_parts(raw)

    raw = make_bp4d_tree(tmp_path / "nocol", header=[h if h != "17" else "8" for h in BP4D_HEADER])
    with pytest.raises(ListPreparationError, match=r"F001_T1\.csv:1: missing AU column '17'"):
        read_bp4d_parts(raw)

    raw = make_bp4d_tree(tmp_path / "bad")
    path = raw / "F018_T2.csv"
    lines = path.read_text().splitlines()
    fields = lines[1].split(",")

    def with_field(index, value):
        return ",".join(fields[:index] + [value] + fields[index + 1:])

    au24 = BP4D_HEADER.index("24")
    for bad_row, message in [(lines[1] + ",0", r"F018_T2\.csv:3: 22 fields, the header has 21"),
                             (with_field(0, "12a"), r"F018_T2\.csv:3: frame number '12a'"),
                             (with_field(au24, "x"), r"F018_T2\.csv:3: AU24 value 'x'"),
                             (with_field(1, "5"), r"F018_T2\.csv:3: AU1 value 5 is not 0, 1 or 9")]:
        path.write_text("\n".join([lines[0], lines[1], bad_row]) + "\n")
        with pytest.raises(ListPreparationError, match=message):
            read_bp4d_parts(raw)


def test_cli_reports_error_and_help(tmp_path, capsys):
    assert prepare_main(["--dataset", "BP4D", "--label-dir", str(tmp_path / "nope"),
                         "--list-dir", str(tmp_path / "l")]) == 2
    assert "nope: label directory not found" in capsys.readouterr().err
    res = subprocess.run([sys.executable, str(REPO / "tool" / "prepare_lists.py"), "--help"],
                         capture_output=True, text=True, check=True)
    assert "AUCoding/AU_OCC" in res.stdout and "_AU_relation_fold" in res.stdout


def test_disfa_threshold_paths_and_lengths(tmp_path, capsys):
    raw = make_disfa_tree(tmp_path / "ActionUnit_Labels")
    out = tmp_path / "list"
    assert prepare_main(["--dataset", "DISFA", "--label-dir", str(raw), "--list-dir", str(out)]) == 0
    assert "fold1: train 54 frames, test 27 frames" in capsys.readouterr().out
    paths = _read(out / "DISFA_test_img_path_fold1.txt")
    assert paths[:4] == ["SN003/0.png", "SN003/1.png", "SN003/2.png", "SN029/0.png"]
    si = [s for p in DISFA_PARTS for s in p].index("SN003")
    expected = [[int((si + ci + i) % 6 >= 2) for ci in range(8)] for i in range(3)]
    labels = [list(map(int, l.split())) for l in _read(out / "DISFA_test_label_fold1.txt")[:3]]
    assert labels == expected


def test_disfa_errors(tmp_path):
    raw = make_disfa_tree(tmp_path / "a")
    (raw / "SN005" / "SN005_au9.txt").unlink()
    with pytest.raises(ListPreparationError, match=r"SN005_au9\.txt: missing AU9 label file"):
        read_disfa_parts(raw)
    raw = make_disfa_tree(tmp_path / "b")
    p = raw / "SN011" / "SN011_au12.txt"
    for text, message in [("1,0\n2,7\n3,0\n", r"SN011_au12\.txt:2: intensity 7 is not in 0\.\.5"),
                          ("1,0\n2;1\n3,0\n", r"SN011_au12\.txt:2: expected 'frame,intensity'"),
                          ("1,0\n2,1\n3,x\n", r"SN011_au12\.txt:3: intensity 'x'"),
                          ("1,0\n2,1\n2,3\n", r"SN011_au12\.txt:3: frame 2 repeated \(first on line 2\)"),
                          ("0,0\n1,1\n2,3\n", r"SN011_au12\.txt:1: frame number 0; DISFA's label files count "
                                              r"frames from 1")]:
        p.write_text(text)
        with pytest.raises(ListPreparationError, match=message):
            read_disfa_parts(raw)
    import shutil
    shutil.rmtree(raw / "SN032")
    with pytest.raises(ListPreparationError, match=r"SN032: missing subject directory"):
        read_disfa_parts(raw)


def test_check_against_known_release_values(tmp_path):
    """--check recomputes fold-1 weights the release's way (9 counted present over all frames)."""
    from tool.prepare_lists import KNOWN_FOLD1, check_against_known, release_style_weights
    assert len(KNOWN_FOLD1["BP4D"]["weights"]) == 12 and len(KNOWN_FOLD1["DISFA"]["weights"]) == 8
    labels = np.array([[1, 0, -1], [0, 1, 0], [1, -1, 0], [0, 0, 1]])
    # release: rates 2/4, 2/4, 2/4 (the -1s were 9s, counted present) -> all weights 1
    np.testing.assert_allclose(release_style_weights(labels), [1.0, 1.0, 1.0])
    np.savetxt(tmp_path / "X_train_label_fold1.txt", labels, fmt="%d")
    (tmp_path / "X_test_img_path_fold1.txt").write_text("x.png\n" * 7)
    good = {"weights": [1.0, 1.0, 1.0], "test_size": 7}
    assert check_against_known(tmp_path, "X", known=good) == []
    problems = check_against_known(tmp_path, "X", known={"weights": [1.2, 0.9, 0.9], "test_size": 8})
    assert len(problems) == 2 and "weights" in problems[0] and "test size 7" in problems[1]


# ----------------------------------------------------------------------------- frames stay on their labels
def _disfa_labels(list_dir, subject, fold=1):
    """{image path: labels} of one subject's frames in a fold's test lists."""
    paths = _read(list_dir / f"DISFA_test_img_path_fold{fold}.txt")
    labels = [list(map(int, row.split())) for row in _read(list_dir / f"DISFA_test_label_fold{fold}.txt")]
    return {p: l for p, l in zip(paths, labels) if p.startswith(subject + "/")}


def test_disfa_rows_follow_frame_numbers_not_lines(tmp_path, capsys):
    """Frame 2 missing from one AU file and frame 4 from all of them: every other frame keeps its own
    labels (nothing shifts up a line), the gaps are -1 (unknown), and the summary counts them."""
    clean = make_disfa_tree(tmp_path / "clean", frames=6)
    gappy = make_disfa_tree(tmp_path / "gappy", frames=6)
    subject = "SN003"  # part 3: fold 1's test set
    for au in DISFA_AUS:
        path = gappy / subject / f"{subject}_au{au}.txt"
        lines = path.read_text().splitlines()
        keep = [line for line in lines if not line.startswith("4,") and not (au == 2 and line.startswith("2,"))]
        path.write_text("\n".join(reversed(keep)) + "\n")  # and in reverse order: placement is by number
    for name, raw in (("clean", clean), ("gappy", gappy)):
        assert prepare_main(["--dataset", "DISFA", "--label-dir", str(raw), "--list-dir", str(tmp_path / name)]) == 0
    summary = capsys.readouterr().out
    assert "9 labels in 2 frames written as -1 (unknown), 1 of these frames in no AU file" in summary
    assert "(first: SN003_au2.txt frame 2)" in summary
    want, got = _disfa_labels(tmp_path / "clean", subject), _disfa_labels(tmp_path / "gappy", subject)
    assert list(got) == [f"{subject}/{i}.png" for i in range(6)]  # image i = label frame i + 1
    for i in (0, 2, 4, 5):
        assert got[f"{subject}/{i}.png"] == want[f"{subject}/{i}.png"], i
    au2 = DISFA_AUS.index(2)
    assert got[f"{subject}/1.png"] == [-1 if c == au2 else v for c, v in enumerate(want[f"{subject}/1.png"])]
    assert got[f"{subject}/3.png"] == [-1] * len(DISFA_AUS)


def test_repeated_bp4d_frame_names_both_lines(tmp_path):
    raw = make_bp4d_tree(tmp_path / "AU_OCC")
    path = raw / "M007_T4.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], lines[2], lines[1]]) + "\n")
    with pytest.raises(ListPreparationError, match=r"M007_T4\.csv:4: frame 31 repeated \(first on line 2\)"):
        read_bp4d_parts(raw)


@pytest.mark.parametrize("dataset", ["BP4D", "DISFA"])
def test_bom_and_crlf_read_like_plain_files(tmp_path, dataset):
    """Raw label files saved by Windows tools (UTF-8 BOM, CRLF) give the same lists."""
    make = make_bp4d_tree if dataset == "BP4D" else make_disfa_tree
    plain, windows = make(tmp_path / "plain"), make(tmp_path / "windows")
    for path in (windows.rglob("*.csv") if dataset == "BP4D" else windows.rglob("*.txt")):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    for name, raw in (("plain", plain), ("windows", windows)):
        list_dir = tmp_path / f"l{name}"
        assert prepare_main(["--dataset", dataset, "--label-dir", str(raw), "--list-dir", str(list_dir)]) == 0
    for path in sorted((tmp_path / "lplain").iterdir()):
        assert (tmp_path / "lwindows" / path.name).read_bytes() == path.read_bytes(), path.name
