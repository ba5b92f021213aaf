"""docs/configuration.md's settings table is generated from the settings object and must match it."""
from __future__ import annotations

from consumer.config import Settings
from consumer.settings_doc import PAGE, generated_part, render


def test_the_configuration_page_matches_the_settings_object():
    assert generated_part(PAGE.read_text()) == render(), (
        "docs/configuration.md is out of date with consumer/config.py: run `python -m consumer.settings_doc`")


def test_every_setting_has_a_description_and_a_row_with_its_environment_variable():
    table = render()
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name} has no description (Field(description=...))"
        assert f"`SHELVER_{name.upper()}`" in table


def test_a_changed_setting_makes_the_page_differ(monkeypatch):
    field = Settings.model_fields["max_batch_size"]
    monkeypatch.setattr(field, "description", "something else")
    assert generated_part(PAGE.read_text()) != render()
