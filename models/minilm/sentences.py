"""Fixed English sentences for the MiniLM calibration and evaluation splits (no download).

Sixty written sentences on varied topics, plus 140 built from subjects and predicates paired
by a fixed shuffle, so the set is the same on every run and has a spread of lengths.
"""

from __future__ import annotations

import random

GOLDEN_SENTENCE = "The quick brown fox jumps over the lazy dog."

WRITTEN = (
    "The sensor on the greenhouse wall reports a temperature of twenty-three degrees.",
    "Please restart the gateway after the firmware update has finished.",
    "A heavy storm is expected to reach the coast by Thursday evening.",
    "She parked the bicycle next to the library and went inside to study.",
    "The conveyor belt stopped because a box was stuck under the roller.",
    "How many devices in the fleet are still running the old model?",
    "Fresh bread smells wonderful early in the morning.",
    "The committee postponed its decision until more data is available.",
    "Our cat refuses to eat anything except salmon on Sundays.",
    "Battery voltage dropped below the warning threshold twice last night.",
    "The train to Lyon leaves from platform nine at half past seven.",
    "Machine learning models can drift when the input distribution changes.",
    "He forgot his umbrella, so he arrived at the meeting soaking wet.",
    "The vineyard harvest was smaller this year because of the late frost.",
    "Turn left at the second roundabout and follow the signs to the harbour.",
    "A camera at the loading dock counts pallets as they pass.",
    "The museum opens a new exhibition about ancient navigation next month.",
    "Water pressure in the irrigation pipe is unusually low today.",
    "The children built a snowman with a carrot for a nose.",
    "Quantization makes neural networks smaller and often faster on small boards.",
    "Could you send me the invoice for the replacement parts?",
    "The orchestra tuned their instruments before the concert began.",
    "Traffic on the bridge is slow because one lane is closed for repairs.",
    "The robot arm picks up each part and places it on the tray.",
    "My grandmother grows tomatoes, beans and courgettes in her garden.",
    "The vibration sensor detected an anomaly in the pump bearing.",
    "An unexpected power cut interrupted the nightly backup.",
    "Scientists observed a new comet passing close to the sun.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Doors on the north side of the warehouse stay locked after six.",
    "I would like a table for four by the window, please.",
    "The hikers reached the summit just before the clouds rolled in.",
    "Humidity in the server room must stay between forty and sixty percent.",
    "The bakery on the corner sells the best croissants in town.",
    "A firmware bug caused the thermostat to report negative temperatures.",
    "The football match was cancelled because the pitch was flooded.",
    "Every morning the fishermen bring their catch to the market.",
    "The drone returned to its base when the wind grew too strong.",
    "Reading before bed helps many people fall asleep faster.",
    "The accountant found an error in last quarter's spreadsheet.",
    "Solar panels on the roof produced more energy than the house used.",
    "The dog barked at the postman and then wagged its tail.",
    "A new version of the model was deployed to the test boards.",
    "Ice on the runway delayed every flight by at least an hour.",
    "The students argued about the meaning of the final chapter.",
    "Sound levels near the compressor exceed the safety limit.",
    "Mountains in the distance turned pink as the sun went down.",
    "The printer on the third floor is out of paper again.",
    "Please confirm that the valve is closed before opening the tank.",
    "Stock prices fell sharply after the announcement.",
    "He plays the violin in a small quartet on weekends.",
    "The tide comes in quickly across the flat sandy bay.",
    "Our app crashed when the user uploaded a very large photo.",
    "The old lighthouse still guides ships around the rocky point.",
    "Fans cheered loudly when the team scored in the last minute.",
    "The doctor recommended more sleep and less coffee.",
    "Light levels in the corridor switch the lamps on at dusk.",
    "A flock of geese flew south over the frozen lake.",
    "The contract must be signed by both parties before Friday.",
    "Wind turbines on the hill turn slowly in the evening breeze.",
)

SUBJECTS = (
    "The technician",
    "A small robot",
    "My neighbour",
    "The weather station",
    "Our team",
    "The delivery van",
    "A curious child",
    "The night guard",
    "The farmer",
    "The new intern",
    "An old tractor",
    "The city council",
    "The chef",
    "A tired traveller",
    "The pilot",
    "The monitoring service",
    "A stray dog",
    "The teacher",
    "The smart meter",
    "The librarian",
)
PREDICATES = (
    "checked the readings twice before lunch.",
    "waited patiently outside the closed station.",
    "sent an alert when the temperature rose too fast.",
    "painted the fence a bright shade of green.",
    "lost connection to the network during the storm.",
    "carried heavy boxes up the narrow stairs.",
    "found a mistake in the calibration table.",
    "walked along the river until it got dark.",
    "measured the soil moisture in every field.",
    "answered questions from curious visitors all afternoon.",
    "recorded a sudden spike in power consumption.",
    "fixed the leaking pipe under the kitchen sink.",
    "sang an old folk song at the village festival.",
    "counted the sheep before closing the gate.",
    "uploaded the logs to the central server.",
    "forgot the keys on the kitchen table.",
    "planted twenty young apple trees in the orchard.",
    "noticed that the camera lens was covered in dust.",
    "cooked a large pot of soup for everyone.",
    "compared the new results with last week's data.",
)
TEMPLATED = 140
SEED = 7


def sentences() -> list[str]:
    """The 200 sentences, in a fixed order (written ones interleaved with templated ones)."""
    pairs = [(s, p) for s in SUBJECTS for p in PREDICATES]
    random.Random(SEED).shuffle(pairs)
    templated = [f"{subject} {predicate}" for subject, predicate in pairs[:TEMPLATED]]
    mixed = list(WRITTEN) + templated
    random.Random(SEED + 1).shuffle(mixed)
    return mixed
