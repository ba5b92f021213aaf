"""``shelver review``: serve the review console, or ``--add-user NAME`` to the password file."""
from __future__ import annotations

import getpass
import sys

from consumer.config import Settings
from consumer.logs import get_logger

log = get_logger("shelver.review")


def main(settings: Settings, add_user: str | None = None) -> int:
    from consumer.review.auth import PasswordFileError, add_user as add, read_password_file

    def fail(message: str, code: int = 2) -> int:
        print(f"shelver review: {message}", file=sys.stderr, flush=True)
        return code

    if add_user is not None:
        if settings.review_password_file is None:
            return fail("set SHELVER_REVIEW_PASSWORD_FILE to the file to add the reviewer to")
        password = getpass.getpass(f"password for {add_user}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        try:
            add(settings.review_password_file, add_user, password)
        except PasswordFileError as exc:
            return fail(str(exc))
        print(f"reviewer {add_user} written to {settings.review_password_file}")
        return 0
    if not settings.review_topic or not settings.corrections_topic:
        return fail("configuration error: the review console needs SHELVER_REVIEW_TOPIC and SHELVER_CORRECTIONS_TOPIC")
    if not settings.review_trusted_header:
        if settings.review_password_file is None:
            return fail("configuration error: set SHELVER_REVIEW_PASSWORD_FILE (basic auth) or "
                        "SHELVER_REVIEW_TRUSTED_HEADER (a trusted reverse proxy)")
        try:
            if not read_password_file(settings.review_password_file):
                return fail(f"configuration error: {settings.review_password_file} names no reviewer")
        except PasswordFileError as exc:
            return fail(f"configuration error: {exc}")
    from consumer.adapters.admin import StartupError, check_startup
    from consumer.config import ConfigError
    from consumer.logs import Scrubber
    from consumer.review.app import serve

    try:
        check_startup(settings, topics=[settings.review_topic, settings.corrections_topic])
    except ConfigError as exc:  # e.g. a librdkafka option it refuses: one line and exit 2, as `consume`
        return fail(f"configuration error: {exc}")
    except StartupError as exc:  # librdkafka's text is quoted: scrub it like a log line, as `consume`
        return fail(Scrubber(settings.secret_values())(f"start-up check failed: {exc}"), 1)
    log.info("review console", host=settings.review_host, port=settings.review_port,
             auth="trusted header" if settings.review_trusted_header else "basic")
    return serve(settings)
