"""timeseries.py: one person's AU probabilities over time, as strips or a heatmap, from arrays or
from a person CSV of tracking.py."""
import csv

import cv2
import numpy as np
import pytest

from megraphau.analysis import timeseries
from megraphau.data.dataset import load_dataset_config
from megraphau.inference.tracking import write_track_csvs

BP4D = load_dataset_config("BP4D")["au_names"]


def series(num_aus, frames=50, fps=25.0, seed=0):
    rng = np.random.default_rng(seed)
    times = np.arange(frames) / fps
    probs = np.clip(0.5 + 0.4 * np.sin(times[:, None] * (1 + np.arange(num_aus))) + rng.normal(0, 0.05,
                    (frames, num_aus)), 0, 1)  # (T, N)
    return times, probs


def read_png(path):
    image = cv2.imread(str(path))
    assert image is not None and image.size > 0, path
    return image


def test_strips_with_their_numbers(tmp_path):
    times, probs = series(len(BP4D))
    paths = timeseries.plot_au_timeseries(times, probs, BP4D, tmp_path / "p0.png", title="person 0")
    assert paths == {"png": tmp_path / "p0.png", "csv": tmp_path / "p0.csv"}
    image = read_png(paths["png"])
    assert image.shape[0] > image.shape[1] * 0.6  # one strip per AU: tall
    with open(paths["csv"], newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["x", *BP4D] and len(rows) == 1 + len(times)
    assert [float(v) for v in rows[7][1:]] == probs[6].tolist()  # exact round trip


def test_many_aus_make_a_heatmap(tmp_path):
    names = [f"AU{k}" for k in range(41)]
    times, probs = series(41, frames=30)
    paths = timeseries.plot_au_timeseries(times, probs, names, tmp_path / "h.png", write_numbers=False)
    assert paths["csv"] is None and not (tmp_path / "h.csv").exists()
    image = read_png(paths["png"])
    assert image.shape[1] > image.shape[0]  # one row per AU, not one strip
    forced = timeseries.plot_au_timeseries(times, probs[:, :5], names[:5], tmp_path / "f.png", style="heatmap")
    assert read_png(forced["png"]).shape[1] > 500


def test_gaps_are_not_bridged():
    x = np.array([0.0, 0.04, 0.08, 0.6, 0.64, 0.68, 0.75])
    values = np.arange(14, dtype=float).reshape(7, 2)
    gx, gv = timeseries.with_gaps(x, values)
    # the long gap gets two NaN rows one usual step (0.04) inside its ends, the short one (0.07) one in its middle
    assert np.allclose(gx, [0.0, 0.04, 0.08, 0.12, 0.56, 0.6, 0.64, 0.68, 0.715, 0.75])
    assert np.isnan(gv[[3, 4, 8]]).all()
    assert np.array_equal(np.delete(gv, [3, 4, 8], axis=0), values)
    same_x, same_v = timeseries.with_gaps(x[:3], values[:3])
    assert np.array_equal(same_x, x[:3]) and np.array_equal(same_v, values[:3])


def test_plot_a_person_csv(tmp_path):
    rows = [{"frame": f, "time": f / 30.0, "track_id": 0, **{n: (f % 7) / 7 for n in BP4D}}
            for f in list(range(20)) + list(range(40, 60))]  # away for 20 frames
    csv_path = write_track_csvs(rows, tmp_path, BP4D)[0]
    paths = timeseries.plot_track_csv(csv_path)
    assert paths == {"png": csv_path.with_suffix(".png"), "csv": csv_path}
    read_png(paths["png"])
    # without times: against the frame number
    no_time = [{**r, "time": None} for r in rows]
    csv_path = write_track_csvs(no_time, tmp_path / "frames", BP4D)[0]
    read_png(timeseries.plot_track_csv(csv_path, tmp_path / "frames.png")["png"])


def test_bad_input():
    times, probs = series(3)
    with pytest.raises(ValueError, match="expected"):
        timeseries.plot_au_timeseries(times, probs, ["a", "b"], "unused.png")
    with pytest.raises(ValueError, match="increasing"):
        timeseries.plot_au_timeseries(times[::-1], probs, ["a", "b", "c"], "unused.png")
    with pytest.raises(ValueError, match="style"):
        timeseries.plot_au_timeseries(times, probs, ["a", "b", "c"], "unused.png", style="bars")
