"""A source folder as people keep them, for the upload's and the featurize step's tests."""

from __future__ import annotations

import os
from pathlib import Path

from tests.imagefactory import encode, gradient, jpeg


def odd_source(root: Path) -> Path:
    """A folder as people curate them: odd names, links of every kind, a folder named like a photo."""
    src = root / "source"
    (src / "Apple").mkdir(parents=True)
    (src / "Apple" / "ok.jpg").write_bytes(jpeg(1))
    (src / "Apple" / "UPPER.JPG").write_bytes(jpeg(2))
    (src / "Apple" / "Mixed.JpEg").write_bytes(jpeg(3))
    (src / "Apple" / "new\nline.jpg").write_bytes(jpeg(4))
    (src / "Apple" / "tab\there.jpg").write_bytes(jpeg(5))
    os.close(os.open(os.fsencode(src / "Apple") + b"/latin1-\xe9.jpg", os.O_CREAT | os.O_WRONLY))
    (src / "Apple" / "dangling.jpg").symlink_to(src / "Apple" / "no such file.jpg")
    (src / "Apple" / "loop.jpg").symlink_to(src / "Apple" / "loop.jpg")
    (src / "Apple" / "link to ok.jpg").symlink_to(src / "Apple" / "ok.jpg")
    (src / "Apple" / "parent").symlink_to(src)  # a folder link back up the tree
    (src / "Looks like.jpg").mkdir()
    (src / "Looks like.jpg" / "inside.png").write_bytes(encode(gradient(50, 50, seed=6), "PNG"))
    os.mkfifo(src / "Apple" / "a pipe.jpg")
    (src / "Apple" / ".hidden.jpg").write_bytes(b"hidden")
    return src


EXPECTED = {
    "Apple/Mixed.JpEg": None,
    "Apple/UPPER.JPG": None,
    "Apple/a pipe.jpg": "not a regular file (a pipe, socket or device)",
    "Apple/dangling.jpg": "broken symbolic link: its target does not exist",
    "Apple/latin1-\\xe9.jpg": "file name is not valid UTF-8: rename the file",
    "Apple/link to ok.jpg": None,
    "Apple/loop.jpg": "symbolic link loop: it points back to itself",
    "Apple/new\nline.jpg": "file name contains a control character (newline): rename the file",
    "Apple/ok.jpg": None,
    "Apple/parent": "symbolic link loop: it points to a folder that contains it",
    "Apple/tab\there.jpg": "file name contains a control character (tab): rename the file",
    "Looks like.jpg/inside.png": None,
}
