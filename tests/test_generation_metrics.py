"""Generation metrics (E2E/WebNLG suite): hand-computed cases, documented values and, on real E2E and WebNLG dev
samples, cross-checks against the reference implementations that the E2E challenge's script (tuetschek/e2e-metrics)
runs: METEOR 1.5 (Java), ROUGE-L and CIDEr-D of the MS-COCO caption code (pycocoevalcap), after its PTBTokenizer."""

from __future__ import annotations

import contextlib
import csv
import ctypes
import json
import math
import os
import random
import shutil
import stat
import subprocess
import sys
import threading
import time
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from nltk.translate.meteor_score import meteor_score as nltk_meteor
from nltk.translate.nist_score import corpus_nist as nltk_corpus_nist
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from rouge_score import rouge_scorer

from pf2lora import metrics
from pf2lora.metrics import bleu, generation_metrics, meteor_exact_match, nist, ter

DATA_DIR = Path(os.environ.get("PF2LORA_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"no dataset copy at {DATA_DIR} (set PF2LORA_DATA_DIR)")
needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="no java on PATH: METEOR 1.5 and the PTBTokenizer need a Java runtime"
)

KEYS_WITH_JAVA = ["BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr", "TER"]
KEYS_WITHOUT_JAVA = ["BLEU", "NIST", "METEOR_exact_match", "ROUGE_L", "CIDEr", "TER"]

# A small multi-reference corpus with repeated words (so METEOR's alignment is ambiguous) and no punctuation (so
# every implementation tokenises it alike).
HYPS = [
    "the cat sat on the mat",
    "there is a cat on the mat",
    "a dog ran in the park and the dog barked",
]
REFS = [
    ["the mat the cat sat on", "a cat sat on a mat"],
    ["a cat is on the mat", "the mat has a cat on it"],
    ["the dog barked in the park", "in the park a dog ran and barked"],
]
NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2


@pytest.fixture(scope="module", autouse=True)
def no_jvm_left_behind() -> Iterator[None]:
    """generation_metrics keeps its METEOR JVM for the process' later calls: end it when this module is done."""
    yield
    metrics.close_meteor()


@pytest.fixture
def no_java(monkeypatch, tmp_path):
    """A PATH without java: generation_metrics must fall back (and say so)."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("java") is None


def without_java(hypotheses, references) -> dict[str, float]:
    with pytest.warns(UserWarning, match="no java on PATH"):
        scores = generation_metrics(hypotheses, references)
    assert list(scores) == KEYS_WITHOUT_JAVA
    return scores


# ----------------------------------------------------------------------------------------------- BLEU, TER

# sacreBLEU's README, "Using SacreBLEU from Python": BLEU = 48.53 for these hypotheses and two reference streams,
# and 29.44 ("Variable Number of References") once the first sentence's first reference is removed.
README_SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
README_REFS = [
    ["The dog bit the man.", "The dog had bit the man."],
    ["It was not unexpected.", "No one was surprised."],
    ["The man bit him first.", "The man had bitten the dog."],
]


def test_bleu_documented_values():
    assert round(bleu(README_SYS, README_REFS), 2) == 48.53
    assert round(bleu(README_SYS, [README_REFS[0][1:], *README_REFS[1:]]), 2) == 29.44


def test_ter_by_hand():
    # One substitution over a 6-word reference.
    assert ter(["the cat sat on the mat"], [["the cat sat on a mat"]]) == pytest.approx(100 / 6)
    # One block shift ("on the mat" to the end) is a single edit, where WER would count 6.
    assert ter(["on the mat the cat sat"], [["the cat sat on the mat"]]) == pytest.approx(100 / 6)
    # Fewest edits over each input's references (1 and 0) / summed mean reference lengths (6 and (2+3)/2).
    corpus = ter(
        ["the cat sat on the mat", "hello world"], [["the cat sat on a mat"], ["hello world", "hello there world"]]
    )
    assert corpus == pytest.approx(100 * 1 / (6 + 2.5))


# ----------------------------------------------------------------------------------------------- NIST


def test_nist_by_hand():
    # Reference words: a a b d (4). Info: a = log2(4/2) = 1, b = log2(4/1) = 2, "a b" = log2(count a / count ab) = 1.
    # Unigram hits a, b, a: (1 + 2 + 1) / 4 hypothesis unigrams; bigram hit "a b": 1 / 2 bigrams; lengths equal.
    assert nist(["a b", "a c"], [["a b"], ["a d"]]) == pytest.approx(1.0 + 0.5)
    # Info a = b = log2 3 and "a b" = log2(1/1) = 0; length ratio 2/3 halves the score (that is how beta is set).
    assert nist(["a b"], [["a b c"]]) == pytest.approx(0.5 * math.log2(3))


def test_nist_multi_reference_by_hand():
    # Reference words a b | a c d e | c: 7 in all, a and c twice, so info a = c = log2(7/2), b = log2 7,
    # "a b" = log2(2/1) = 1. Hits are clipped by any reference; the reference length is each input's mean,
    # (2 + 4)/2 + 1 = 4, against 3 hypothesis words.
    unigrams = (2 * math.log2(7 / 2) + math.log2(7)) / 3
    expected = (unigrams + 1 / 1) * math.exp(-NIST_BETA * math.log(3 / 4) ** 2)
    assert nist(["a b", "c"], [["a b", "a c d e"], ["c"]]) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(4))
def test_nist_matches_nltk_on_single_references(seed: int):
    # With one reference per input NLTK's corpus_nist and mteval agree (they differ on multiple references).
    rng = random.Random(seed)
    words = ["a", "b", "c", "d", "e", "f", "g", "h"]

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))

    hyps, refs = [sentence() for _ in range(6)], [[sentence()] for _ in range(6)]
    expected = nltk_corpus_nist([[r.split() for r in rs] for rs in refs], [h.split() for h in hyps])
    assert nist(hyps, refs) == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------- exact-match METEOR


def meteor_by_formula(matches: int, chunks: int, hyp_len: int, ref_len: int) -> float:
    p, r = matches / hyp_len, matches / ref_len
    return 100 * p * r / (0.9 * p + 0.1 * r) * (1 - 0.5 * (chunks / matches) ** 3)


def test_meteor_exact_match_by_hand():
    # "the cat sat on" + "the mat": 6 matches in 2 chunks. NLTK's greedy alignment takes the last "the" of the
    # reference for the first "the" of the hypothesis and counts 4 chunks.
    assert meteor_exact_match(["the cat sat on the mat"], [["the mat the cat sat on"]]) == pytest.approx(
        meteor_by_formula(6, 2, 6, 6)
    )
    # "the cat" matches: P = 2/3, R = 2/4, one chunk.
    assert meteor_exact_match(["the cat sat"], [["the cat was sitting"]]) == pytest.approx(
        meteor_by_formula(2, 1, 3, 4)
    )
    assert meteor_exact_match(["no match here"], [["this is a cat"]]) == 0.0


def test_meteor_exact_match_is_meteor_1_5_exact_module():
    # METEOR 1.5 (the jar in pycocoevalcap 1.2), exact module and Banerjee & Lavie's parameters:
    #   java -jar meteor-1.5.jar hyps.txt refs.txt -l en -norm -r 2 -m exact -p "0.9 3.0 0.5 0.5"
    # Segment scores 0.98148, 0.92213, 0.92014; system score from the best pairs' summed statistics
    # (18 matches, 7 chunks, 23 hypothesis and 18 reference words).
    assert meteor_exact_match(HYPS, REFS) == pytest.approx(94.43610276943611)
    segments = (0.9814814814814815, 0.9221311475409837, 0.920138888888889)
    for hyp, refs, segment in zip(HYPS, REFS, segments, strict=True):
        assert meteor_exact_match([hyp], [refs]) == pytest.approx(100 * segment)
    assert meteor_exact_match(HYPS, REFS) == pytest.approx(meteor_by_formula(18, 7, 23, 18))


class _NoSynonyms:
    def synsets(self, word: str) -> list:
        return []


class _NoStemming:
    def stem(self, word: str) -> str:
        return word


@pytest.mark.parametrize("seed", range(6))
def test_meteor_exact_match_matches_nltk_exact_stage_without_repeated_words(seed: int):
    # Without repeated words the alignment is unique, so NLTK's greedy aligner (stemming and WordNet off) must agree.
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    hyp = rng.sample(words, rng.randint(3, 8))
    refs = [rng.sample(words, rng.randint(3, 8)) for _ in range(rng.randint(1, 3))]
    expected = nltk_meteor(refs, hyp, stemmer=_NoStemming(), wordnet=_NoSynonyms())
    assert meteor_exact_match([" ".join(hyp)], [[" ".join(r) for r in refs]]) == pytest.approx(100 * expected)


def test_meteor_exact_match_repetitive_output_stays_fast():
    start = time.perf_counter()
    score = meteor_exact_match(["the " * 60], [["the " * 60]])
    assert time.perf_counter() - start < 2.0
    assert score == pytest.approx(meteor_by_formula(60, 1, 60, 60))


# ----------------------------------------------------------------------------------------------- without Java


def test_without_java_meteor_is_not_reported_as_meteor(no_java):
    scores = without_java(HYPS, REFS)
    assert "METEOR" not in scores
    assert scores["METEOR_exact_match"] == pytest.approx(meteor_exact_match(HYPS, REFS))
    perfect = without_java(["a b c d e", "f g h i j"], [["a b c d e"], ["f g h i j", "k"]])
    assert perfect["BLEU"] == pytest.approx(100.0)
    assert perfect["ROUGE_L"] == pytest.approx(100.0)
    assert perfect["TER"] == pytest.approx(0.0)


def test_rouge_l_by_hand(no_java):
    # coco-caption's ROUGE-L: the best precision and the best recall over the references (not the best pair's F),
    # combined as F_beta with beta = 1.2. Input 1: "a b" gives P = 2/4, R = 1; "a b c d e f g h" gives P = 1, R = 4/8:
    # so P = R = 1 although no single reference scores 1. Input 2: LCS "dog barked", P = 2/3, R = 2/4.
    def f_beta(p: float, r: float) -> float:
        return (1 + 1.2**2) * p * r / (r + 1.2**2 * p)

    scores = without_java(["a b c d", "a dog barked"], [["a b", "a b c d e f g h"], ["the dog barked loudly"]])
    assert scores["ROUGE_L"] == pytest.approx(100 * (1.0 + f_beta(2 / 3, 2 / 4)) / 2)


def test_cider_by_hand(no_java):
    # Two inputs, so idf = log 2 - log(df): "a" is in both inputs' references (weight 0), every other n-gram in one
    # (weight L = log 2), and the unseen "c" gets df 1 (weight L). Per order n: sum min(h, r)·r / (|h||r|) · penalty.
    # Input 1 vs "a b d": unigrams L²/(√2L·√2L) = 1/2, bigrams ("a b" shared) 1/2, trigrams 0; equal lengths.
    # Input 1 vs "a b": unigrams L²/(√2L·L) = 1/√2, bigrams 1/√2, length 3 vs 2: penalty exp(-1/(2·6²)).
    # Input 2 matches its reference exactly on orders 1 and 2. CIDEr = 10 · mean over orders / #refs, averaged.
    first = 10 * (1 + math.sqrt(2) * math.exp(-1 / 72)) / (4 * 2)
    second = 10 * (1 + 1) / 4
    assert without_java(["a b c", "a e"], [["a b d", "a b"], ["a e"]])["CIDEr"] == pytest.approx((first + second) / 2)
    # Clipping: "b b" has unigram weight 2L against L, so min(2L, L)·L / (2L·L) = 1/2 rather than 1.
    assert without_java(["b b", "x"], [["b"], ["y"]])["CIDEr"] == pytest.approx(10 * 0.5 * math.exp(-1 / 72) / 4 / 2)
    # With a single input every reference n-gram has idf log(1/1) = 0, as in coco-caption.
    assert without_java(["a b"], [["a b"]])["CIDEr"] == 0.0
    # pycocoevalcap 1.2: Cider().compute_score({i: REFS[i]}, {i: [HYPS[i]]}) -> 3.7997753295759025.
    assert without_java(HYPS, REFS)["CIDEr"] == pytest.approx(3.7997753295759025)


def fake_java(tmp_path: Path, monkeypatch, body: str) -> None:
    """Put a `java` on PATH that runs ``body`` (sh) instead of a JVM."""
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\n" + body + "\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    assert shutil.which("java") == str(java)


class RecordedPopen(subprocess.Popen):
    """subprocess.Popen that remembers every process started (pycocoevalcap and pf2lora both go through it)."""

    started: ClassVar[list[subprocess.Popen]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        RecordedPopen.started.append(self)


@contextlib.contextmanager
def recording() -> Iterator[list[subprocess.Popen]]:
    """The processes started (through subprocess.Popen) within the block."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "Popen", RecordedPopen)
        RecordedPopen.started = []
        yield RecordedPopen.started


def meteor_jvms(processes: list[subprocess.Popen]) -> list[subprocess.Popen]:
    return [p for p in processes if "meteor-1.5.jar" in " ".join(map(str, p.args))]


def assert_all_reaped(processes: list[subprocess.Popen], at_least: int) -> None:
    assert len(processes) >= at_least
    for proc in processes:
        assert proc.returncode is not None, f"{proc.args} still running or not waited for"
        stat_file = Path(f"/proc/{proc.pid}/stat")  # Linux: an unreaped child (a zombie) is still listed, ours
        with contextlib.suppress(OSError):  # gone (or no /proc): fine
            parent = int(stat_file.read_text().rsplit(")", 1)[1].split()[1])
            assert parent != os.getpid(), f"{proc.args} left a zombie"


def test_a_jvm_that_does_not_start_means_the_fallback(tmp_path, monkeypatch):
    fake_java(tmp_path, monkeypatch, 'echo "Error: could not create the Java Virtual Machine." >&2; exit 1')
    with recording() as started, pytest.warns(UserWarning, match="PTBTokenizer exited with 1: Error: could not create"):
        scores = generation_metrics(HYPS, REFS)
    assert list(scores) == KEYS_WITHOUT_JAVA
    assert scores["METEOR_exact_match"] == pytest.approx(meteor_exact_match(HYPS, REFS))
    like = [metrics._ptb_like_tokenize(h) for h in HYPS], [[metrics._ptb_like_tokenize(r) for r in rs] for rs in REFS]
    assert scores["ROUGE_L"] == pytest.approx(100 * metrics._coco_score(metrics.Rouge(), *like))
    # METEOR's JVM (another java than any kept from an earlier call: a new one) and the tokeniser.
    assert len(meteor_jvms(started)) == 1
    metrics.close_meteor()
    assert_all_reaped(started, at_least=2)


def test_a_meteor_jvm_that_dies_means_the_fallback(tmp_path, monkeypatch):
    # The tokeniser "works" (echoes its file); METEOR's JVM exits at once, so pycocoevalcap's compute_score meets a
    # broken pipe or an empty line (with the lock held: the base class' __del__ would then hang).
    fake_java(
        tmp_path,
        monkeypatch,
        'case "$*" in *PTBTokenizer*) for a; do f=$a; done; cat "$f"; echo; exit 0;; esac; exit 3',
    )
    with recording() as started, pytest.warns(UserWarning, match="METEOR 1.5 failed"):
        scores = generation_metrics(HYPS, REFS)
    assert list(scores) == KEYS_WITHOUT_JAVA
    assert scores["METEOR_exact_match"] == pytest.approx(meteor_exact_match(HYPS, REFS))
    # A JVM started for this call that fails is not restarted (that is for one that has worked before) ...
    assert len(meteor_jvms(started)) == 1
    # ... and not kept: the next call starts another.
    assert metrics._meteor is None
    assert_all_reaped(started, at_least=3)


def test_the_meteor_jvm_ends_at_interpreter_exit(tmp_path):
    # A stand-in "JVM" that ignores its input (the real one also ends when its input closes): only atexit ends it.
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\nexec sleep 600\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    script = (
        "from pf2lora import metrics; ok, scorer = metrics._warm_meteor(metrics._java()); "
        "assert ok and scorer is metrics._meteor and scorer.alive(); print(scorer.meteor_p.pid)"
    )
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-c", script]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=120)
    jvm = int(out.stdout.split()[-1])
    try:
        with pytest.raises(ProcessLookupError):
            os.kill(jvm, 0)  # the "JVM" has gone with its process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(jvm, 9)


# ----------------------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("metric", [bleu, ter, nist, meteor_exact_match, generation_metrics])
def test_generation_inputs_are_checked(metric):
    for hyps, refs, message in [
        (["a", "b"], [["a"]], "2 hypotheses for 1 reference lists"),
        (["a"], [[]], "every hypothesis needs at least one reference"),
        ([], [], "empty corpus"),
    ]:
        with pytest.raises(ValueError, match=f"^{message}$"):
            metric(hyps, refs)


# ----------------------------------------------------------------------------------------------- real data, Java


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[list[str]]]:
    """20 E2E and 20 WebNLG dev inputs, read from the official files (E2E's references grouped by MR, as
    e2e-metrics and pf2lora.data group them; WebNLG's <lex> texts, inputs with two or more): every 10th input, the
    first reference as the hypothesis, the next (up to) four as its references."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"no dataset copy at {DATA_DIR} (set PF2LORA_DATA_DIR)")
    e2e: dict[str, list[str]] = {}
    with open(DATA_DIR / "e2e" / "devset.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            e2e.setdefault(row["mr"], []).append(row["ref"])
    webnlg = []
    for path in sorted((DATA_DIR / "webnlg" / "dev").glob("*triples/*.xml")):
        for entry in ET.parse(path).getroot().iter("entry"):
            webnlg.append([(lex.text or "").strip() for lex in entry.iterfind("lex")])
    examples = [*list(e2e.values())[::10][:20], *[refs for refs in webnlg if len(refs) >= 2][::10][:20]]
    assert len(e2e) == 547 and len(webnlg) == 872 and len(examples) == 40
    return [refs[0] for refs in examples], [refs[1:5] for refs in examples]


@pytest.fixture(scope="module")
def java_scores(corpus):
    """generation_metrics on the corpus with Java on a fresh METEOR JVM, from a worker thread, recording every process
    it starts and which of them still ran when it returned; the JVM is then closed."""
    if shutil.which("java") is None:
        pytest.skip("no java on PATH: METEOR 1.5 and the PTBTokenizer need a Java runtime")
    metrics.close_meteor()
    result: dict = {}

    def run() -> None:
        result["scores"] = generation_metrics(*corpus)

    with recording() as started:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        running = [p for p in started if p.poll() is None]
        metrics.close_meteor()
        metrics.close_meteor()  # a no-op
    return result["scores"], list(started), running


# Texts the tokeniser must keep in place: empty and blank ones (first, in the middle, last) and some PTB rewriting.
EDGE = ["", 'He said "hi", and it\'s £20-25 (cheap).', "   ", "Live in the U.S.", ""]


@pytest.fixture(scope="module")
def ptb_tokens(corpus):
    """The corpus as e2e-metrics hands it to the scorers, by pycocoevalcap's own PTBTokenizer (the class that
    e2e-metrics' COCOEvalCap calls: the references, with EDGE first, in one run, then the outputs in another)."""
    if shutil.which("java") is None:
        pytest.skip("no java on PATH: the PTBTokenizer needs a Java runtime")
    hyps, refs = corpus
    gts = PTBTokenizer().tokenize(
        {"edge": [{"caption": t} for t in EDGE]} | {i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)}
    )
    res = PTBTokenizer().tokenize({i: [{"caption": h}] for i, h in enumerate(hyps)})
    return [res[i][0] for i in range(len(hyps))], [gts[i] for i in range(len(refs))], gts["edge"]


@needs_java
@needs_data
def test_java_reports_meteor_1_5_and_leaves_no_jvm_once_closed(java_scores):
    scores, started, running = java_scores
    assert list(scores) == KEYS_WITH_JAVA
    assert all(type(v) is float and math.isfinite(v) for v in scores.values())
    # METEOR's JVM and two tokeniser runs; the tokenisers ended and reaped by the time generation_metrics returned,
    # METEOR's JVM kept for later calls until close_meteor, which ended and reaped it.
    assert len(meteor_jvms(started)) == 1
    assert sum("PTBTokenizer" in " ".join(map(str, p.args)) for p in started) == 2
    assert running == meteor_jvms(started)
    assert_all_reaped(started, at_least=3)
    assert metrics._meteor is None


@needs_java
@needs_data
def test_meteor_is_meteor_1_5(java_scores, corpus, ptb_tokens):
    # The official jar run directly (pycocoevalcap/meteor/, Meteor 1.5) on the same corpus after e2e-metrics'
    # preprocessing: hyp.txt = the 40 PTB-tokenised hypotheses, ref.txt = each input's PTB-tokenised references
    # padded to 4 by repeating its last (a duplicate cannot change METEOR's best reference):
    #   java -Xmx2G -jar meteor-1.5.jar hyp.txt ref.txt -l en -norm -r 4   ->  Final score: 0.45327517972664716
    # and on the raw (untokenised) text, whose punctuation METEOR then matches too:  Final score: 0.44493278380998014
    scores, *_ = java_scores
    assert scores["METEOR"] == pytest.approx(45.327517972664716, abs=1e-9)
    assert abs(scores["METEOR"] - 44.493278380998014) > 0.5  # the PTB preprocessing is applied
    # The exact-match variant is another metric altogether (79.4 here): never to be reported as METEOR.
    assert meteor_exact_match(*corpus) - scores["METEOR"] > 25
    # The corpus really is multi-reference, with the tokeniser's effect visible.
    assert any(len(rs) == 4 for rs in ptb_tokens[1]) and any(len(rs) == 1 for rs in ptb_tokens[1])


def strict(*args) -> dict[str, float]:
    """generation_metrics with every warning an error (a fallback, a restart that warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return generation_metrics(*args)


@needs_java
@needs_data
def test_one_jvm_serves_sequential_and_concurrent_calls_with_fresh_jvm_scores(java_scores, corpus):
    # Four threads call at once with no JVM running: one JVM is started (lazily, by whichever comes first) and they
    # take turns on it. Then, one at a time on that JVM (which has scored the four parts by then), the whole corpus
    # gives what the fixture's fresh JVM gave, bit for bit, and each part what it gave concurrently.
    fresh, *_ = java_scores
    hyps, refs = corpus
    parts = [(hyps[i::10], refs[i::10]) for i in range(4)]  # 4 inputs each, E2E and WebNLG
    metrics.close_meteor()
    barrier, concurrent, errors = threading.Barrier(len(parts)), [None] * len(parts), []

    def run(i: int) -> None:
        barrier.wait()
        try:
            concurrent[i] = generation_metrics(*parts[i])
        except BaseException as exc:  # reported below
            errors.append(exc)

    with recording() as started:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(parts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reused = strict(*corpus)
        sequential = [strict(*part) for part in parts]
    assert not errors, errors
    assert len(meteor_jvms(started)) == 1 and metrics._meteor is not None and metrics._meteor.alive()
    assert reused == fresh  # every key, exactly
    assert all(list(scores) == KEYS_WITH_JAVA for scores in concurrent)
    assert concurrent == sequential


@needs_java
@needs_data
def test_a_dead_meteor_jvm_is_replaced(corpus, monkeypatch):
    part = (corpus[0][:4], corpus[1][:4])
    expected = strict(*part)  # on the running JVM, or a new one
    # Found dead at the start of a call: closed (reaped) and replaced, before the other metrics run.
    dead = metrics._meteor
    dead_jvm = dead.meteor_p
    dead_jvm.kill()
    dead_jvm.wait()
    with recording() as started:
        assert metrics._warm_meteor(metrics._java()) == (True, metrics._meteor)
    assert len(meteor_jvms(started)) == 1 and metrics._meteor is not dead and metrics._meteor.alive()
    assert "meteor_p" not in vars(dead)
    # Dead although it looked alive (it died between the check and the scoring): the call fails on it, and is done
    # once more on a new JVM, without a warning and with the same scores.
    dead = metrics._meteor
    dead.meteor_p.kill()
    dead.meteor_p.wait()
    monkeypatch.setattr(metrics._Meteor15, "alive", lambda self: True)
    with recording() as started:
        assert strict(*part) == expected
    assert len(meteor_jvms(started)) == 1 and metrics._meteor is not dead
    assert "meteor_p" not in vars(dead)  # closed: ended and reaped


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def wait_child(pid: int, timeout: float = 180.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child did not finish")


@needs_java
@needs_data
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.parametrize("fork", ["os.fork", "libc fork"])
def test_a_forked_child_never_touches_its_parents_jvm(corpus, fork):
    # os.fork runs the at-fork hook (the child drops the parent's scorer); a fork from C code does not, and the
    # child then tells by the pid that the scorer it holds is its parent's. Either way it starts its own JVM (the
    # libc child only starts and closes one, to keep the test short) and the parent's JVM is untouched: same
    # process, and its pipes still in step (the same scores, no new JVM).
    part = (corpus[0][:4], corpus[1][:4])
    expected = strict(*part)
    parent = metrics._meteor
    parent_jvm = parent.meteor_p.pid
    read_fd, write_fd = os.pipe()
    pid = os.fork() if fork == "os.fork" else ctypes.PyDLL(None).fork()
    if pid == 0:  # the child: report, and never return into pytest
        code = 1
        try:
            os.close(read_fd)
            inherited = metrics._meteor
            report = {"inherited": inherited is parent, "parents": inherited is not None and inherited.pid}
            if fork == "os.fork":
                report["scores"] = generation_metrics(*part)
            else:
                assert metrics._warm_meteor(metrics._java())[0]
                report["disowned"] = "meteor_p" not in vars(parent) and len(metrics._INHERITED_JVMS) == 1
            report["jvm"] = metrics._meteor.meteor_p.pid
            report["own"] = metrics._meteor.pid == os.getpid()
            metrics.close_meteor()
            report["closed"] = metrics._meteor is None
            os.write(write_fd, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    report = json.loads(read_all(read_fd) or b"{}")
    assert wait_child(pid) == 0
    if fork == "os.fork":
        assert report["inherited"] is False  # dropped by the at-fork hook
        assert report["scores"] == expected
    else:
        assert report["inherited"] is True and report["parents"] == os.getpid()
        assert report["disowned"] is True
    assert report["own"] is True and report["closed"] is True and report["jvm"] != parent_jvm
    with pytest.raises(ProcessLookupError):
        os.kill(report["jvm"], 0)  # the child's JVM ended with it
    assert metrics._meteor is parent and parent.alive() and parent.meteor_p.pid == parent_jvm
    with recording() as started:
        assert strict(*part) == expected
    assert meteor_jvms(started) == []


@needs_java
@needs_data
def test_ptb_tokenize_is_pycocoevalcaps_tokenizer(corpus, ptb_tokens):
    hyps, refs = corpus
    expected_hyps, expected_refs, expected_edge = ptb_tokens
    assert metrics._ptb_tokenize(hyps, "java") == expected_hyps
    # Line breaks other than "\n" (which would shift every later sentence in pycocoevalcap's tokeniser) are spaces.
    breaks = "a\rb\x0bc\x0cd\u2028e"
    flat = metrics._ptb_tokenize([*EDGE, *(r for rs in refs for r in rs), breaks, "f"], "java")
    assert flat[: len(EDGE)] == expected_edge
    assert flat[len(EDGE) : -2] == [r for rs in expected_refs for r in rs]
    assert flat[-2:] == ["a b c d e", "f"]
    # The tokeniser lowercases, splits clitics, turns £ into # and ( into -lrb-, and drops punctuation.
    assert expected_edge == ["", "he said hi and it 's # 20-25 -lrb- cheap -rrb-", "", "live in the u.s.", ""]
    joined = " ".join(expected_hyps + flat)
    assert joined == joined.lower() and " , " not in joined and " . " not in joined


def coco_rouge_l_from_rouge_score(hyps: list[str], refs: list[list[str]]) -> float:
    """ROUGE-L with rouge-score's LCS (an implementation independent of pycocoevalcap's), combined as coco-caption
    does: the best precision and the best recall over the references, F with beta = 1.2, averaged over inputs."""

    class Split:
        def tokenize(self, text: str) -> list[str]:
            return text.split(" ")  # as pycocoevalcap: "" is one (empty) token

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=Split())
    total = 0.0
    for hyp, rs in zip(hyps, refs, strict=True):
        pairs = [scorer.score(r, hyp)["rougeL"] for r in rs]
        p, r = max(s.precision for s in pairs), max(s.recall for s in pairs)
        total += (1 + 1.2**2) * p * r / (r + 1.2**2 * p) if p and r else 0.0
    return 100 * total / len(hyps)


@needs_java
@needs_data
def test_rouge_l_matches_an_independent_lcs(java_scores, corpus, ptb_tokens):
    scores, *_ = java_scores
    assert scores["ROUGE_L"] == pytest.approx(coco_rouge_l_from_rouge_score(*ptb_tokens[:2]), abs=1e-9)
    # pf2lora's former ROUGE-L (rouge-score's own tokens, F1 of the best single reference) is a neighbour, not the
    # same metric: coco-caption combines the best precision with the best recall (possibly of different references)
    # with beta 1.2 and scores PTB tokens. Here 71.16 against 71.43; on 60 E2E dev inputs 65.05 against 66.13.
    old_scorer = rouge_scorer.RougeScorer(["rougeL"])
    old = 100 * sum(old_scorer.score_multi(rs, h)["rougeL"].fmeasure for h, rs in zip(*corpus, strict=True)) / 40
    assert 0.1 < abs(old - scores["ROUGE_L"]) < 2.0


def cider_d(hyps: list[list[str]], refs: list[list[list[str]]], max_n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D written from Vedantam et al. (2015) and coco-caption's conventions, independently of pycocoevalcap:
    clipped tf-idf cosine of 1..4-grams (idf over the corpus' references, one document per input), Gaussian length
    penalty (coco-caption measures length in bigrams), mean over orders and references, times 10."""

    def grams(tokens: list[str]) -> Counter:
        return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))

    ref_grams = [[grams(r) for r in rs] for rs in refs]
    doc_freq = Counter(g for rgs in ref_grams for g in set().union(*rgs))
    log_docs = math.log(len(hyps))

    def vector(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(max_n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_docs - math.log(max(1.0, doc_freq[gram])))
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, [math.sqrt(sum(v * v for v in order.values())) for order in vec], bigrams

    total = 0.0
    for hyp, rgs in zip(hyps, ref_grams, strict=True):
        h_vec, h_norm, h_len = vector(grams(hyp))
        score = 0.0
        for rg in rgs:
            r_vec, r_norm, r_len = vector(rg)
            penalty = math.exp(-((h_len - r_len) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                if h_norm[n] and r_norm[n]:
                    dot = sum(min(w, r_vec[n].get(g, 0.0)) * r_vec[n].get(g, 0.0) for g, w in h_vec[n].items())
                    score += penalty * dot / (h_norm[n] * r_norm[n])
        total += 10.0 * score / (max_n * len(rgs))
    return total / len(hyps)


@needs_java
@needs_data
def test_cider_matches_an_independent_cider_d(java_scores, corpus, ptb_tokens):
    scores, *_ = java_scores
    hyps, refs, _ = ptb_tokens
    expected = cider_d([h.split() for h in hyps], [[r.split() for r in rs] for rs in refs])
    assert scores["CIDEr"] == pytest.approx(expected, rel=1e-9)
    # The same CIDEr-D on pf2lora's former tokens (lowercased mteval-13a, which keeps punctuation as tokens and
    # splits hyphenated words) differs by the tokenisation alone: 3.58 against 3.78 here, 1.63 against 1.66 on
    # 60 E2E dev inputs.
    tokens13a = metrics._tokens
    old = cider_d([tokens13a(h) for h in corpus[0]], [[tokens13a(r) for r in rs] for rs in corpus[1]])
    assert old != pytest.approx(scores["CIDEr"], rel=1e-6)
    assert old == pytest.approx(scores["CIDEr"], rel=0.10)


@needs_java
@needs_data
def test_python_tokeniser_stands_in_for_the_ptbtokenizer(corpus, ptb_tokens):
    hyps, refs = corpus
    texts = hyps + [r for rs in refs for r in rs]
    java = ptb_tokens[0] + [r for rs in ptb_tokens[1] for r in rs]
    same = sum(metrics._ptb_like_tokenize(t) == j for t, j in zip(texts, java, strict=True))
    assert same / len(texts) > 0.97, f"{same} of {len(texts)}"
    like = [metrics._ptb_like_tokenize(h) for h in hyps], [[metrics._ptb_like_tokenize(r) for r in rs] for rs in refs]
    assert metrics._coco_score(metrics.Rouge(), *like) == pytest.approx(
        metrics._coco_score(metrics.Rouge(), *ptb_tokens[:2]), abs=0.005
    )
    assert metrics._coco_score(metrics.Cider(), *like) == pytest.approx(
        metrics._coco_score(metrics.Cider(), *ptb_tokens[:2]), abs=0.05
    )
