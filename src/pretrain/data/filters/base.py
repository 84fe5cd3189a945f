"""The segmented document and the rule contract every rule family shares.

A :class:`Doc` segments its text once, lazily: lines, paragraphs, words, per-line character classes
(one ``numpy.bincount`` over the code points) and which lines look like code. Every rule reads the
same cached segmentation, so adding a rule adds its own arithmetic, not another pass of splitting.

A :class:`Rule` judges a document: ``None`` keeps it, anything else (the number or string that
tripped it) drops it and is written to the dropped shard's ``value`` column. A :class:`Transform`
rewrites a kept document's text (C4 boilerplate-line removal, PII redaction) and reports counts.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections.abc import Callable
from typing import Any

import numpy as np

# Scripts written without spaces between words: each character counts as one word there, so that
# word-count rules never drop Chinese, Japanese or Thai text by construction.
UNSPACED = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
UNSPACED_RE = re.compile(f"[{UNSPACED}]")
_WORD_RE = re.compile(r"\w+")
WORD_CJK_RE = re.compile(f"[{UNSPACED}]|[^\\W{UNSPACED}]+")
_SYMBOL_RUN_RE = re.compile(r"[^\w\s]+")
_NO_ALPHA_WORD_RE = re.compile(r"(?<!\w)[\d_]+(?!\w)")
_PARAGRAPH_RE = re.compile(r"\n{2,}")
_LETTER_RE = re.compile(r"[^\W\d_]")
# a line that is one call or signature ("gettext(self, message)", "join(a, *p) -> str", "ISEOF(x)"), one
# identifier that no prose word looks like ("builtins.object", "cell_contents", "SimpleNamespace") or a grammar
# production ("if_stmt ::= ...", RFCs' "name = rule" aside)
_API_LINE_RE = re.compile(
    r"^[^\S\n]*(?:[^\W\d][\w.]*\([^\n]*\)(?:[^\S\n]*(?:->|:)[^\n]*)?"
    r"|[^\W\d][\w]*[._][\w.]*|[A-Z]?[a-z]+[A-Z]\w*|[\w-]+[^\S\n]*::=[^\n]*)[^\S\n]*$", re.MULTILINE)
_ASCII_LETTER_RE = re.compile("[A-Za-z]")
_NO_LETTER_TOKEN_RE = re.compile(r"(?<!\S)(?:[\d_]|[^\w\s])+(?!\S)")
# datatrove's PUNCTUATION characters (a word made only of them is a "symbol word"), as one character class
_DT_PUNCTUATION = re.escape("!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
                            "‼⁇⁈⁉︒﹒﹖﹗｡؟۔।॥።፧܂܁߹၊။។៕") + "\x00-\x08\x0b\x0c\r\x0e-\x1f\x7f-\x9f"
# over the words one per line between newlines (a leading literal: the matcher jumps from newline to newline)
# a word without a letter: its text when made only of punctuation (a "symbol word"), else ""
_NO_LETTER_WORD_RE = re.compile(f"\n(?:([{_DT_PUNCTUATION}]+)|(?:[^\\w\n]|[\\d_])+)(?=\n)")

# Character classes of the per-line counts.
OTHER, SPACE, ALPHA, DIGIT, CODE, PUNCT, NEWLINE = range(7)
N_CLASSES = 7
CODE_SYMBOLS = "{}[]()<>=;_*/\\|&^%$#@~+`"
CODE_LINE_SYMBOL_RATIO = 0.1  # a line with at least this share of code symbols among its visible characters
WRAP_MIN_CHARS = 40  # a prose line this long that does not end a sentence is hard-wrapped text
SENTENCE_END = (".", "!", "?", ":", ";", "。", "！", "？", "؟", "۔", "।", "॥")


# -- spaCy-like words (the published Gopher rules) ------------------------------------------------------------
# datatrove's Gopher rules count words as spaCy's blank English tokenizer splits them. These tables and one
# regular expression reproduce its rules (affixes split one character at a time, infixes between letters,
# "n't" and "'s", its abbreviation and contraction exceptions, URLs whole) at C speed: within a few tokens
# per page of spaCy on technical pages, so the published thresholds mean what they mean there.
_ABBREVIATION_LIST = (
    "Adm. Ak. Ala. Apr. Ariz. Ark. Aug. Bros. Calif. Co. Colo. Conn. Corp. D.C. Dec. Del. Dr. E.G. E.g. Feb. Fla. "
    "Ga. Gen. Gov. I.E. I.e. Ia. Id. Ill. Inc. Ind. Jan. Jr. Jul. Jun. Kan. Kans. Ky. La. Ltd. Mar. Mass. Md. "
    "Messrs. Mich. Minn. Miss. Mo. Mont. Mr. Mrs. Ms. Mt. N.C. N.D. N.H. N.J. N.M. N.Y. Neb. Nebr. Nev. Nov. Oct. "
    "Okla. Ore. Pa. Ph.D. Prof. Rep. Rev. S.C. Sen. Sep. Sept. St. Tenn. Va. Wash. Wis. a.m. co. e.g. i.e. p.m. "
    "v.s. vs. and/or w/o")
# contractions written without an apostrophe that spaCy splits (word:cut[,cut])
_UNSPACED_CONTRACTIONS = (
    "aint:2 arent:3 cannot:3 cant:2 cantve:2,4 couldnt:5 couldntve:5,7 couldve:5 darent:4 didnt:3 didntve:3,5 "
    "doesnt:4 doesntve:4,6 dont:2 dontve:2,4 gonna:3 gotta:3 hadnt:3 hadntve:3,5 hasnt:3 havent:4 hed:2 hedve:2,3 "
    "hellve:2,4 hes:2 howd:3 howdve:3,4 howll:3 howllve:3,5 howre:3 hows:3 howve:3 id:1 idve:1,2 illve:1,3 im:1 "
    "ima:1,2 isnt:2 itd:2 itdve:2,3 itll:2 itllve:2,4 ive:1 maynt:3 mayntve:3,5 mightnt:5 mightntve:5,7 mightve:5 "
    "mustnt:4 mustntve:4,6 mustve:4 neednt:4 needntve:4,6 notve:3 oughtnt:5 oughtntve:5,7 shant:3 shantve:3,5 "
    "shedve:3,4 shellve:3,5 shes:3 shouldnt:6 shouldntve:6,8 shouldve:6 thatd:4 thatdve:4,5 thatll:4 thatllve:4,6 "
    "thats:4 thered:5 theredve:5,6 therell:5 therellve:5,7 therere:5 theres:5 thereve:5 thesed:5 thesedve:5,6 "
    "thesell:5 thesellve:5,7 thesere:5 theseve:5 theyd:4 theydve:4,5 theyll:4 theyllve:4,6 theyre:4 theyve:4 "
    "thisd:4 thisdve:4,5 thisll:4 thisllve:4,6 thiss:4 thosed:5 thosedve:5,6 thosell:5 thosellve:5,7 thosere:5 "
    "thoseve:5 wasnt:3 wed:2 wedve:2,3 wellve:2,4 werent:4 weve:2 whatd:4 whatdve:4,5 whatll:4 whatllve:4,6 "
    "whatre:4 whats:4 whatve:4 whend:4 whendve:4,5 whenll:4 whenllve:4,6 whenre:4 whens:4 whenve:4 whered:5 "
    "wheredve:5,6 wherell:5 wherellve:5,7 wherere:5 wheres:5 whereve:5 whod:3 whodve:3,4 wholl:3 whollve:3,5 "
    "whos:3 whove:3 whyd:3 whydve:3,4 whyll:3 whyllve:3,5 whyre:3 whys:3 whyve:3 wont:2 wontve:2,4 wouldnt:5 "
    "wouldntve:5,7 wouldve:5 yall:1 youd:3 youdve:3,4 youll:3 youllve:3,5 youre:3 youve:3")
_PRONOUN_LIST = "i you he she it we they that there what who where when why how this these those"
_QUOTES = "'\"”“`‘´’‚„»«「」『』（）〔〕【】《》〈〉⟦⟧"
_ICONS = ("\u00a6\u00a9\u00ae\u00b0\u2100-\u214f\u2190-\u21ff\u2300-\u23ff\u2500-\u27bf\u2b00-\u2bff"
          "\U0001f000-\U0001faff")
_PUNCT = "…,:;!?¿؟¡()\\[\\]{}<>_#*&。？！，、；：～·।،۔؛٪"
_SUFFIX = _PUNCT + _QUOTES + _ICONS + "—–"
_PREFIX = _PUNCT + _QUOTES + _ICONS + "§%=—–$£€¥₽₹₩₪₫₴₿"
_LETTER = r"[^\W\d_]"
_INFIX = (  # each branch starts with its character (the matcher skips a branch on it) and looks behind after
    r"\.\.+|…"
    r"|[+\-*^](?<=[0-9].)(?=[0-9-])"
    rf"|\.(?<=[a-zß-öø-ÿ{_QUOTES}]\.)(?=[A-ZÀ-ÖØ-Þ{_QUOTES}])"
    rf"|,(?<={_LETTER},)(?={_LETTER})"
    rf"|---(?<=[^\W_]---)(?={_LETTER})|--(?<=[^\W_]--)(?={_LETTER})|——(?<=[^\W_]——)(?={_LETTER})"
    rf"|[-–—~](?<=[^\W_].)(?={_LETTER})"
    rf"|[:<>=/](?<=[^\W_].)(?={_LETTER})")
_CHUNK_END = rf"(?=[{_SUFFIX}.]*(?:\s|$))"
_CONTRACTION = rf"(?:n['’]t(?<={_LETTER}n['’]t)|['’][sS](?<={_LETTER}['’][sS])){_CHUNK_END}"
_STOP = rf".…+\-*^,–—~:<>=/'’{_SUFFIX}"
_CORE = (rf"[^\s{_PREFIX}](?:[^\s{_STOP}n]++|n(?!['’]t{_CHUNK_END})|(?!{_INFIX}|{_CONTRACTION})[{_STOP}])*"
         rf"(?<![{_SUFFIX}])(?<![0-9a-zß-öø-ÿ%²\-+{_PUNCT}{_QUOTES}]\.)(?<![A-Z][A-Z]\.)(?<![0-9]\+)")
_URL = rf"(?:https?|ftp)://[^\s]*[^\s{_SUFFIX}.]"
_SPECIAL = "|".join(re.escape(a) for a in sorted(_ABBREVIATION_LIST.split(), key=len, reverse=True)) + r"|[a-zäöü]\."
_EMOTICONS = rf"\):|:\)|''|’’|:\*|:\]|:'\)|:\(|\(:|:/|:-\)|;\)|<3|=\)|:>|8\)|(?:[:=;]-?[DPp3]){_CHUNK_END}"
_AFFIX = f"[{_PREFIX}{_SUFFIX}]"
_SPECIAL_GATE = rf"(?<![^\s{_PREFIX}])[A-Za-zäöü][A-Za-z]{{0,5}}[./][A-Za-z./]{{0,4}}{_CHUNK_END}"
_AFFIX_ALONE = r"(?![):]:|:[)*\]'’(/>\-DPp3]|''|’’|\(:|;\)|<3|=\)|['’][sS]|——)"  # not the start of a longer token
SPACY_TOKEN_RE = re.compile(
    # the common cases first: a plain word before a space (or before closing punctuation), a lone affix character
    r"[^\W_][^\W_]*+(?=[,;:!?)\]}]*(?:\s|$))"
    r"|[,!?\[\]{}_#*&\"`“”‘´‚„»«¿¡。？！，、；：～·।،۔؛٪§%$£€¥]"
    r"|\.(?=\s|$)"  # a full stop before a space
    rf"|{_AFFIX_ALONE}{_AFFIX}"
    rf"|(?={_SPECIAL_GATE})(?:{_SPECIAL}){_CHUNK_END}"
    rf"|{_URL}|{_CONTRACTION}|{_INFIX}|{_EMOTICONS}"
    rf"|\+(?![0-9])|{_AFFIX}|{_CORE}|\S")


def _contraction_splits() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in _UNSPACED_CONTRACTIONS.split():
        word, cuts = item.split(":")
        bounds = [0, *map(int, cuts.split(",")), len(word)]
        out[word] = [word[a:b] for a, b in itertools.pairwise(bounds)]
    for p in _PRONOUN_LIST.split():
        for s in ("d", "ll", "re", "ve", "m"):
            for q in "'’":
                out[p + q + s] = [p, q + s]
    for k in list(out):
        out[k.capitalize()] = [out[k][0].capitalize(), *out[k][1:]]
    return out


_SPLITS = {k: "\n".join(v) for k, v in _contraction_splits().items()}
_SPLIT_KEYS = frozenset(_SPLITS)


def _trie_pattern(words: list[str]) -> str:
    """An alternation of ``words`` as a trie (each branch starts with its own character: the matcher skips fast)."""
    children: dict[str, list[str]] = {}
    end = False
    for w in words:
        if w:
            children.setdefault(w[0], []).append(w[1:])
        else:
            end = True
    branches = [re.escape(c) + _trie_pattern(rest) for c, rest in sorted(children.items())]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 and not end else "(?:" + "|".join(branches) + ")"
    return body + "?" if end else body


_find_tokens = SPACY_TOKEN_RE.findall
_SPLIT_RE = re.compile("^" + _trie_pattern(list(_SPLITS)) + "$", re.MULTILINE)


# Tokens of chunks (whitespace-free strings) that are not a plain word: "end.", "(see", "x=1,"... Real text repeats
# them (Zipf), so a bounded memo saves most of the expression's work; it starts over when full.
_CHUNK_TOKENS: dict[str, list[str]] = {}
_CHUNK_MEMO_SIZE = 1 << 16
_CHUNK_MEMO_MAX_CHARS = 64


def clear_token_memo() -> None:
    """Forget memoized chunk tokens (benchmarks call it so every pass starts cold)."""
    _CHUNK_TOKENS.clear()


def spacy_words(text: str) -> list[str]:
    """The words spaCy's blank English tokenizer yields (what datatrove's Gopher rules count), whitespace dropped."""
    # Tokens never span whitespace, so a chunk of letters and digits alone (most of them) is one token and skips the
    # expression; any other chunk gets exactly the tokens a pass over the whole text would give it (tested).
    words: list[str] = []
    keep, split = words.append, words.extend
    memo = _CHUNK_TOKENS
    for chunk in text.split():
        if chunk.isalnum():
            keep(chunk)
            continue
        tokens = memo.get(chunk)
        if tokens is None:
            tokens = _find_tokens(chunk)
            if len(chunk) <= _CHUNK_MEMO_MAX_CHARS:
                if len(memo) >= _CHUNK_MEMO_SIZE:
                    memo.clear()
                memo[chunk] = tokens
        split(tokens)
    if _SPLIT_KEYS.isdisjoint(words):
        return words
    # a few words split further ("cannot" -> "can" "not"): one substitution over the words, one per line
    return _SPLIT_RE.sub(lambda m: _SPLITS[m.group(0)], "\n".join(words)).split("\n")


@functools.cache
def char_classes() -> np.ndarray:
    """The class of every BMP code point (what is above it counts as a letter: emoji are rare in text)."""
    table = np.full(0x10000, OTHER, dtype=np.int64)
    for cp in range(0x10000):
        ch = chr(cp)
        if ch.isspace():
            table[cp] = SPACE
        elif ch.isalpha():
            table[cp] = ALPHA
        elif ch.isdigit() or ch.isnumeric():
            table[cp] = DIGIT
        elif ch in CODE_SYMBOLS:
            table[cp] = CODE
        elif not (ch.isalnum() or ch == "_"):
            table[cp] = PUNCT
    table[ord("\n")] = NEWLINE
    table[ord("_")] = CODE
    return table


class Doc:
    """One document's text and its segmentation, computed at most once and shared by every rule."""

    def __init__(self, text: str, *, url: str = "", license: str = "", meta: dict[str, Any] | None = None) -> None:
        self.text = text
        self.url = url
        self.license = license
        self.meta = meta or {}

    def with_text(self, text: str) -> Doc:
        """The same document after a transform: the segmentation is recomputed only if a later rule asks."""
        doc = Doc(text, url=self.url, license=self.license, meta=self.meta)
        if "language" in self.__dict__:  # language and script do not change when lines are removed
            doc.__dict__["language"] = self.language
        return doc

    # -- lines and paragraphs ------------------------------------------------------------------------------
    @functools.cached_property
    def lines(self) -> list[str]:
        """``text.split("\\n")``: every line, blank ones included."""
        return self.text.split("\n")

    @functools.cached_property
    def nonblank_lines(self) -> list[str]:
        return [ln for ln in self.lines if ln.strip()]

    @functools.cached_property
    def paragraphs(self) -> list[str]:
        return _PARAGRAPH_RE.split(self.text.strip())

    @functools.cached_property
    def char_classes(self) -> np.ndarray:
        """The class of every character (OTHER, SPACE, ALPHA, ...): one table lookup over the code points."""
        cp = np.frombuffer(self.text.encode("utf-32-le"), dtype=np.uint32)
        cls = char_classes()[np.minimum(cp, 0xFFFF)]
        cls[cp > 0xFFFF] = ALPHA
        return cls

    @functools.cached_property
    def line_of_char(self) -> np.ndarray:
        """The line (index into ``lines``) of every character; a newline belongs to the line it ends."""
        newline = self.char_classes == NEWLINE
        return np.cumsum(newline) - newline

    @functools.cached_property
    def line_counts(self) -> np.ndarray:
        """Per line (rows, as ``lines``), the number of characters of each class (columns)."""
        n = len(self.lines)
        return np.bincount(self.line_of_char * N_CLASSES + self.char_classes,
                           minlength=n * N_CLASSES).reshape(n, N_CLASSES)

    @functools.cached_property
    def code_lines(self) -> np.ndarray:
        """Which lines look like code: a high share of code symbols ({}()[]=;_ ...) among visible characters."""
        c = self.line_counts
        visible = c[:, ALPHA] + c[:, DIGIT] + c[:, CODE] + c[:, PUNCT] + c[:, OTHER]
        return (visible > 0) & (c[:, CODE] >= CODE_LINE_SYMBOL_RATIO * np.maximum(visible, 1))

    @functools.cached_property
    def data_lines(self) -> np.ndarray:
        """Which lines are table or data rows: most of their whitespace-separated tokens hold no letter
        ("EPERM = 1", "1990  23.4  56.7", "{181, 223, ...}"). Prose rules do not judge them, as code lines."""
        cls = self.char_classes
        blank = (cls == SPACE) | (cls == NEWLINE)
        if not len(cls):
            return np.zeros(len(self.lines), dtype=bool)
        starts = np.flatnonzero(~blank & np.concatenate(([True], blank[:-1])))
        if not len(starts):
            return np.zeros(len(self.lines), dtype=bool)
        has_letter = np.add.reduceat((cls == ALPHA).astype(np.int32), starts) > 0
        line = self.line_of_char[starts]
        n = len(self.lines)
        tokens = np.bincount(line, minlength=n)
        no_letter = np.bincount(line[~has_letter], minlength=n)
        return 2 * no_letter > tokens

    @functools.cached_property
    def api_lines(self) -> np.ndarray:
        """Lines that are one signature or one identifier (API references list them one a line)."""
        out = np.zeros(len(self.lines), dtype=bool)
        starts = [m.start() for m in _API_LINE_RE.finditer(self.text)]
        if starts:
            out[self.line_of_char[starts]] = True
        return out

    @functools.cached_property
    def layout_lines(self) -> np.ndarray:
        """Lines that are not prose: code, data rows, signatures and identifiers (a block is a unit of content)."""
        return self.code_lines | self.data_lines | self.api_lines

    @functools.cached_property
    def code_fraction(self) -> float:
        """The share of visible characters that sit in code-like lines."""
        c = self.line_counts
        visible = (c[:, ALPHA] + c[:, DIGIT] + c[:, CODE] + c[:, PUNCT] + c[:, OTHER]).astype(np.float64)
        total = visible.sum()
        return float(visible[self.code_lines].sum() / total) if total else 0.0

    @functools.cached_property
    def prose_lines(self) -> list[str]:
        """Non-blank lines that are neither code nor data rows."""
        layout = self.layout_lines
        return [ln for ln, skip in zip(self.lines, layout, strict=True) if not skip and ln.strip()]

    @functools.cached_property
    def prose_units(self) -> list[str]:
        """Prose lines with hard-wrapped ones joined (plain-text pages, e-mail, docstrings wrap at ~70-80
        characters): a line of at least ``WRAP_MIN_CHARS`` that does not end a sentence continues on the next
        prose line right below it. Line-ending rules judge these units, not the wrapping."""
        layout = self.layout_lines
        units: list[str] = []
        open_unit = False  # the last unit is a wrapped line waiting for its continuation
        for ln, skip in zip(self.lines, layout, strict=True):
            line = ln.strip()
            if skip or not line:
                open_unit = False
                continue
            if open_unit:
                units[-1] += " " + line
            else:
                units.append(line)
            open_unit = len(line) >= WRAP_MIN_CHARS and not line.endswith(SENTENCE_END)
        return units

    @functools.cached_property
    def prose(self) -> Doc:
        """The prose lines as a document of their own (the text a prose-only rule judges)."""
        if not self.layout_lines.any():
            return self
        return Doc("\n".join(self.prose_lines), url=self.url, license=self.license, meta=self.meta)

    # -- words ---------------------------------------------------------------------------------------------
    @functools.cached_property
    def unspaced_chars(self) -> int:
        return len(UNSPACED_RE.findall(self.text)) if UNSPACED_RE.search(self.text) else 0

    @functools.cached_property
    def spaced(self) -> bool:
        """Whether the text is mostly in scripts that separate words with spaces (word-length rules apply)."""
        return not self.unspaced_chars or self.unspaced_chars <= 0.3 * max(1, self.n_word_chars)

    @functools.cached_property
    def words(self) -> list[str]:
        """Runs of word characters; each CJK/Thai character is a word of its own."""
        return (WORD_CJK_RE if self.unspaced_chars else _WORD_RE).findall(self.text)

    @functools.cached_property
    def word_lengths(self) -> np.ndarray:
        return np.fromiter(map(len, self.words), dtype=np.int64, count=len(self.words))

    @functools.cached_property
    def n_word_chars(self) -> int:
        c = self.line_counts
        return int(c[:, ALPHA].sum() + c[:, DIGIT].sum())

    @functools.cached_property
    def n_symbols(self) -> int:
        """Runs of punctuation and symbols (a token each, as word tokenizers mostly split them: "...", "--")."""
        return len(_SYMBOL_RUN_RE.findall(self.text))

    @functools.cached_property
    def n_tokens(self) -> int:
        """Words plus punctuation tokens: the denominator of Gopher's per-word ratios."""
        return len(self.words) + self.n_symbols

    @functools.cached_property
    def n_alpha_words(self) -> int:
        """Words with at least one letter (words made only of digits and underscores do not count)."""
        return len(self.words) - len(_NO_ALPHA_WORD_RE.findall(self.text))

    @functools.cached_property
    def ws_alpha_ratio(self) -> float:
        """Share of whitespace-separated words with a letter: the Gopher paper's "words" (no tokenizer)."""
        n = len(self.text.split())
        return 1.0 - len(_NO_LETTER_TOKEN_RE.findall(self.text)) / n if n else 0.0

    @functools.cached_property
    def unique_line_fraction(self) -> float:
        """Share of the non-blank lines' characters that are in distinct lines (1.0: nothing repeats)."""
        lines = self.nonblank_lines
        total = sum(map(len, lines))
        return sum(map(len, set(lines))) / total if total else 1.0

    @functools.cached_property
    def words_lower(self) -> list[str]:
        return self.text.lower().split() if not self.words else [w.lower() for w in self.words]

    @functools.cached_property
    def word_set_lower(self) -> frozenset[str]:
        return frozenset(self.words_lower)

    # -- spaCy-like words (published Gopher rules) ---------------------------------------------------------
    @functools.cached_property
    def spacy_words(self) -> list[str]:
        """Words as datatrove's Gopher rules count them (spaCy's English tokenizer); CJK/Thai: ``words``."""
        return spacy_words(self.text) if self.spaced else self.words

    @functools.cached_property
    def spacy_counts(self) -> tuple[int, int, int, int]:
        """(words, words with a character that is not punctuation, their characters, words with a letter)."""
        words = self.spacy_words
        if not words:
            return 0, 0, 0, 0
        no_letter = _NO_LETTER_WORD_RE.findall("\n" + "\n".join(words) + "\n")
        n, n_symbols = len(words), len(no_letter) - no_letter.count("")
        chars = sum(map(len, words)) - sum(map(len, no_letter))
        return n, n - n_symbols, chars, n - len(no_letter)

    # -- language ------------------------------------------------------------------------------------------
    @functools.cached_property
    def language(self) -> tuple[str, float]:
        """(ISO 639-1 code, score) from the language module, or ("", 0.0) when none is installed."""
        identify = language_identifier()
        if identify is None or not self.text.strip():
            return "", 0.0
        code, score = identify(self.text)
        return code, float(score)

    @functools.cached_property
    def looks_english(self) -> bool:
        """Mostly ASCII letters (a cheap stand-in for "English" where no language was identified)."""
        sample = self.text[:5000]
        if sample.isascii():
            return bool(_ASCII_LETTER_RE.search(sample))
        letters = len(_LETTER_RE.findall(sample))
        return bool(letters) and len(_ASCII_LETTER_RE.findall(sample)) >= 0.9 * letters


@functools.cache
def language_identifier() -> Callable[[str], tuple[str, float]] | None:
    try:
        from pretrain.data.filters.language import identify
    except ImportError:
        return None
    return identify


def fmt(value: float | int | str) -> str:
    """A tripped value as the ``value`` column writes it: numbers with 4 significant digits."""
    if isinstance(value, str):
        return value[:200]
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.4g}"


@dataclasses.dataclass(frozen=True)
class Rule:
    """One named check: ``judge(doc)`` is None to keep, else the value that tripped it.

    ``name`` is the recipe key of the setting it checks (``gopher_quality.min_doc_words``), so a reason
    in the dropped shard says which key to change.
    """

    name: str
    judge: Callable[[Doc], Any]


@dataclasses.dataclass(frozen=True)
class Transform:
    """Rewrites a kept document: ``apply(doc)`` returns the new text (or None: unchanged) and counts by kind."""

    name: str
    apply: Callable[[Doc], tuple[str | None, dict[str, int]]]


Step = Rule | Transform


def above(value: float, limit: float | None) -> float | None:
    """``value`` when it exceeds ``limit`` (a check that is set), else None."""
    return value if limit is not None and value > limit else None


def below(value: float, limit: float | None) -> float | None:
    return value if limit is not None and value < limit else None
