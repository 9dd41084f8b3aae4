"""The knowledge base's value types: loaded documents, chunks, search hits and reports.

These pydantic models are what crosses the package's boundary (the HTTP endpoints, the MCP server
and the RAG provider serialise them as they are). They carry data only; no I/O happens here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """A run of text under one heading path (or on one PDF page)."""

    model_config = ConfigDict(frozen=True)

    heading_path: tuple[str, ...] = ()
    text: str
    page: int | None = Field(None, description="1-based page number (PDF)")


class LoadedDocument(BaseModel):
    """A parsed file: its title and its text, in order, as sections."""

    source: str = Field(description="absolute path of the file")
    title: str
    file_type: str = Field(description="suffix without the dot, lower case: md, pdf, ...")
    sections: list[Section]


class Chunk(BaseModel):
    """One retrievable piece of a document, with where it came from."""

    id: str = Field(description="deterministic: hash of source, index and content")
    text: str
    source: str
    title: str
    heading_path: list[str] = Field(default_factory=list)
    page: int | None = None
    file_type: str
    chunk_index: int
    content_hash: str = Field(description="sha256 of the chunk's text")
    tokens: int = 0

    def indexed_text(self) -> str:
        """What is embedded and BM25-indexed: title and headings give a chunk its context."""
        headings = self.heading_path
        if headings and headings[0] == self.title:  # a Markdown/HTML h1 is usually the title
            headings = headings[1:]
        header = " > ".join([self.title, *headings])
        if not header or self.text.startswith(header):  # e.g. a text file's title line
            return self.text
        return f"{header}\n{self.text}"


class SearchFilters(BaseModel):
    """Restricts a search to some documents. Empty fields restrict nothing."""

    path_prefix: str | None = Field(
        None, description="only files under this folder (or this exact file)"
    )
    file_types: list[str] | None = Field(None, description="only these suffixes, e.g. ['pdf']")

    def matches(self, source: str, file_type: str) -> bool:
        if self.file_types and file_type not in self.normalised_types():
            return False
        if self.path_prefix:
            prefix = self.path_prefix.rstrip("/")
            return source == prefix or source.startswith(prefix + "/")
        return True

    def normalised_types(self) -> list[str]:
        return [t.lower().lstrip(".") for t in self.file_types or []]

    def is_empty(self) -> bool:
        return not self.path_prefix and not self.file_types


class Hit(BaseModel):
    """One search result. `score` orders the results; the stage scores show how it got there."""

    chunk_id: str
    text: str
    score: float
    source: str
    title: str
    heading_path: list[str] = Field(default_factory=list)
    page: int | None = None
    chunk_index: int = 0
    file_type: str = ""
    dense_score: float | None = Field(None, description="cosine similarity to the query")
    bm25_score: float | None = None
    fused_score: float | None = None
    rerank_score: float | None = Field(None, description="set when a reranker ran")


class SearchStage(BaseModel):
    """What one stage of a search did (for `--explain` and debugging)."""

    name: str
    candidates: int
    ms: float
    detail: str = ""


class SearchResult(BaseModel):
    query: str
    k: int
    fusion: str
    hits: list[Hit]
    stages: list[SearchStage]


class Document(BaseModel):
    """One ingested file."""

    source: str
    title: str
    file_type: str
    content_hash: str
    chunks: int
    updated_at: float


class FileError(BaseModel):
    path: str
    error: str


class IngestReport(BaseModel):
    """What an ingest did, file by file."""

    kb: str
    added: list[str] = Field(default_factory=list)
    updated: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list, description="unsupported file types")
    failed: list[FileError] = Field(default_factory=list, description="files that did not parse")
    chunks_embedded: int = 0
    seconds: float = 0.0


class IngestProgress(BaseModel):
    """Sent to an ingest's progress callback after every batch."""

    files_total: int
    files_done: int
    chunks_done: int
    current: str = ""


class KBInfo(BaseModel):
    name: str
    embedding: str
    dimensions: int
    store: str
    documents: int = 0
    chunks: int = 0
    created_at: float
