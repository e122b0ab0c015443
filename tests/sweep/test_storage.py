"""Storage URLs: passwords are masked everywhere; bad URLs give one-line errors."""

from __future__ import annotations

import pytest

from edgetrain.errors import EdgeTrainError
from edgetrain.sweep.objectives import check_objectives, efficiency_acc_per_kj, objective_values
from edgetrain.sweep.storage import has_secret, mask_text, mask_url, open_storage, storage_label


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://me:s3cret@db.local:5432/sweeps", "postgresql://me:***@db.local:5432/sweeps"),
        (
            "postgresql+psycopg2://me:p%40ss@db/x?sslmode=require",
            "postgresql+psycopg2://me:***@db/x?sslmode=require",
        ),
        (
            "postgresql://me@db/x?password=s3cret&sslmode=require",
            "postgresql://me@db/x?password=***&sslmode=require",
        ),
        ("postgresql://db/x", "postgresql://db/x"),
        ("sqlite:///sweep.db", "sqlite:///sweep.db"),
        ("runs/study.journal", "runs/study.journal"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked
    assert has_secret(url) == (url != masked)


def test_mask_text_removes_the_password_from_driver_messages():
    url = "postgresql://me:s3cret@db/x"
    text = f'could not connect with {url}: password "s3cret" rejected'
    assert "s3cret" not in mask_text(text, url)


def test_storage_label_and_journal_default(tmp_path):
    assert storage_label(None, tmp_path) == str(tmp_path / "study.journal")
    assert storage_label("postgresql://a:b@h/d", tmp_path) == "postgresql://a:***@h/d"
    open_storage(None, tmp_path)
    assert (tmp_path / "study.journal").exists()


def test_unreachable_database_error_is_one_masked_line():
    url = "postgresql://me:s3cret@127.0.0.1:9/nodb?connect_timeout=2"
    with pytest.raises(EdgeTrainError) as err:
        open_storage(url, None)
    msg = str(err.value)
    assert "cannot open the study storage postgresql://me:***@127.0.0.1:9/nodb" in msg
    assert "s3cret" not in msg and "\n" not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_objectives():
    assert check_objectives(["energy", "accuracy"]) == ("accuracy", "energy")
    assert check_objectives("efficiency") == ("efficiency",)
    with pytest.raises(
        EdgeTrainError, match=r"unknown objective 'acuracy'.*\(did you mean 'accuracy'\?\)"
    ):
        check_objectives(["acuracy"])
    with pytest.raises(EdgeTrainError, match="objectives must be one of"):
        check_objectives(["efficiency", "energy"])
    assert efficiency_acc_per_kj(0.9, 450.0) == pytest.approx(2.0)
    assert efficiency_acc_per_kj(0.9, None) is None
    metrics = {"val_acc": 0.9, "energy_j": 450.0, "efficiency_acc_per_kj": 2.0}
    assert objective_values(metrics, ("accuracy", "energy")) == [0.9, 450.0]
    with pytest.raises(
        EdgeTrainError, match="needs the training energy, but the run recorded none"
    ):
        objective_values({"val_acc": 0.9, "energy_j": None}, ("accuracy", "energy"))
    assert objective_values({"val_acc": 0.9, "energy_j": None}, ("accuracy",)) == [0.9]
