"""``shelver`` with the small test model instead of a trained artifact, for subprocess tests.

``TINY_DELAY_S`` makes every batch's inference take at least that long, so a signal reliably
lands mid-stream; ``TINY_STARTED`` names a file created when the first inference starts.
"""
import os
import sys
import time

from tiny_categorizer import TinyCategorizer

from consumer.cli import main


class SlowTiny(TinyCategorizer):
    def categorize(self, texts, images):
        if started := os.environ.get("TINY_STARTED"):
            open(started, "a").close()
        time.sleep(float(os.environ.get("TINY_DELAY_S", "0")))
        return super().categorize(texts, images)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], load_categorizer=lambda settings: SlowTiny()))
