"""``shelver categorize``: the service's decode → fetch → categorize path over JSON lines, without Kafka.

Like the service, it overlaps the next batches' image downloads and decoding with the current batch's
inference (`AHEAD` batches ahead, so a bounded number of images in memory), so a file is categorized at
about the speed of the stream.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import IO

from consumer import scoring
from consumer.service.worker import isolate
from models.categorizer import Categorizer

AHEAD = 2  # batches fetched ahead of the one being scored: at most AHEAD + 1 batches of images in memory


@contextmanager
def replacing(path: Path) -> Iterator[IO[str]]:
    """A text file written beside ``path`` and renamed over it only when the block ends without error, with
    the old file's mode (a new one: as ``open`` would create it). A symlink, a device (``/dev/stdout``) or
    anything else that is not a plain file is written in place, as before."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        with path.open("w", encoding="utf-8") as f:
            yield f
        return
    umask = os.umask(0)
    os.umask(umask)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _parse(chunk: list[tuple[int, str | bytes]]) -> list:
    parsed: list = []
    for n, line in chunk:
        try:
            text = line.decode("utf-8") if isinstance(line, bytes) else line
            parsed.append((n, scoring.validate(json.loads(text))))
        except UnicodeDecodeError as exc:
            parsed.append((n, scoring.InvalidEvent("undecodable", f"not UTF-8: {exc}")))
        except RecursionError:  # JSON nested deeper than the parser goes
            parsed.append((n, scoring.InvalidEvent("undecodable", "not JSON: nested too deeply")))
        except json.JSONDecodeError as exc:
            parsed.append((n, scoring.InvalidEvent("undecodable", f"not JSON: {exc}")))
        except scoring.InvalidEvent as exc:
            parsed.append((n, exc))
        except (TypeError, ValueError) as exc:  # JSON but not an object, etc.
            parsed.append((n, scoring.InvalidEvent("schema_invalid", str(exc)[:500])))
    return parsed


def categorize_lines(src: IO[str] | IO[bytes], dst: IO[str], categorizer: Categorizer, fetcher, batch_size: int,
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
            texts, pixels = [scoring.text_of(ev) for _, ev in good], [img for img, _ in images]
            try:
                decisions = categorizer.categorize(texts, pixels) if good else []
            except Exception as exc:  # noqa: BLE001 - one line the model cannot read is that line's error
                decisions, failed = isolate(categorizer, texts, pixels, exc)
                for i, why in failed.items():
                    parsed[parsed.index(good[i])] = (good[i][0], scoring.InvalidEvent("inference_failed", why))
            out = {n: scoring.result(ev, d, err, categorizer, source_topic=source, source_partition=0,
                                     source_offset=n, replayed=False, review_threshold=review_threshold).model_dump_json()
                   for (n, ev), d, (_, err) in zip(good, decisions, images) if d is not None}
            for n, ev in parsed:
                if n in out:
                    counts["results"] += 1
                    dst.write(out[n] + "\n")
                else:
                    counts["errors"] += 1
                    dst.write(json.dumps({"line": n, "error": ev.code, "error_reason": ev.reason}) + "\n")
    return counts
