"""BM25 search over the bundled research corpus."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agentrt.tools.search import Corpus, Document, tokenize

CORPUS_PATH = Path(__file__).resolve().parents[1] / "workflows" / "data" / "research_corpus.jsonl"


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus.from_jsonl(CORPUS_PATH)


def test_loads_every_document(corpus: Corpus) -> None:
    lines = [line for line in CORPUS_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert 24 <= len(corpus) == len(lines) <= 30
    ids = [d.id for d in corpus.docs]
    assert len(set(ids)) == len(ids)
    for doc in corpus.docs:
        assert doc.id and doc.title
        assert 60 <= len(doc.text.split()) <= 140, doc.id


@pytest.mark.parametrize(("query", "best"), [
    ("how does paged attention work?", "paged-attention"),
    ("Paged Attention", "paged-attention"),
    ("reusing the KV cache of a shared system prompt prefix", "prefix-caching"),
    ("draft model proposes tokens", "speculative-decoding"),
    ("who invented the transistor at Bell Labs", "transistor-invention"),
    ("waggle dance of honeybees", "waggle-dance"),
    ("Roman aqueducts", "roman-aqueducts"),
    ("coral bleaching", "coral-bleaching"),
])
def test_relevant_document_first(corpus: Corpus, query: str, best: str) -> None:
    hits = corpus.search(query)
    assert hits[0][0].id == best


def test_related_documents_follow(corpus: Corpus) -> None:
    ids = [d.id for d, _ in corpus.search("KV cache memory for LLM inference", k=4)]
    assert {"kv-cache", "paged-attention"} <= set(ids)
    bee_ids = {d.id for d, _ in corpus.search("honeybees", k=3)}
    assert bee_ids == {"honeybee-colony", "waggle-dance", "pollination"}


def test_scores_sorted_and_k_respected(corpus: Corpus) -> None:
    hits = corpus.search("sun light water", k=5)
    assert len(hits) == 5
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    assert corpus.search("solar", k=0) == []
    assert len(corpus.search("the water", k=100)) < len(corpus)  # only matching documents


@pytest.mark.parametrize("query", ["", "   ", "the of and", "What is it? How would they?", "!!!"])
def test_no_content_words_no_results(corpus: Corpus, query: str) -> None:
    assert corpus.search(query) == []


def test_ties_broken_by_id() -> None:
    docs = [Document(i, "same", "identical words here") for i in ("c", "a", "b")]
    docs.append(Document("z", "other", "nothing in common"))
    corpus = Corpus(docs)
    hits = corpus.search("identical words")
    assert [d.id for d, _ in hits] == ["a", "b", "c"]
    assert len({s for _, s in hits}) == 1
    assert [d.id for d, _ in Corpus(list(reversed(docs))).search("identical words")] == ["a", "b", "c"]


def test_tokenize() -> None:
    assert tokenize("The caches, and THE bees!") == ["cache", "bee"]
    assert tokenize("glass process gas") == ["glass", "process", "gas"]


def test_bad_lines_report_line_number(tmp_path: Path) -> None:
    good = json.dumps({"id": "a", "title": "A", "text": "alpha"})
    cases = {
        "not json {": "invalid JSON",
        json.dumps(["a", "b"]): "JSON object",
        json.dumps({"id": "b", "title": "B"}): "text",
        json.dumps({"id": 3, "title": "B", "text": "t"}): "id",
        good: "duplicate",
    }
    for bad, reason in cases.items():
        path = tmp_path / "corpus.jsonl"
        path.write_text(f"{good}\n\n{bad}\n", encoding="utf-8")
        with pytest.raises(ValueError, match=rf"corpus\.jsonl:3: .*{reason}"):
            Corpus.from_jsonl(path)


def test_duplicate_ids_in_constructor() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Corpus([Document("a", "x", "y"), Document("a", "x", "z")])


def test_search_text_format(corpus: Corpus) -> None:
    text = corpus.search_text("paged attention", k=2)
    lines = text.split("\n")
    assert len(lines) == 2
    assert lines[0].startswith("[paged-attention] Paged attention and block-based KV memory: Paged attention")
    for line in lines:
        snippet = line.split(": ", 1)[1]
        assert len(snippet) <= 303 and snippet.endswith("...")
    assert corpus.search_text("the of and") == "no results for 'the of and'"
    assert corpus.search_text("xylophone") == "no results for 'xylophone'"
    assert corpus.search_text("").startswith("error:")
    assert len(corpus.search_text("solar", k=-5).split("\n")) == 1  # k clamped, never raises


def test_short_text_not_cut() -> None:
    corpus = Corpus([Document("s", "Short", "A short note about tea.")])
    assert corpus.search_text("tea") == "[s] Short: A short note about tea."


def test_search_is_fast(corpus: Corpus) -> None:
    query = "how does paged attention reduce wasted KV cache memory during batching"
    start = time.perf_counter()
    for _ in range(200):
        corpus.search(query)
    assert (time.perf_counter() - start) / 200 < 1e-3
