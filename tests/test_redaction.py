"""Secrets never show: reprs, redaction of registered values and URL passwords."""

from fliplet_workers.redaction import Secret, redact, register


def test_secret_repr_hides_the_value() -> None:
    secret = Secret("hunter2-pass")
    assert "hunter2" not in repr(secret) and "hunter2" not in repr({"password": secret})
    assert secret.reveal() == "hunter2-pass"


def test_registered_secrets_and_url_passwords_are_redacted() -> None:
    register("tok-abc-123")
    register("4321")
    text = redact("token tok-abc-123 failed for postgresql://bob:p%40ss@db:5432/x on port 54321, pin 4321.")
    assert "tok-abc-123" not in text and "p%40ss" not in text
    assert "port 54321" in text  # a short secret inside a longer number is left alone
    assert "pin ***." in text
