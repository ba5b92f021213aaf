"""The ``shelver`` command (`consumer.cli.shelver.main`) and the commands that are not the service:
show, replay, produce-sample (sample), taxonomy apply, doctor, categorize (offline), and their progress output."""
from consumer.cli.shelver import main

__all__ = ["main"]
