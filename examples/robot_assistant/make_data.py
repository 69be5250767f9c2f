"""Synthetic, seeded data for the robot-assistant demo adapter: commands and questions as JSONL.

A robot command (walk, turn, sit, fetch, go to a room, ...) gets a short action reply that both the
detached shadow and the attached model must produce exactly, e.g. `ACTION: walk(forward, 3)`. An
open-ended or hard request (general knowledge, explanations, advice, math word problems, writing,
chores the action grammar cannot express) gets the escalation marker `[REMOTE]` as the shadow's
target; the attached model answers those like the base model (train.py distils the base's answer).

The test split measures generalisation, not memorisation: it draws from templates (and polite
wrappers) that training never sees, and part of its commands use argument values training never
sees (object and room names). Every record says which: `heldout_template`, `novel_value`.

    python examples/robot_assistant/make_data.py [--out DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "[REMOTE]"
HERE = Path(__file__).resolve().parent

# -- command arguments: surface forms -> canonical value in the reply ---------------------------

DIRECTIONS = {
    "forward": ["forward", "forwards", "ahead", "straight ahead"],
    "backward": ["backward", "backwards", "back"],
    "left": ["left", "to the left"],
    "right": ["right", "to the right"],
}
TURNS = {"left": ["left", "to the left"], "right": ["right", "to the right"]}
LOOKS = {
    "up": ["up", "upwards"],
    "down": ["down", "at the floor"],
    "left": ["left", "to the left"],
    "right": ["right", "to the right"],
    "around": ["around"],
}
NUMBER_WORDS = "zero one two three four five six seven eight nine ten".split()
# Step counts are single digits: a one-layer shadow did not learn to copy two-digit numbers (it
# has no previous-token attention to find the second digit), nor to emit a digit it was never
# trained to emit (0% on a held-out "7"): every digit is seen, in other templates and directions.
STEPS = list(range(1, 10))
DEGREES = [30, 45, 90, 180]  # a fixed set: each has its own bag of digits
OBJECTS_TRAIN = {
    "ball": ["ball", "the ball", "my ball"],
    "red_ball": ["red ball", "the red ball"],
    "stick": ["stick", "the stick"],
    "slippers": ["slippers", "my slippers"],
    "newspaper": ["newspaper", "the newspaper", "the paper"],
    "keys": ["keys", "my keys", "the keys"],
    "bone": ["bone", "your bone"],
    "toy": ["toy", "the toy", "your toy"],
    "shoe": ["shoe", "my shoe"],
    "cup": ["cup", "the cup", "my cup"],
    "book": ["book", "the book"],
    "leash": ["leash", "your leash"],
}
# Names training never sees (a stress test, reported apart: the shadow can only emit names it learned).
OBJECTS_NOVEL = {"tennis_ball": ["tennis ball", "the tennis ball"], "phone": ["phone", "my phone"]}
ROOMS_TRAIN = {
    "kitchen": ["kitchen", "the kitchen"],
    "living_room": ["living room", "the living room"],
    "bedroom": ["bedroom", "the bedroom"],
    "bathroom": ["bathroom", "the bathroom"],
    "garage": ["garage", "the garage"],
    "office": ["office", "the office"],
    "hallway": ["hallway", "the hallway"],
    "garden": ["garden", "the garden"],
    "dining_room": ["dining room", "the dining room"],
}
ROOMS_NOVEL = {"laundry_room": ["laundry room", "the laundry room"], "balcony": ["balcony", "the balcony"]}
# Neutral words that follow any command, so that no frame ("... for me") identifies one action.
FILLERS = [" for me", " now", " again", " quickly", " right away", " when you can"]
FOLLOWS = {"me": ["me"], "cat": ["the cat"], "kid": ["the kid", "the child"], "owner": ["your owner"]}


@dataclass(frozen=True)
class Action:
    """One robot action: its reply pattern and its prompt templates. The last `held_out` are test-only:
    new frames around the action's known words (a one-layer shadow over frozen embeddings cannot
    guess an unseen synonym, "boogie" for dance; measured, it mostly did not)."""

    name: str
    reply: str  # format string over the canonical slot values
    templates: list[str]  # a leading "=" marks a whole prompt, used without a polite wrapper
    held_out: int = 1
    defaults: dict[str, str] = field(default_factory=dict)  # slot values implied by a template


ACTIONS = [
    Action(
        "walk",
        "walk({dir}, {n})",
        [
            "walk {n} steps {dir}",
            "walk {dir} {n} steps",
            "move {dir} {n} steps",
            "take {n} steps {dir}",
            "go {dir} {n} steps",
            "step {dir} {n} times",
            "{n} steps {dir}",
            "trot {dir} {n} steps",
            "advance {n} steps {dir}",
            "head {dir} {n} steps",
            # held out
            "move {n} steps {dir}",
            "walk {dir} for {n} steps",
            "{dir}, {n} steps",
        ],
        held_out=3,
    ),
    Action(
        "turn",
        "turn({dir}, {deg})",
        [
            "turn {dir} {deg} degrees",
            "rotate {dir} by {deg} degrees",
            "turn {deg} degrees {dir}",
            "spin {dir} {deg} degrees",
            "turn {dir}",
            "swivel {dir} {deg} degrees",
            "pivot {deg} degrees {dir}",
            # held out
            "rotate {deg} degrees {dir}",
            "make a {deg} degree turn {dir}",
            "spin {deg} degrees {dir}",
        ],
        held_out=3,
        defaults={"deg": "90"},  # "turn left" is a quarter turn
    ),
    Action("sit", "sit()", ["sit", "sit down", "take a seat", "be seated", "park yourself and sit", "have a seat"]),
    Action("stand", "stand()", ["stand up", "stand", "get up", "rise", "on your feet", "get back on your feet"]),
    Action("lie_down", "lie_down()", ["lie down", "lay down", "go lie down", "rest flat", "lie down on the floor"]),
    Action("stop", "stop()", ["stop", "halt", "stop moving", "freeze", "don't move", "stop right there"]),
    Action("dance", "dance()", ["dance", "do a dance", "show me your dance moves", "boogie", "dance for me"]),
    Action("bark", "bark()", ["bark", "speak", "give me a bark", "woof for me", "bark for me"]),
    Action("come", "come()", ["come here", "come", "come to me", "over here", "come back to me"]),
    Action(
        "battery",
        "battery()",
        [
            "check your battery",
            "=how much battery do you have?",
            "report your battery level",
            "=what is your battery level?",
            "show battery status",
            "tell me your charge level",
            # held out
            "=battery level?",
            "=are you low on battery?",
            "give me a battery report",
        ],
        held_out=3,
    ),
    Action(
        "look",
        "look({dir})",
        ["look {dir}", "turn your head {dir}", "glance {dir}", "peek {dir}", "look {dir} for a moment"],
        held_out=1,
    ),
    Action(
        "fetch",
        "fetch({obj})",
        [
            "fetch {obj}",
            "bring me {obj}",
            "go get {obj}",
            "get {obj} for me",
            "grab {obj}",
            "retrieve {obj}",
            "pick up {obj} and bring it to me",
            # held out
            "fetch me {obj}",
            "bring {obj} here",
            "=can I have {obj}?",
        ],
        held_out=3,
    ),
    Action(
        "follow",
        "follow({who})",
        [
            "follow {who}",
            "come along with {who}",
            "walk behind {who}",
            "stay behind {who}",
            "follow right behind {who}",
        ],
        held_out=1,
    ),
    Action(
        "go",
        "go({room})",
        [
            "go to {room}",
            "walk to {room}",
            "head to {room}",
            "move to {room}",
            "run to {room}",
            "navigate to {room}",
            "wait for me in {room}",
            # held out
            "go into {room}",
            "make your way to {room}",
            "go over to {room}",
        ],
        held_out=3,
    ),
]

# Polite and casual framings; the last ones are test-only (and drawn as often as all others together).
WRAPPERS = [
    "{c}",
    "{c}.",
    "{C}!",
    "please {c}",
    "{C}, please.",
    "could you {c}?",
    "can you {c}?",
    "hey robot, {c}",
    "buddy, {c} now",
    "{C} right now",
    "ok, {c}",
    "good dog, {c}",
    # held out
    "would you kindly {c}?",
    "rex, {c} please",
    "I need you to {c}.",
]
WRAPPERS_HELD_OUT = 3


# -- questions: everything the action grammar cannot express goes remote -----------------------

COUNTRIES = ["France", "Japan", "Brazil", "Canada", "Kenya", "Italy", "Egypt", "Norway", "Peru", "Vietnam"]
TOPICS = [
    "the ocean",
    "friendship",
    "autumn leaves",
    "a lost robot",
    "the moon",
    "coffee",
    "a rainy city",
    "mountains",
    "an old lighthouse",
    "the first day of school",
]
CONCEPTS = [
    "photosynthesis",
    "inflation",
    "black holes",
    "machine learning",
    "the water cycle",
    "vaccines",
    "compound interest",
    "gravity",
    "blockchain",
    "evolution",
    "climate change",
    "the immune system",
]
THINGS = ["a refrigerator", "the internet", "a car engine", "a rainbow", "a microwave", "GPS", "a battery", "WiFi"]
GOALS = [
    "sleep better",
    "learn a new language",
    "save money",
    "be more productive",
    "make new friends",
    "get better at chess",
    "reduce stress",
    "start running",
]
PAIRS = [("a virus", "a bacterium"), ("weather", "climate"), ("a crocodile", "an alligator"), ("RAM", "storage")]
PEOPLE = ["my boss", "my landlord", "a teacher", "my neighbour", "a customer"]
ANIMALS = ["dogs", "cats", "dolphins", "owls", "bees", "elephants"]


@dataclass(frozen=True)
class QuestionSet:
    category: str
    templates: list[str]  # slots: {country} {topic} {concept} {thing} {goal} {a} {b} {people} {animal} {x} {y}
    held_out: int = 2


QUESTIONS = [
    QuestionSet(
        "knowledge",
        [
            "What is the capital of {country}?",
            "Who was the first president of the United States?",
            "What language do people speak in {country}?",
            "How many people live in {country}?",
            "What is the tallest mountain in the world?",
            "Who painted the Mona Lisa?",
            "When did the Second World War end?",
            "What is the largest planet in our solar system?",
            "Tell me about the history of {country}.",
            "What is the population of Tokyo?",
            "Who discovered penicillin?",
            "What is the boiling point of water at high altitude?",
            "What currency does {country} use?",
        ],
        held_out=3,
    ),
    QuestionSet(
        "explanation",
        [
            "Explain {concept} in simple terms.",
            "How does {thing} work?",
            "What is {concept}?",
            "Can you explain {concept} to a ten year old?",
            "What is the difference between {pair}?",
            "Why is the sky blue?",
            "Why do {animal} sleep so much?",
            "How do airplanes stay in the air?",
            "Explain how {thing} was invented.",
            "Why does ice float on water?",
            "Describe {concept} and why it matters.",
        ],
        held_out=3,
    ),
    QuestionSet(
        "advice",
        [
            "How can I {goal}?",
            "What are some tips to {goal}?",
            "I want to {goal}. Where should I start?",
            "Should I buy a house or keep renting?",
            "What should I cook for dinner tonight?",
            "How do I deal with a difficult coworker?",
            "Give me advice on how to {goal}.",
            "What is the best way to {goal}?",
            "How do I ask for a raise?",
        ],
        held_out=2,
    ),
    QuestionSet(
        "math",
        [
            "What is {x} times {y}?",
            "If a train travels {x} km in {y} hours, what is its average speed?",
            "Sarah has {x} apples and gives away {y}. How many are left?",
            "What is {x} plus {y} divided by 2?",
            "Solve for x: 3x + {y} = {x}.",
            "A shirt costs {x} dollars and is discounted by {y} percent. What is the new price?",
            "Is {x} a prime number?",
            "What is the square root of {x}?",
            "How many minutes are there in {y} days?",
            "If I walk {x} steps every day, how many steps do I take in {y} weeks?",
        ],
        held_out=2,
    ),
    QuestionSet(
        "writing",
        [
            "Write a poem about {topic}.",
            "Write a short story about {topic}.",
            "Draft an email to {people} about being late.",
            "Write a haiku about {topic}.",
            "Compose a song about {topic}.",
            "Write a product description for a smart water bottle.",
            "Summarize the plot of Romeo and Juliet.",
            "Write a limerick about {animal}.",
            "Give me a catchy slogan for a bakery.",
            "Translate 'good morning, how are you' into Spanish.",
        ],
        held_out=2,
    ),
    QuestionSet(
        "robot_topic",  # mentions the robot's verbs but is not a command: precision of the marker
        [
            "Why do {animal} like to walk?",
            "What are the health benefits of walking every day?",
            "How do robots learn to walk?",
            "Tell me a joke about robots.",
            "How does your battery chemistry work?",
            "What is the best way to teach a puppy to sit?",
            "Why do dogs fetch sticks?",
            "Can you explain how you see the world?",
            "What is the history of ballroom dance?",
            "How should I arrange the furniture in my living room?",
            "What do you dream about when your battery is low?",
            "Why do people turn left more often than right?",
        ],
        held_out=3,
    ),
    QuestionSet(
        "complex_task",  # chores the action grammar cannot express
        [
            "Clean the whole house while I am away.",
            "Cook me a three course dinner.",
            "Plan my trip to {country} next month.",
            "Do my taxes for this year.",
            "Fix the leaking tap in the bathroom.",
            "Organize my bookshelf by color and author.",
            "Book a table for two at an Italian restaurant.",
            "Walk to the kitchen, make coffee, then read me the news.",
            "Help me write a cover letter for a job application.",
            "Teach me how to play the guitar.",
        ],
        held_out=2,
    ),
]
QUESTION_PREFIXES = ["", "", "", "hey robot, ", "quick question: ", "I was wondering, ", "hmm, "]


# -- rendering ----------------------------------------------------------------------------------


def typo(word: str, rng: random.Random) -> str:
    """A one-edit misspelling: swap, drop or double a letter (not the first)."""
    i = rng.randrange(1, len(word) - 1)
    edit = rng.choice(("swap", "drop", "double"))
    if edit == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if edit == "drop":
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def misspell_template(template: str, rng: random.Random, rate: float) -> str:
    """Misspell one literal word of length >= 4 with probability `rate`; slots ({...}) stay intact."""
    words = [m for m in re.finditer(r"(?<![{\w])[a-z]{4,}(?![\w}])", template)]
    if not words or rng.random() >= rate:
        return template
    m = rng.choice(words)
    return template[: m.start()] + typo(m.group(), rng) + template[m.end() :]


def _pick(table: dict[str, list[str]], rng: random.Random) -> tuple[str, str]:
    value = rng.choice(sorted(table))
    return value, rng.choice(table[value])


def command_record(action: Action, template: str, wrapper: str, rng: random.Random, novel: bool) -> dict:
    """One command: the prompt text, the reply and whether it uses a value training never sees."""
    values: dict[str, str] = dict(action.defaults)
    surface: dict[str, str] = {}
    used_novel = False
    if "{n}" in template:
        n = rng.choice(STEPS)
        values["n"], surface["n"] = str(n), NUMBER_WORDS[n] if rng.random() < 0.3 else str(n)
    if "{deg}" in template:
        values["deg"] = surface["deg"] = str(rng.choice(DEGREES))
    if "{dir}" in template:
        table = {"walk": DIRECTIONS, "turn": TURNS, "look": LOOKS}[action.name]
        values["dir"], surface["dir"] = _pick(table, rng)
    if "{obj}" in template:
        values["obj"], surface["obj"] = _pick(OBJECTS_NOVEL if novel else OBJECTS_TRAIN, rng)
        used_novel = used_novel or novel
    if "{room}" in template:
        values["room"], surface["room"] = _pick(ROOMS_NOVEL if novel else ROOMS_TRAIN, rng)
        used_novel = used_novel or novel
    if "{who}" in template:
        values["who"], surface["who"] = _pick(FOLLOWS, rng)
    command = template.lstrip("=").format(**surface)
    if not template.startswith("=") and rng.random() < 0.3:
        command += rng.choice(FILLERS)
    prompt = command if template.startswith("=") else wrapper.format(c=command, C=command[:1].upper() + command[1:])
    reply = "ACTION: " + action.reply.format(**values)
    return {"kind": "command", "category": action.name, "prompt": prompt, "novel_value": used_novel, "reply": reply}


def question_record(qset: QuestionSet, template: str, rng: random.Random) -> dict:
    x, y = rng.randint(2, 99), rng.randint(2, 12)
    pair = rng.choice(PAIRS)
    text = template.format(
        country=rng.choice(COUNTRIES),
        topic=rng.choice(TOPICS),
        concept=rng.choice(CONCEPTS),
        thing=rng.choice(THINGS),
        goal=rng.choice(GOALS),
        pair=f"{pair[0]} and {pair[1]}",
        people=rng.choice(PEOPLE),
        animal=rng.choice(ANIMALS),
        x=x,
        y=y,
    )
    prefix = rng.choice(QUESTION_PREFIXES)
    if prefix:
        text = prefix + text[:1].lower() + text[1:]
    return {"kind": "question", "category": qset.category, "prompt": text, "novel_value": False, "reply": None}


def split_templates(templates: list[str], held_out: int, test: bool) -> list[str]:
    return templates[len(templates) - held_out :] if test else templates[: len(templates) - held_out]


def generate(
    split: str, commands: int, questions: int, rng: random.Random, typo_rate: float, novel_rate: float
) -> list[dict]:
    """`commands` + `questions` distinct records of one split, shuffled."""
    test = split == "test"
    # Test commands always use a held-out template, and a held-out wrapper half of the time.
    wrappers = WRAPPERS if test else WRAPPERS[:-WRAPPERS_HELD_OUT]
    records: dict[str, dict] = {}
    attempts = 0
    while len(records) < commands and attempts < commands * 50:
        attempts += 1
        action = rng.choice(ACTIONS)
        template = misspell_template(
            rng.choice(split_templates(action.templates, action.held_out, test)), rng, typo_rate
        )
        novel = test and rng.random() < novel_rate
        wrapper = rng.choice(wrappers[-WRAPPERS_HELD_OUT:] if test and rng.random() < 0.5 else wrappers)
        record = command_record(action, template, wrapper, rng, novel)
        records.setdefault(record["prompt"].lower(), record)
    target = len(records) + questions
    while len(records) < target and attempts < (commands + questions) * 50:
        attempts += 1
        qset = rng.choice(QUESTIONS)
        record = question_record(qset, rng.choice(split_templates(qset.templates, qset.held_out, test)), rng)
        records.setdefault(record["prompt"].lower(), record)
    out = []
    for record in records.values():
        reply = record.pop("reply")
        out.append(
            {
                "split": split,
                **record,
                "heldout_template": test,
                "shadow_target": reply if record["kind"] == "command" else MARKER,
                "attached_target": reply,  # None for questions: the base model's own answer
            }
        )
    rng.shuffle(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-commands", type=int, default=4000)
    parser.add_argument("--train-questions", type=int, default=2500)
    parser.add_argument("--test-commands", type=int, default=400)
    parser.add_argument("--test-questions", type=int, default=250)
    parser.add_argument("--typo-rate", type=float, default=0.12)
    parser.add_argument("--novel-rate", type=float, default=0.1, help="share of test commands with unseen names")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train = generate("train", args.train_commands, args.train_questions, random.Random(args.seed), args.typo_rate, 0.0)
    test = generate(
        "test", args.test_commands, args.test_questions, random.Random(args.seed + 1), args.typo_rate, args.novel_rate
    )
    seen = {r["prompt"].lower() for r in train}
    test = [r for r in test if r["prompt"].lower() not in seen]  # held-out templates can still collide
    for name, records in (("train", train), ("test", test)):
        path = args.out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        kinds = {k: sum(r["kind"] == k for r in records) for k in ("command", "question")}
        print(f"{path}: {len(records)} records ({kinds['command']} commands, {kinds['question']} questions)")


if __name__ == "__main__":
    main()
