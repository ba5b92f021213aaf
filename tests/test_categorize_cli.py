"""``shelver categorize``: the service's decode → fetch → categorize path over files, without Kafka."""
import json

from PIL import Image
from tiny_categorizer import TARGETS, TinyCategorizer

from consumer.cli import main
from consumer.cli.sample import serve_directory
from schemas import CategoryAssigned


def test_categorize_file_one_line_out_per_line_in(tmp_path, monkeypatch):
    Image.new("RGB", (60, 80), (10, 120, 200)).save(tmp_path / "shirt.jpg")
    monkeypatch.setenv("SHELVER_IMAGE_ALLOWED_HOSTS", '["127.0.0.1"]')
    monkeypatch.setenv("SHELVER_MAX_BATCH_SIZE", "2")  # several batches, order must survive
    with serve_directory(tmp_path) as base:
        t = "2024-05-01T10:00:00Z"
        lines = [
            json.dumps({"product_id": "a", "title": "Blue shirt", "image_url": f"{base}/shirt.jpg", "event_time": t}),
            "this is not json",
            json.dumps({"product_id": "b", "title": "Wool coat", "image_url": f"{base}/gone.jpg", "event_time": t}),
            json.dumps({"product_id": "c", "title": "", "event_time": t}),  # nothing to categorize
            json.dumps({"title": "no id", "event_time": t}),
            json.dumps({"product_id": "d", "description": "<p>Silk scarf</p>", "event_time": t}),
        ]
        (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
        rc = main(["categorize", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")],
                  load_categorizer=lambda settings: TinyCategorizer())
    assert rc == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(out) == len(lines)
    assert [o.get("error") for o in out] == [None, "undecodable", None, "no_content", "schema_invalid", None]
    a, b, d = (CategoryAssigned.model_validate(out[i]) for i in (0, 2, 5))
    assert [a.product_id, b.product_id, d.product_id] == ["a", "b", "d"]
    assert a.image_used and a.category in TARGETS and a.source_offset == 0
    assert (b.image_used, b.image_error) == (False, "http_404")
    assert (d.image_used, d.image_error, d.source_offset) == (False, "no_url", 5)


def test_categorize_downloads_the_next_batch_while_the_model_scores_this_one(tmp_path):
    """The file path overlaps fetching with inference as the service does: the first batch's inference
    waits (bounded) until the second batch's images are being fetched, which only a pipeline allows."""
    import threading
    from io import StringIO

    from consumer.adapters.images import ImageFetcher
    from consumer.cli.offline import categorize_lines
    from consumer.config import Settings

    for i in range(4):
        Image.new("RGB", (40, 40), (60 * i, 100, 200)).save(tmp_path / f"p{i}.jpg")
    second_batch_fetching = threading.Event()

    class Watched:
        def __init__(self, fetcher):
            self.fetcher = fetcher

        def fetch_many(self, urls, target_size=None):
            if any(u.endswith("p2.jpg") for u in urls):
                second_batch_fetching.set()
            return self.fetcher.fetch_many(urls, target_size)

    class Scoring(TinyCategorizer):
        overlapped: list[bool] = []

        def categorize(self, texts, images):
            self.overlapped.append(second_batch_fetching.wait(10.0))  # bounded: the old path never sets it
            return super().categorize(texts, images)

    with serve_directory(tmp_path) as base:
        src = StringIO("".join(json.dumps({"product_id": f"p{i}", "title": "Blue shirt", "image_url": f"{base}/p{i}.jpg",
                                           "event_time": "2024-05-01T10:00:00Z"}) + "\n" for i in range(4)))
        dst = StringIO()
        fetcher = ImageFetcher(Settings(image_allowed_hosts=["127.0.0.1"]))
        try:
            counts = categorize_lines(src, dst, Scoring(), Watched(fetcher), batch_size=2)
        finally:
            fetcher.close()
    assert counts == {"results": 4, "errors": 0}
    assert Scoring.overlapped[0] is True
    out = [CategoryAssigned.model_validate_json(x) for x in dst.getvalue().splitlines()]
    assert [o.product_id for o in out] == ["p0", "p1", "p2", "p3"] and all(o.image_used for o in out)


def test_lines_that_are_not_utf8_nested_too_deeply_or_unreadable_by_the_model_are_their_own_errors(tmp_path):
    # Before: each of these ended the run with a traceback, and the results before it were never written.
    class FailsOnOne(TinyCategorizer):
        def categorize(self, texts, images):
            if any("unreadable" in t for t in texts):
                raise ValueError("tensor shape mismatch")
            return super().categorize(texts, images)

    t = "2024-05-01T10:00:00Z"
    lines = [json.dumps({"product_id": f"p{i}", "title": "Blue shirt", "event_time": t}).encode() for i in range(3)]
    lines[1:1] = [b'{"product_id": "x", "title": "caf\xe9"}', b"[" * 100_000,
                  json.dumps({"product_id": "u", "title": "unreadable top", "event_time": t}).encode()]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    rc = main(["categorize", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")],
              load_categorizer=lambda settings: FailsOnOne())
    assert rc == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o.get("error") for o in out] == [None, "undecodable", "undecodable", "inference_failed", None, None]
    assert "not UTF-8" in out[1]["error_reason"] and "nested too deeply" in out[2]["error_reason"]
    assert out[3] == {"line": 3, "error": "inference_failed", "error_reason": "ValueError: tensor shape mismatch"}
    assert [o.get("product_id") for o in out] == ["p0", None, None, None, "p1", "p2"]


def test_the_output_is_never_the_input_and_a_failed_run_leaves_an_existing_output_as_it_was(tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"product_id": "a", "title": "Blue shirt", "event_time": "2024-05-01T10:00:00Z"}) + "\n")
    before = data.read_bytes()
    rc = main(["categorize", "--input", str(data), "--output", str(data)], load_categorizer=lambda s: TinyCategorizer())
    assert rc == 2 and data.read_bytes() == before  # before: emptied, exit 0
    assert "is the input file" in capsys.readouterr().err
    previous = tmp_path / "out.jsonl"
    previous.write_text("yesterday's results\n")

    def broken(settings):
        raise RuntimeError("the artifact could not be loaded")

    try:
        main(["categorize", "--input", str(data), "--output", str(previous)], load_categorizer=broken)
    except RuntimeError:
        pass
    assert previous.read_text() == "yesterday's results\n"  # before: truncated before the model loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary file left


def test_the_output_keeps_its_mode_and_a_symlinked_output_writes_through_the_link(tmp_path):
    import os

    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"product_id": "a", "title": "Blue shirt", "event_time": "2024-05-01T10:00:00Z"}) + "\n")
    fresh, kept = tmp_path / "fresh.jsonl", tmp_path / "kept.jsonl"
    kept.write_text("old\n")
    kept.chmod(0o640)
    target, link = tmp_path / "target.jsonl", tmp_path / "link.jsonl"
    target.write_text("old\n")
    link.symlink_to(target)
    for out in (fresh, kept, link):
        assert main(["categorize", "--input", str(data), "--output", str(out)],
                    load_categorizer=lambda s: TinyCategorizer()) == 0
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() creates a file (a temporary one was 0600)
    assert kept.stat().st_mode & 0o777 == 0o640
    assert link.is_symlink() and json.loads(target.read_text())["product_id"] == "a"  # the link was replaced
