"""tool/plot_runs.py on two fake run folders."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from tool import plot_runs

ROOT = Path(__file__).resolve().parents[2]
AUS = ["AU1", "AU2", "AU4"]


def write_run(folder: Path, losses, mean_f1, per_au, results=None) -> Path:
    """A run folder as train_stage1.py writes it: metrics.csv (F1 as fractions, empty on epochs
    without evaluation) and, optionally, test.py's results.json (F1 in %)."""
    folder.mkdir(parents=True)
    fields = ["epoch", "lr", "train_loss", "mean_f1", "mean_acc"] + [f"f1_{a}" for a in AUS] + ["time_s"]
    with open(folder / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for epoch, (loss, f1, au) in enumerate(zip(losses, mean_f1, per_au), start=1):
            row = {"epoch": epoch, "lr": 1e-3, "train_loss": loss, "mean_f1": "" if f1 is None else f1,
                   "mean_acc": "" if f1 is None else 0.8, "time_s": 1.5}
            row.update({f"f1_{a}": "" if au is None else v for a, v in zip(AUS, au or [None] * 3)})
            writer.writerow(row)
    if results is not None:
        (folder / "results.json").write_text(json.dumps({"au_names": AUS, "f1": results, "mean_f1": 50.0}))
    return folder


@pytest.fixture
def two_runs(tmp_path):
    a = write_run(tmp_path / "stage1" / "bs_16", [0.9, 0.7, 0.6], [0.40, None, 0.55],
                  [[0.3, 0.4, 0.5], None, [0.5, 0.55, 0.6]])
    b = write_run(tmp_path / "stage2" / "bs_16", [0.8, 0.5, 0.4], [None, 0.6, None],
                  [None, [0.6, 0.6, 0.6], None], results=[61.0, 62.5, 70.0])
    return a, b


def test_two_runs_overlaid(two_runs, tmp_path, capsys):
    out = tmp_path / "figs" / "runs.png"
    assert plot_runs.main([str(p) for p in two_runs] + ["--output", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    image = cv2.imread(str(out))
    assert image is not None and image.size > 0
    with open(out.with_suffix(".csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = plot_runs.default_labels(two_runs)
    assert labels == ["stage1/bs_16", "stage2/bs_16"]  # equal folder names get their parent

    def values(label, kind):
        return [(r["epoch"] or r["au"], float(r["value"])) for r in rows if r["label"] == label and r["kind"] == kind]

    assert values(labels[0], "train_loss") == [("1", 0.9), ("2", 0.7), ("3", 0.6)]
    epochs, f1 = zip(*values(labels[0], "mean_f1"))
    assert epochs == ("1", "3") and f1 == pytest.approx((40.0, 55.0))  # %, evaluated epochs only
    assert values(labels[1], "mean_f1") == [("2", 60.0)]
    # per-AU F1: run A's last evaluated epoch (x 100), run B's results.json (already %)
    assert [v for _, v in values(labels[0], "au_f1")] == pytest.approx([50.0, 55.0, 60.0])
    assert values(labels[1], "au_f1") == [("AU1", 61.0), ("AU2", 62.5), ("AU4", 70.0)]
    sources = {r["label"]: r["source"] for r in rows if r["kind"] == "au_f1"}
    assert sources == {labels[0]: "metrics.csv epoch 3", labels[1]: "results.json"}


def test_labels_option_and_errors(two_runs, tmp_path, capsys):
    out = tmp_path / "runs.png"
    assert plot_runs.main([str(p) for p in two_runs] + ["--labels", "A", "B", "--output", str(out)]) == 0
    with open(out.with_suffix(".csv"), newline="") as fh:
        assert {r["label"] for r in csv.DictReader(fh)} == {"A", "B"}
    capsys.readouterr()
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert plot_runs.main([str(two_runs[0]), str(empty), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {empty}: no metrics.csv (not a train_stage1.py / train_stage2.py run folder?)"
    assert plot_runs.main([str(two_runs[0]), "--labels", "A", "B", "--output", str(out)]) == 2
    assert "--labels: 2 labels for 1 run folders" in capsys.readouterr().err
    (empty / "metrics.csv").write_text("epoch,lr\n1,0.1\n")
    assert plot_runs.main([str(empty), "--output", str(out)]) == 2
    assert "missing column 'train_loss'" in capsys.readouterr().err


def test_command_line(two_runs, tmp_path):
    out = tmp_path / "cli.png"
    done = subprocess.run([sys.executable, str(ROOT / "tool" / "plot_runs.py"), *map(str, two_runs),
                           "--output", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.is_file() and out.with_suffix(".csv").is_file()
    missing = subprocess.run([sys.executable, str(ROOT / "tool" / "plot_runs.py"), str(tmp_path / "nope")],
                             capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: {tmp_path / 'nope'}: no such run folder"
