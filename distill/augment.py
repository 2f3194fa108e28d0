"""Transfer-set augmentation when unlabeled data is scarce (Tang et al. 2019, "Distilling
Task-Specific Knowledge from BERT into Simple Neural Networks", section 3.3).

Each source sentence (the task's transfer file) is written once as it is, then `multiplier`
variants are drawn from it. A variant walks the words; each word is, with probability
- `p_mask`: replaced by the teacher's mask token,
- `p_replace`: replaced by one of its `neighbours` nearest words (Tang et al. take a word of the
  same part of speech; POS taggers are per language, so here the neighbours are the nearest
  words in the *teacher's* input-embedding space: a word's vector is the mean of its pieces' rows,
  cosine similarity, among the `max_vocab` most frequent words of the task; with `replace_from`
  `teacher`, also among the teacher's whole-word pieces, so variants carry words the task text never has and
  the student gets rows for them),
- otherwise kept;
then, with probability `p_ngram`, only a random n-gram (n in 1..`max_ngram`) of the variant is kept.

How many variants a sentence gets (`allocation`):
- `sentence` (Tang et al.): `multiplier` each, whatever its length;
- `word`: in proportion to its words, `multiplier * words / mean words` (stochastically rounded), so every
  word of the source text is in about as many variants. SST-2's transfer text is treebank phrases (median
  7 words) while its test set is whole sentences (median 19): with `sentence` allocation 13% of the
  transfer lines had 20+ words (test: 48%), and the student's retention fell with sentence length (98% under
  10 words, 91.5% at 20-29). `word` keeps the same number of lines but puts 29% of them at 20+ words; a
  one-word phrase, which has almost no distinct variants anyway, mostly gets none.

Mention replacement (tagging tasks; Dai & Adel 2020, "An Analysis of Simple Data Augmentation for Named
Entity Recognition"): `mentions` more sentences per train sentence that has entities, each entity swapped
with probability `p_mention` (at least one per sentence) for another entity of the same type and language
from the train set. Rule variants mostly put known entities in altered contexts; these put other entities,
often long and irregular ones (titles, places with commas), in real contexts, which is where students lose
most against their teacher. The train tags only choose what to swap: the teacher labels the new sentences
like any other transfer line. The variants of train sentence i follow transfer line i in the file, so they
are spread over the cache's chunks.

Joins (`joins`, off by default): N more lines per transfer sentence, each the sentence and an earlier one (drawn
from the last `JOIN_POOL` sources), in either order, around a connective drawn from `join_with`. Where the
transfer text is short phrases and the test text whole sentences (SST-2: median 7 words against 19), allocation
by words can only lengthen the lines by varying the few long sources; joins make new long lines whose parts
the teacher has to weigh against each other ("... , but ..."). The teacher labels them like any other line. A
dev or test sentence is never one half. Their stream is apart from the rule variants', so a file with joins holds
every line of the same file without them (its teacher outputs are copied, not scored again). Measured on SST-2's
BiLSTM: a point lower on test than without (README), so no recipe uses it.

Per-language multipliers (`language_multipliers`, e.g. `en=16`): where the task's lines carry a language
prefix, a transfer line that is a train sentence of a named language gets that many variants instead of
`multiplier` (other lines, and sentences the train set does not have, keep `multiplier`). Aimed at the
language a student keeps least of (WikiANN's English). Each line's variants come from its own seeded stream,
so a larger count for a language keeps every line of the file without it: only the extra ones are scored.

Words are whitespace tokens, so tagging keeps word boundaries (the teacher labels the new
sentences when it scores them). Output is streamed to the file (a temp name renamed when
complete), deduplicated with 8-byte hashes (bounded memory: about 80 bytes a line), and screened:
no line equal to a dev or test sentence is ever written. Every choice comes from a generator
seeded with (seed, source line), so the same settings give the same file.
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import hashlib
import logging
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from xtremedistil.errors import XtremeDistilError
from xtremedistil.distill.embeddings import similarity_block, unit_rows
from xtremedistil.distill.files import put_in_place
from xtremedistil.settings import Settings, setting

if TYPE_CHECKING:
    from xtremedistil.distill.data import Example

logger = logging.getLogger(__name__)


ALLOCATIONS = ("sentence", "word")
REPLACE_FROM = ("task", "teacher")
JOIN_POOL = 10_000       # joins draw the other sentence from this many latest sources (bounded memory)
MENTIONS_NEED_TAGS = ("--augment_mentions swaps the entities of a tagging task's train sentences; "
                      "use it with --do_NER")


@dataclasses.dataclass
class AugmentConfig(Settings):
    """Tang et al. (2019)'s rules: each variant masks words (`p_mask`), replaces others by a near word
    (`p_replace`), then with `p_ngram` keeps only an n-gram of 1..`max_ngram` words."""

    multiplier: int = setting(0, "augment the transfer set: N variants per sentence (Tang et al. 2019: masking, "
                                 "nearest-word replacement, n-gram sampling; they used 20 for SST-2), scored like "
                                 "any transfer file; 0 = off", flag="augment_multiplier", minimum=0)
    p_mask: float = setting(0.1, "augmentation: probability of masking a word", flag="augment_p_mask",
                            minimum=0, maximum=1)
    p_replace: float = setting(0.1, "augmentation: probability of replacing a word by one of its nearest words in "
                                    "the teacher's embedding space", flag="augment_p_replace", minimum=0, maximum=1)
    p_ngram: float = setting(0.25, "augmentation: probability of keeping only an n-gram", flag="augment_p_ngram",
                             minimum=0, maximum=1)
    max_ngram: int = setting(5, "augmentation: longest n-gram kept", flag="augment_max_ngram", minimum=1)
    neighbours: int = setting(10, flag=None, minimum=1)
    max_vocab: int = setting(30_000, flag=None, minimum=2)
    seed: int = setting(42, flag=None)
    allocation: str = setting("sentence", "augmentation: 'sentence' = N variants per sentence (Tang et al.), "
                                          "'word' = variants in proportion to a sentence's words (more sentence-length "
                                          "text when the transfer text is short phrases, as SST-2's is)",
                              flag="augment_allocation", choices=ALLOCATIONS)
    replace_from: str = setting("task", "augmentation: where a replaced word's neighbours come from: 'task' = the "
                                        "task's frequent words (Tang et al.), 'teacher' = those and the teacher's "
                                        "whole-word pieces, so the transfer set holds words the task text never "
                                        "has (the student otherwise has no row for them)",
                                flag="augment_replace_from", choices=REPLACE_FROM)
    mentions: int = setting(0, "augmentation, tagging tasks: N more sentences per train sentence with entities, "
                               "its entities swapped for other train entities of the same type and language "
                               "(mention replacement, Dai & Adel 2020); the teacher labels them; 0 = off",
                            flag="augment_mentions", minimum=0)
    p_mention: float = setting(0.5, "augmentation: probability of swapping each entity of a sentence (at least one "
                                    "is swapped)", flag="augment_p_mention", minimum=0, maximum=1)
    joins: int = setting(0, "augmentation: N more lines per transfer sentence, each the sentence joined to an "
                            "earlier one (random, either order) by a connective from --augment_join_with: "
                            "sentence-length lines when the transfer text is short phrases; 0 = off",
                         flag="augment_joins", minimum=0)
    join_with: str = setting(", ; and but", "augmentation: the connectives --augment_joins draws from, separated by "
                                           "spaces (the default's words are English; ', ;' suits any language)",
                             flag="augment_join_with")
    language_multipliers: str = setting("", "augmentation, tasks whose lines carry a language prefix: variants per "
                                            "sentence for some languages instead of --augment_multiplier, e.g. "
                                            "'en=16,de=12': more transfer data where the student keeps least of its "
                                            "teacher. It applies to transfer lines that are train sentences of that "
                                            "language; empty = N for every line",
                                        flag="augment_language_multipliers")

    def check(self) -> None:
        if self.p_mask + self.p_replace > 1.0:
            raise XtremeDistilError("--augment_p_mask + --augment_p_replace must not exceed 1")
        if self.joins and not self.join_with.split():
            raise XtremeDistilError("--augment_join_with is empty: give the connectives --augment_joins puts between "
                                    "two sentences, e.g. ', ; and but'")
        self.language_counts()

    def language_counts(self) -> dict[str, int]:
        """--augment_language_multipliers as {language: variants per sentence}; one-line errors when malformed."""
        counts: dict[str, int] = {}
        for item in self.language_multipliers.replace(",", " ").split():
            language, sep, value = item.partition("=")
            if not (sep and language and value.isdigit()):
                raise XtremeDistilError(f"--augment_language_multipliers: '{item}' is not LANGUAGE=N with N a whole "
                                        "number >= 0 (e.g. 'en=16,de=12')")
            if language in counts:
                raise XtremeDistilError(f"--augment_language_multipliers: '{language}' is given twice")
            counts[language] = int(value)
        return counts

    @property
    def active(self) -> bool:
        """Whether there is anything to write beyond the transfer file itself."""
        return self.multiplier > 0 or any(self.language_counts().values()) or self.mentions > 0 or self.joins > 0

    def signature(self) -> dict:
        """The settings that decide the file. Mention and join settings only when used, so files written before
        they existed keep their names (and their scored caches)."""
        values = dataclasses.asdict(self)
        if not self.mentions:
            values.pop("mentions"), values.pop("p_mention")
        if not self.joins:
            values.pop("joins"), values.pop("join_with")
        if self.replace_from == "task":
            values.pop("replace_from")
        counts = values.pop("language_multipliers") and self.language_counts()
        if counts:
            values["language_multipliers"] = counts
        return values


def _key(sentence: str) -> bytes:
    return hashlib.blake2b(" ".join(sentence.split()).encode("utf-8"), digest_size=8).digest()


def word_counts(sentences: Iterable[str]) -> tuple[collections.Counter, int]:
    """Occurrences of each word, and the number of sentences."""
    counts, lines = collections.Counter(), 0
    for sentence in sentences:
        counts.update(sentence.split())
        lines += 1
    return counts, lines


def nearest_words(words: list[str], embedding: np.ndarray, tokenizer, k: int, pool: Sequence[str] = (),
                  block: int | None = None) -> list[list[str]]:
    """For each word, its `k` nearest other words among `words` + `pool`, by cosine of mean piece embeddings."""
    keys = [*words, *pool]
    pieces = tokenizer(keys, add_special_tokens=False)["input_ids"]
    vectors = np.zeros((len(keys), embedding.shape[1]), np.float32)
    for i, ids in enumerate(pieces):
        if ids:
            vectors[i] = embedding[ids].mean(axis=0)
    vectors = unit_rows(vectors)
    k = min(k, len(keys) - 1)
    lowered = [w.lower() for w in keys]
    block = block or similarity_block(len(keys))
    result = []
    for start in tqdm(range(0, len(words), block), desc="augment: nearest words", unit="block", leave=False):
        sims = vectors[start:min(start + block, len(words))] @ vectors.T
        top = np.argpartition(-sims, min(k + 4, len(keys) - 1), axis=1)[:, :k + 5]
        for row, candidates in enumerate(top):
            i = start + row
            ordered = candidates[np.argsort(-sims[row, candidates])]
            result.append([keys[j] for j in ordered if lowered[j] != lowered[i]][:k])
    return result


def teacher_words(tokenizer, exclude: Iterable[str] = ()) -> list[str]:
    """The teacher's whole-word pieces as words: letters only (any script), two or more of them, one piece when
    tokenized alone, not a special token, not in `exclude` (compared lowercased). WordPiece continuations
    (`##`) are not words; SentencePiece's `▁` and byte-level BPE's `Ġ` word-start marks are stripped; a word
    the tokenizer reads as UNK (an accent a lowercasing tokenizer strips) is left out."""
    skip = {w.lower() for w in exclude}
    special = set(tokenizer.all_special_tokens)
    candidates = sorted({token.lstrip("\u2581\u0120") for token in tokenizer.get_vocab()
                         if token not in special and not token.startswith("##")})
    candidates = [w for w in candidates if len(w) > 1 and w.isalpha() and w.lower() not in skip]
    single = tokenizer(candidates, add_special_tokens=False)["input_ids"] if candidates else []
    return [w for w, ids in zip(candidates, single) if len(ids) == 1 and ids[0] != tokenizer.unk_token_id]


def variant(words: list[str], rng: random.Random, config: AugmentConfig, mask_token: str,
            neighbours: dict[str, list[str]]) -> list[str]:
    """One augmented copy of `words` (masking, replacement, then n-gram sampling)."""
    out = []
    for word in words:
        draw = rng.random()
        if draw < config.p_mask:
            out.append(mask_token)
        elif draw < config.p_mask + config.p_replace and neighbours.get(word):
            out.append(rng.choice(neighbours[word]))
        else:
            out.append(word)
    if len(out) > 1 and rng.random() < config.p_ngram:
        n = rng.randint(1, min(config.max_ngram, len(out)))
        start = rng.randint(0, len(out) - n)
        out = out[start:start + n]
    return out


def variant_count(n_words: int, config: AugmentConfig, mean_words: float, rng: random.Random,
                  multiplier: int | None = None) -> int:
    """How many variants a sentence of `n_words` words gets (see `allocation` in the module docstring);
    `multiplier`: its language's (`language_multipliers`), else `config.multiplier`."""
    multiplier = config.multiplier if multiplier is None else multiplier
    if config.allocation == "sentence":
        return multiplier
    share = multiplier * n_words / max(mean_words, 1e-9)
    whole = int(share)
    return whole + (rng.random() < share - whole)


def entity_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(start, end, type) of each IOB2 entity; an I-X that does not continue an X entity starts one."""
    spans: list[list] = []
    for i, tag in enumerate(tags):
        prefix, _, kind = tag.partition("-")
        if prefix == "I" and spans and spans[-1][1] == i and spans[-1][2] == kind:
            spans[-1][1] = i + 1
        elif prefix in ("B", "I") and kind:
            spans.append([i, i + 1, kind])
    return [tuple(span) for span in spans]


Inventory = dict[tuple, list[tuple[str, ...]]]


def mention_inventory(labeled: Iterable[Example]) -> Inventory:
    """The distinct entities of the labeled sentences by (language, type), in order of first appearance."""
    found: dict[tuple, dict[tuple[str, ...], None]] = collections.defaultdict(dict)
    for ex in labeled:
        for start, end, kind in entity_spans(ex.label):
            found[(ex.language, kind)][tuple(ex.words[start:end])] = None
    return {key: list(mentions) for key, mentions in found.items()}


def mention_variant(ex: Example, spans: list[tuple[int, int, str]], rng: random.Random, config: AugmentConfig,
                    inventory: Inventory) -> list[str]:
    """`ex`'s words with some entities (each with `p_mention`, at least one) swapped for other entities of the
    same type and language; unchanged when no entity has another of its kind."""
    chosen = [rng.random() < config.p_mention for _ in spans]
    if not any(chosen):
        chosen[rng.randrange(len(spans))] = True
    out, position = [], 0
    for (start, end, kind), swap in zip(spans, chosen):
        out.extend(ex.words[position:start])
        mentions = inventory.get((ex.language, kind), [])
        original = tuple(ex.words[start:end])
        replacement = original
        if swap and len(mentions) > 1:
            while replacement == original:
                replacement = mentions[rng.randrange(len(mentions))]
        out.extend(replacement)
        position = end
    out.extend(ex.words[position:])
    return out


def _mention_candidates(ex: Example, index: int, config: AugmentConfig, inventory: Inventory) -> list[list[str]]:
    spans = entity_spans(ex.label)
    if not spans:
        return []
    rng = random.Random((config.seed * 1_000_003 + index) * 7 + 3)      # apart from the rule variants' streams
    return [mention_variant(ex, spans, rng, config, inventory) for _ in range(config.mentions)]


def joined(words: list[str], pool: Sequence[list[str]], rng: random.Random, connectives: Sequence[str]) -> list[str]:
    """`words` and a sentence drawn from `pool`, in either order, around a connective drawn from `connectives`."""
    other = pool[rng.randrange(len(pool))]
    first, second = (words, other) if rng.random() < 0.5 else (other, words)
    return [*first, rng.choice(connectives), *second]


def augment_stream(sources: Iterable[str], config: AugmentConfig, mask_token: str,
                   neighbours: dict[str, list[str]], screened: set[bytes], mean_words: float = 1.0,
                   labeled: Sequence[Example] = ()) -> Iterator[str]:
    """Source sentences and their variants, deduplicated, none in `screened` (hashes of dev/test).

    `mean_words`: the sources' mean sentence length in words (used by `allocation="word"`).
    `labeled`: tagged train sentences for mention replacement (`config.mentions`); the variants of the i-th
    follow the i-th source's, the rest come last."""
    languages = config.language_counts()
    language_of = {_key(ex.text): ex.language for ex in labeled if ex.language in languages} if languages else {}
    labeled = labeled if config.mentions else ()
    inventory = mention_inventory(labeled)

    def mention_candidates(index: int) -> list[list[str]]:
        return _mention_candidates(labeled[index], index, config, inventory) if index < len(labeled) else []

    connectives, pool = config.join_with.split(), collections.deque(maxlen=JOIN_POOL)

    def join_candidates(line_number: int, sentence: str, words: list[str]) -> Iterator[list[str]]:
        if not (config.joins and words) or _key(sentence) in screened:           # no dev/test text in a join
            return
        if pool:
            rng = random.Random((config.seed * 1_000_003 + line_number) * 7 + 5)    # apart from the other streams
            for _ in range(config.joins):
                yield joined(words, pool, rng, connectives)
        pool.append(words)

    def candidates() -> Iterator[list[str]]:
        line_number = -1
        for line_number, sentence in enumerate(sources):
            words = sentence.split()
            rng = random.Random(config.seed * 1_000_003 + line_number)
            yield words
            multiplier = languages.get(language_of.get(_key(sentence))) if language_of else None
            for _ in range(variant_count(len(words), config, mean_words, rng, multiplier)):
                yield variant(words, rng, config, mask_token, neighbours)
            yield from mention_candidates(line_number)
            yield from join_candidates(line_number, sentence, words)
        for index in range(line_number + 1, len(labeled)):      # train sentences beyond the transfer file
            yield from mention_candidates(index)

    seen: set[bytes] = set()
    for candidate in candidates():
        text = " ".join(candidate)
        key = _key(text)
        if not text or key in seen or key in screened:
            continue
        seen.add(key)
        yield text


def _check_languages(config: AugmentConfig, labeled: Sequence[Example]) -> None:
    """Every language --augment_language_multipliers names must be one of the train sentences' languages."""
    named = config.language_counts()
    if not named:
        return
    present = {ex.language for ex in labeled if ex.language}
    missing = sorted(set(named) - present)
    if missing:
        have = ", ".join(sorted(present)) if present else "none: no train line carries a language prefix like 'en:'"
        raise XtremeDistilError(f"--augment_language_multipliers: no train sentence in {', '.join(missing)} "
                                f"(the task's train languages: {have})")


def augment_file(sources_path: str | Path, out_path: str | Path, config: AugmentConfig, *, mask_token: str,
                 embedding: np.ndarray, tokenizer, screen: Iterable[str], total: int | None = None,
                 labeled: Sequence[Example] = ()) -> dict:
    """Writes the augmented transfer file atomically; returns counts for the log and report.

    `labeled`: the task's train examples; mention replacement (`config.mentions`) needs tagged ones."""
    from xtremedistil.distill.data import iter_transfer

    out_path = Path(out_path)
    if config.mentions and not any(ex.words for ex in labeled):
        raise XtremeDistilError(MENTIONS_NEED_TAGS)
    _check_languages(config, labeled)
    counts, lines = word_counts(iter_transfer(sources_path))
    mean_words = sum(counts.values()) / max(lines, 1)
    vocab = [w for w, c in counts.most_common(config.max_vocab) if c >= 2 or len(counts) < config.max_vocab]
    table = {}
    if config.multiplier and config.p_replace and len(vocab) > 1:
        pool = teacher_words(tokenizer, exclude=vocab) if config.replace_from == "teacher" else []
        if pool:
            logger.info("augment: neighbours drawn from %d task words and %d teacher whole-word pieces",
                        len(vocab), len(pool))
        table = dict(zip(vocab, nearest_words(vocab, embedding, tokenizer, config.neighbours, pool)))
    screened = {_key(s) for s in screen}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    temp = out_path.with_name(f".{out_path.name}.tmp")
    written = sources = 0
    progress = tqdm(total=total, desc="augment", unit="sent", mininterval=1.0, dynamic_ncols=True)

    def counted():
        nonlocal sources
        for sentence in iter_transfer(sources_path):
            sources += 1
            progress.update(1)
            yield sentence

    try:
        with open(temp, "w", encoding="utf-8") as handle:
            for text in augment_stream(counted(), config, mask_token, table, screened, mean_words, labeled):
                handle.write(text + "\n")
                written += 1
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        temp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise                      # the CLI's disk-full line (exit 3); the earlier file is untouched
        raise XtremeDistilError(f"{out_path}: cannot write the augmented transfer file ({err.strerror})") from None
    finally:
        progress.close()
    if written == 0:
        temp.unlink(missing_ok=True)
        raise XtremeDistilError(f"{sources_path}: augmentation produced no sentence (every line is a dev/test sentence?)")
    put_in_place(temp, out_path, "file:augmented")
    stats = {"sources": sources, "written": written, "vocabulary": len(vocab), "multiplier": config.multiplier,
             "allocation": config.allocation, "mean_source_words": round(mean_words, 2),
             "ratio": round(written / max(sources, 1), 2)}
    if config.mentions:
        stats["mentions"] = config.mentions
    if counts := config.language_counts():
        stats["language_multipliers"] = counts
    if config.joins:
        stats["joins"] = config.joins
    logger.info("augment: %d source sentences -> %d lines in %s (%.1fx; %d words with neighbours)",
                sources, written, out_path, stats["ratio"], len(table))
    return stats
