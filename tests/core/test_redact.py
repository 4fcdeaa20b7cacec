"""Redaction of secrets: option names, URL passwords, nested options, free text."""

from __future__ import annotations

import pytest

from coordinator.core.redact import MASK, is_secret_key, redact_options, redact_text, redact_url, secret_values


def test_url_passwords_are_masked_and_other_urls_kept() -> None:
    """`scheme://user:pw@host` keeps the user and host; a URL without a password is unchanged."""
    assert redact_url("http://bob:hunter22@127.0.0.1:5000/x") == f"http://bob:{MASK}@127.0.0.1:5000/x"
    assert redact_url("file:///tmp/mlruns") == "file:///tmp/mlruns"


def test_nested_options_are_masked_and_their_secrets_listed() -> None:
    """Per-backend options: secret-named values and URL passwords masked; secret_values finds both."""
    opts = {"mlflow": {"tracking_uri": "http://a:pw-1234@h", "api_key": "k-5678", "experiment": "e"}}
    assert redact_options(opts) == {
        "mlflow": {"tracking_uri": f"http://a:{MASK}@h", "api_key": MASK, "experiment": "e"}
    }
    assert sorted(secret_values(opts)) == ["k-5678", "pw-1234"]
    assert redact_text("failed with k-5678 at http://a:pw-1234@h", secret_values(opts)) == (
        f"failed with {MASK} at http://a:{MASK}@h"
    )


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("WANDB_API_KEY", True),
        ("api_token", True),
        ("hub_token", True),
        ("password", True),
        ("credentials", True),
        ("include_num_input_tokens_seen", False),
        ("tokenizer_name", False),
        ("author", False),
    ],
)
def test_a_secret_option_is_named_by_a_whole_word(name: str, secret: bool) -> None:
    """`token` as a word of the name is a secret; a word merely containing it (`tokens_seen`) is not."""
    assert is_secret_key(name) is secret
