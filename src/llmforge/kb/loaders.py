"""Loaders: a file on disk -> a `LoadedDocument` (title, and text as sections with heading paths
or page numbers).

One loader per file type, chosen by suffix from the `LOADERS` table: txt (encoding detected:
UTF-8, else charset-normalizer's best guess, else GB18030, else Latin-1), Markdown (ATX and setext
headings, code fences respected), HTML (selectolax/Lexbor; h1-h6, script/style/nav dropped), PDF
(pypdf, one section per page) and DOCX (python-docx; `Heading N`/`Title` styles, tables). Text is
normalised to clean UTF-8 (no NUL or control characters, `\\n` line ends). A file that cannot be
parsed raises `LoadError` naming it; callers report it and go on. Loaders do not chunk.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from pathlib import Path

from llmforge.core.errors import InvalidRequestError
from llmforge.kb.types import LoadedDocument, Section


class LoadError(InvalidRequestError):
    """A file could not be read or parsed."""

    code = "kb_load_failed"


Loader = Callable[[Path], LoadedDocument]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)*")


def supported_suffixes() -> list[str]:
    return sorted(LOADERS)


def is_supported(path: Path) -> bool:
    return path.suffix.lower() in LOADERS


def load(path: Path) -> LoadedDocument:
    """Parse `path` with the loader for its suffix. Raises LoadError naming the file."""
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise LoadError(
            f"{path}: unsupported file type '{path.suffix or '(none)'}'; "
            f"supported: {', '.join(supported_suffixes())}"
        )
    try:
        doc = loader(path)
    except LoadError:
        raise
    except Exception as e:  # any parser's failure is this file's failure, not the ingest's
        raise LoadError(f"{path}: cannot be parsed ({type(e).__name__}: {e})") from None
    sections = [s for s in doc.sections if s.text.strip()]
    return doc.model_copy(update={"sections": sections})


def clean(text: str) -> str:
    """UTF-8-safe, NFC, `\\n` line ends, no control characters, no trailing spaces per line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates from bad PDFs
    text = unicodedata.normalize("NFC", text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def decode(data: bytes) -> str:
    """Text from bytes of an unknown encoding (UTF-8 and GBK/GB18030 Chinese are the common
    ones)."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", "replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
        if best is not None:
            return str(best)
    except ImportError:  # pragma: no cover - charset-normalizer is a dependency
        pass
    for encoding in ("gb18030", "latin-1"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", "replace")  # pragma: no cover - latin-1 decodes everything


TITLE_MAX_CHARS = 120


def _read_text(path: Path) -> str:
    try:
        return clean(decode(path.read_bytes()))
    except OSError as e:
        raise LoadError(f"{path}: cannot be read: {e.strerror or e}") from None


def _paragraph_text(text: str) -> str:
    return _BLANK_LINES.sub("\n\n", text).strip()


def load_text(path: Path) -> LoadedDocument:
    """Plain text. A short first line standing alone above a blank line is the title (as notes
    and exported articles are written); otherwise the file name is."""
    text = _paragraph_text(_read_text(path))
    first, _, rest = text.partition("\n\n")
    titled = bool(rest) and "\n" not in first and len(first) <= TITLE_MAX_CHARS
    return LoadedDocument(
        source=str(path),
        title=first.strip() if titled else path.stem,
        file_type=path.suffix.lower().lstrip("."),
        sections=[Section(text=text)],
    )


_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def load_markdown(path: Path) -> LoadedDocument:
    lines = _read_text(path).split("\n")
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []
    title: str | None = None
    in_fence = False

    def flush() -> None:
        text = _paragraph_text("\n".join(body))
        if text:
            sections.append(Section(heading_path=tuple(h for _, h in stack), text=text))
        body.clear()

    def heading(level: int, text: str) -> None:
        nonlocal title
        flush()
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, text))
        if title is None and level == 1:
            title = text

    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
            body.append(line)
            continue
        if not in_fence:
            atx = _ATX.match(line)
            if atx:
                heading(len(atx.group(1)), atx.group(2).strip())
                continue
            setext = _SETEXT.match(line)
            if setext and body and body[-1].strip():
                text = body.pop().strip()
                heading(1 if setext.group(1).startswith("=") else 2, text)
                continue
        body.append(line)
    flush()
    return LoadedDocument(
        source=str(path),
        title=title or path.stem,
        file_type=path.suffix.lower().lstrip("."),
        sections=sections,
    )


_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_BLOCKS = (*_HEADINGS, "p", "li", "pre", "blockquote", "td", "th", "dt", "dd", "figcaption")
_DROP = ("script", "style", "noscript", "template", "svg", "nav", "head")


def load_html(path: Path) -> LoadedDocument:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(_read_text(path))
    title_node = tree.css_first("title")
    page_title = title_node.text(strip=True) if title_node else ""
    for tag in _DROP:
        for node in tree.css(tag):
            node.decompose()
    root = tree.body or tree.root
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []
    first_h1: str | None = None

    def flush() -> None:
        if body:
            sections.append(
                Section(heading_path=tuple(h for _, h in stack), text="\n\n".join(body))
            )
            body.clear()

    if root is not None:
        blocks = root.css(",".join(_BLOCKS))
        for node in blocks:
            if _inside_block(node, root):
                continue
            text = clean(node.text(separator=" ", strip=True))
            text = re.sub(r"[ \t]+", " ", text)
            if not text:
                continue
            if node.tag in _HEADINGS:
                level = int(str(node.tag)[1])
                flush()
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, text))
                first_h1 = first_h1 or (text if level == 1 else None)
            else:
                body.append(text)
        flush()
        if not sections:  # text directly in <body>/<div> with no block elements
            text = clean(root.text(separator="\n", strip=True))
            if text:
                sections.append(Section(text=_paragraph_text(text)))
    return LoadedDocument(
        source=str(path),
        title=page_title or first_h1 or path.stem,
        file_type=path.suffix.lower().lstrip("."),
        sections=sections,
    )


def _inside_block(node: object, root: object) -> bool:
    parent = getattr(node, "parent", None)
    while parent is not None and parent is not root:
        if getattr(parent, "tag", None) in _BLOCKS:
            return True
        parent = getattr(parent, "parent", None)
    return False


def load_pdf(path: Path) -> LoadedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError(f"{path}: the PDF is encrypted; decrypt it first")
        sections = [
            Section(text=_paragraph_text(clean(page.extract_text() or "")), page=number)
            for number, page in enumerate(reader.pages, start=1)
        ]
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except PdfReadError as e:
        raise LoadError(f"{path}: not a readable PDF ({e})") from None
    return LoadedDocument(
        source=str(path),
        title=clean(str(meta_title)) or path.stem,
        file_type="pdf",
        sections=sections,
    )


def load_docx(path: Path) -> LoadedDocument:
    import docx

    document = docx.Document(str(path))
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []
    title = clean(document.core_properties.title or "")

    def flush() -> None:
        text = "\n\n".join(body)
        if text.strip():
            sections.append(Section(heading_path=tuple(h for _, h in stack), text=text))
        body.clear()

    for paragraph in document.paragraphs:
        text = clean(paragraph.text)
        if not text:
            continue
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        level = _docx_heading_level(style)
        if level is None:
            body.append(text)
            continue
        if level == 0:
            title = title or text
            continue
        flush()
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, text))
    flush()
    for table in document.tables:
        rows = [" | ".join(clean(c.text) for c in row.cells) for row in table.rows]
        text = "\n".join(r for r in rows if r.strip(" |"))
        if text:
            sections.append(Section(text=text))
    return LoadedDocument(
        source=str(path),
        title=title or path.stem,
        file_type="docx",
        sections=sections,
    )


def _docx_heading_level(style: str) -> int | None:
    """0 for the Title style, N for `Heading N`, None for body text."""
    if style == "Title":
        return 0
    match = re.fullmatch(r"Heading (\d)", style)
    return int(match.group(1)) if match else None


LOADERS: dict[str, Loader] = {
    ".txt": load_text,
    ".text": load_text,
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".html": load_html,
    ".htm": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
}
