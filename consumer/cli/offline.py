"""``shelver categorize``: the service's decode → fetch → categorize path over JSON lines, without Kafka.

Like the service, it overlaps the next batches' image downloads and decoding with the current batch's
inference (`AHEAD` batches ahead, so a bounded number of images in memory), so a file is categorized at
about the speed of the stream.
"""
from __future__ import annotations

import json
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import IO, Iterator

from consumer import scoring
from models.categorizer import Categorizer

AHEAD = 2  # batches fetched ahead of the one being scored: at most AHEAD + 1 batches of images in memory


def _parse(chunk: list[tuple[int, str]]) -> list:
    parsed: list = []
    for n, line in chunk:
        try:
            parsed.append((n, scoring.validate(json.loads(line))))
        except json.JSONDecodeError as exc:
            parsed.append((n, scoring.InvalidEvent("undecodable", f"not JSON: {exc}")))
        except scoring.InvalidEvent as exc:
            parsed.append((n, exc))
        except (TypeError, ValueError) as exc:  # JSON but not an object, etc.
            parsed.append((n, scoring.InvalidEvent("schema_invalid", str(exc)[:500])))
    return parsed


def categorize_lines(src: IO[str], dst: IO[str], categorizer: Categorizer, fetcher, batch_size: int,
                     source: str = "-", review_threshold: float | None = None) -> dict[str, int]:
    """One output line per input line, in order: a CategoryAssigned, or ``{"line", "error", "error_reason"}``.

    ``source_topic`` is the input's name and ``source_offset`` the 0-based line number, so every
    result stays traceable to its input line.
    """
    counts = {"results": 0, "errors": 0}
    if review_threshold is None:  # hitl: the artifact calibration's suggested threshold
        review_threshold = getattr(categorizer, "default_review_threshold", None)
    lines = enumerate(src)

    def batches(pool: ThreadPoolExecutor) -> Iterator[tuple[list, list, Future]]:
        """(parsed lines, valid events, their images being fetched) per batch, fetching as soon as read."""
        while chunk := list(islice(lines, batch_size)):
            parsed = _parse(chunk)
            good = [(n, ev) for n, ev in parsed if not isinstance(ev, scoring.InvalidEvent)]
            yield parsed, good, pool.submit(scoring.fetch_images, fetcher, categorizer, [ev.image_url for _, ev in good])

    with ThreadPoolExecutor(AHEAD, thread_name_prefix="categorize-fetch") as pool:
        upcoming = batches(pool)
        queued = deque(islice(upcoming, AHEAD))
        while queued:
            parsed, good, fetching = queued.popleft()
            queued.extend(islice(upcoming, 1))  # the next batches download while this one is scored
            images, _ = fetching.result()
            decisions = categorizer.categorize([scoring.text_of(ev) for _, ev in good], [img for img, _ in images])
            out = {n: scoring.result(ev, d, err, categorizer, source_topic=source, source_partition=0,
                                     source_offset=n, replayed=False, review_threshold=review_threshold).model_dump_json()
                   for (n, ev), d, (_, err) in zip(good, decisions, images)}
            for n, ev in parsed:
                if n in out:
                    counts["results"] += 1
                    dst.write(out[n] + "\n")
                else:
                    counts["errors"] += 1
                    dst.write(json.dumps({"line": n, "error": ev.code, "error_reason": ev.reason}) + "\n")
    return counts
