"""Write the example "meeting notes -> action items" dataset (synthetic, generated here; no third-party text).

    python examples/action_items/make_data.py        # writes train.jsonl and test.jsonl beside this file

Each record: `notes` (informal meeting notes: who attended, what was discussed, who will do what by
when, mixed with chatter that is not an action) and `actions` (one line per action item:
"- Owner: task by deadline."). Deterministic (seeded), so the files are reproducible.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PEOPLE = ["Maya", "Jonas", "Priya", "Luis", "Chen", "Amara", "Tom", "Sofia", "Omar", "Greta", "Kenji", "Lena"]
TOPICS = {
    "website relaunch": ["update the pricing page", "fix the broken signup link", "write the launch blog post",
                         "test the checkout on mobile", "ask legal to review the new terms"],
    "quarterly budget": ["send the travel cost summary", "collect quotes for the new laptops",
                         "cut the events budget by ten percent", "prepare the slides for the board"],
    "customer onboarding": ["record a short tutorial video", "rewrite the welcome email",
                            "call the three pilot customers", "set up the feedback survey"],
    "office move": ["book the moving company", "order new desks", "tell the landlord the final date",
                    "label all the IT equipment"],
    "hiring": ["post the job ad for the data engineer", "schedule interviews with the two finalists",
               "update the interview scorecard", "send the offer letter to Dana"],
}
DEADLINES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "next week", "the end of the month", "tomorrow"]
CHATTER = ["Everyone agreed the last sprint went well.", "Someone brought cake.",
           "There was a short discussion about the parking lot.", "The projector did not work at first.",
           "Weather for the team picnic still looks uncertain.", "Chen mentioned the new coffee machine."]


def record(rng: random.Random, i: int) -> dict:
    topic = rng.choice(list(TOPICS))
    people = rng.sample(PEOPLE, rng.randint(3, 5))
    tasks = rng.sample(TOPICS[topic], rng.randint(1, min(3, len(TOPICS[topic]))))
    owners = [rng.choice(people) for _ in tasks]
    deadlines = [rng.choice(DEADLINES) for _ in tasks]
    lines = [f"Meeting about the {topic}. Present: {', '.join(people)}."]
    sentences = [f"{o} will {t} by {d}." if rng.random() < 0.5 else f"{o} said they can {t} before {d}."
                 for o, t, d in zip(owners, tasks, deadlines)]
    sentences += rng.sample(CHATTER, rng.randint(1, 2))
    rng.shuffle(sentences)
    notes = " ".join(lines + sentences)
    actions = "\n".join(f"- {o}: {t} by {d}." for o, t, d in zip(owners, tasks, deadlines))
    return {"id": f"meeting_{i}", "notes": notes, "actions": actions}


def main() -> None:
    rng = random.Random(1234)
    rows = [record(rng, i) for i in range(150)]
    here = Path(__file__).parent
    for name, part in (("train.jsonl", rows[:120]), ("test.jsonl", rows[120:])):
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    print(f"wrote {here / 'train.jsonl'} (120) and {here / 'test.jsonl'} (30)")


if __name__ == "__main__":
    main()
