"""A small lexical (BM25) search over a bundled document corpus.

Documents are tokenized into lowercase words, English stopwords are dropped and a trailing plural
"s" is stripped, so "caches" finds "cache". Each term's BM25 weight per document is computed once
at build time; a query only sums precomputed weights.

>>> corpus = Corpus.from_jsonl("workflows/data/research_corpus.jsonl")
>>> corpus.search_text("how does paged attention work?")
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

K1, B = 1.2, 0.75
SNIPPET_CHARS = 300
MAX_K = 10

STOPWORDS = frozenset("""
a about above after again all also am an and any are as at be been before being below between both
but by can could did do does doing down during each few for from further had has have having he her
here hers him his how i if in into is it its itself just me more most my no nor not now of off on
once only or other our ours out over own same she should so some such than that the their theirs
them then there these they this those through to too under until up very was we were what when
where which while who whom why will with would you your yours
""".split())

_WORD = re.compile(r"[a-z0-9]+")


class Document(NamedTuple):
    id: str
    title: str
    text: str


def _normalize(word: str) -> str:
    """A very light stemmer: drop a plural "s" (not "ss", not in short words)."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens without stopwords, plural "s" stripped."""
    return [_normalize(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


class Corpus:
    """Documents plus a BM25 index (k1=1.2, b=0.75) over their titles and texts."""

    __slots__ = ("docs", "_postings")

    def __init__(self, docs: Sequence[Document]) -> None:
        self.docs: tuple[Document, ...] = tuple(docs)
        ids = [d.id for d in self.docs]
        if len(set(ids)) != len(ids):
            dup = next(i for i, n in Counter(ids).items() if n > 1)
            raise ValueError(f"duplicate document id {dup!r}")
        self._postings = self._index()

    def _index(self) -> dict[str, list[tuple[int, float]]]:
        """term -> [(doc index, BM25 weight of the term in that doc)]."""
        counts = [Counter(tokenize(f"{d.title} {d.text}")) for d in self.docs]
        lengths = [sum(c.values()) for c in counts]
        avg_len = (sum(lengths) / len(lengths)) if lengths else 0.0
        by_term: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, c in enumerate(counts):
            for term, tf in c.items():
                by_term[term].append((i, tf))
        n = len(self.docs)
        postings: dict[str, list[tuple[int, float]]] = {}
        for term, hits in by_term.items():
            idf = math.log(1.0 + (n - len(hits) + 0.5) / (len(hits) + 0.5))
            postings[term] = [
                (i, idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * lengths[i] / avg_len)))
                for i, tf in hits]
        return postings

    @classmethod
    def from_jsonl(cls, path: str | Path) -> Corpus:
        """Load one {"id", "title", "text"} object per line; blank lines are skipped."""
        docs: list[Document] = []
        seen: set[str] = set()
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                doc = _parse_line(line, f"{path}:{lineno}")
                if doc.id in seen:
                    raise ValueError(f"{path}:{lineno}: duplicate document id {doc.id!r}")
                seen.add(doc.id)
                docs.append(doc)
        return cls(docs)

    def __len__(self) -> int:
        return len(self.docs)

    def search(self, query: str, k: int = 3) -> list[tuple[Document, float]]:
        """The top-k documents for `query` with their scores, best first (ties by id)."""
        if k <= 0:
            return []
        scores: dict[int, float] = defaultdict(float)
        for term in set(tokenize(query)):
            for i, weight in self._postings.get(term, ()):
                scores[i] += weight
        ranked = sorted(scores.items(), key=lambda item: (-item[1], self.docs[item[0]].id))
        return [(self.docs[i], score) for i, score in ranked[:k]]

    def search_text(self, query: str, k: int = 3) -> str:
        """Search the reference library and return the best matching passages."""
        if not isinstance(query, str) or not query.strip():
            return "error: empty query"
        try:
            k = max(1, min(int(k), MAX_K))
        except (TypeError, ValueError):
            k = 3
        hits = self.search(query, k)
        if not hits:
            return f"no results for '{query}'"
        return "\n".join(f"[{d.id}] {d.title}: {_snippet(d.text)}" for d, _ in hits)


def _snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The start of `text`, cut at a word boundary near `limit` characters."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > limit // 2 else limit].rstrip(" ,;:") + "..."


def _parse_line(line: str, where: str) -> Document:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: invalid JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [key for key in ("id", "title", "text") if not isinstance(obj.get(key), str)]
    if missing:
        raise ValueError(f"{where}: missing or non-string field(s): {', '.join(missing)}")
    return Document(obj["id"], obj["title"], obj["text"])
