"""Build the example datasets: voice-assistant requests routed into a fixed JSON format,
and the same requests labelled with their intent (classification).

Source: the Snips NLU benchmark (CC0 1.0), ../shared/data/snips_nlu. Each request
becomes a chat whose assistant reply is exactly one JSON object
{"intent": ..., "slots": {...}} — a strict output format the base model does not
follow on its own. Run from the repository root:

    python examples/data/build_support_requests.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SNIPS = ROOT.parent / "shared" / "data" / "snips_nlu"
OUT = Path(__file__).resolve().parent
SYSTEM = (
    "You route requests for a voice assistant. Reply with one JSON object only: "
    '{"intent": <one of AddToPlaylist, BookRestaurant, GetWeather, PlayMusic, RateBook, '
    'SearchCreativeWork, SearchScreeningEvent>, "slots": {<slot name>: <text from the request>}}.'
)
PER_INTENT = {"train": 50, "test": 12}


def _examples(split: str, intent: str) -> list[dict]:
    path = SNIPS / f"{split}_{intent}.json"
    rows = json.loads(path.read_text(encoding="latin-1"))[intent]
    examples = []
    for row in rows:
        text = "".join(chunk["text"] for chunk in row["data"]).strip()
        slots = {c["entity"]: c["text"].strip() for c in row["data"] if "entity" in c}
        answer = json.dumps({"intent": intent, "slots": slots}, ensure_ascii=False)
        examples.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return examples


def main() -> None:
    intents = sorted(p.stem.removeprefix("train_") for p in SNIPS.glob("train_*.json"))
    rng = random.Random(0)
    for split, source in (("train", "train"), ("test", "validate")):
        chosen = []
        for intent in intents:
            rows = _examples(source, intent)
            rng.shuffle(rows)
            chosen.extend(rows[: PER_INTENT[split]])
        rng.shuffle(chosen)
        path = OUT / f"support_requests.{split}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen))
        print(f"wrote {len(chosen)} examples to {path.relative_to(ROOT)}")
        # The same requests as a classification file (text + label): the intent only.
        intents_path = OUT / f"snips_intents.{split}.jsonl"
        intents_path.write_text(
            "".join(
                json.dumps(
                    {
                        "text": row["messages"][1]["content"],
                        "label": json.loads(row["messages"][2]["content"])["intent"],
                    },
                    ensure_ascii=False,
                )
                + "\n"
                for row in chosen
            )
        )
        print(f"wrote {len(chosen)} examples to {intents_path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
