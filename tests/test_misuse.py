"""The tasks' command lines misused as a new user would: each case is one clear `error:` line,
a non-zero exit, no traceback, and nothing created or changed that should not be (issue 11)."""
import pytest

from tasks import classify, generate, instruct

TINY = ["--init", "random", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--context", "32",
        "--no-progress"]


def _toy_tsv(path):
    rows = ["ham\thello there friend", "spam\twin money now", "ham\tsee you soon", "spam\tfree prize click"]
    path.write_text("\n".join(rows * 10) + "\n")
    return path


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory, needs_tokenizer):
    tmp = tmp_path_factory.mktemp("cls")
    out = tmp / "run"
    assert classify.main(["train", "--data", str(_toy_tsv(tmp / "toy.tsv")), *TINY, "--trainable", "all",
                          "--max-steps", "2", "--eval-every", "2", "--out", str(out)]) == 0
    return out


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("MMLU", "score"))]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def test_classify_init_from_a_classifier_run_is_refused(classify_run, tmp_path, capsys):
    out = tmp_path / "new"
    rc = classify.main(["train", "--data", str(_toy_tsv(tmp_path / "toy.tsv")), "--init", str(classify_run),
                        "--max-steps", "1", "--out", str(out), "--no-progress"])
    assert rc == 2
    _one_error_line(capsys, "GPT2Classifier", "not a GPT-2 language model")
    assert not out.exists()


def test_respond_on_a_classifier_run_is_refused(classify_run, tmp_path, capsys):
    rc = instruct.main(["respond", "--checkpoint", str(classify_run), "--out", str(tmp_path / "r.json")])
    assert rc == 2
    _one_error_line(capsys, str(classify_run))
    assert not (tmp_path / "r.json").exists()


def test_generate_from_a_classifier_run_is_refused(classify_run, capsys):
    rc = generate.main(["--weights", str(classify_run), "--prompt", "hi", "--max-new-tokens", "2"])
    assert rc == 2
    _one_error_line(capsys, "GPT2Classifier")
