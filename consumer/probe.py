"""``python -m consumer.probe [/livez]``: the container's HEALTHCHECK, without curl in the image.

Exit 0 when the service's health endpoint (127.0.0.1:SHELVER_METRICS_PORT, default 9464)
answers 2xx within the timeout, 1 otherwise, with the reason on stderr (Docker keeps it in
``docker inspect``'s health log).
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe(url: str, timeout_s: float = 4.0) -> str | None:
    """None when ``url`` answers 2xx; otherwise why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - a fixed loopback URL
            return None if 200 <= response.status < 300 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def main(argv: list[str] | None = None) -> int:
    path = (argv if argv is not None else sys.argv[1:] or ["/livez"])[0]
    url = f"http://127.0.0.1:{os.environ.get('SHELVER_METRICS_PORT', '9464')}{path}"
    problem = probe(url)
    if problem:
        print(f"{url}: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
