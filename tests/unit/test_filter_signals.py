"""The cleaning signals on hand-made text: PII redaction, language, gibberish, toxic words and blocked domains."""

from __future__ import annotations

import random
import re
import string

import pytest

from pretrain import storage
from pretrain.data.filters import gibberish, language, pii, toxic

PII_TEXT = """Write to jane.doe@example.com or call +44 20 7946 0958, (555) 123-4567 or 555-123-4567.
The resolver 8.8.8.8 and 2001:4860:4860::8888 answered; 127.0.0.1, 192.168.1.20 and 10.0.0.1 are local.
Card 4111 1111 1111 1111 is a test card; 4111-1111-1111-1112 fails the Luhn check; order 1234567890123.
AKIAIOSFODNN7EXAMPLE with aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY
token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789ab
-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAq7BFUAkGA1UEBhMCVVMxEzARBgNVBAgTCkNhbGlmb3JuaWEx
-----END RSA PRIVATE KEY-----
Released 2024-01-15 at 12:30:45 as version 3.11.7; see std::vector<int> and a::b::c."""


def test_pii_is_redacted_per_kind_and_technical_text_is_left_alone():
    text, counts = pii.redact(PII_TEXT)
    assert counts == {"email": 1, "phone": 3, "ip_address": 2, "credit_card": 1, "secret": 4}
    for gone in ("jane.doe@", "7946", "123-4567", "8.8.8.8", "4860::8888", "4111 1111 1111 1111", "AKIA",
                 "wJalrXUtnFEMI", "ghp_", "MIIEow"):
        assert gone not in text, gone
    for kept in ("127.0.0.1", "192.168.1.20", "10.0.0.1", "4111-1111-1111-1112", "1234567890123", "2024-01-15",
                 "12:30:45", "version 3.11.7", "std::vector<int>", "a::b::c", "aws_secret_access_key = <SECRET>"):
        assert kept in text, kept
    assert text.count("<PHONE>") == 3 and "<EMAIL>" in text and "<CREDIT_CARD>" in text


def test_pii_kinds_can_be_chosen():
    text, counts = pii.redact(PII_TEXT, kinds=["email"])
    assert counts == {"email": 1} and "8.8.8.8" in text and "<EMAIL>" in text
    assert pii.redact("nothing personal here", kinds=pii.KINDS) == ("nothing personal here", {})


@pytest.mark.parametrize(("text", "code"), [
    ("Der schnelle braune Fuchs springt über den faulen Hund und läuft in den Wald. " * 3, "de"),
    ("Съешь же ещё этих мягких французских булок, да выпей же чаю. " * 3, "ru"),
    ("هذه جملة باللغة العربية لاختبار التعرف على اللغة في النصوص الطويلة " * 3, "ar"),
    ("这是一个用于测试语言识别的中文句子，我们希望它能被正确识别。" * 3, "zh"),
    ("The quick brown fox jumps over the lazy dog and runs into the forest. " * 3, "en"),
])
def test_language_identification_ships_its_model(text, code):
    lang, prob = language.identify(text)
    assert lang == code and 0.5 < prob <= 1.0


def test_text_without_letters_has_no_language():
    assert language.identify("12345 67890 !!! ---") == ("zxx", 1.0)
    assert language.identify("") == ("zxx", 1.0)


def _random_texts(seed: int) -> list[str]:
    rng = random.Random(seed)
    letters = " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 10)))
                       for _ in range(300))
    alnum = "".join(rng.choice(string.ascii_letters + string.digits + " ") for _ in range(2000))
    rows = ["qwertyuiop", "asdfghjkl", "zxcvbnm", "asdf", "hjkl", "jkl;"]
    mash = " ".join(rng.choice(rows) + rng.choice(rows)[: rng.randint(0, 4)] for _ in range(300))
    return [letters, alnum, mash]


def test_gibberish_scores_random_text_high_and_natural_text_low():
    from pydoc_data.topics import topics

    natural = [topics[k][:3000] for k in sorted(topics)[:30]]
    assert max(gibberish.gibberish_score(t) for t in natural) < 0.1
    for seed in range(3):
        assert min(gibberish.gibberish_score(t) for t in _random_texts(seed)) > 0.9


@pytest.mark.parametrize("text", [
    "这是一个用于测试语言识别的中文句子，我们希望它能被正确识别。" * 5,
    "هذه جملة باللغة العربية لاختبار التعرف على اللغة في النصوص الطويلة " * 5,
    "Źdźbło trawy w szczękach chrząszcza, który brzmi w trzcinie nad rzeką. " * 5,
    "Strč prst skrz krk a vypij čtvrt hrnku zmrzlé vody, řekl mi soused. " * 5,  # Czech: words without vowels
])
def test_scripts_and_languages_the_word_rules_do_not_cover_are_not_gibberish(text):
    assert gibberish.gibberish_score(text) < 0.6


def test_toxic_fraction_with_the_builtin_and_a_custom_list(tmp_path, s3):
    builtin = toxic.load_words()
    assert len(builtin) > 500
    assert toxic.toxic_fraction(toxic.words_of("What the fuck is this shit, you bastard"), builtin) > 0.3
    assert toxic.toxic_fraction(toxic.words_of("A fine essay on Scunthorpe and class assessments."), builtin) == 0
    assert toxic.toxic_fraction([], builtin) == 0
    (tmp_path / "words.txt").write_text("# our list\nbadword\nvery bad phrase\n")
    storage.write_bytes(f"{s3}/lists/words.txt", (tmp_path / "words.txt").read_bytes())
    for spec in (str(tmp_path / "words.txt"), f"{s3}/lists/words.txt"):
        custom = toxic.load_words(spec)
        assert custom == frozenset({"badword", "very bad phrase"})
        words = toxic.words_of("one badword and a very bad phrase here")
        assert toxic.toxic_fraction(words, custom) == 2 / len(words)


def test_toxic_lists_per_language_and_a_classifier_hook(tmp_path, monkeypatch):
    from pretrain.config import FilterConfig, RecipeError
    from pretrain.data.filters import profiles
    from pretrain.data.filters.base import Doc
    from pretrain.data.filters.step import Chain, Stats

    (tmp_path / "de.txt").write_text("schimpfwort\n")
    (tmp_path / "toy_classifier.py").write_text(
        "def score(text):\n    return 0.9 if 'menace' in text else 0.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    german = ("Das ist ein langer deutscher Text über die Geschichte der Stadt und ihrer Märkte, "
              "geschrieben für Leser, die mehr über die alten Straßen wissen wollen. ") * 4
    english = ("This is a long English text about the history of the town and its markets, written for "
               "readers who want to know more about the old streets. ") * 4
    cfg = FilterConfig.model_validate({"profiles": {"web": {"toxic": {
        "wordlists": {"de": str(tmp_path / "de.txt")}, "max_fraction": 0.001,
        "classifier": "toy_classifier:score", "max_classifier_score": 0.5, "classifier_languages": ["en"]}}}})
    chain = Chain([s for s in profiles.build(cfg, "web") if s.name.startswith("toxic")], Stats())

    def reason(text: str) -> str | None:
        return chain.judge(Doc(text, url="https://example.org/page")).reason
    assert reason(german) is None and reason(english) is None
    assert reason(german + " schimpfwort") == "toxic.max_fraction"  # the German list, for German text only
    assert reason(english + " schimpfwort") is None
    assert reason(english + " A menace to all.") == "toxic.classifier"
    assert reason(german + " menace") is None  # the classifier judges the languages it was given
    everywhere = FilterConfig.model_validate({"profiles": {"web": {"toxic": {
        "languages": [], "wordlists": {"de": str(tmp_path / "de.txt")}, "max_fraction": 0.001}}}})
    chain = Chain([s for s in profiles.build(everywhere, "web") if s.name.startswith("toxic")], Stats())
    assert reason(german + " schimpfwort") == "toxic.max_fraction"  # the main list everywhere, plus German's
    assert reason(german + " bastard") == "toxic.max_fraction" and reason(german) is None
    bad = FilterConfig.model_validate({"profiles": {"web": {"toxic": {"classifier": "toy_classifier:nope"}}}})
    with pytest.raises(RecipeError, match=r"toxic\.classifier"):
        profiles.build(bad, "web")


def test_blocked_domains_cover_subdomains_and_nothing_else(tmp_path):
    (tmp_path / "optout.txt").write_text("# owners who refused crawling\nexample.com\n*.private.org\n")
    domains = toxic.load_domains(str(tmp_path / "optout.txt"))
    assert domains == frozenset({"example.com", "private.org"})
    assert toxic.domain_blocked("https://a.b.example.com/page", domains)
    assert toxic.domain_blocked("http://EXAMPLE.com.:8080/", domains)
    assert toxic.domain_blocked("https://wiki.private.org/x", domains)
    assert not toxic.domain_blocked("https://notexample.com/", domains)
    assert not toxic.domain_blocked("not a url at all", domains)


# The patterns as first written (a lookbehind first): pii.py's faster forms must find exactly what these find.
REFERENCE_PATTERNS = {
    "_EMAIL": r"(?<![\w.+-])[\w.+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b",
    "_PHONE": r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}"
              r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w])",
    "_IPV4": r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)",
    "_IPV6": r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,6}|[0-9A-Fa-f]{1,4})(?![\w:])",
    "_CARD": r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])",
}


def test_pii_patterns_find_what_the_plain_patterns_find():
    rng = random.Random(5)
    pieces = ["a", "b", "x", "1", "2", "7", "0", "f", "E", ".", "-", "+", "(", ")", ":", "::", "@", " ", "_", "\n",
              "user.name@example.com", "+44 20 7946 0958", "(555) 123-4567", "555-123-4567", "8.8.8.8",
              "2001:4860:4860::8888", "4111 1111 1111 1111", "a" * 70 + "@x.org"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 30))) for _ in range(4000)]
    for name, reference in REFERENCE_PATTERNS.items():
        plain, fast = re.compile(reference), getattr(pii, name)
        find = (lambda t: [m.span() for m in pii._emails(t)]) if name == "_EMAIL" else (
            lambda t, fast=fast: [m.span() for m in fast.finditer(t)])
        for text in texts:
            assert find(text) == [m.span() for m in plain.finditer(text)], (name, text)
