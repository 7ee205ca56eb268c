"""Normalisation shared by loading and screening, so both sides compare the same forms.

Names go through four steps before they are compared (matcher.py):

1. transliteration to Latin with `anyascii` (Cyrillic, Arabic, Greek, ... -> ASCII;
   chosen over Unidecode for its ISC licence and active upkeep),
2. OFAC's "LAST, First Middle" turned into "First Middle LAST", honorifics and legal
   forms dropped, Arabic articles and the nasab connector (al-, bin, ibn) dropped, and
   "Abdul Rahman" / "Abdulrahman" / "Abd al-Rahman" split the same way,
3. a spelling key per token that folds the common transliteration variants (Dmitriy /
   Dmitry / Dmitri, Mohammed / Muhammad, Yelena / Elena, Zhukov / Joukov, ...),
4. for names written in an abjad (Arabic, Hebrew: no short vowels), a consonant
   skeleton, since "mhmd" is all the script says about "Muhammad".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from anyascii import anyascii

_NON_WORD = re.compile(r"[^\w\s]+", re.UNICODE)
_SPACES = re.compile(r"\s+")
_EVM = re.compile(r"^0x[0-9a-fA-F]{40}$")
# bech32 / bech32m human-readable prefixes of the chains OFAC lists; bech32 is
# case-insensitive by definition (mixed case is invalid), so lower case is canonical.
_BECH32 = re.compile(r"^(bc1|tb1|ltc1|bcrt1)[0-9a-z]+$", re.IGNORECASE)

# titles that precede a name and say nothing about who it is
HONORIFICS = frozenset(
    {
        "mr", "mrs", "ms", "miss", "dr", "prof", "sir", "dame", "lord", "sheikh", "shaikh",
        "shaykh", "sheik", "haji", "hajji", "hadji", "mullah", "mulla", "imam", "ayatollah",
        "emir", "amir", "general", "gen", "colonel", "col", "major", "maj", "captain", "capt",
        "brigadier", "admiral", "lieutenant", "lt", "judge", "president", "minister", "hon",
        "rev", "father", "eng", "engineer",
    }
)  # fmt: skip
# legal forms of organisations (OFAC and registries spell them every way)
LEGAL_FORMS = frozenset(
    {
        "ltd", "limited", "llc", "inc", "incorporated", "corp", "corporation", "co", "company",
        "plc", "gmbh", "ag", "sa", "sarl", "srl", "spa", "bv", "nv", "jsc", "ojsc", "pjsc",
        "cjsc", "ooo", "oao", "zao", "ao", "pao", "tov", "fze", "fzco", "fzc", "llp", "lp",
        "pte", "pty", "bhd", "sdn", "kg", "as", "ab", "oy", "the",
    }
)  # fmt: skip
# "son/daughter of" in Arabic names: kept or dropped at will by every list
_NASAB = frozenset({"bin", "ibn", "bint", "binti", "ben", "bn"})
_ARTICLE = re.compile(r"(?<![\w])(?:al|el|ul|ad|ed|ash|as|az|ar|an|at)[-\s]+(?=\w{2})", re.I)
_ARABIC_ARTICLE = re.compile(r"(?<!\S)\u0627\u0644")
# Arabic letters anyascii writes as digraphs (kh, th, dh, gh) go straight to the single
# consonant the Latin side folds its digraphs to, so "th" from Arabic can only be t + h
_ARABIC_DIGRAPHS = str.maketrans({"\u062e": "h", "\u062b": "t", "\u0630": "d", "\u0638": "z",
                                  "\u063a": "g"})  # fmt: skip
_ABD = re.compile(r"^abd(?:ul|el|al|oul|ol|ur|u|e|a|o)?(?=[a-z]{3,})")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_DOTTED = re.compile(r"\b(?:[A-Za-z]\.){2,}")  # S.A., L.L.C., F.Z.E. -> SA, LLC, FZE


def is_abjad(text: str) -> bool:
    """Written (partly) in Arabic or Hebrew script, where short vowels are not written."""
    for ch in text:
        if ord(ch) > 0x58F:
            name = unicodedata.name(ch, "")
            if name.startswith(("ARABIC", "HEBREW")):
                return True
    return False


def transliterate(name: str) -> str:
    """Latin ASCII form of any script (the Arabic article is dropped first)."""
    text = unicodedata.normalize("NFKC", name)
    text = _ARABIC_ARTICLE.sub("", text).translate(_ARABIC_DIGRAPHS)
    return anyascii(text)


def _basic_tokens(name: str) -> list[str]:
    ascii_form = _CAMEL.sub(" ", transliterate(name))
    ascii_form = _DOTTED.sub(lambda m: m.group(0).replace(".", "") + " ", ascii_form)
    # apostrophes and the ayn/hamza marks join (Sa'id, `Ali), other punctuation splits
    joined = re.sub(r"['`\u2019\u02bb\u02bc]", "", ascii_form)
    cleaned = _NON_WORD.sub(" ", joined.casefold()).replace("_", " ")
    return [t for t in _SPACES.split(cleaned) if t]


def normalise_name(name: str) -> str:
    """Transliterate, casefold, strip diacritics and punctuation, sort tokens.

    Sorting makes "SMITH, John" and "John Smith" the same string, which is what OFAC's
    "LAST, First" spelling against a customer's "First Last" needs. Stored with every
    listed name (`sanctions_names.normalised`).
    """
    decomposed = unicodedata.normalize("NFKD", name)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(sorted(_basic_tokens(stripped)))


_LATIN_FOLDS = (("shch", "sh"), ("tsch", "ch"), ("sch", "sh"), ("dzh", "j"), ("dj", "j"),
                ("zh", "j"))  # fmt: skip
_FOLDS = (("kh", "h"), ("ph", "f"), ("gh", "g"), ("th", "t"), ("dh", "d"), ("ck", "k"),
          ("q", "k"), ("ch", "9"))  # fmt: skip


@lru_cache(maxsize=1 << 18)  # name parts repeat: each is folded once
def spelling_key(token: str, abjad: bool = False) -> str:
    """Fold transliteration and spelling variants of one lower-case ASCII token.

    For a token transliterated from Arabic script the digraph folds are skipped: its
    digraph letters were folded before transliteration, so "zh" there is z + h
    (al-Zahrani), never the Cyrillic zh, and "th" is t + h (al-Tahhan).
    """
    t = token
    for old, new in _FOLDS[-2:] if abjad else _LATIN_FOLDS + _FOLDS:
        t = t.replace(old, new)
    t = re.sub(r"c(?=[eiy])", "s", t).replace("c", "k").replace("9", "ch")
    t = t.replace("x", "ks").replace("w", "v").replace("tz", "ts").replace("y", "i")
    t = re.sub(r"^ie", "e", t)
    # Russian e/yo between consonants: Solovyov / Solovyev / Soloviev, Fyodorov / Fedorov,
    # Gennadyevich / Gennadievich; and Sergeyevich / Sergeevich
    t = re.sub(r"(?<=[^aeiou])i[eo](?=[^aeiou])", "e", t).replace("eie", "ee")
    t = t.replace("ou", "u").replace("oo", "u").replace("ee", "i").replace("o", "u")
    t = re.sub(r"(.)\1+", r"\1", t)
    if len(t) > 3:
        t = re.sub(r"(?<=[aeiu])h$", "", t)
    return t


@lru_cache(maxsize=1 << 18)
def skeleton(key: str) -> str:
    """Consonants of a spelling key (an abjad writes little else)."""
    s = re.sub(r"(.)\1+", r"\1", re.sub(r"[aeiuv]", "", key))
    if len(s) > 2:
        s = re.sub(r"(?<![csk])h$", "", s)  # a final ta marbuta, not "ch"/"sh"
    return s or key[:1]


@dataclass(frozen=True)
class NameForm:
    """A name ready for comparison: spelling keys in given-name-first order."""

    keys: tuple[str, ...]
    skeletons: tuple[str, ...]
    abjad: bool

    @property
    def sorted_key(self) -> str:
        return " ".join(sorted(self.keys))

    @property
    def sorted_skeleton(self) -> str:
        return " ".join(sorted(self.skeletons))


def name_form(name: str) -> NameForm:
    abjad = is_abjad(name)
    text = name
    if text.count(",") == 1:
        last, first = (part.strip() for part in text.split(","))
        if last and first:
            text = f"{first} {last}"  # OFAC: "LAST, First Middle"
    text = _ARTICLE.sub("", transliterate(text))
    tokens: list[str] = []
    for token in _basic_tokens(text):
        if token in _NASAB:
            continue
        split = _ABD.match(token)
        if split:
            tokens.extend(["abd", token[split.end() :]])
        elif token in {"abdul", "abdel", "abdal", "abdoul"}:
            tokens.append("abd")
        else:
            tokens.append(token)
    # (Latin honorifics only: in Arabic script "mr" is Omar, not Mister)
    while not abjad and len(tokens) > 1 and tokens[0] in HONORIFICS:
        tokens.pop(0)
    kept = [t for t in tokens if t not in LEGAL_FORMS]
    tokens = kept if kept else tokens
    keys = tuple(spelling_key(t, abjad) for t in tokens)
    return NameForm(keys, tuple(skeleton(k) for k in keys), abjad)


def normalise_address(address: str) -> str:
    """EVM hex and bech32 addresses are case-insensitive (lowered); base58 ones
    (legacy Bitcoin, Tron, Solana, ...) are case-sensitive and kept as written."""
    value = address.strip()
    if _EVM.match(value):
        return value.lower()
    if _BECH32.match(value):
        return value.lower()
    return value
