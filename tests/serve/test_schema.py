"""serve's settings and response shapes (serve/schema.py): flag-naming errors and the documented field
names."""

import pytest

from resnetcls.errors import UserError
from resnetcls.serve.schema import (
    EXPLAIN_RESPONSE,
    BatchItem,
    ClassProb,
    PredictResponse,
    ServeSettings,
    errors,
)


@pytest.mark.parametrize(
    "field, flag", [("max_pixels", "--max-pixels"), ("max_queue", "--max-queue"), ("stall_s", "--stall-s")]
)
def test_a_setting_out_of_range_names_its_flag(field, flag):
    with pytest.raises(UserError, match=f"^{flag} 0: must be positive"):
        ServeSettings("model", **{field: 0}).check()
    with pytest.raises(UserError, match="must not be negative"):
        ServeSettings("model", batch_wait_ms=-1).check()


def test_class_is_spelt_as_users_read_it_and_errors_are_documented_as_json():
    assert ClassProb(class_="cat", prob=0.5).model_dump(by_alias=True) == {"class": "cat", "prob": 0.5}
    assert set(errors(413, 503)) == {413, 503}
    assert "image/png" in EXPLAIN_RESPONSE[200]["content"]


def test_the_open_set_answer_comes_last_and_only_when_rejection_is_on():
    top = [ClassProb(class_="cat", prob=0.5)]
    assert PredictResponse(filename="a", top=top).model_dump(by_alias=True) == {
        "filename": "a",
        "top": [{"class": "cat", "prob": 0.5}],
    }
    answered = PredictResponse(filename="a", top=top, label="unknown", unknown=True, open_set_score=0.25)
    assert list(answered.model_dump()) == ["filename", "top", "label", "unknown", "open_set_score"]
    assert BatchItem(filename="x", status=415, error="bad").model_dump() == {
        "filename": "x",
        "status": 415,
        "top": None,
        "error": "bad",
    }
    documented = PredictResponse.model_json_schema(mode="serialization")["properties"]
    assert {"label", "unknown", "open_set_score"} <= set(documented)  # /docs shows them
    assert "unknown" in documented["label"]["description"]
