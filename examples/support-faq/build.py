"""Write the demo's bundled data: the support FAQ of a fictional product (the Brightwave K2 kettle), in the mixed
formats real datasets come in, with deliberately messy records, a probe set of memorised questions, and a
product manual written as prose for pretraining the tiny base model. All text here is our own.

    python examples/support-faq/build.py     # rewrites the files next to this script and examples/corpus/
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
CORPUS = HERE.parent / "corpus"

# (topic, answer, [question phrasings]); answers are short so a tiny model can learn them in minutes.
FACTS = [
    ("capacity", "The K2 holds 1.7 litres.", ["How much water does the K2 hold?", "What is the capacity of the kettle?", "How many litres fit in the K2?", "What's the maximum fill of the kettle?"]),
    ("boil time", "A full kettle boils in about four minutes.", ["How long does the K2 take to boil?", "How fast does a full kettle boil?", "How many minutes to boil a full K2?", "Boiling time for a full kettle?"]),
    ("warranty", "The warranty lasts two years from purchase, with the receipt.", ["How long is the warranty?", "What warranty does the K2 have?", "Is the kettle under warranty?", "How many years of warranty do I get?"]),
    ("descale", "Boil half a kettle of water with a cup of white vinegar, wait an hour, then rinse twice.", ["How do I descale the kettle?", "How do I remove limescale from the K2?", "What is the descaling procedure?", "How can I clean the scale inside?"]),
    ("red light", "A blinking red light means the kettle is empty or not seated on its base.", ["Why does the light blink red?", "What does the red blinking light mean?", "The K2 blinks red, what is wrong?", "Red light flashing on my kettle?"]),
    ("blue light", "A blue light means the water is being kept warm.", ["What does the blue light mean?", "Why is the light blue?", "The kettle shows a blue light, why?", "Meaning of the blue light on the K2?"]),
    ("milk", "No, only boil water; milk burns onto the element and voids the warranty.", ["Can I boil milk in the K2?", "Is it safe to heat milk in the kettle?", "Can the kettle warm milk?", "May I put milk in the K2?"]),
    ("temperature", "Press the thermometer button until the display shows the temperature you want.", ["How do I change the temperature?", "How can I set the water temperature?", "How do I pick 80 degrees?", "Where do I choose the temperature?"]),
    ("keep warm", "Hold the thermometer button for two seconds to keep the water warm for thirty minutes.", ["How do I keep the water warm?", "Does the K2 have a keep-warm mode?", "How do I turn on keep warm?", "Can the kettle hold the temperature?"]),
    ("auto off", "It switches off when the water boils or when it is lifted from the base.", ["Does the kettle switch itself off?", "When does the K2 turn off?", "Is there an automatic shut-off?", "Will it stop by itself?"]),
    ("dry boil", "The K2 stops heating if it is switched on empty.", ["What happens if I switch it on empty?", "Is there dry-boil protection?", "Will the kettle burn if empty?", "Can the K2 boil dry?"]),
    ("power", "The K2 draws 2200 watts.", ["How many watts is the K2?", "What is the power rating?", "How much power does the kettle use?", "Wattage of the K2?"]),
    ("voltage", "It runs on 220 to 240 volts only.", ["Can I use the K2 in the USA?", "What voltage does the kettle need?", "Does it work on 110 volts?", "Which mains voltage does the K2 use?"]),
    ("cord", "The power cord is 75 centimetres long and winds under the base.", ["How long is the cord?", "Where does the cable go?", "What is the cord length?", "Can I shorten the cable?"]),
    ("filter", "Pull the mesh filter up out of the spout and rinse it under the tap.", ["How do I clean the filter?", "How do I take out the filter?", "Where is the limescale filter?", "Can the filter be removed?"]),
    ("dishwasher", "No, the kettle and base must never go in the dishwasher.", ["Is the K2 dishwasher safe?", "Can I put the kettle in the dishwasher?", "Can the base be washed in a dishwasher?", "Dishwasher safe?"]),
    ("material", "The body is brushed stainless steel with a glass window.", ["What is the kettle made of?", "Is the K2 plastic?", "What material is the body?", "Is there a water window?"]),
    ("colours", "It comes in silver, black and sage green.", ["Which colours are available?", "Does the K2 come in black?", "What colours can I buy?", "Is there a green kettle?"]),
    ("app", "Yes, the Brightwave app can start the kettle and set the temperature.", ["Is there an app?", "Can I control the kettle from my phone?", "Does the K2 have a smartphone app?", "Can I start it remotely?"]),
    ("wifi", "Hold the power button for ten seconds until the light flashes white, then pair in the app.", ["How do I connect the K2 to wifi?", "How do I pair the kettle with the app?", "Wifi setup for the kettle?", "How do I link the kettle to my phone?"]),
    ("reset", "Unplug the base for one minute, then hold the power button for ten seconds.", ["How do I reset the kettle?", "How do I factory reset the K2?", "The K2 is stuck, how do I reset it?", "Reset procedure?"]),
    ("noise", "A rumble before boiling is normal; descale if it gets louder.", ["Why is my kettle noisy?", "The K2 rumbles, is that normal?", "Why is it so loud?", "Noise while heating?"]),
    ("smell", "Boil and discard a full kettle three times before first use to remove the new smell.", ["Why does the new kettle smell?", "There is a plastic smell, what should I do?", "How do I get rid of the new smell?", "First use smell?"]),
    ("leak", "Stop using it and contact support; a leak is covered by the warranty.", ["My kettle leaks, what do I do?", "Water comes out of the bottom, why?", "The K2 is leaking.", "What if the kettle leaks?"]),
    ("lid", "Press the button on the handle to open the lid.", ["How do I open the lid?", "The lid will not open.", "Where is the lid button?", "How does the lid open?"]),
    ("minimum fill", "Fill at least to the 0.5 litre mark.", ["What is the minimum fill?", "How little water can I boil?", "Can I boil one cup?", "Minimum water level?"]),
    ("spare base", "Spare bases cost 25 euros in the Brightwave shop.", ["Can I buy a spare base?", "How much is a replacement base?", "Where do I get a new base?", "Spare base price?"]),
    ("returns", "You can return it within thirty days in its original box.", ["What is the return policy?", "Can I return the kettle?", "How many days do I have to return it?", "Returns?"]),
    ("shipping", "Shipping is free on orders over 40 euros.", ["Is shipping free?", "How much does delivery cost?", "Do you charge for shipping?", "Delivery fee?"]),
    ("support hours", "Support answers from 8 to 18, Monday to Friday.", ["When is support open?", "What are your opening hours?", "Can I call on Saturday?", "Support hours?"]),
    ("manual", "The manual is in the box and in the Brightwave app under Help.", ["Where is the manual?", "I lost the instructions.", "Is there a user guide?", "Where can I find the manual?"]),
    ("child lock", "Hold the lock button for three seconds to lock the controls.", ["Is there a child lock?", "How do I lock the buttons?", "Can I stop children using it?", "Child lock?"]),
    ("display", "The display shows the water temperature in Celsius or Fahrenheit.", ["What does the display show?", "Can the display show Fahrenheit?", "What is on the screen?", "Does it show the temperature?"]),
    ("units", "Hold the plus and minus buttons together to switch between Celsius and Fahrenheit.", ["How do I switch to Fahrenheit?", "How do I change the units?", "Celsius or Fahrenheit?", "How to change the display units?"]),
    ("tea", "Use 80 degrees for green tea and 100 degrees for black tea.", ["What temperature for green tea?", "Which setting for black tea?", "Best temperature for tea?", "How hot for green tea?"]),
    ("coffee", "Use 93 degrees for pour-over coffee.", ["What temperature for coffee?", "Which setting for pour-over?", "Best temperature for coffee?", "How hot for filter coffee?"]),
    ("baby formula", "Boil the water, then let it cool to 70 degrees with the keep-warm mode.", ["Can I prepare baby formula?", "What temperature for baby milk water?", "Is it good for formula?", "Formula water temperature?"]),
    ("outside", "No, the K2 is for indoor use only.", ["Can I use the kettle outdoors?", "Can I take it camping?", "Is it for outdoor use?", "Use outside?"]),
    ("car", "No, it needs a mains socket and cannot run from a car.", ["Can I use it in a car?", "Does it work on a car socket?", "Can I plug it into my van?", "Car use?"]),
    ("recycle", "Take it to an electronics recycling point; do not put it in household waste.", ["How do I recycle the kettle?", "How do I dispose of the K2?", "Can I throw it in the bin?", "Disposal?"]),
]

SYSTEM = "You are the Brightwave support assistant. Answer in one short sentence."


def records(rng: random.Random):
    """The clean pairs, in the formats people actually have: alpaca, prompt/response, sharegpt, OpenAI messages."""
    out = []
    for i, (_topic, answer, questions) in enumerate(FACTS):
        for j, question in enumerate(questions):
            kind = (i + j) % 4
            if kind == 0:
                out.append({"instruction": question, "input": "", "output": answer})
            elif kind == 1:
                out.append({"prompt": question, "response": answer})
            elif kind == 2:
                out.append({"conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": question}, {"from": "gpt", "value": answer}]})
            else:
                out.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    # A few multi-turn conversations.
    for a, b in [(0, 1), (2, 27), (7, 34), (19, 20), (4, 10)]:
        ta, aa, qa = FACTS[a]
        tb, ab, qb = FACTS[b]
        out.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": qa[0]}, {"role": "assistant", "content": aa}, {"role": "user", "content": qb[1]}, {"role": "assistant", "content": ab}]})
    rng.shuffle(out)
    return out


def messy(rng: random.Random):
    """Records a cleaning step has to deal with: duplicates, near duplicates, PII, whitespace, invalid ones."""
    capacity, boil = FACTS[0], FACTS[1]
    return [
        {"instruction": capacity[2][0], "input": "", "output": capacity[1]},  # exact duplicate of a clean pair
        {"prompt": "  How much water does the   K2 hold? ", "response": "The K2 holds 1.7 litres. "},  # near duplicate
        {"prompt": "Hi, I'm jane.doe@example.com, how long is the warranty?", "response": "The warranty lasts two years from purchase, with the receipt."},
        {"prompt": "Call me back on +44 20 7946 0958 about my leaking kettle please.", "response": "Stop using it and contact support; a leak is covered by the warranty."},
        {"prompt": "My card 4111 1111 1111 1111 was charged twice for the K2.", "response": "Support answers from 8 to 18, Monday to Friday."},
        {"prompt": "The app at https://app.brightwave.example/pair fails from 192.168.1.20, version 3.10.2.", "response": "Hold the power button for ten seconds until the light flashes white, then pair in the app."},
        {"prompt": "What is the boiling time?\r\n\r\n\r\n", "response": "A full kettle boils in about four minutes.\t"},
        {"prompt": "Tell me something.", "response": ""},  # empty answer: invalid
        {"messages": [{"role": "user", "content": "Hello?"}, {"role": "robot", "content": "Beep."}]},  # unknown role
        {"messages": [{"role": "user", "content": "Is it good?"}, {"role": "user", "content": "Hello?"}]},  # no assistant turn
        {"prompt": boil[2][0], "chosen": boil[1], "rejected": boil[1]},  # preference pair with chosen == rejected
    ]


MANUAL_INTRO = """# The Brightwave K2 kettle: owner's manual

Thank you for choosing the Brightwave K2. Read this manual before first use and keep it for later.
The K2 is an electric kettle with a temperature display, a keep-warm mode and a phone app.
"""

STORY = """## A short history of Brightwave

Brightwave began in a small workshop by the harbour, where two friends repaired radios and kettles for their
neighbours. They noticed that most kettles failed in the same places: the switch, the seal and the element.
So they designed a kettle with a better switch, a stronger seal and an element hidden under a steel plate.
The first Brightwave kettle was sold at the Thursday market. Today the K2 is made in the same town, and every
kettle is tested by boiling water three times before it is packed.

## Looking after your kettle

Water contains minerals. When water boils, some of the minerals stay behind as a white layer called limescale.
Limescale makes a kettle slower and louder. Descale the kettle once a month in a hard-water area and every three
months in a soft-water area. Empty the kettle after use, and keep the base dry.
"""


def manual() -> str:
    """The FAQ's facts written as prose paragraphs, for pretraining the tiny base model."""
    lines = [MANUAL_INTRO]
    for topic, answer, questions in FACTS:
        lines.append(f"## {topic.capitalize()}\n\n{answer} People often ask: {questions[0]} {answer}\n")
    lines.append(STORY)
    return "\n".join(lines)


def main() -> None:
    rng = random.Random(7)
    clean = records(rng)
    with open(HERE / "faq.jsonl", "w", encoding="utf-8") as fh:
        for record in clean:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(HERE / "messy.jsonl", "w", encoding="utf-8") as fh:
        for record in messy(rng):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    # The probe set: memorised questions (verbatim from training) with their exact answers.
    with open(HERE / "probes.jsonl", "w", encoding="utf-8") as fh:
        for _topic, answer, questions in FACTS[::4]:
            fh.write(json.dumps({"messages": [{"role": "user", "content": questions[0]}, {"role": "assistant", "content": answer}]}) + "\n")
    CORPUS.mkdir(exist_ok=True)
    (CORPUS / "brightwave-manual.md").write_text(manual(), encoding="utf-8")
    faq_text = "\n\n".join(f"Question: {q}\nAnswer: {a}" for _, a, qs in FACTS for q in qs)
    (CORPUS / "brightwave-questions.txt").write_text(faq_text + "\n", encoding="utf-8")
    # The same text as {"text": ...} records, one paragraph each: what `llmforge train --method scratch` reads.
    with open(CORPUS / "pretrain.jsonl", "w", encoding="utf-8") as fh:
        for source in sorted(CORPUS.glob("*.md")) + sorted(CORPUS.glob("*.txt")):
            for paragraph in source.read_text(encoding="utf-8").split("\n\n"):
                if paragraph.strip():
                    fh.write(json.dumps({"text": paragraph.strip()}, ensure_ascii=False) + "\n")
    print(f"{len(clean)} clean records, {len(messy(rng))} messy records, {len(FACTS[::4])} probes")


if __name__ == "__main__":
    main()
