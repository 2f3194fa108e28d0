"""Writes the demo task folder (topic classification, 4 classes) from templates written for
this project. Run once: `python xtremedistil/demo_task/generate.py`; the output is committed.

The sentences are synthetic but not trivial: every class shares the same frames and
neutral words, and about one sentence in eight carries a distractor word from another topic.
"""
import random
from pathlib import Path

TOPICS = {
    "sports": ["the match", "the striker", "our goalkeeper", "the final whistle", "the league table",
               "a penalty kick", "the marathon", "the coach", "the home team", "the tennis final",
               "a late goal", "the relay race", "the referee", "the transfer window", "the cup run"],
    "food": ["the soup", "a fresh baguette", "the chef", "the spicy curry", "our bakery",
             "the dessert menu", "a bowl of noodles", "the roasted vegetables", "the lemon cake",
             "a cup of espresso", "the street market stall", "the dumplings", "the olive oil",
             "the new recipe", "the cheese board"],
    "weather": ["the storm", "heavy rain", "the morning fog", "a cold front", "the heatwave",
                "the forecast", "strong winds", "the first snow", "a thunderstorm", "the humidity",
                "the drought", "clear skies", "the hail", "the flood warning", "the sea breeze"],
    "tech": ["the new phone", "the software update", "our laptop", "the battery", "the app",
             "the chip maker", "a security patch", "the cloud service", "the smartwatch",
             "the search engine", "the router", "the graphics card", "the operating system",
             "the startup", "the open source library"],
}
VERBS = {
    "sports": ["was decided by", "ended with", "was overshadowed by", "turned on", "depended on"],
    "food": ["tasted better with", "was served with", "came with", "smelled of", "was cooked with"],
    "weather": ["brought", "arrived with", "was followed by", "came along with", "ended with"],
    "tech": ["shipped with", "was slowed down by", "crashed because of", "was improved by", "now supports"],
}
FRAMES = [
    "{a} {verb} {b} yesterday .",
    "Everyone was talking about how {a} {verb} {b} .",
    "I could not believe that {a} {verb} {b} again .",
    "{a} {verb} {b} , said a spokesperson on Monday .",
    "According to the local paper , {a} {verb} {b} .",
    "Nobody expected that {a} {verb} {b} this week .",
    "In the end {a} {verb} {b} , as usual .",
    "My neighbour told me that {a} {verb} {b} .",
]


def sentence(rng: random.Random, topic: str) -> str:
    a, b = rng.sample(TOPICS[topic], 2)
    if rng.random() < 0.125:  # distractor from another topic in the second slot
        b = rng.choice(TOPICS[rng.choice([t for t in TOPICS if t != topic])])
    text = rng.choice(FRAMES).format(a=a, verb=rng.choice(VERBS[topic]), b=b)
    return text[0].upper() + text[1:]


def main(out: Path = Path(__file__).parent) -> None:
    rng = random.Random(42)
    labels = sorted(TOPICS)
    sizes = {"train": 480, "dev": 120, "test": 120}
    for split, n in sizes.items():
        rows = [(sentence(rng, topic), topic) for topic in labels for _ in range(n // len(labels))]
        rng.shuffle(rows)
        (out / f"{split}.tsv").write_text("".join(f"{t}\t{l}\n" for t, l in rows), encoding="utf-8")
    transfer = [sentence(rng, rng.choice(labels)) for _ in range(2000)]
    (out / "transfer.txt").write_text("".join(f"{t}\n" for t in transfer), encoding="utf-8")
    (out / "labels.tsv").write_text("".join(f"{l}\n" for l in labels), encoding="utf-8")


if __name__ == "__main__":
    main()
