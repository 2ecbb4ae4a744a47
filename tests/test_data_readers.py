"""Readers on the real files of ../shared/data, against the verified counts of its MANIFEST.md."""

import re
import warnings

import pytest

from samtone_tf.data.datasets import load_evaluation, load_training_pairs, parse_name
from samtone_tf.data.squad import read_squad, squad_counts

# name, split -> (documents, queries, judgements), as MANIFEST.md states them.
BEIR_COUNTS = {
    ("beir:scifact", "test"): (5183, 300, 339),
    ("beir:scifact", "train"): (5183, 809, 919),
    ("beir:cranfield", "test"): (1400, 225, 1612),
    ("beir:medline", "test"): (1033, 30, 696),
    ("beir:cacm", "test"): (3204, 52, 796),
    ("beir:npl", "test"): (11429, 93, 2083),
    ("beir:trec-dl-2019-pool", "test"): (14581, 43, 4337),
}


@pytest.mark.parametrize("name,split", list(BEIR_COUNTS))
def test_beir_layout_sets_have_their_official_counts(shared_data, name, split):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_evaluation(name, split, shared_data)
    documents, queries, judgements = BEIR_COUNTS[(name, split)]
    assert data.counts() == dict(documents=documents, queries=queries, judgements=judgements)


def test_scifact_queries_file_holds_train_and_test_claims(shared_data):
    from samtone_tf.data.beir import read_queries

    assert len(read_queries(shared_data / "beir" / "scifact" / "queries.jsonl")) == 1109


def test_cranfield_empty_documents_are_kept_with_one_warning(shared_data):
    with pytest.warns(UserWarning, match=r"2 documents have an empty title and text \(kept\): 471, 995"):
        data = load_evaluation("beir:cranfield", "test", shared_data)
    assert data.corpus["471"] == ("", "") and data.document_text("995") == ""


def test_trec_dl_pool_keeps_graded_judgements(shared_data):
    data = load_evaluation("beir:trec-dl-2019-pool", "test", shared_data)
    grades = [g for judged in data.qrels.values() for g in judged.values()]
    assert set(grades) == {0, 1, 2, 3}
    assert sum(g >= 2 for g in grades) == 1789
    assert all(any(g >= 2 for g in judged.values()) for judged in data.qrels.values())


def test_beir_joins_title_and_text_like_beir(shared_data):
    data = load_evaluation("beir:scifact", "test", shared_data)
    title, text = data.corpus["4983"]
    assert data.document_text("4983") == f"{title} {text}"


def test_wikiqa_test_counts_and_skipped_questions(shared_data):
    data = load_evaluation("wikiqa", "test", shared_data)
    assert len(data.corpus) == 5961  # distinct sentence ids
    assert len(data.queries) == 243  # of 633 questions, those with a correct sentence
    assert "390 of 633 questions have no correct sentence" in data.notes[0]


def test_wikiqa_train_reads_by_header_names(shared_data):
    pairs = load_training_pairs("wikiqa", "train", shared_data)
    assert len(pairs) == 1040 and len({p.query_id for p in pairs}) == 873


def test_squad_files_have_their_official_counts(shared_data):
    expected = {
        "squad/dev-v1.1.json": dict(articles=48, paragraphs=2067, questions=10570, answerable=10570),
        "squad/train-v1.1.reconstructed.json": dict(articles=442, paragraphs=18896, questions=87599,
                                                     answerable=87599),
        "squad/dev-v2.0.rebuilt.json": dict(articles=35, paragraphs=1204, questions=11873, answerable=5928),
        "squad2-dev-sample/dev-v2.0-sample.json": dict(articles=5, paragraphs=173, questions=1407,
                                                        answerable=705),
    }
    for relative, counts in expected.items():
        assert squad_counts(read_squad(shared_data / relative)) == counts, relative


def test_reqa_squad_dev_counts(shared_data, capsys):
    data = load_evaluation("reqa:squad", "dev", shared_data)
    counts = data.counts()
    print("ReQA SQuAD dev (pysbd sentences):", counts)
    # Our segmentation: 10,264 distinct sentences after merging identical ones (MultiReQA's
    # official boundaries give 10,642 candidates); every answerable question is kept.
    assert counts == dict(documents=10264, queries=10570, judgements=11419)
    # Every answer start lies in a gold sentence, and every gold sentence holds an answer start.
    paragraphs = {q.question_id: (p, q) for p in read_squad(shared_data / "squad" / "dev-v1.1.json")
                  for q in p.questions}
    for question_id in data.qrels:
        paragraph, question = paragraphs[question_id]
        gold_spans = {
            candidate: [(m.start(), m.start() + len(data.corpus[candidate][1]))
                        for m in re.finditer(re.escape(data.corpus[candidate][1]), paragraph.context)]
            for candidate in data.qrels[question_id]
        }
        def holds(spans, start):
            return any(s <= start < e for s, e in spans)
        for start in question.answer_starts:
            assert any(holds(spans, start) for spans in gold_spans.values()), question_id
        for spans in gold_spans.values():
            assert any(holds(spans, start) for start in question.answer_starts), question_id
        assert all(data.contexts[c] for c in data.qrels[question_id])


def test_reqa_squad2_skips_unanswerable_questions(shared_data):
    data = load_evaluation("reqa:squad2-dev-sample/dev-v2.0-sample.json", "dev", shared_data)
    assert len(data.queries) == 705


def test_multireqa_official_candidates(shared_data):
    data = load_evaluation("multireqa:squad", "dev", shared_data)
    assert data.counts()["documents"] == 10642 and len(data.queries) == 10570
    assert sum(len(gold) > 1 for gold in data.qrels.values()) == 853


def test_training_formats(shared_data):
    triples = load_training_pairs("msmarco:msmarco/train-triples-sample", data_directory=shared_data)
    triples = list(triples)
    assert len(triples) == 100 and all(len(p.hard_negatives) == 1 for p in triples)
    nq = load_training_pairs("flagembedding:flagembedding-samples/nq.jsonl", data_directory=shared_data)
    assert len(nq) == 10 and sorted(len(p.hard_negatives) for p in nq)[:2] == [79, 100]
    marco = load_training_pairs("flagembedding:flagembedding-samples/msmarco.jsonl", data_directory=shared_data)
    assert all(len(p.hard_negatives) == 25 for p in marco)
    scifact = load_training_pairs("beir:scifact", "train", shared_data)
    assert len(scifact) == 919


def test_dataset_names_are_checked():
    with pytest.raises(ValueError, match="unknown dataset 'nope:x'"):
        parse_name("nope:x")
    with pytest.raises(ValueError, match="needs an argument"):
        parse_name("beir")
    assert parse_name("wikiqa") == ("wikiqa", "")


def test_msmarco_official_layout_is_streamed(tmp_path, shared_data):
    from samtone_tf.data.msmarco import iter_triples, msmarco_training_pairs, read_msmarco
    from samtone_tf.data.records import StreamedPairs

    # Real MS MARCO passages (from the DL19 pool) written in the official collection layout.
    pool = load_evaluation("beir:trec-dl-2019-pool", "test", shared_data)
    passages = list(pool.corpus.items())[:50]
    (tmp_path / "collection.tsv").write_text("".join(f"{pid}\t{text}\n" for pid, (_, text) in passages))
    queries = list(pool.queries.items())[:3]
    for split in ("train", "dev"):
        (tmp_path / f"queries.{split}.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in queries))
        (tmp_path / f"qrels.{split}.tsv").write_text(
            "".join(f"{q}\t0\t{passages[i][0]}\t1\n" for i, (q, _) in enumerate(queries))
            + f"{queries[0][0]} 0 not-in-collection 1\n"
        )
    data = read_msmarco(tmp_path, "dev")
    assert data.counts() == dict(documents=50, queries=3, judgements=3)
    assert "1 judgements name unknown ids" in data.notes[0]
    pairs = msmarco_training_pairs(tmp_path)
    assert [(p.query_id, p.document_id) for p in pairs] == [(q, passages[i][0]) for i, (q, _) in enumerate(queries)]
    # With a triples file the pairs are streamed: re-read on each pass, never held whole.
    (tmp_path / "triples.train.small.tsv").write_text("q one\tpositive one\tnegative one\n")
    streamed = msmarco_training_pairs(tmp_path)
    assert isinstance(streamed, StreamedPairs)
    assert [p.hard_negatives for p in streamed] == [("negative one",)] == [p.hard_negatives for p in streamed]
    assert next(iter_triples(tmp_path / "triples.train.small.tsv")).query_id.startswith("q")


def test_reqa_prefix_of_training_pairs_matches_the_full_read(shared_data, tmp_path):
    import json

    from samtone_tf.data.squad import reqa_training_pairs

    # A real 3-article SQuAD training file: the prefix read must equal the start of the full read.
    train = json.loads((shared_data / "squad" / "train-v1.1.reconstructed.json").read_text())
    train["data"] = train["data"][:3]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(train))
    full = reqa_training_pairs(path)
    assert reqa_training_pairs(path, max_pairs=200) == full[:200]
    assert len(load_training_pairs(f"reqa:{path}", max_pairs=7)) == 7


def test_reqa_pairs_past_the_end_of_the_file_are_segmented_once_then_read_from_the_cache(shared_data, tmp_path,
                                                                                          monkeypatch):
    import json

    from samtone_tf.data import squad

    # `train` asks for steps x batch pairs, which can exceed the file: that read segments every paragraph, so it
    # caches the spans, and later reads of any prefix take them from the cache instead of segmenting again.
    monkeypatch.setenv("SAMTONE_CACHE", str(tmp_path / "cache"))
    train = json.loads((shared_data / "squad" / "train-v1.1.reconstructed.json").read_text())
    train["data"] = train["data"][:2]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(train))
    short = squad.reqa_training_pairs(path, max_pairs=5)
    assert not list((tmp_path / "cache").glob("sentences-*.json"))  # a prefix leaves no partial cache
    everything = squad.reqa_training_pairs(path, max_pairs=10**9)
    assert short == everything[:5] and len(everything) > 5
    assert len(list((tmp_path / "cache").glob("sentences-*.json"))) == 1

    def no_segmenting(paragraph):
        raise AssertionError("segmented again although the spans are cached")

    monkeypatch.setattr(squad, "sentence_spans", no_segmenting)
    assert squad.reqa_training_pairs(path, max_pairs=10**9) == everything
    assert squad.reqa_training_pairs(path, max_pairs=5) == short
    assert squad.reqa_training_pairs(path) == everything
