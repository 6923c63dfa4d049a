"""A strict check of report.html with the standard library's html.parser: the bytes are UTF-8,
every element that is opened is closed in order, and the visible text is returned for asserts."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source"}


class StrictParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'} at {self.getpos()}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if not self.stack or self.stack[-1] not in ("script", "style"):
            self.text.append(data)


def parse_page(path: Path) -> str:
    """The page's visible text; fails when the file is not strict UTF-8 or not well nested."""
    page = path.read_bytes().decode("utf-8")  # strict: a lone surrogate could not have been written
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert not parser.stack, f"never closed: {parser.stack}"
    return " ".join(parser.text)
