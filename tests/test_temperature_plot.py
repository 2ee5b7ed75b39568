"""tasks.generate --temperature-plot: the bars drawn are the model's softmax(logits / T)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import sharp_tiny_gpt2

import minigrad as mg
from tasks import generate
from tasks.common import plots

PROMPT = "Every effort moves you"
TEMPERATURES = [0.1, 1.0, 5.0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A sharp tiny GPT-2 saved as a weights folder, so that temperature visibly reshapes the next-token distribution."""
    return sharp_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "weights", n_ctx=32)


def expected(model, tok, top):
    """softmax(logits / T) over the vocabulary from the model's last-position logits, worked out
    here, and the `top` tokens with the highest logits."""
    with mg.no_grad():
        logits = model(np.array([tok.encode(PROMPT)])).numpy()[0, -1].astype(np.float64)
    ids = np.argsort(-logits)[:top]
    rows = []
    for t in TEMPERATURES:
        e = np.exp(logits / t - (logits / t).max())
        rows.append((e / e.sum())[ids])
    return ids, np.array(rows)


def test_numbers_are_softmax_of_logits_over_t(tiny, tok):
    model, _ = tiny
    ids, probs = generate.temperature_probabilities(
        generate.next_token_logits(model, tok.encode(PROMPT)), TEMPERATURES, 10)
    want_ids, want = expected(model, tok, 10)
    assert ids.tolist() == want_ids.tolist()
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-9)
    # the higher T, the flatter: less on the top token, and a smaller gap to the 10th
    assert probs[0, 0] > probs[1, 0] > probs[2, 0]
    ratios = probs[:, 0] / probs[:, -1]
    assert ratios[0] > ratios[1] > ratios[2] > 1


def test_command_draws_those_numbers_into_a_png(tiny, tok, tmp_path, monkeypatch, capsys):
    model, folder = tiny
    drawn = {}
    real = plots.plot_bar_panels

    def spy(labels, series, path, *args, **kwargs):
        drawn.update(labels=list(labels), series={k: np.asarray(v) for k, v in series.items()},
                     note=kwargs.get("note", ""))
        return real(labels, series, path, *args, **kwargs)
    monkeypatch.setattr(plots, "plot_bar_panels", spy)
    png = tmp_path / "temperature.png"
    assert generate.main(["--init", str(folder), "--prompt", PROMPT, "--temperature-plot", str(png),
                          "--temperatures", "0.1,1,5", "--top", "10"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    ids, want = expected(model, tok, 10)
    assert list(drawn["series"]) == ["T = 0.1", "T = 1", "T = 5"]
    for row, values in zip(want, drawn["series"].values()):
        np.testing.assert_allclose(values, row, rtol=1e-5, atol=1e-9)
    assert drawn["labels"] == [repr(s) for s in generate.token_labels(tok, ids)]
    assert "\u00b7 is a space" in drawn["note"]  # the picture says what its labels' dots are
    # the table on stdout: one line per token, its probability at each T
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 10
    for j, line in enumerate(lines[1:]):
        np.testing.assert_allclose([float(x) for x in line.split()[-3:]], want[:, j], atol=1e-4)


@pytest.mark.usefixtures("needs_tokenizer")
def test_old_weights_flag_still_works(tiny, tmp_path):
    _, folder = tiny
    png = tmp_path / "t.png"
    assert generate.main(["--init", str(folder), "--temperature-plot", str(png), "--top", "3"]) == 0
    assert png.is_file()


@pytest.mark.parametrize("args", [["--temperatures", "0.1,0"], ["--temperatures", "a,b"],
                                  ["--top", "0"], ["--temperature-plot", "t.txt"]])
def test_bad_arguments_exit_2(args, tmp_path, capsys):
    argv = ["--temperature-plot", str(tmp_path / "t.png"), *args]
    try:  # argparse's own errors exit; the flag table's (common.numbers, --top) are main_guard's 2
        code = generate.main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2 and "error:" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists()


def test_every_temperature_is_visible_on_its_own_panel():
    """A peaked T = 0.1 and a flat T = 5 side by side: on one shared scale the flat bars would be
    ~1/1000 of the height; each panel is scaled to its own tallest bar instead."""
    import matplotlib.pyplot as plt
    peaked = [0.999] + [1e-4] * 9
    flat = [1.2e-4 - 1e-6 * i for i in range(10)]
    fig = plots.bar_panels_figure([f"t{i}" for i in range(10)], {"T = 0.1": peaked, "T = 5": flat},
                                  "probability", note="\u00b7 is a space")
    try:
        axes = fig.get_axes()
        assert len(axes) == 2
        for ax, values in zip(axes, (peaked, flat)):
            heights = [bar.get_height() for bar in ax.patches]
            np.testing.assert_allclose(heights, values)
            assert max(heights) / ax.get_ylim()[1] > 0.5   # the tallest bar fills most of its panel
        assert any("\u00b7 is a space" in t.get_text() for t in fig.texts)
    finally:
        plt.close(fig)
