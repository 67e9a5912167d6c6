"""Extractive meeting summaries (pure, CPU only): key sentences by LexRank (sumy), key points, keywords and
action items, each sentence placed on the recording's timeline by the segment it was said in.

sumy's stock tokenizer loads NLTK's `punkt` data, which it downloads at run time; this module gives sumy a
tokenizer of its own (regular expressions, no data files), and numpy computes LexRank's similarity matrix.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

EXTRACTIVE = "extractive"
LLM = "llm"
MIN_WORDS = 5  # shorter sentences ("Okay, thanks.") are never picked as key sentences
LONG_SENTENCE_WORDS = 60  # unpunctuated speech is cut into pieces of about 40 words
KEYWORDS = 10
MAX_ACTION_ITEMS = 30
SAME_POINT = 0.5  # share of content words (Jaccard) from which two key sentences say the same thing
SAME_ACTION = 0.75  # ... two action items (a different owner or day makes another one)
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd", "jr", "sr", "no"})
_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|['’-](?=[^\W\d_]))*")
_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")
# Words of speech that say little about a meeting's subject (beyond sumy's English stop words).
_SPEECH_FILLERS = frozenset("""
    yeah yes okay ok um uh hmm oh ah like know think going really just actually basically right well gonna wanna
    thing things stuff kind sort lot bit maybe guess mean say said see get got let make sure want need also
    thank thanks please good great sounds today tomorrow week time one two three next last first everyone anyone
    main point update give sorry hear mute screen share interesting saw far alright absolutely yesterday rest agenda
    meeting meetings joining monday tuesday wednesday thursday friday saturday sunday
""".split())
# Keywords: a word right after these is used as a noun (or a noun's adjective), after those as a verb.
_NOUN_CUES = frozenset("""the a an this these those our their my your his her its some any every each no another
    several many more most both of for in on at with about from into without per""".split())
_VERB_CUES = frozenset("""to will can could should would must might may shall did do does don't didn't won't can't let's
    i we they you he she i'll we'll you'll they'll he'll she'll i'm we're they're you're i've we've they've you've
    i'd we'd it who anyone someone everyone nobody please not also just""".split())
_BE = frozenset("am is are was were be been being has have had".split())  # "is moving", "was delayed": verbs
COMMON_ZIPF = 6.5  # a word's weight as a keyword is how far below this its Zipf frequency in English is ("people" 6.0)
PAIR_WEIGHT = 2.5  # a two-word phrase said in n sentences counts like a word said in 2.5 n
MIN_KEYWORD_SCORE = 1.5  # below it a word says too little to be shown, even if fewer than KEYWORDS are left
RARE_ZIPF = 4.5  # a word said in one sentence only is a keyword if it is this rare in English ("webhook", not "Friday")
# A pronoun anywhere, or a name where a clause starts ("Sarah will", "and then Tom will"; not "in Berlin will").
_NOT_NAMES = r"(?!(?:It|This|That|There|These|Those|What|Which|Who|Where|When|Why|How|The|Nothing|Something|Anything)\b)"
# Running the meeting, not its subject: never a key sentence.
_PROCEDURE = re.compile(r"\b(?:agenda|next up|move on|moving on|good (?:morning|afternoon|evening)|thanks? (?:you )?"
                        r"(?:all |everyone )?for (?:joining|coming)|get started|spend a few minutes|any other business|"
                        r"that'?s (?:all|it) for today|see you)\b", re.IGNORECASE)
_PERSON = (r"(?:\b(?:I|[Ww]e|[Yy]ou|[Hh]e|[Ss]he|[Tt]hey)|(?:^|[,;:] |\b(?:and|so|then) )"
           rf"{_NOT_NAMES}[A-Z][a-z]+(?: and [A-Z][a-z]+)?)")
_ACTION_CUES = [re.compile(p, re.IGNORECASE if i else re.MULTILINE) for i, p in enumerate([
    # someone commits: "Sarah will send", "we'll follow up", "I'm going to", "they need to" (case matters for names)
    rf"{_PERSON}(?:'ll|'m going to|'re going to| will| shall| (?:am|are|is) going to| (?:need|needs|have|has) to| must| should)\s+(?!be\b|not\b|have been\b)\w+",
    r"\blet'?s\s+(?!(?:see|say|hope|not|get started|go|move|begin|start|wrap|talk|continue|keep|discuss|do this|"
    r"take a look|think|try)\b)\w+",
    r"\b(?:follow[ -]up|action item|to-?do|take care of|be responsible for|owns? the|assign(?:ed)? (?:an owner|to))\b",
    r"\b(?:by|before|until|no later than) (?:the )?(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|tomorrow|"
    r"tonight|end of (?:the )?(?:day|week|month|quarter|sprint)|next (?:week|month)|eod|eow)\b",
    r"^(?:please|could you|can you|would you)\b",
    r"\b(?:deadline|due (?:date|on|by))\b",
])]


@dataclass(frozen=True)
class Sentence:
    """One sentence of the transcript, with where it was said (ms on the recording's timeline)."""

    text: str
    start_ms: int
    end_ms: int

    def wire(self) -> dict[str, Any]:
        return {"text": self.text, "startMs": self.start_ms, "endMs": self.end_ms}


@dataclass(frozen=True)
class Point:
    """A key point or action item; times are None when a model wrote it and no transcript sentence matches it."""

    text: str
    start_ms: int | None
    end_ms: int | None

    def wire(self) -> dict[str, Any]:
        return {"text": self.text, "startMs": self.start_ms, "endMs": self.end_ms}


@dataclass(frozen=True)
class Digest:
    """What a summary says, however it was made."""

    method: str
    text: str
    key_points: list[Point] = field(default_factory=list)
    action_items: list[Point] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    words: int = 0
    model: str | None = None
    reason: str | None = None  # why a model's summary is not the one served (timeout, error, refusal)


# -- sentences on the timeline -------------------------------------------------

def sentences_of(segments: Sequence[dict[str, Any]]) -> list[Sentence]:
    """Transcript segments (wire shape, in order) as sentences; a sentence's times are interpolated by
    character position inside the segments it spans."""
    parts: list[str] = []
    spans: list[tuple[int, int, int, int]] = []  # (char start, char end, start ms, end ms) per segment
    at = 0
    for segment in segments:
        text = " ".join(str(segment.get("text") or "").split())
        if not text:
            continue
        if parts:
            at += 1
        spans.append((at, at + len(text), int(segment["startMs"]), int(segment["endMs"])))
        parts.append(text)
        at += len(text)
    joined = " ".join(parts)
    out = []
    for start, end in _sentence_bounds(joined):
        text = joined[start:end].strip()
        if _WORD.search(text):
            start += len(joined[start:end]) - len(joined[start:end].lstrip())
            end = start + len(text)
            out.append(Sentence(text, _time_at(spans, start), max(_time_at(spans, end - 1, 1), _time_at(spans, start))))
    return out


def _sentence_bounds(text: str) -> list[tuple[int, int]]:
    bounds, start = [], 0
    for match in _END.finditer(text):
        before = text[start:match.start()].rsplit(None, 1)
        word = before[-1].lower().rstrip(".") if before else ""
        if match.group().startswith(".") and len(match.group()) == 1 and (word in _ABBREVIATIONS or len(word) == 1):
            continue  # "Dr. Smith", "J. Doe": not a sentence end
        bounds.append((start, match.end()))
        start = match.end()
    if text[start:].strip():
        bounds.append((start, len(text)))
    return [piece for bound in bounds for piece in _cut_long(text, *bound)]


def _cut_long(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Speech without punctuation (some engines write none) in pieces of about 40 words."""
    words = list(re.finditer(r"\S+", text[start:end]))
    if len(words) <= LONG_SENTENCE_WORDS:
        return [(start, end)]
    cuts = [start + words[i].start() for i in range(40, len(words) - 10, 40)]
    edges = [start, *cuts, end]
    return list(zip(edges, edges[1:]))


def _time_at(spans: list[tuple[int, int, int, int]], char: int, after: int = 0) -> int:
    """When character `char` was said (its start; with `after`=1 its end), by its place in its segment."""
    for c0, c1, t0, t1 in spans:
        if char < c1 or (c0, c1, t0, t1) == spans[-1]:
            share = min(max(char + after - c0, 0), c1 - c0) / max(c1 - c0, 1)
            return int(t0 + share * max(t1 - t0, 0))
    return 0


# -- sumy with a tokenizer that needs no download ----------------------------------

class RegexTokenizer:
    """sumy's tokenizer interface (`language`, `to_sentences`, `to_words`) without NLTK data."""

    language = "english"

    def to_sentences(self, paragraph: str) -> tuple[str, ...]:
        return tuple(paragraph[a:b].strip() for a, b in _sentence_bounds(paragraph) if paragraph[a:b].strip())

    def to_words(self, sentence: str) -> tuple[str, ...]:
        return tuple(_WORD.findall(sentence))


@lru_cache(maxsize=1)
def _sumy() -> tuple[Any, Any, frozenset[str]]:
    """(LexRank summarizer, tokenizer, stop words), built once: sumy's English stop words and Snowball stemmer
    ship with sumy and NLTK's code, no data download."""
    from sumy.nlp.stemmers import Stemmer
    from sumy.summarizers.lex_rank import LexRankSummarizer
    from sumy.utils import get_stop_words

    class FastLexRank(LexRankSummarizer):  # type: ignore[misc]
        """sumy's LexRank with its two quadratic Python loops (idf, idf-modified cosine) done by numpy:
        the same figures (tests compare them with sumy's own), ~700 sentences in well under a second."""

        @staticmethod
        def _compute_idf(sentences: list[list[str]]) -> dict[str, float]:
            counts = Counter(term for words in sentences for term in set(words))
            return {term: math.log(len(sentences) / (1 + n)) for term, n in counts.items()}

        def _create_matrix(self, sentences: list[list[str]], threshold: float, tf_metrics: list[dict[str, float]],
                           idf_metrics: dict[str, float]) -> NDArray[np.float64]:
            index = {term: i for i, term in enumerate(idf_metrics)}
            vectors = np.zeros((len(sentences), len(index)))
            for row, tf in enumerate(tf_metrics):
                for term, value in tf.items():
                    vectors[row, index[term]] = value * idf_metrics[term]
            norms = np.linalg.norm(vectors, axis=1)
            norms[norms == 0] = np.inf  # a sentence of stop words only is similar to nothing
            cosine = (vectors @ vectors.T) / np.outer(norms, norms)
            matrix = (cosine > threshold).astype(np.float64)
            degrees = matrix.sum(axis=1)
            degrees[degrees == 0] = 1
            normalized: NDArray[np.float64] = matrix / degrees[:, None]
            return normalized

        def rate(self, document: Any) -> list[float]:
            words = [self._to_words_set(s) for s in document.sentences]
            if not words:
                return []
            matrix = self._create_matrix(words, self.threshold, self._compute_tf(words), self._compute_idf(words))
            return [float(x) for x in self.power_method(matrix, self.epsilon)]

    summarizer = FastLexRank(Stemmer("english"))
    stop_words = frozenset(get_stop_words("english"))
    summarizer.stop_words = stop_words | _SPEECH_FILLERS  # "just to give an update, …" is not what makes a sentence central
    return summarizer, RegexTokenizer(), stop_words


def lexrank_scores(sentences: Sequence[str]) -> list[float]:
    """LexRank centrality of each sentence (sumy, idf-modified cosine, threshold 0.1)."""
    from sumy.models.dom import ObjectDocumentModel, Paragraph
    from sumy.models.dom import Sentence as SumySentence

    summarizer, tokenizer, _ = _sumy()
    document = ObjectDocumentModel([Paragraph([SumySentence(s, tokenizer) for s in sentences])])
    return list(summarizer.rate(document))


# -- the summary ------------------------------------------------------------------

def extractive(segments: Sequence[dict[str, Any]]) -> Digest:
    """The summary made without a model: LexRank's most central sentences, the best one of each part of the
    meeting, keywords, and the sentences that commit someone to something."""
    sentences = sentences_of(segments)
    words = sum(len(_WORD.findall(s.text)) for s in sentences)
    if not sentences:
        return Digest(EXTRACTIVE, "", words=0)
    scores = lexrank_scores([s.text for s in sentences])
    contents = [_content(s.text) for s in sentences]
    actions = [i for i, s in enumerate(sentences) if is_action_item(s.text)]
    # Key sentences are statements (no questions, no action items: those have their own list).
    acting = set(actions)
    candidates = ([i for i, s in enumerate(sentences) if _is_statement(s.text) and i not in acting]
                  or list(range(len(sentences))))
    ranked = sorted(candidates, key=lambda i: (-scores[i], i))
    lead = sorted(_distinct(ranked, contents, max(3, min(7, round(len(sentences) / 80)))))
    return Digest(
        EXTRACTIVE,
        " ".join(sentences[i].text for i in lead),
        key_points=[_point(sentences[i]) for i in _best_per_part(ranked, contents, sentences)],
        action_items=[_point(sentences[i]) for i in _distinct(actions, contents, MAX_ACTION_ITEMS, SAME_ACTION)],
        keywords=keywords([s.text for s in sentences]),
        words=words,
    )


def _point(s: Sentence) -> Point:
    return Point(s.text, s.start_ms, s.end_ms)


def _is_statement(text: str) -> bool:
    """A sentence that can stand for the meeting: no question, no running of the meeting itself, and a few
    words of substance."""
    return (not text.rstrip("\"'”’)").endswith("?") and len(_WORD.findall(text)) >= MIN_WORDS
            and not _PROCEDURE.search(text) and len(_content(text) - _FILLER_STEMS()) >= 3)


@lru_cache(maxsize=1)
def _FILLER_STEMS() -> frozenset[str]:  # noqa: N802 (a constant, made once sumy is loaded)
    summarizer, _, _ = _sumy()
    return frozenset(summarizer.stem_word(w) for w in _SPEECH_FILLERS)


def _content(text: str) -> frozenset[str]:
    """A sentence's content words, stemmed: what two sentences share when they say the same."""
    summarizer, _, stop_words = _sumy()
    return frozenset(summarizer.stem_word(w) for w in _WORD.findall(text.lower()) if w not in stop_words)


def _similar(a: frozenset[str], b: frozenset[str], at_least: float) -> bool:
    return bool(a or b) and len(a & b) / len(a | b) >= at_least


def _distinct(order: list[int], contents: list[frozenset[str]], limit: int, same: float = SAME_POINT,
              picked: Sequence[int] = ()) -> list[int]:
    """The first `limit` of `order` that do not say again what one picked before says (speech repeats itself)."""
    out = list(picked)
    for i in order:
        if len(out) - len(picked) >= limit:
            break
        if not any(_similar(contents[i], contents[j], same) for j in out):
            out.append(i)
    return out[len(picked):]


def _best_per_part(ranked: list[int], contents: list[frozenset[str]], sentences: list[Sentence]) -> list[int]:
    """The meeting cut into 3 to 8 stretches of equal time, and the most central sentence of each that is
    not a repeat of an earlier pick."""
    if not ranked:
        return []
    parts = max(min(3, len(ranked)), min(8, len(ranked) // 12))
    t0, t1 = sentences[0].start_ms, max(sentences[-1].end_ms, sentences[0].start_ms + 1)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in ranked:  # best first within each part
        groups[min(parts - 1, (sentences[i].start_ms - t0) * parts // (t1 - t0))].append(i)
    picked: list[int] = []
    for _, group in sorted(groups.items()):
        picked += _distinct(group, contents, 1, picked=picked)
    return picked


def is_action_item(text: str) -> bool:
    if len(_WORD.findall(text)) < 4:
        return False
    question = text.rstrip("\"'”’)").endswith("?")
    if question and not re.match(r"^(?:could|can|would|will) you\b", text, re.IGNORECASE):
        return False  # "Will we ship?" asks; "Could you share the notes?" asks someone to do something
    return any(cue.search(text) for cue in _ACTION_CUES)


def keywords(texts: Sequence[str], count: int = KEYWORDS) -> list[str]:
    """What a meeting is about: its content words and two-word phrases, each weighed by the number of different
    sentences (`texts`) that say it, how unusual it is in English and how often it is used as a noun. A word
    said once counts (in a short meeting) if it is a rare noun; fewer than `count` come back when the rest
    would say nothing."""
    summarizer, _, stop_words = _sumy()
    stem = lru_cache(maxsize=None)(summarizer.stem_word)
    ignore = stop_words | _SPEECH_FILLERS
    said: Counter[Any] = Counter()  # a word's stem, or a pair of them: the number of different sentences with it
    surface: dict[Any, Counter[str]] = defaultdict(Counter)  # how a word (or pair) was written most often
    uses: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # a stem: [times used as a noun, as a verb]
    seen: set[tuple[Any, frozenset[str]]] = set()
    for text in texts:
        written = _WORD.findall(text)
        words = [w.lower().replace("’", "'") for w in written]
        # The same sentence said again (a repeated line, a transcription loop) is not more of the subject.
        sentence = frozenset(stem(w) for w in words if w not in ignore)
        last: tuple[str, str] | None = None
        for i, word in enumerate(words):
            if word in ignore or len(word) < 3 or "'" in word:
                last = None
                continue
            key = stem(word)
            _count_use(uses[key], words[i - 1] if i else "", word, i > 0 and written[i][0].isupper())
            found: list[tuple[Any, str]] = [(key, word)]
            if last is not None:
                found.append(((last[0], key), f"{last[1]} {word}"))
            for k, shown in found:
                surface[k][shown] += 1
                if (k, sentence) not in seen:
                    seen.add((k, sentence))
                    said[k] += 1
            last = (key, word)

    zipf, unlisted = _english_zipf()

    def frequency(key: str) -> float:  # in English, of the commonest form said ("planned" of "plan", "planned")
        return max(_zipf_of(w, zipf, unlisted) for w in surface[key])

    def rarity(key: str) -> float:
        return max(0.1, COMMON_ZIPF - frequency(key))

    def as_noun(key: str, unknown: float = 0.5) -> float:  # the share of its uses as a noun (`unknown` if none told)
        noun, verb = uses[key]
        return (noun + 0.5) / (noun + verb + 1) if noun or verb else unknown

    scored: list[tuple[float, str, set[str]]] = []
    for k, n in said.items():
        shown = surface[k].most_common(1)[0][0]
        if isinstance(k, tuple) and n >= 2:
            # A phrase's second word mostly follows its first ("pricing page"): only a verb use of it tells.
            score = PAIR_WEIGHT * n * (rarity(k[0]) + rarity(k[1])) / 2 * as_noun(k[0]) * as_noun(k[1], 1.0)
            scored.append((score, shown, set(k)))
        elif isinstance(k, str) and (n >= 2 or (uses[k][0] and frequency(k) <= RARE_ZIPF)):
            scored.append((n * rarity(k) * as_noun(k), shown, {k}))
    chosen: list[tuple[str, set[str]]] = []
    for score, phrase, keys in sorted(scored, key=lambda x: (-x[0], x[1])):
        if score < MIN_KEYWORD_SCORE or len(chosen) == count:
            break
        if not any(keys & other for _, other in chosen):
            chosen.append((phrase, keys))  # one word, one keyword: "conference room" leaves out "room"
    return [phrase for phrase, _ in chosen]


def _count_use(use: list[int], before: str, word: str, capitalized: bool) -> None:
    """Count one use of a word as a noun ("the venue", "in Lisbon") or as a verb ("to finish", "we looked")."""
    if before in _NOUN_CUES or capitalized:
        use[0] += 1
    elif before in _VERB_CUES or (before in _BE and word.endswith(("ed", "ing"))):
        use[1] += 1


@lru_cache(maxsize=1)
def _english_zipf() -> tuple[dict[str, float], float]:
    """English words' Zipf frequencies (scripts/make_word_frequencies.py), and the one of a word not listed:
    rarer than all of them."""
    from scribeai.english_words import BANDS

    return {word: zipf for zipf, words in BANDS for word in words.split()}, BANDS[-1][0] - 0.3


def _zipf_of(word: str, zipf: dict[str, float], unlisted: float) -> float:
    """A word's Zipf frequency; a compound not listed ("six-week") is as common as its rarest part."""
    if word in zipf or "-" not in word:
        return zipf.get(word, unlisted)
    return min(zipf.get(part, unlisted) for part in word.split("-") if part)


def placed(lines: list[str], sentences: list[Sentence]) -> list[Point]:
    """A model's lines with the time of the transcript sentence each most likely came from (None if none)."""
    out = []
    for line in lines:
        found = match_sentence(line, sentences)
        out.append(Point(line, found.start_ms, found.end_ms) if found else Point(line, None, None))
    return out


def match_sentence(text: str, sentences: Sequence[Sentence], *, at_least: float = 0.5) -> Sentence | None:
    """The transcript sentence that a model's line most likely came from (share of its content words found
    there), for its time; None when none shares `at_least` of them."""
    summarizer, _, stop_words = _sumy()
    def content(t: str) -> set[str]:
        return {summarizer.stem_word(w) for w in _WORD.findall(t.lower()) if w not in stop_words}
    wanted = content(text)
    if not wanted:
        return None
    best, best_share = None, 0.0
    for s in sentences:
        share = len(wanted & content(s.text)) / len(wanted)
        if share > best_share:
            best, best_share = s, share
    return best if best_share >= at_least else None
