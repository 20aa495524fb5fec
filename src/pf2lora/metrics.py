"""Evaluation metrics for the fine-tuning tasks: classification (GLUE), extractive QA (SQuAD v1.1/v2.0) and
generation (E2E-style BLEU, NIST, METEOR, ROUGE-L, CIDEr, TER).

Every generation metric is corpus-level and scores each hypothesis against *all* of its references (the number of
references may vary between inputs). Scales follow how results are reported: BLEU, METEOR, ROUGE-L, TER and the
SQuAD scores in percent, NIST and CIDEr raw, accuracy and Matthews correlation as fractions (as scikit-learn).
METEOR, ROUGE-L and CIDEr are the MS-COCO caption evaluation code (pycocoevalcap) run as the E2E challenge's script
runs it (see ``generation_metrics``); NIST and the exact-match METEOR fallback tokenise with lowercased mteval-13a.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import shutil
import string
import subprocess
import tempfile
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer
from sacrebleu.metrics import BLEU, TER
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

# ----------------------------------------------------------------------------------------------- classification


def _label_arrays(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, ...]:
    y_pred, y_true = np.asarray(preds).ravel(), np.asarray(labels).ravel()
    if y_pred.shape != y_true.shape:
        raise ValueError(f"{y_pred.size} predictions for {y_true.size} labels")
    return y_pred, y_true


def accuracy(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of predictions equal to their label: the metric of most GLUE classification tasks."""
    y_pred, y_true = _label_arrays(preds, labels)
    if y_true.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(y_pred == y_true))


def balanced_accuracy(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Mean recall over the classes present in ``labels`` (scikit-learn's ``balanced_accuracy_score``): 1/K for a
    client that always predicts its majority class, so learning a label prior is not mistaken for the task."""
    y_pred, y_true = _label_arrays(preds, labels)
    if y_true.size == 0:
        raise ValueError("balanced accuracy of an empty set is undefined")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def matthews_corrcoef(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Matthews correlation (CoLA's metric), Gorodkin's K-class form exactly as scikit-learn computes it; 0.0 where
    undefined (all labels or all predictions in one class), as scikit-learn returns."""
    y_pred, y_true = _label_arrays(preds, labels)
    _, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    k, n = int(codes.max(initial=-1)) + 1, y_true.size
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (codes[:n], codes[n:]), 1.0)
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    cov_tp = np.trace(confusion) * n - t_sum @ p_sum
    cov_pp, cov_tt = n * n - p_sum @ p_sum, n * n - t_sum @ t_sum
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / math.sqrt(cov_tt * cov_pp))


# ----------------------------------------------------------------------------------------------- extractive QA

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's official answer normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _answer_f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:  # SQuAD v2: a no-answer only matches a no-answer
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_em_f1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """SQuAD exact match and token F1 in percent, max over gold answers as the official scripts; empty golds (``[]`` or
    ``[""]``) mark a v2.0 unanswerable question, on which only a prediction normalising to ``""`` scores."""
    if not references:
        raise ValueError("no questions to score")
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question(s), e.g. {missing[0]!r}")
    exact = f1 = 0.0
    for qid, answers in references.items():
        golds = [a for a in answers if normalize_answer(a)] or [""]
        prediction = predictions[qid]
        exact += max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)
        f1 += max(_answer_f1(prediction, g) for g in golds)
    return {"exact_match": 100.0 * exact / len(references), "f1": 100.0 * f1 / len(references)}


# ----------------------------------------------------------------------------------------------- generation

_TOKENIZER = Tokenizer13a()


def _check_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference lists")
    if not hypotheses:
        raise ValueError("empty corpus")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every hypothesis needs at least one reference")


def _tokens(text: str) -> list[str]:
    return _TOKENIZER(text.lower()).split()


def _tokenized(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[list[list[str]], list[list[list[str]]]]:
    _check_corpus(hypotheses, references)
    return [_tokens(h) for h in hypotheses], [[_tokens(r) for r in refs] for refs in references]


def _ngram_counts(tokens: Sequence[str], max_n: int) -> Counter[tuple[str, ...]]:
    """Counts of every n-gram of orders 1..max_n."""
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-input reference lists -> sacreBLEU's reference streams, padded with None where an input has fewer."""
    width = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (0–100) by sacreBLEU with its defaults (13a tokenisation, case-sensitive), for reproducibility."""
    _check_corpus(hypotheses, references)
    return float(BLEU().corpus_score(list(hypotheses), _reference_streams(references)).score)


def ter(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus TER (0–100, lower is better) by sacreBLEU: fewest edits over the references / mean reference length."""
    _check_corpus(hypotheses, references)
    return float(TER().corpus_score(list(hypotheses), _reference_streams(references)).score)


# mteval's beta: the brevity penalty is 0.5 when the output is 2/3 as long as the references.
_NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2


def nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 5) -> float:
    """Corpus NIST (Doddington 2002) as mteval-v13a and E2E's pymteval: information-weighted n-gram precision (hits
    clipped by any one reference) times a brevity penalty that is 0.5 at 2/3 of the mean reference length."""
    # Own implementation: no offline package matches mteval. NLTK's corpus_nist clips against and takes the length
    # of a single "best" reference per sentence, so it agrees with mteval only for single-reference corpora.
    hyps, refs = _tokenized(hypotheses, references)
    ref_counts: Counter[tuple[str, ...]] = Counter()
    for ref_list in refs:
        for ref in ref_list:
            ref_counts[()] += len(ref)  # the 0-gram: unigram weights are log2(total reference words / count)
            ref_counts.update(_ngram_counts(ref, max_n))
    info, hyp_ngrams, ref_length = [0.0] * max_n, [0] * max_n, 0.0
    for hyp, ref_list in zip(hyps, refs, strict=True):
        clip: Counter[tuple[str, ...]] = Counter()
        for ref in ref_list:
            clip |= _ngram_counts(ref, max_n)
        for gram, count in _ngram_counts(hyp, max_n).items():
            hits = min(count, clip[gram])
            if hits:
                info[len(gram) - 1] += hits * math.log2(ref_counts[gram[:-1]] / ref_counts[gram])
        for n in range(max_n):
            hyp_ngrams[n] += max(len(hyp) - n, 0)
        ref_length += sum(map(len, ref_list)) / len(ref_list)
    precision = sum(i / max(count, 1) for i, count in zip(info, hyp_ngrams, strict=True))
    ratio = hyp_ngrams[0] / ref_length if ref_length else 1.0
    penalty = 1.0 if ratio >= 1 else 0.0 if ratio <= 0 else math.exp(-_NIST_BETA * math.log(ratio) ** 2)
    return precision * penalty


# METEOR without Java (exact matches only). Partial alignments kept per hypothesis word; the search is exact
# whenever fewer distinct ones exist.
_METEOR_BEAM = 64


def _meteor_alignment(hyp: Sequence[str], ref: Sequence[str]) -> tuple[int, int]:
    """(matches, chunks) of a maximum exact-match unigram alignment with the fewest chunks the beam finds.

    Dynamic programme over hypothesis words. A state is (reference position matched by the previous word or -2,
    bitmask of used reference positions whose word recurs later) with its fewest chunks. Minimising chunks is NP-hard
    in general (minimum common string partition), hence the beam; METEOR 1.5's aligner is a beam search too.
    """
    slots_of: dict[str, int] = defaultdict(int)  # word -> bitmask of its reference positions
    for j, word in enumerate(ref):
        slots_of[word] |= 1 << j
    target = {w: min(c, slots_of[w].bit_count()) for w, c in Counter(hyp).items() if w in slots_of}
    matches = sum(target.values())
    if matches == 0:
        return 0, 0
    later = Counter(hyp)  # after the decrement below: occurrences strictly after the current word
    beam: dict[tuple[int, int], int] = {(-2, 0): 0}
    for word in hyp:
        later[word] -= 1
        need, slots = target.get(word, 0), slots_of.get(word, 0)
        live = 0
        for w, count in later.items():
            if count > 0:
                live |= slots_of.get(w, 0)
        grown: dict[tuple[int, int], int] = {}
        for (prev, used), chunks in beam.items():
            done = (used & slots).bit_count()
            moves = [(-2, chunks)] if later[word] >= need - done else []
            free = slots & ~used if done < need else 0
            if prev >= 0 and free >> (prev + 1) & 1:
                moves.append((prev + 1, chunks))
            # Other matches all open a chunk; only the lowest _METEOR_BEAM of them can survive the ranking below.
            while free and len(moves) < _METEOR_BEAM + 2:
                j = (free & -free).bit_length() - 1
                free &= free - 1
                if j != prev + 1:
                    moves.append((j, chunks + 1))
            for j, cost in moves:
                key = (j, (used | 1 << j if j >= 0 else used) & live)
                if cost < grown.get(key, matches + 1):
                    grown[key] = cost
        beam = dict(sorted(grown.items(), key=lambda item: (item[1], item[0]))[:_METEOR_BEAM])
    return matches, min(beam.values())


def _meteor_from_stats(matches: int, chunks: int, hyp_len: int, ref_len: int) -> float:
    if matches == 0:
        return 0.0
    precision, recall = matches / hyp_len, matches / ref_len
    fmean = precision * recall / (0.9 * precision + 0.1 * recall)
    return fmean * (1.0 - 0.5 * (chunks / matches) ** 3)


def meteor_exact_match(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """METEOR with exact matches only (0–100): the fallback ``generation_metrics`` reports as ``METEOR_exact_match``
    where METEOR 1.5 cannot run (no Java). Not METEOR 1.5 and not comparable with published METEOR: it has no stem,
    synonym or paraphrase matches, no function-word weighting and Banerjee & Lavie's parameters (alpha 0.9, beta 3,
    gamma 0.5), so it scores far higher (79 where METEOR 1.5 gives 45 on 60 E2E dev inputs, a held-out reference
    as the output).

    Fmean (alpha 0.9) · (1 − 0.5 (chunks/matches)³) on the summed statistics of each hypothesis' best reference, as
    METEOR 1.5's system-level score; equal to METEOR 1.5 run with ``-norm -m exact -p "0.9 3.0 0.5 0.5"``."""
    hyps, refs = _tokenized(hypotheses, references)
    totals = [0, 0, 0, 0]  # matches, chunks, hypothesis words, reference words of each hypothesis' best pair
    for hyp, ref_list in zip(hyps, refs, strict=True):
        pairs = [(*_meteor_alignment(hyp, ref), len(hyp), len(ref)) for ref in ref_list]
        best = max(pairs, key=lambda stats: _meteor_from_stats(*stats))
        totals = [t + b for t, b in zip(totals, best, strict=True)]
    return 100.0 * _meteor_from_stats(*totals)


# --------------------------------------------------- METEOR 1.5, ROUGE-L, CIDEr-D: MS-COCO caption code, as e2e-metrics
#
# tuetschek/e2e-metrics (measure_scores.py, run_coco_eval -> its bundled pycocoevalcap/eval.py, COCOEvalCap.evaluate)
# tokenises references and outputs with PTBTokenizer (Stanford CoreNLP 3.4.1, `-preserveLines -lowerCase`, then drops
# the tokens in PTBTokenizer.PUNCTUATIONS), and scores the token strings with Meteor() ("METEOR"), Rouge() ("ROUGE_L")
# and Cider() ("CIDEr", which is CIDEr-D: clipped counts and a Gaussian length penalty). pycocoevalcap 1.2 on PyPI
# bundles the same jars (identical git blobs) and, up to Python 3 syntax, the same Python code.


class _JavaFailed(RuntimeError):
    """A Java tool of the MS-COCO caption code could not run."""


def _java() -> str | None:
    """The ``java`` that pycocoevalcap would start (its commands name plain ``java``), or None if there is none."""
    return shutil.which("java")


def _one_line(text: str) -> str:
    # pycocoevalcap replaces only "\n"; PTBTokenizer also breaks lines at \r, \v, \f and U+2028, which would shift
    # every later sentence, so every line boundary Python knows becomes a space (no other text changes).
    return " ".join(text.splitlines())


_PTB_PUNCTUATION = frozenset(ptbtokenizer.PUNCTUATIONS)


def _ptb_tokenize(texts: Sequence[str], java: str) -> list[str]:
    """pycocoevalcap's ``PTBTokenizer.tokenize`` on a list: one PTBTokenizer run over a file of the texts (in a fresh
    temporary folder, not the package's own), lowercased, the tokens in its PUNCTUATIONS dropped."""
    jar = Path(ptbtokenizer.__file__).with_name(ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    with tempfile.TemporaryDirectory(prefix="pf2lora-ptb-") as tmp:
        path = Path(tmp) / "sentences.txt"
        # As pycocoevalcap: the sentences joined by "\n", no final newline (the tokeniser reads a file, not stdin:
        # from stdin it leaves some first words uncased).
        path.write_bytes("\n".join(_one_line(t) for t in texts).encode("utf-8", "replace"))
        cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
        try:
            proc = subprocess.run([*cmd, str(path)], capture_output=True, stdin=subprocess.DEVNULL, check=False)
        except OSError as exc:
            raise _JavaFailed(f"PTBTokenizer did not start: {exc}") from exc
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise _JavaFailed(f"PTBTokenizer exited with {proc.returncode}: {err[-1] if err else 'no message'}")
    lines = proc.stdout.decode("utf-8", "replace").split("\n")
    if len(lines) == len(texts) + 1 and lines[-1] == "":
        lines.pop()  # the newline after the last sentence (absent when that sentence is empty)
    if len(lines) != len(texts):
        raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {len(texts)} sentences")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in _PTB_PUNCTUATION) for line in lines]


# Python stand-in for PTBTokenizer + PUNCTUATIONS where Java is missing, for ROUGE_L and CIDEr only. Punctuation
# that the jar turns into a dropped token becomes a space; "(" and the like become -lrb- etc., which pycocoevalcap
# keeps (its list has them in upper case, the tokeniser lowercases them).
_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_PTB_LIKE_RULES = [
    (re.compile(r"£"), " # "),
    (re.compile(r"[$€]"), " $ "),
    (re.compile(r"[\u201c\u201d\u201e\"]|\u2026|\.\.\.+|[\u2013\u2014]|--+|[;!?]"), " "),
    (re.compile(r"[\u2018\u2019\u201a`]"), "'"),
    (re.compile(r"(?<=\S)-(?=\s|$)|(?:^|(?<=\s))-(?=[^\s\d])"), " "),  # a hyphen on a word's edge
    (re.compile(r"(?:^|(?<=\s))\.(?=[^\s.])"), " "),  # a period before a word
    (re.compile(r"(?<=\d\.\d)(?=[^\W\d_])|(?<=\d\.\d\d)(?=[^\W\d_])|(?<=\d\.\d\d\d)(?=[^\W\d_])"), " "),  # 1.8g
    *((re.compile(re.escape(bracket)), f" {token} ") for bracket, token in _PTB_BRACKETS.items()),
    (re.compile(r"([%*&])"), r" \1 "),
    (re.compile(r"(?<!\d),|,(?!\d)"), " , "),  # kept as a token until the period rule below has seen it
    (re.compile(r"(?<!\d):|:(?!\d)"), " "),
    (re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)(?=[\s.,]|$)"), r" \1"),
    (re.compile(r"(?<=\w\w)'(?=\w\w)"), " "),  # Marc'Antonio (but O'Neil stays)
    (re.compile(r"(?:^|(?<=\s))'(?!(?:s|re|ve|ll|d|m)(?:\s|$))|'(?=[\s.,]|$)"), " "),  # quotes
]
_PTB_LIKE_ABBREVIATION = re.compile(
    r"(?:[^\W\d_]\.)+|(?:mr|mrs|ms|dr|prof|st|jr|sr|inc|corp|ltd|co|vs|etc|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|"
    r"nov|dec|mt|ft|gen|gov|capt|col|lt|sgt)\."
)


def _ptb_like_tokenize(text: str) -> str:
    """What ``_ptb_tokenize`` gives for one text, approximately, without Java (same on about 99% of E2E and WebNLG
    references; the rest differ in a token or two)."""
    text = _one_line(text).lower()
    for pattern, replacement in _PTB_LIKE_RULES:
        text = pattern.sub(replacement, text)
    tokens = text.split()
    out = []
    for i, tok in enumerate(tokens):
        at_end = len(tok) > 1 and tok.endswith(".") and tokens[i + 1 : i + 2] != [","]  # "centre., near" keeps it
        if at_end and not _PTB_LIKE_ABBREVIATION.fullmatch(tok):
            tok = tok.rstrip(".")
        if tok and tok not in _PTB_PUNCTUATION:
            out.append(tok)
    return " ".join(out)


class _Meteor15(Meteor):
    """pycocoevalcap's METEOR 1.5 client, unchanged (its command ``java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en
    -norm``, its protocol, its lock) but for a ``close`` that always ends the JVM. The base class' ``__del__`` takes
    the lock, which ``compute_score`` leaves held when the JVM dies mid-call: it would then hang the garbage
    collector; and it fails with an AttributeError when ``java`` did not start.

    It remembers the process that started it (``pid``) and the ``java`` it ran (``java``): a forked child holds a copy
    of the object, pipes included, and must neither write to nor end its parent's JVM (``close`` there only drops the
    child's copies of the pipes)."""

    def __init__(self, java: str) -> None:
        self.pid, self.java = os.getpid(), java
        super().__init__()

    def alive(self) -> bool:
        proc = self.__dict__.get("meteor_p")
        return proc is not None and proc.poll() is None

    def close(self) -> None:
        proc = self.__dict__.pop("meteor_p", None)
        if proc is None:
            return
        if self.pid != os.getpid():
            _disown(proc)
            return
        proc.kill()  # a no-op once it has exited; it holds no state worth a clean shutdown
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):  # a broken pipe when unsent input is flushed
                stream.close()

    def __del__(self) -> None:
        self.close()


# Popen objects of JVMs inherited through fork: kept so that they are never finalised in the child.
_INHERITED_JVMS: list[subprocess.Popen] = []


def _disown(proc: subprocess.Popen) -> None:
    """In a forked child: point the child's copies of a parent JVM's pipes at /dev/null (so that nothing the child
    flushes, even a write the parent had half done at the fork, reaches the JVM, and the JVM still sees end of input
    when the parent goes), then close them; the parent's JVM itself is left alone."""
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError, ValueError):  # ValueError: the stream was already closed
                os.dup2(null, stream.fileno(), inheritable=False)
    finally:
        os.close(null)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.close()
    _INHERITED_JVMS.append(proc)


# One METEOR 1.5 JVM per process, started by the first generation_metrics call with Java and reused by later ones:
# loading its paraphrase table takes about 10 s and 1 GB, scoring a few hundred segments well under a second. The
# lock is held while the JVM is started, scored on or ended, so calls from several threads never interleave on its
# pipes (pycocoevalcap's own lock stays held when a call fails midway; the scorer is then discarded).
_METEOR_LOCK = threading.Lock()
_meteor: _Meteor15 | None = None


def _start_meteor(java: str, stacklevel: int) -> _Meteor15 | None:
    try:
        return _Meteor15(java)
    except OSError as exc:
        warnings.warn(f"METEOR 1.5 did not start ({exc}); reporting METEOR_exact_match instead", stacklevel=stacklevel)
        return None


def _drop_meteor_locked(scorer: _Meteor15) -> None:
    global _meteor
    if _meteor is scorer:
        _meteor = None
    scorer.close()


def _meteor_locked(java: str, keep_dead: _Meteor15 | None, stacklevel: int) -> _Meteor15 | None:
    """The process' METEOR scorer (``_METEOR_LOCK`` held): the running one if it is this process' and runs ``java``,
    else a new one (None, with a warning, if it cannot start). A JVM that has exited is replaced, unless it is
    ``keep_dead``, the one this call started: that one failing is the fallback, not a restart loop."""
    global _meteor
    scorer = _meteor
    if scorer is not None and (
        scorer.pid != os.getpid() or scorer.java != java or (scorer is not keep_dead and not scorer.alive())
    ):
        _drop_meteor_locked(scorer)
        scorer = None
    if scorer is None:
        scorer = _meteor = _start_meteor(java, stacklevel + 1)
    return scorer


def _warm_meteor(java: str) -> tuple[bool, _Meteor15 | None]:
    """Start the process' METEOR JVM if it has none, without waiting for it (it loads while the other metrics run):
    (False, None) if it cannot start (warned), else (True, the scorer this call started or None). A lock held by
    another call means that a JVM is in use: the scoring step takes it from there."""
    if not _METEOR_LOCK.acquire(blocking=False):
        return True, None
    try:
        previous = _meteor
        scorer = _meteor_locked(java, keep_dead=None, stacklevel=4)
    finally:
        _METEOR_LOCK.release()
    return scorer is not None, scorer if scorer is not previous else None


def _meteor_score(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], java: str, started: _Meteor15 | None
) -> float | None:
    """METEOR 1.5 (0–100) on e2e-metrics' token strings by the process' JVM, or None with a warning if it cannot
    score. A JVM kept from an earlier call that fails (it may have died since) is replaced once; one started for this
    call that fails means the fallback."""
    with _METEOR_LOCK:
        previous = _meteor
        scorer = _meteor_locked(java, keep_dead=started, stacklevel=4)
        if scorer is not previous:  # started now (the one kept from earlier, or another call's, had gone)
            started = scorer
        while scorer is not None:
            try:
                return 100.0 * _coco_score(scorer, hyps, refs)
            except (OSError, ValueError) as exc:  # a broken pipe, or no number where a score was due
                _drop_meteor_locked(scorer)
                if scorer is started:
                    warnings.warn(f"METEOR 1.5 failed ({exc!r}); reporting METEOR_exact_match instead", stacklevel=3)
                    break
                scorer = started = _meteor_locked(java, keep_dead=None, stacklevel=4)
            except BaseException:  # KeyboardInterrupt midway: the pipes are out of step and the lock is held
                _drop_meteor_locked(scorer)
                raise
    return None


def close_meteor() -> None:
    """End this process' METEOR 1.5 JVM, if it has one (``generation_metrics`` starts a new one when next needed).
    Runs at interpreter exit; call it to free the JVM's memory (about 1 GB) earlier. In a forked child it only drops
    the child's copies of the parent's pipes."""
    with _METEOR_LOCK:
        if _meteor is not None:
            _drop_meteor_locked(_meteor)


@atexit.register
def _close_meteor_at_exit() -> None:
    # A daemon thread may still be scoring at exit: wait for it a little, then end the JVM regardless.
    locked = _METEOR_LOCK.acquire(timeout=10)
    try:
        if _meteor is not None:
            _drop_meteor_locked(_meteor)
    finally:
        if locked:
            _METEOR_LOCK.release()


def _meteor_after_fork_in_child() -> None:
    # The parent's lock may have been held by another of its threads at the fork, and its JVM is not the child's:
    # the child starts with a fresh lock and no scorer, and drops its copies of the parent's pipes.
    global _METEOR_LOCK, _meteor
    _METEOR_LOCK = threading.Lock()
    scorer, _meteor = _meteor, None
    if scorer is not None:
        scorer.close()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_meteor_after_fork_in_child)


def _coco_score(scorer: Any, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """``scorer.compute_score`` on token strings as COCOEvalCap passes them: {id: [references]}, {id: [output]}."""
    res = {i: [h] for i, h in enumerate(hyps)}
    gts = {i: list(r) for i, r in enumerate(refs)}
    return float(scorer.compute_score(gts, res)[0])


def _coco_tokenized(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], java: str
) -> tuple[list[str], list[list[str]]] | None:
    """Outputs and references as e2e-metrics hands them to the scorers (None, with a warning, if Java fails)."""
    try:
        hyps = _ptb_tokenize(hypotheses, java)  # as COCOEvalCap: outputs and references in separate runs
        flat = _ptb_tokenize([r for refs in references for r in refs], java)
    except _JavaFailed as exc:
        warnings.warn(f"{exc}; reporting METEOR_exact_match instead of METEOR", stacklevel=3)
        return None
    grouped, start = [], 0
    for refs in references:
        grouped.append(flat[start : start + len(refs)])
        start += len(refs)
    return hyps, grouped


def generation_metrics(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """The E2E/WebNLG/DART metric suite on one corpus, with METEOR, ROUGE-L and CIDEr as the E2E challenge's official
    script (tuetschek/e2e-metrics, ``measure_scores.py``) computes them. Keys, in this order: ``BLEU``, ``NIST``,
    ``METEOR`` (or ``METEOR_exact_match``, see below), ``ROUGE_L``, ``CIDEr``, ``TER``.

    - ``METEOR`` (0–100): METEOR 1.5 (Java; exact, stem, synonym and paraphrase matches, ``-l en -norm``) through
      pycocoevalcap's ``Meteor``; ``ROUGE_L`` (0–100): pycocoevalcap's ``Rouge`` (LCS; the best precision and the best
      recall over the references, combined with beta 1.2); ``CIDEr`` (raw): pycocoevalcap's ``Cider``, which is CIDEr-D
      (clipped tf-idf n-grams, idf over this corpus' references, Gaussian length penalty). All three score what
      e2e-metrics scores: the Stanford PTBTokenizer's lowercased tokens (Java) less pycocoevalcap's punctuation list.
    - ``BLEU`` and ``TER``: sacreBLEU's defaults (case-sensitive); ``NIST``: mteval-v13a's formula on lowercased text.

    Without Java (no ``java`` on PATH, or the JVM does not start or dies) METEOR 1.5 cannot run, and the key
    ``METEOR`` is absent (tables show "–"): ``METEOR_exact_match`` (:func:`meteor_exact_match`: exact matches only,
    not comparable with METEOR 1.5 or any published METEOR) takes its place, with a warning. ``ROUGE_L`` and ``CIDEr``
    are then computed on a Python stand-in for the PTBTokenizer (identical tokens for about 99% of E2E and WebNLG
    references).

    METEOR runs in one JVM per process, started by the first call that needs it (its paraphrase table takes about
    10 s and 1 GB to load; it loads while the other metrics run) and reused by later calls, whose METEOR then takes
    well under a second; METEOR 1.5 scores each segment on its own, so the scores are those of a fresh JVM. Calls from
    several threads take turns on it; one that finds it dead starts another; a forked child starts its own; it ends
    at interpreter exit or with :func:`close_meteor`. The PTBTokenizer runs (well under a second) are per call.
    """
    _check_corpus(hypotheses, references)
    java = _java()
    if java is None:
        warnings.warn("no java on PATH: reporting METEOR_exact_match instead of METEOR 1.5", stacklevel=2)
    meteor_ok, started = _warm_meteor(java) if java else (False, None)
    tokens = _coco_tokenized(hypotheses, references, java) if java else None
    hyps, refs = tokens or (
        [_ptb_like_tokenize(h) for h in hypotheses],
        [[_ptb_like_tokenize(r) for r in rs] for rs in references],
    )
    first = {"BLEU": bleu(hypotheses, references), "NIST": nist(hypotheses, references)}
    last = {
        "ROUGE_L": 100.0 * _coco_score(Rouge(), hyps, refs),
        "CIDEr": _coco_score(Cider(), hyps, refs),
        "TER": ter(hypotheses, references),
    }
    meteor_score = None
    if java and meteor_ok and tokens is not None:
        # pycocoevalcap cleans "|||" (its field separator) from the outputs only; the references get the same.
        clean = [[r.replace("|||", "").replace("  ", " ") for r in rs] for rs in refs]
        meteor_score = _meteor_score(hyps, clean, java, started)
    if meteor_score is None:
        meteor_key, meteor_score = "METEOR_exact_match", meteor_exact_match(hypotheses, references)
    else:
        meteor_key = "METEOR"
    return {**first, meteor_key: meteor_score, **last}
